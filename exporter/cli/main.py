"""``cmdv``: the one command-line entry point.

Sub-commands: ``models`` (zoo), ``doctor`` (machine report), ``profile``, ``export``, ``inspect``, ``run``/``chat``
(llama.cpp or ONNX Runtime engine), ``onnx`` (ONNX export), ``eval``/``demo``, ``train-demo``, ``keys``/``sign``/
``verify``, ``proxy``/``diagnose``, ``serve`` and ``packs``. ``profile``, ``export`` and ``inspect`` are defined
here; the others live in their own modules and are registered below, one line each. User errors print one red
line and exit 2 (:func:`commandv.runtime.cli.errors.user_errors`); optional dependencies (torch, pyreft,
onnxruntime, fastapi, ray, …) are imported when a command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from commandv.exporter.cli import demo as cli_demo
from commandv.exporter.cli import onnx as cli_onnx
from commandv.exporter.cli import proxy as cli_proxy
from commandv.exporter.cli import train as cli_train
from commandv.exporter.cli.doctor import doctor_cmd
from commandv.exporter.transfer.layermap import DEFAULT_LAYER_RULE, LAYER_RULES
from commandv.runtime import crash
from commandv.runtime.cli import keys as cli_keys
from commandv.runtime.cli import packs as cli_packs
from commandv.runtime.cli import run as cli_run
from commandv.runtime.cli import serve as cli_serve
from commandv.runtime.cli.errors import err, user_errors
from commandv.runtime.cli.models import app as models_app
from commandv.runtime.terminal import safe_text

app = typer.Typer(help="Command-V behavior transfer: profile models, export behavior packs, run them.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(models_app, name="models")
out = Console()


@app.command("profile")
@user_errors
def profile_cmd(
    model: str = typer.Argument(..., help="zoo key, .gguf file, HF folder or hub id"),
    prompts: str = typer.Option("general", "--prompts", "-p", help="built-in set name or .jsonl/.txt file"),
    backend: str = typer.Option("gguf", help="gguf (llama.cpp) or hf (transformers)"),
    limit: Optional[int] = typer.Option(None, help="use only the first N prompts"),
    batch: Optional[int] = typer.Option(None, help="prompts per forward batch (default: HF 8; GGUF 1 with the "
                                                     "shared template prefix decoded once, one context per thread)"),
    match: str = typer.Option("file", help="reuse a stored profile of the exact file ('file') or of any file "
                                           "of the same network with the same chat template, e.g. another "
                                           "quantization ('network'; weights are not compared: not for "
                                           "fine-tunes)"),
    force: bool = typer.Option(False, help="recompute even if stored"),
) -> None:
    """Record the last prompt token's residual stream after every block, for every prompt."""
    from commandv.profiles.profiler import profile_model

    prof, path, cached = profile_model(model, prompts, backend, limit=limit, batch=batch, match=match, force=force)
    m = prof.meta
    state = "reused stored profile" if cached else f"computed in {m.seconds:.1f} s ({m.n_prompts / max(m.seconds, 1e-9):.1f} prompts/s)"
    out.print(safe_text(f"{m.model_name}: {m.n_layer} layers × [{m.n_prompts}, {m.d_model}] ({m.backend}); {state}"),
              markup=False)
    out.print(safe_text(f"prompt set {m.prompt_set} sha256 {m.prompt_sha256[:16]}…, "
                        f"model {m.model_fingerprint[:16]}…"), markup=False)
    out.print(safe_text(f"saved: {path}"), markup=False)


