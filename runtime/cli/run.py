"""``cmdv run`` and ``cmdv chat``: a recipient in llama.cpp (GGUF) or ONNX Runtime with behavior packs applied.

``--engine onnx`` runs an export of ``cmdv onnx export`` (MODEL: its folder, the
``.onnx`` file, or the zoo key / GGUF it was exported from).

The main CLI (``exporter/cli/main.py``) registers :func:`run_cmd` and :func:`chat_cmd`. Generated text goes
to stdout (streamed); model / pack information goes to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Sequence

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from commandv.runtime.cli.errors import user_errors
from commandv.runtime.cli.options import (
    CtxOption,
    EngineOption,
    ForceOption,
    MaxDeltaOption,
    ModelArgument,
    PacksOption,
    QuantOption,
    SignaturesOption,
    ThreadsOption,
    TrustedOption,
)
from commandv.runtime.errors import EngineError
from commandv.runtime.terminal import safe_text

_err = Console(stderr=True, highlight=False)

INT32_MAX = 2**31 - 1
# Integer options that reach C types (llama.cpp's context parameters are int32 / uint32, ggml runs at most 512
# threads, the C session's seed is a uint64): checked here, so a value never wraps around silently.
INT_OPTIONS = {"--ctx": (1, INT32_MAX), "--threads": (1, 512), "--max-tokens": (0, INT32_MAX),
               "--seed": (0, 2**64 - 1)}


def check_int_options(**values: Optional[int]) -> None:
    """Refuse an integer option outside its range (:data:`INT_OPTIONS`; keyword ``max_tokens`` = ``--max-tokens``),
    one line naming the option and the range. ``None`` (not given) passes."""
    for key, value in values.items():
        option = "--" + key.replace("_", "-")
        lo, hi = INT_OPTIONS[option]
        if value is not None and not lo <= value <= hi:
            raise EngineError(f"{option} must be an integer from {lo} to {hi}, got {value}")


def _check_text(prompt: Optional[str] = None, system: Optional[str] = None, stops: Sequence[str] = ()) -> None:
    """Refuse a prompt / system message / stop string from argv holding bytes that are not UTF-8, before the
    model loads."""
    from commandv.runtime.engines.request_checks import check_user_prompt, check_utf8

    if prompt is not None:
        check_user_prompt(prompt)
    if system is not None:
        check_utf8(system, "--system")
    for s in stops:
        check_utf8(s, "--stop")


def _read_line() -> Optional[str]:
    """One line of stdin, or None at its end; :class:`~commandv.runtime.engines.request_checks.InvalidTextError` (naming the byte and its
    offset in the line) when it is not UTF-8. Reads bytes and decodes them here: the text layer would raise
    ``UnicodeDecodeError`` from inside ``readline``."""
    from commandv.runtime.engines.request_checks import InvalidTextError, check_utf8

    raw_in = getattr(sys.stdin, "buffer", None)
    if raw_in is None:  # a text stream without bytes underneath (tests, embedding): its text is checked
        line = sys.stdin.readline()
        check_utf8(line, "input line")
        return line or None
    raw = raw_in.readline()
    if not raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidTextError(f"input line is not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte offset "
                               f"{exc.start}") from None


def _strengths(packs: list, strengths: list[float]) -> list[float] | None:
    """No strengths → None (1.0 each); one strength → every pack; else one per pack (checked by the engine)."""
    if not strengths:
        return None
    if len(strengths) == 1 and len(packs) > 1:
        return strengths * len(packs)
    return list(strengths)


ENGINES = ("llama", "onnx")


def _open(model: str, n_ctx: int, threads: Optional[int], force: bool, packs: list[Path], policy=None,
          engine: str = "llama", quant: str = "fp32"):
    import warnings

    if engine not in ENGINES:
        raise EngineError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "onnx":
        from commandv.runtime.engines.onnx.engine import OnnxRecipient

        rec = OnnxRecipient(model, n_ctx=n_ctx, n_threads=threads, force=force, policy=policy, quant=quant)
        how = f"ONNX Runtime, {rec.info.quant}, packs: {rec.info.pack_mode}"
    else:
        from commandv.runtime.engines.llama.engine import Recipient

        rec = Recipient(model, n_ctx=n_ctx, n_threads=threads, force=force, policy=policy)
        how = "edit callback: " + ("C" if rec.native else "Python")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = rec.load_packs(packs)
    # names and text from files and models are never read as markup (escape), nor acted on by the terminal
    # (safe_text: an escape sequence in a pack name could erase the "unsigned" warning above it)
    for w in caught:
        _err.print(f"[yellow]warning:[/yellow] {escape(safe_text(w.message))}")
    info = f"{rec.info.name} ({rec.arch}, {rec.n_layer} layers, d={rec.d_model}); {how}"
    _err.print(f"[dim]{escape(safe_text(info))}[/dim]")
    for p in loaded:
        _err.print(f"[dim]pack {escape(safe_text(p.summary()))}[/dim]")
    return rec, loaded


def _policy(signatures: Optional[str], trusted: Optional[List[Path]], max_delta_norm: Optional[float]):
    from commandv.runtime.pack.policy import PackPolicy

    return PackPolicy.from_env(signatures=signatures, trusted=tuple(trusted or ()) or None,
                               max_delta_norm=max_delta_norm)


def _stream(pieces) -> str:
    """Write generated pieces to stdout as they come, control characters shown as escapes (a pack can make the
    model print escape sequences); returns the text as generated."""
    text = []
    for piece in pieces:
        text.append(piece)
        sys.stdout.write(safe_text(piece, multiline=True))
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(text)


@user_errors
def run_cmd(
    model: ModelArgument,
    prompt: str = typer.Argument(..., help="the user prompt (rendered with the model's chat template)"),
    pack: PacksOption = None,
    strength: Optional[List[float]] = typer.Option(None, "--strength", "-s",
                                                   help="strength per pack, in --pack order (one = all)"),
    max_tokens: int = typer.Option(128, "--max-tokens", "-n", help="most tokens to generate"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    top_p: float = typer.Option(1.0, "--top-p", help="nucleus sampling mass"),
    seed: Optional[int] = typer.Option(None, help="sampling seed (reproducible output)"),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="stop string (repeatable)"),
    force: ForceOption = False,
    compare: bool = typer.Option(False, "--compare", help="print the output without and with the packs"),
    raw: bool = typer.Option(False, "--raw", help="feed the prompt without the chat template (then special-token "
                             "text in it, e.g. <|im_start|>, is read as those tokens; with the template it is "
                             "plain text)"),
    n_ctx: CtxOption = 4096,
    threads: ThreadsOption = None,
    signatures: SignaturesOption = None,
    trusted: TrustedOption = None,
    max_delta_norm: MaxDeltaOption = None,
    engine: EngineOption = "llama",
    quant: QuantOption = "fp32",
) -> None:
    """Generate a reply to PROMPT with the packs applied (streamed to stdout)."""
    check_int_options(ctx=n_ctx, threads=threads, max_tokens=max_tokens, seed=seed)
    _check_text(prompt=prompt, stops=list(stop or []))
    packs_in = list(pack or [])
    rec, packs = _open(model, n_ctx, threads, force, packs_in, _policy(signatures, trusted, max_delta_norm),
                       engine, quant)
    kw = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=list(stop or []),
              template=not raw)
    s = _strengths(packs, list(strength or []))
    try:
        if not compare:
            _stream(rec.generate(prompt, packs=packs, strengths=s, stream=True, **kw))
            return
        from rich import box
        from rich.table import Table

        with_packs = rec.generate(prompt, packs=packs, strengths=s, **kw)
        without = rec.generate(prompt, packs=(), **kw)
        names = ", ".join(f"{p.name}×{v:g}" for p, v in zip(packs, s or [1.0] * len(packs))) or "none"
        table = Table(box=box.SIMPLE_HEAD, expand=True, show_lines=False)
        table.add_column("without packs", ratio=1, overflow="fold")
        table.add_column(Text(safe_text(f"with packs ({names})")), ratio=1, overflow="fold")
        table.add_row(Text(safe_text(without, multiline=True)), Text(safe_text(with_packs, multiline=True)))
        Console(soft_wrap=False, highlight=False).print(table)
    finally:
        rec.close()


@user_errors
def chat_cmd(
    model: ModelArgument,
    pack: PacksOption = None,
    strength: Optional[List[float]] = typer.Option(None, "--strength", "-s", help="strength per pack"),
    system: Optional[str] = typer.Option(None, help="system message"),
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", help="most tokens per reply"),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    top_p: float = typer.Option(1.0, "--top-p"),
    seed: Optional[int] = typer.Option(None),
    force: ForceOption = False,
    n_ctx: CtxOption = 4096,
    threads: ThreadsOption = None,
    signatures: SignaturesOption = None,
    trusted: TrustedOption = None,
    max_delta_norm: MaxDeltaOption = None,
    engine: EngineOption = "llama",
    quant: QuantOption = "fp32",
) -> None:
    """Interactive chat on stdin; the packs edit the last rows of every turn. /quit ends, /reset forgets."""
    from commandv.runtime.models.chat_template import ChatTemplateError

    check_int_options(ctx=n_ctx, threads=threads, max_tokens=max_tokens, seed=seed)
    _check_text(system=system)
    rec, packs = _open(model, n_ctx, threads, force, list(pack or []), _policy(signatures, trusted, max_delta_norm),
                       engine, quant)
    s = _strengths(packs, list(strength or []))
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    start = len(history)
    _err.print("[dim]type a message; /quit to exit, /reset to start over[/dim]")
    try:
        while True:
            _err.print("[bold]you>[/bold] ", end="")
            try:
                line = _read_line()
            except EngineError as exc:  # not UTF-8: say so, drop the line, keep going
                _err.print(f"[red]error:[/red] {escape(safe_text(exc))}")
                continue
            if line is None:
                break
            msg = line.strip()
            if msg in ("/quit", "/exit"):
                break
            if msg == "/reset":
                del history[start:]
                continue
            if not msg:
                continue
            history.append({"role": "user", "content": msg})
            _err.print("[bold]assistant>[/bold] ", end="")
            try:
                reply = _stream(rec.chat(history, packs=packs, strengths=s, max_tokens=max_tokens,
                                         temperature=temperature, top_p=top_p, seed=seed, stream=True))
            except (EngineError, ChatTemplateError) as exc:  # e.g. the conversation outgrew the context
                history.pop()
                _err.print(f"[red]error:[/red] {escape(safe_text(exc))}")
                continue
            history.append({"role": "assistant", "content": reply})
    finally:
        rec.close()
