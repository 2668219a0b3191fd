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

from commandv.runtime.terminal import safe_text

from .cli_args import comma_list

REPO = Path(__file__).resolve().parents[1]
DEMO_DONOR = "qwen2.5-coder-0.5b-instruct"
DEMO_RECIPIENT = "smollm2-135m-instruct"
DEMO_BEHAVIOR = "pirate"
DEMO_PROMPTS = ["What is a good way to learn a new language?", "Explain what a CPU does.",
                "Give me a tip for sleeping better.", "Write one sentence about the sea.",
                "How do I reverse a list in Python?"]

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
    from commandv.runtime import zoo

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
    ) -> None:
        """Transfer a donor adapter and measure the behavior on the quantized recipient (JSON + Markdown + PNG)."""
        from .eval_pair import PairEvalSettings, run_pair_eval

        s = PairEvalSettings(strengths=tuple(comma_list(strengths, float, "--strengths")), n_expected=n, n_unexpected=n,
                             max_tokens=max_tokens, include_donor=not no_donor, profile_prompts=profile_prompts,
                             profile_train_prompts=profile_train_prompts, layer_rule=layer_rule, rcond=rcond)
        rep = run_pair_eval(donor, recipient, behavior, adapter or committed_adapter(donor, behavior), out_dir,
                            direct_dir=direct, settings=s)
        out.print(safe_text(rep.markdown(), multiline=True), markup=False)  # model names and outputs: plain text
        out.print(safe_text(f"wrote {out_dir}/{rep.pair}-{behavior}.json/.md/.png"), markup=False)

    @app.command("demo")
    @user_errors
    def demo_cmd(
        recipient: str = typer.Option(DEMO_RECIPIENT, help="recipient model"),
        donor: str = typer.Option(DEMO_DONOR, help="donor model the committed adapter was trained on"),
        behavior: str = typer.Option(DEMO_BEHAVIOR, help="committed adapter's behavior"),
        strength: float = typer.Option(1.0, help="pack strength"),
        profile_prompts: int = typer.Option(256, help="prompts used to fit the translators"),
        max_tokens: int = typer.Option(40, help="tokens per answer"),
    ) -> None:
        """Fetch the default models, transfer the committed donor adapter to the recipient, show the difference."""
        from commandv.profiles.profiler import profile_model
        from commandv.runtime import zoo
        from commandv.runtime.llama_engine import Recipient

        from .adapters import load_adapter
        from .behaviors import get_behavior
        from .export import diagnostics_table, export_pack

        for key in (recipient, donor):
            if key in zoo.ZOO:
                zoo.fetch(key)
        ad = load_adapter(committed_adapter(donor, behavior))
        out.print(f"[bold]1/3 profiling[/bold] {escape(safe_text(donor))} and {escape(safe_text(recipient))} on "
                  f"{profile_prompts} prompts (cached after the first run)")
        dprof, _, _ = profile_model(donor, "general", "gguf", limit=profile_prompts)
        rprof, _, _ = profile_model(recipient, "general", "gguf", limit=profile_prompts)
        out.print(f"[bold]2/3 exporting[/bold] {escape(safe_text(ad.kind))} adapter ({len(ad.edits)} layers, "
                  f"rank {ad.edits[0].rank})")
        res = export_pack(ad, dprof, rprof, name=f"{behavior}-demo", donor_name=dprof.meta.model_name)
        pack_path = Path.cwd() / f"{behavior}-{model_label(recipient)}.pack.gguf"
        res.pack.save(pack_path)
        out.print(diagnostics_table(res.diagnostics))
        out.print(safe_text(f"pack: {pack_path} ({pack_path.stat().st_size / 1e3:.1f} kB) — {res.pack.summary()}"),
                  markup=False)
        out.print(f"[bold]3/3 running[/bold] {escape(safe_text(recipient))} (quantized GGUF, llama.cpp) without and "
                  "with the pack")
        judge = get_behavior(behavior).judge
        eng = Recipient(recipient, n_ctx=2048)
        t = Table(show_lines=True)
        t.add_column("prompt", max_width=28)
        t.add_column("without pack")
        t.add_column(f"with pack (s={strength:g})")
        hits = [0, 0]
        try:
            for p in DEMO_PROMPTS:
                a = eng.generate(p, max_tokens=max_tokens)
                b = eng.generate(p, packs=[res.pack], strengths=[strength], max_tokens=max_tokens)
                hits[0] += judge(a)
                hits[1] += judge(b)
                t.add_row(p, Text(safe_text(a.strip(), multiline=True)), Text(safe_text(b.strip(), multiline=True)))
        finally:
            eng.close()
        out.print(t)
        out.print(f"{behavior} judged on these {len(DEMO_PROMPTS)} prompts: without {hits[0]}/{len(DEMO_PROMPTS)}, "
                  f"with {hits[1]}/{len(DEMO_PROMPTS)}")
        results = REPO / "benchmarks" / "results" / "transfer_eval.json"
        if results.is_file():
            figs = json.loads(results.read_text())["figures"]
            out.print("measured on held-out prompts (benchmarks/results/transfer_eval.json):")
            for k, v in figs.items():
                if k.endswith(("_ci_low", "_ci_high")):  # shown with their figure
                    continue
                lo, hi = figs.get(f"{k}_ci_low"), figs.get(f"{k}_ci_high")
                ci = f" [{lo['value']:.3g}, {hi['value']:.3g}]" if lo and hi else ""
                out.print(safe_text(f"  {k}: {v['value']:.3g}{ci} {v['unit']}"), highlight=False, markup=False)