@app.command("export")
@user_errors
def export_cmd(
    adapters: list[Path] = typer.Option(..., "--adapter", help="pyreft adapter folder (config.json + intkey_*.bin); "
                                        "repeat it to export several for the same pair in one run (the "
                                        "translator factors are computed once) into the folder --out"),
    donor: str = typer.Option(..., help="donor model the adapter was trained on"),
    recipient: str = typer.Option(..., help="recipient model (zoo key, .gguf or HF folder)"),
    out_path: Path = typer.Option(..., "--out", "-o", help="pack file to write (.gguf); with several adapters a "
                                  "folder, one <adapter folder name>.gguf each"),
    prompts: str = typer.Option("general", help="prompt set used to profile both models"),
    limit: Optional[int] = typer.Option(None, help="use only the first N prompts"),
    layer_rule: str = typer.Option(DEFAULT_LAYER_RULE, help=f"layer mapping: {' or '.join(LAYER_RULES)} "
                                   "(nearest = the authors' code, ties to the lower layer; floor = the paper)"),
    holdout: float = typer.Option(0.1, help="fraction of prompts kept out of the fit for diagnostics"),
    rcond: Optional[float] = typer.Option(None, help="drop translator singular values below rcond×σ_max (default: "
                                          "plain pinv). With as many profiling prompts as d or more, pinv fits noise "
                                          "(held-out R² < 0, delta_energy ≫ donor_delta_energy): try 3e-3"),
    kind: Optional[str] = typer.Option(None, "--type", help="intervention type when the folder has no config.json (with one, it must agree)"),
    act: Optional[str] = typer.Option(None, help="activation of the intervention (pyreft never saves it)"),
    positions: Optional[str] = typer.Option(None, help="targeted positions, e.g. l1 or f1+l1 (default: from the adapter)"),
    strength: float = typer.Option(1.0, help="default strength stored in the pack"),
    method: str = typer.Option("auto", help="fold method: pinv (the paper's translators), pinv-cal (then each "
                               "layer's edit scaled to the donor's relative size ‖δ‖/‖h‖), pinv-tokens (translators "
                               "also fitted on the states of every prompt token, paired across the two models by "
                               "where the token ends in the text; GGUF donor and recipient) or auto (pinv-tokens "
                               "across model families into a wider GGUF recipient, else pinv: what the measurements "
                               "support; gated there when --behavior is given) or gated (the donor edit's difference "
                               "on the behavior's prompts, behind a gate; needs --behavior)"),
    token_prompts: int = typer.Option(256, help="with --method pinv-tokens or gated: prompts of the general set "
                                      "whose tokens join the fit (gated: 0 fits on last-token rows only)"),
    behavior: Optional[str] = typer.Option(None, help="built-in behavior (e.g. refusal) whose training prompts (256, "
                                           "both labels) are profiled after the general ones; needed by --method "
                                           "gated (they tell its gate which prompts want the behavior), which auto "
                                           "then picks across families into a wider recipient"),
    anchor_texts: int = typer.Option(0, help="with --behavior: the donor with its adapter answers this many of the "
                                     "behavior's training prompts, and both models' token rows on those answers "
                                     "join the fit (pinv-tokens; auto picks it). Measured: French into SmolLM2"),
    backend: str = typer.Option("gguf", help="profiling backend for GGUF models"),
    dtype: str = typer.Option("f32", help="pack tensor type: f32 or f16"),
    check: int = typer.Option(10, "--utility-check", help="ask a GGUF recipient this many exact-answer questions "
                              "without and with the pack and warn when the pack costs more than 10 points (0: skip)"),
    response: int = typer.Option(32, "--response-check", help="teacher-force this many of the adapter's own "
                                 "training answers (folders written by cmdv train-demo keep them) on a GGUF "
                                 "recipient without and with the pack, and on the donor with the adapter; warn when "
                                 "the recipient barely responds (0: skip)"),
    name: Optional[str] = typer.Option(None, help="pack name"),
) -> None:
    """Fold a donor's pyreft adapter (or several, each into its own pack) into a behavior pack for the recipient."""
    from commandv.exporter.adapters.folder import load_adapter
    from commandv.exporter.transfer.export import (
        ExportError,
        anchor_problem,
        diagnostics_table,
        export_pack,
        fit_profiles,
        method_problem,
        score_line,
    )
    from commandv.profiles.profiler import profile_model

    targets = _export_targets(adapters, out_path, name)
    loaded = [load_adapter(a, kind=kind, act=act, positions=positions) for a in adapters]  # all checked first
    if method_problem(method):
        raise ExportError(f"--method: {method_problem(method)}")
    if rcond is not None and not 0 < rcond < 1:
        raise ExportError(f"--rcond must be between 0 and 1, got {rcond}")
    if token_prompts < 0:
        raise ExportError(f"--token-prompts must be >= 0, got {token_prompts}")
    contrast = None
    if method == "gated" and behavior is None:
        raise ExportError("--method gated needs --behavior (the gate learns from the behavior's prompts)")
    if method == "gated" and backend != "gguf":
        raise ExportError(f"--method gated needs --backend gguf (its write map is fitted on token rows, which the "
                          f"{backend} backend does not give)")
    if response < 0:
        raise ExportError(f"--response-check must be >= 0, got {response}")
    if anchor_texts < 0:
        raise ExportError(f"--anchor-texts must be >= 0, got {anchor_texts}")
    if anchor_texts and (behavior is None or len(loaded) > 1 or backend != "gguf"):
        raise ExportError("--anchor-texts needs --behavior (the donor answers its training prompts), one --adapter "
                          "and --backend gguf")
    if anchor_texts and anchor_problem(method):
        raise ExportError(f"--anchor-texts: {anchor_problem(method)}")
    if behavior is not None:
        from commandv.exporter.evaluation.pair import contrast_rows, donor_anchor_texts, is_conditional, profiling_set

        if prompts != "general":
            raise ExportError("--behavior profiles the general set plus the behavior's prompts; drop --prompts")
        n_general = limit or 1024
        prompts, limit = profiling_set(behavior, n_general, 256), None
        wanted = is_conditional(behavior) or method == "gated"
        contrast = contrast_rows(behavior, prompts, n_general) if wanted else None
    dprof, _, _ = profile_model(donor, prompts, backend, limit=limit)
    rprof, _, _ = profile_model(recipient, prompts, backend, limit=limit)
    texts = donor_anchor_texts(behavior, donor, loaded[0], anchor_texts) if anchor_texts else []
    method, why, dprof, rprof = fit_profiles(method, donor, recipient, dprof, rprof, token_prompts,
                                             contrast=contrast is not None, anchor_texts=texts)
    out.print(f"method: {method} ({why})", markup=False)
    results = [export_pack(ad, dprof, rprof, layer_rule=layer_rule, holdout=holdout, strength=strength, rcond=rcond,
                           method=method, contrast=contrast,
                           name=pack_name, donor_name=dprof.meta.model_name)
               for ad, (_, pack_name) in zip(loaded, targets)]  # every export before any file is written
    responses = [None] * len(results)
    if response > 0 and rprof.meta.backend == "gguf":
        from commandv.exporter.evaluation.pair import fit_prompt_texts
        from commandv.exporter.transfer.export import TOKEN_ROW_METHODS
        from commandv.profiles.prompts import load_prompt_set

        pset = prompts if behavior is not None else load_prompt_set(prompts, limit=limit)
        fitted = fit_prompt_texts(pset, behavior, token_prompts if method in TOKEN_ROW_METHODS else 0, anchor_texts)
        responses = [pack_response_of(donor, recipient, ad, res.pack, response, fitted)
                     for ad, res in zip(loaded, results)]
    for res, resp in zip(results, responses):
        if resp is not None:
            res.pack.meta["response_check"] = resp.to_json()
    if len(targets) > 1:
        out_path.mkdir(parents=True, exist_ok=True)
    for res, resp, (path, _) in zip(results, responses, targets):
        res.pack.save(path, dtype=dtype)
        out.print(diagnostics_table(res.diagnostics))
        if score_line(res.pack):
            out.print(score_line(res.pack), markup=False)
        if resp is not None:
            report_response(resp)
        out.print(f"{safe_text(res.pack.summary())}\n" + safe_text(f"folded in {res.seconds * 1000:.0f} ms; wrote "
                  f"{path} ({path.stat().st_size / 1e3:.1f} kB)"), markup=False)
        if check > 0 and rprof.meta.backend == "gguf":
            report_utility(recipient, res.pack, check)


