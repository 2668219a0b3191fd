"""``cmdv eval`` (one command per pair) and ``cmdv demo`` (the README's main job)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from commandv.exporter.cli.args import comma_list
from commandv.runtime.errors import CommandVError
from commandv.runtime.progress import progress_bar
from commandv.runtime.terminal import safe_text

REPO = Path(__file__).resolve().parents[2]
DEMO_DONOR = "qwen2.5-coder-0.5b-instruct"
DEMO_RECIPIENT = "qwen2.5-coder-1.5b-instruct"
DEMO_BEHAVIOR = "refusal"
DEMO_ADAPTER = "refusal"
DEMO_PROFILE_PROMPTS = 1024
DEMO_RCOND = 3e-3
DEMO_N = 10
DEMO_FIGURES = ("n_harmful", "n_harmless", "n_", "offshelf_", "transferred_", "gain_pts_", "recovered_gain_",
                "over_", "utility_delta_pts_", "donor_share_", "best_strength_")
"""The measured figures the demo prints (name prefixes; each with its interval)."""
"""The demo's pair, behavior, committed adapter (``adapters/<donor>/<adapter>``) and export settings: the transfer
that measured best (small → large within the Qwen family; benchmarks/results/transfer_eval.json); held-out prompts
per group."""

out = Console()


def committed_adapter(donor: str, behavior: str) -> Path:
    """Where the project keeps the adapters it trained: ``adapters/<donor>/<behavior>`` of the checkout; an
    installed package (``pip install .``) has the same files as ``commandv/adapters`` (package data), which is
    the same path relative to this file."""
    return REPO / "adapters" / donor / behavior


def default_report_dir() -> Path:
    """``benchmarks/results/transfer`` of the checkout; outside one (an installed package), of the current folder."""
    if (REPO / "pyproject.toml").is_file() and (REPO / "benchmarks").is_dir():
        return REPO / "benchmarks" / "results" / "transfer"
    return Path("benchmarks") / "results" / "transfer"


def model_label(model: str) -> str:
    """A file-name-safe label for a model argument: a zoo key as is, a path by its file name (no ``.gguf``)."""
    from commandv.runtime.models import zoo

    if model in zoo.ZOO:
        return model
    return re.sub(r"[^\w.-]+", "_", Path(model).name.removesuffix(".gguf")) or "model"


def register(app: typer.Typer, user_errors) -> None:
    @app.command("eval")
    @user_errors
    def eval_cmd(
        donor: str = typer.Option(..., help="donor model (zoo key or .gguf)"),
        recipient: str = typer.Option(..., help="recipient model (zoo key or .gguf)"),
        behavior: str = typer.Option("refusal", help="built-in behavior: refusal, pirate or french"),
        adapter: Optional[Path] = typer.Option(None, help="donor adapter folder (default: the committed one)"),
        direct: Optional[Path] = typer.Option(None, help="adapter trained directly on the recipient (optional)"),
        strengths: str = typer.Option("0.5,1,1.5,2", help="comma-separated pack strengths to sweep"),
        n: Optional[int] = typer.Option(None, help="cap on prompts per group (expected / not expected)"),
        max_tokens: int = typer.Option(32, help="greedy tokens per response"),
        out_dir: Path = typer.Option(default_report_dir(), "--out", help="report folder"),
        no_donor: bool = typer.Option(False, help="skip the donor configurations"),
        profile_prompts: int = typer.Option(256, help="prompts of the general set used to fit the translators"),
        profile_train_prompts: int = typer.Option(0, help="also profile on this many of the behavior's training "
                                                           "prompts (equal per label; 0 = general set only)"),
        layer_rule: str = typer.Option("nearest", help="donor→recipient layer map: nearest (authors' code) or floor"),
        rcond: Optional[float] = typer.Option(None, help="truncate translator singular values below rcond×σ_max "
                                                         "(default: plain pinv; see cmdv export --help)"),
        method: str = typer.Option("auto", help="fold method: auto, pinv, pinv-cal, pinv-tokens or gated (see "
                                   "cmdv export --help)"),
        token_prompts: int = typer.Option(256, help="with --method pinv-tokens or gated: general prompts whose "
                                          "tokens join the fit (gated: 0 fits on last-token rows only)"),
        anchor_texts: int = typer.Option(0, help="the donor with its adapter answers this many of the behavior's "
                                         "training prompts; both models' token rows on those answers join the fit "
                                         "(pinv-tokens; auto picks it)"),
    ) -> None:
        """Transfer a donor adapter and measure the behavior on the quantized recipient (JSON + Markdown + PNG)."""
        from commandv.exporter.evaluation.pair import PairEvalSettings, run_pair_eval

        s = PairEvalSettings(strengths=tuple(comma_list(strengths, float, "--strengths")), n_expected=n, n_unexpected=n,
                             max_tokens=max_tokens, include_donor=not no_donor, profile_prompts=profile_prompts,
                             profile_train_prompts=profile_train_prompts, layer_rule=layer_rule, rcond=rcond,
                             method=method, token_prompts=token_prompts, anchor_texts=anchor_texts)
        rep = run_pair_eval(donor, recipient, behavior, adapter or committed_adapter(donor, behavior), out_dir,
                            direct_dir=direct, settings=s)
        out.print(safe_text(rep.markdown(), multiline=True), markup=False)  # model names and outputs: plain text
        out.print(safe_text(f"wrote {out_dir}/{rep.pair}-{behavior}.json/.md/.png"), markup=False)

    @app.command("demo")
    @user_errors
    def demo_cmd(
        recipient: str = typer.Option(DEMO_RECIPIENT, help="recipient model"),
        donor: str = typer.Option(DEMO_DONOR, help="donor model the committed adapter was trained on"),
        behavior: str = typer.Option(DEMO_BEHAVIOR, help="behavior to judge: refusal, pirate or french"),
        adapter: Optional[Path] = typer.Option(None, help=f"donor adapter folder (default: adapters/<donor>/"
                                                          f"{DEMO_ADAPTER} for {DEMO_BEHAVIOR}, else adapters/<donor>/<behavior>)"),
        strength: Optional[float] = typer.Option(None, help="pack strength (default: the one the pair's evaluation "
                                                            "recommends, else 1)"),
        profile_prompts: int = typer.Option(DEMO_PROFILE_PROMPTS, help="prompts used to fit the translators"),
        rcond: Optional[float] = typer.Option(DEMO_RCOND, help="translator singular-value cutoff (see cmdv export "
                                                               "--help); 0 = plain pinv"),
        n: int = typer.Option(DEMO_N, help="held-out prompts per group (expected / not expected / utility)"),
        max_tokens: int = typer.Option(24, help="tokens per answer"),
    ) -> None:
        """Transfer the committed donor adapter to the recipient and show, on held-out prompts, what it changes."""
        if adapter is None:
            adapter = committed_adapter(donor, DEMO_ADAPTER if behavior == DEMO_BEHAVIOR else behavior)
        run_demo(recipient, donor, behavior, adapter, strength, profile_prompts, rcond or None, n, max_tokens)


def measured_figures(donor: str, recipient: str, behavior: str) -> dict[str, dict]:
    """This pair's figures from ``benchmarks/results/transfer_eval.json`` (``{name: {"value", "unit"}}`` without the
    ``<pair>.`` prefix; empty when the file or the pair is missing)."""
    from commandv.exporter.evaluation.pair import pair_key

    path = REPO / "benchmarks" / "results" / "transfer_eval.json"
    if not path.is_file():
        return {}
    prefix = f"{pair_key(donor, recipient)}."
    figs = json.loads(path.read_text())["figures"]
    names = {k[len(prefix):]: v for k, v in figs.items() if k.startswith(prefix)}
    if behavior.startswith("refusal"):  # refusal figures carry no behavior suffix or "_refusal"; leave the styles out
        return {k: v for k, v in names.items() if not any(f"_{b}" in k for b in ("pirate", "french"))}
    return {k: v for k, v in names.items() if f"_{behavior}" in k}


def demo_prompts(behavior: str, n: int) -> list:
    """``n`` held-out prompts where the behavior is expected (spread over the report's main set) and ``n`` where
    it is not, from :func:`~commandv.exporter.evaluation.pair.report_prompts` (never used in training or tuning)."""
    from commandv.exporter.evaluation.pair import report_prompts

    ps = report_prompts(behavior)
    main = next(p.label for p in ps if p.expect)
    exp = [p for p in ps if p.expect and p.label == main]
    unexp = [p for p in ps if not p.expect]
    spread = lambda xs: [xs[i * len(xs) // n] for i in range(min(n, len(xs)))]  # noqa: E731
    return spread(exp) + spread(unexp)


def run_demo(recipient: str, donor: str, behavior: str, adapter_dir: Path, strength: float | None,
             profile_prompts: int, rcond: float | None, n: int, max_tokens: int) -> None:
    """The demo's steps (see :func:`register`'s ``demo``): profile, export, run without / with the pack, judge."""
    from commandv.exporter.adapters.folder import load_adapter
    from commandv.exporter.evaluation.evaluate import run_config, utility_questions
    from commandv.exporter.training.behaviors import get_behavior
    from commandv.exporter.transfer.export import diagnostics_table, export_pack, score_line
    from commandv.profiles.profiler import profile_model
    from commandv.runtime.engines.llama.engine import Recipient
    from commandv.runtime.models import zoo

    if n < 1:
        raise DemoError(f"--n must be at least 1, got {n}")
    for key in (recipient, donor):
        if key in zoo.ZOO:
            zoo.fetch(key)
    ad = load_adapter(adapter_dir)
    figs = measured_figures(donor, recipient, behavior)
    if strength is None:
        strength = figs.get(f"best_strength_{behavior}", {}).get("value", 1.0)
    out.print(f"[bold]1/4 profiling[/bold] {escape(safe_text(donor))} and {escape(safe_text(recipient))} on "
              f"{profile_prompts} prompts (cached after the first run)")
    dprof, _, _ = profile_model(donor, "general", "gguf", limit=profile_prompts)
    rprof, _, _ = profile_model(recipient, "general", "gguf", limit=profile_prompts)
    out.print(f"[bold]2/4 exporting[/bold] {escape(safe_text(ad.kind))} adapter {escape(safe_text(adapter_dir.name))} "
              f"({len(ad.edits)} layers, rank {ad.edits[0].rank}) into a pack for {escape(safe_text(recipient))}")
    res = export_pack(ad, dprof, rprof, strength=strength, rcond=rcond, name=f"{behavior}-demo",
                      donor_name=dprof.meta.model_name)
    pack_path = Path.cwd() / f"{behavior}-{model_label(recipient)}.pack.gguf"
    res.pack.save(pack_path)
    out.print(diagnostics_table(res.diagnostics))
    if score_line(res.pack):
        out.print(score_line(res.pack), markup=False)
    out.print(safe_text(f"pack: {pack_path} ({pack_path.stat().st_size / 1e3:.1f} kB), strength {strength:g}"),
              markup=False)
    beh = get_behavior(behavior)
    prompts, util = demo_prompts(behavior, n), utility_questions()[:n]
    out.print(f"[bold]3/4 running[/bold] {escape(safe_text(recipient))} (quantized GGUF, llama.cpp) without and with "
              f"the pack on {len(prompts)} held-out prompts and {len(util)} utility questions")
    eng = Recipient(recipient, n_ctx=2048)
    try:
        with progress_bar("generating", 2 * (len(prompts) + len(util)), unit="answers") as adv:
            off = run_config(eng, "without", beh, prompts, util, None, 1.0, max_tokens, adv)
            on = run_config(eng, "with", beh, prompts, util, res.pack, 1.0, max_tokens, adv)  # the pack's own strength
    finally:
        eng.close()
    show_examples(off, on)
    verdict(behavior, off, on, figs)


class DemoError(CommandVError, ValueError):
    """Demo settings that cannot run (e.g. ``--n 0``)."""


def show_examples(off, on, k: int = 3) -> None:
    """A table of the first ``k`` prompts where the behavior is expected and ``k`` where it is not."""
    t = Table(show_lines=True)
    t.add_column("prompt", max_width=30)
    t.add_column("without pack")
    t.add_column("with pack")
    for expect in (True, False):
        rows = [(a, b) for a, b in zip(off.samples, on.samples) if a["expect"] == expect][:k]
        for a, b in rows:
            mark = lambda s: ("✓ " if s["judged"] else "· ") + s["response"].strip()  # noqa: E731
            t.add_row(Text(safe_text(a["prompt"][:120])), Text(safe_text(mark(a), multiline=True)),
                      Text(safe_text(mark(b), multiline=True)))
    out.print(t)
    out.print("✓ = judged to show the behavior")


def verdict(behavior: str, off, on, figs: dict) -> None:
    """Judged rates without / with the pack, a warning when the pack costs utility or misfires, and the pair's
    measured figures (n ≥ 100, 95 % intervals) from ``transfer_eval.json``."""
    out.print("[bold]4/4 judged[/bold] on these held-out prompts:")
    frac = lambda r, k: f"{round(r * k)}/{k}"  # noqa: E731
    out.print(f"  {behavior} where expected:  without {frac(off.expected_rate, off.n_expected)}, "
              f"with {frac(on.expected_rate, on.n_expected)}")
    if off.n_unexpected:
        out.print(f"  {behavior} where not expected: without {frac(off.unexpected_rate, off.n_unexpected)}, "
                  f"with {frac(on.unexpected_rate, on.n_unexpected)}")
    k = len(off.outcomes["utility"])
    out.print(f"  utility (exact answers):  without {frac(off.utility, k)}, with {frac(on.utility, k)}")
    if on.expected_rate <= off.expected_rate:
        out.print("[yellow]no gain on these prompts:[/yellow] the transferred pack did not raise the behavior here")
    if 100 * (off.utility - on.utility) > 10:
        out.print(f"[yellow]warning:[/yellow] the pack costs utility on this check ({100 * off.utility:.0f} → "
                  f"{100 * on.utility:.0f} %): lower the strength (-s) or do not use it for general questions")
    if off.n_unexpected and 100 * (on.unexpected_rate - off.unexpected_rate) > 10:
        out.print(f"[yellow]warning:[/yellow] the pack also raises {behavior} where it is not expected "
                  f"({100 * off.unexpected_rate:.0f} → {100 * on.unexpected_rate:.0f} %)")
    if figs:
        out.print("measured for this pair on every held-out prompt (benchmarks/results/transfer_eval.json, 95 % "
                  "intervals):")
        for name, v in figs.items():
            if name.endswith(("_ci_low", "_ci_high", "_best")) or not name.startswith(DEMO_FIGURES):
                continue
            lo, hi = figs.get(f"{name}_ci_low"), figs.get(f"{name}_ci_high")
            ci = f" [{lo['value']:.3g}, {hi['value']:.3g}]" if lo and hi else ""
            out.print(safe_text(f"  {name}: {v['value']:.3g}{ci} {v['unit']}"), highlight=False, markup=False)