def pack_response_of(donor: str, recipient: str, adapter, pack, n: int, fitted: set[str]):
    """:func:`~commandv.exporter.evaluation.proxy.pack_response` on answers to prompts outside ``fitted`` (None,
    said in one line, when the adapter folder keeps no training answers)."""
    from commandv.exporter.evaluation.proxy import pack_response

    resp = pack_response(donor, recipient, adapter, pack, n, exclude=fitted)
    if resp is None:
        out.print("response check skipped: the adapter folder keeps no training answers (training_metadata.json and "
                  "donor_answers.jsonl, as cmdv train-demo writes them)", markup=False)
    return resp


def report_response(resp) -> None:
    """Print a :class:`~commandv.exporter.evaluation.proxy.PackResponse` and warn when the recipient barely
    responds."""
    from commandv.exporter.evaluation.proxy import RESPONSE_MIN_FIRST_DELTA

    out.print(resp.line(), markup=False, soft_wrap=True)
    r = resp.recipient
    if r.weak:
        err.print(f"[yellow]warning:[/yellow] the recipient barely responds to this pack (the pack makes "
                  f"{round(r.first_delta * r.n):+d} of {r.n} of the behavior's answers start as its greedy choice, "
                  f"under {RESPONSE_MIN_FIRST_DELTA:.0%}){warned_record()}; check with cmdv eval", soft_wrap=True)


def warned_record(path: Path | None = None) -> str:
    """``": of K evaluated packs this weak, F gained under 10 points (…)"`` from the measured
    ``benchmarks/results/transfer_score.json`` (``path``), or ``""`` when that file or its figures are missing."""
    from commandv.exporter.cli.demo import REPO

    path = path or REPO / "benchmarks" / "results" / "transfer_score.json"
    try:
        figs = json.loads(path.read_text())["figures"]
        warned = int(figs["response_warned_packs"]["value"])
        failed = int(figs["response_warned_packs_that_failed"]["value"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f": of {warned} evaluated packs this weak, {failed} gained under 10 points ({path.name})"


def report_utility(recipient: str, pack, n: int) -> None:
    """Print the quick utility check of ``pack`` on ``recipient`` and warn when it costs more than 10 points."""
    from commandv.exporter.evaluation.evaluate import utility_check

    off, on, k = utility_check(recipient, pack, n)
    out.print(f"utility check ({k} exact-answer questions, greedy): without the pack {round(off * k)}/{k}, "
              f"with it {round(on * k)}/{k}", soft_wrap=True)
    if 100 * (off - on) > 10:
        err.print(f"[yellow]warning:[/yellow] this pack costs the recipient utility ({100 * off:.0f} → {100 * on:.0f} % "
                  "on the quick check): its answers may be broken; try a lower --strength or check with cmdv eval",
                  soft_wrap=True)


def _export_targets(adapters: list[Path], out_path: Path, name: str | None) -> list[tuple[Path, str]]:
    """(pack file, pack name) per adapter: ``out_path`` itself for one, ``out_path/<folder name>.gguf`` for several.

    Checks every target before any work (:class:`ExportError`): a pack file may be missing or a regular file
    (never a device node, FIFO or folder: ``-o /dev/null`` is refused, not replaced); with several adapters
    ``out_path`` must be missing or a folder.
    """
    from commandv.exporter.transfer.export import ExportError
    from commandv.runtime.safe_io import check_output_target

    if len(adapters) == 1:
        if out_path.is_dir():
            raise ExportError(f"--out {out_path} is a folder; with one --adapter --out names the pack file "
                              f"(e.g. {out_path / (Path(adapters[0]).resolve().name + '.gguf')})")
        check_output_target(out_path, "pack", ExportError)
        return [(out_path, name or out_path.stem)]
    if name is not None:
        raise ExportError("--name names one pack; with several adapters each pack is named after its folder")
    if out_path.is_file():
        raise ExportError(f"--out {out_path} is a file; with {len(adapters)} adapters it must be a folder")
    check_output_target(out_path, "packs folder", ExportError, folder=True)
    stems = [Path(a).resolve().name for a in adapters]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise ExportError(f"adapter folders named {', '.join(twice)} more than once: their packs would share a file")
    for s in stems:
        check_output_target(out_path / f"{s}.gguf", "pack", ExportError)
    return [(out_path / f"{s}.gguf", s) for s in stems]


@app.command("inspect")
@user_errors
def inspect_cmd(pack: Path = typer.Argument(..., help="behavior pack file")) -> None:
    """Validate a pack and print what it holds."""
    from commandv.exporter.transfer.export import diagnostics_table
    from commandv.runtime.pack.model import BehaviorPack

    p = BehaviorPack.load(pack)  # everything printed below comes from the file: safe_text shows control characters
    out.print(safe_text(p.summary()), markup=False)
    for k, v in sorted(p.meta.items()):
        out.print(f"  {safe_text(k)}: {safe_text(v)}", highlight=False, markup=False)
    for i, e in enumerate(p.entries):
        extra = f", P/Q rank {e.P.shape[1]}" if e.P is not None else ""
        out.print(safe_text(f"  entry {i}: donor layer {e.donor_layer} → layer {e.layer}, rank {e.rank}{extra}, "
                            f"act {e.act}, positions {e.positions}, strength {e.strength:g}"), markup=False)
    if p.diagnostics:
        out.print(diagnostics_table(p.diagnostics))


# The other commands, in the order ``cmdv --help`` lists them (groups are listed after the commands).
app.command("run")(cli_run.run_cmd)
app.command("chat")(cli_run.chat_cmd)
cli_demo.register(app, user_errors)  # eval, demo
app.command("train-demo")(cli_train.train_demo_cmd)
app.add_typer(cli_keys.keys_app, name="keys")
app.command("sign")(cli_keys.sign_cmd)
app.command("verify")(cli_keys.verify_cmd)
app.add_typer(cli_onnx.onnx_app, name="onnx")
app.command("proxy")(cli_proxy.proxy_cmd)
app.command("diagnose")(cli_proxy.diagnose_cmd)
app.command("serve")(cli_serve.serve_cmd)
app.add_typer(cli_packs.packs_app, name="packs")
app.command("doctor")(doctor_cmd)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as one line on stderr, their text (which can hold pack paths and names) escaped."""
    err.print(f"[yellow]warning:[/yellow] {escape(safe_text(message))}", highlight=False, soft_wrap=True)


def main() -> None:
    """The ``cmdv`` entry point: crash reports on (a native crash names the running operation), then the app."""
    import warnings

    crash.enable()
    warnings.showwarning = _show_warning
    app(prog_name="cmdv")


if __name__ == "__main__":
    sys.exit(main())
