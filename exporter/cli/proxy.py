"""``cmdv proxy`` (fast behavior proxy, no generation) and ``cmdv diagnose`` (transferred vs direct edit).

The main CLI (``cli.py``) registers :func:`proxy_cmd` and :func:`diagnose_cmd`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from commandv.runtime.cli.errors import user_errors
from commandv.runtime.terminal import safe_text

out = Console()


def _fmt(x: float, p: int = 3) -> str:
    return "–" if x != x else f"{x:.{p}f}"


@user_errors
def proxy_cmd(
    model: str = typer.Argument(..., help="recipient: zoo key or .gguf"),
    pack: Optional[Path] = typer.Option(None, "--pack", help="behavior pack (.gguf); without one, off-shelf only"),
    behavior: str = typer.Option("refusal", help="refusal, pirate or french"),
    strength: list[float] = typer.Option([1.0], "--strength", "-s", help="pack strength; repeat for a sweep"),
    n: int = typer.Option(64, "--n", help="prompts (the behavior's held-out tuning prompts; refusal: HarmBench "
                                         "val + the harmless probes' validation rows)"),
    target: list[str] = typer.Option([], "--target", help="teacher-forced answer text (repeatable; default: "
                                     "the behavior's, e.g. \"I can't help with that.\")"),
    baseline: bool = typer.Option(True, help="also score the model without the pack"),
    threads: Optional[int] = typer.Option(None, help="llama.cpp threads"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write every per-prompt value here"),
) -> None:
    """Score packs at several strengths by one teacher-forced prompt pass per prompt (no generation): the
    log-probability of the behavior's answer where it is expected, where it is not, and the difference."""
    from commandv.exporter.evaluation.proxy import default_prompts, proxy_sweep
    from commandv.runtime.atomic import write_text_atomic
    from commandv.runtime.engines.llama.engine import Recipient

    prompts = default_prompts(behavior, n)
    eng = Recipient(model, n_ctx=2048, n_threads=threads)
    try:
        res = proxy_sweep(eng, behavior, str(pack) if pack else None, strength, prompts, target or None,
                          baseline=baseline)
    finally:
        eng.close()
    r0 = res[0][1]
    t = Table(title=safe_text(f"{behavior} proxy on {model} ({r0.metric}: "
                              f"{' | '.join(r0.targets) if r0.metric == 'target' else 'first-token mass'}; "
                              f"{r0.n_expected} expected + {r0.n_unexpected} other prompts)"))
    for col in ("configuration", "log-prob expected", "log-prob other", "selectivity", "prob expected",
                "prob other", "seconds"):
        t.add_column(col, justify="right")
    for label, r in res:
        t.add_row(label, _fmt(r.expected), _fmt(r.unexpected), _fmt(r.selectivity), _fmt(r.expected_prob, 4),
                  _fmt(r.unexpected_prob, 4), f"{r.seconds:.1f}")
    out.print(t)
    if json_out:
        doc = {"model": model, "pack": str(pack) if pack else None, "behavior": behavior,
               "results": [{"label": lb, **r.to_json()} for lb, r in res]}
        write_text_atomic(json_out, json.dumps(doc, indent=1))
        out.print(safe_text(f"wrote {json_out}"), markup=False)


@user_errors
def diagnose_cmd(
    recipient: str = typer.Option(..., help="recipient: zoo key or .gguf"),
    pack: Path = typer.Option(..., "--pack", help="the transferred pack"),
    direct: Path = typer.Option(..., "--direct", help="adapter folder trained directly on the recipient"),
    behavior: str = typer.Option("refusal", help="whose prompts: refusal (harmful + harmless), pirate, french"),
    n: int = typer.Option(64, "--n", help="prompts (the behavior's held-out tuning prompts)"),
    strength: float = typer.Option(1.0, help="strength of the transferred pack"),
    donor: Optional[str] = typer.Option(None, help="donor model (zoo key or .gguf): also map the donor's "
                                        "behavior direction through the D→R translator"),
    donor_adapter: Optional[Path] = typer.Option(None, help="with --donor: the adapter folder the pack was "
                                                 "folded from (how much of its edit the translator keeps)"),
    profile_prompts: int = typer.Option(1024, help="with --donor: profile both models on general[:N] (minus "
                                        "the behavior's report prompts, as cmdv eval does) to refit the translator"),
    rcond: Optional[float] = typer.Option(None, help="translator cutoff (default: the pack's)"),
    out_path: Path = typer.Option(..., "--out", "-o", help="JSON to write (a .md table is written beside it)"),
    threads: Optional[int] = typer.Option(None, help="llama.cpp threads"),
) -> None:
    """Per recipient layer: cosine and norm ratio of the transferred edit vs the directly trained adapter's, on
    the same prompts; with --donor, the mapped donor behavior direction vs the recipient's own."""
    import shlex
    import sys
    import time

    from commandv.exporter.adapters.folder import load_adapter
    from commandv.exporter.evaluation.diagnose import diagnose, markdown_table, summary
    from commandv.exporter.evaluation.evaluate import adapter_pack
    from commandv.exporter.evaluation.proxy import default_prompts
    from commandv.runtime.atomic import write_text_atomic
    from commandv.runtime.engines.llama.engine import Recipient
    from commandv.runtime.models.fingerprint import model_info_from_gguf
    from commandv.runtime.pack.model import BehaviorPack

    t0 = time.perf_counter()
    tp = BehaviorPack.load(pack)
    eng = Recipient(recipient, n_ctx=2048, n_threads=threads)
    info = model_info_from_gguf(eng.path)
    dp = adapter_pack(load_adapter(direct), info.fingerprint, info.arch, info.n_layer, "direct")
    prompts = default_prompts(behavior, n)
    deng = dprof = rprof = None
    try:
        if donor:
            from commandv.exporter.evaluation.pair import profiling_set
            from commandv.profiles.profiler import profile_model

            pset = profiling_set(behavior, profile_prompts)
            dprof, _, _ = profile_model(donor, pset, "gguf")
            rprof, _, _ = profile_model(recipient, pset, "gguf")
            deng = Recipient(donor, n_ctx=2048, n_threads=threads)
        rows = diagnose(eng, tp, dp, prompts, strength, donor=deng, donor_profile=dprof, recipient_profile=rprof,
                        rcond=rcond, donor_adapter=load_adapter(donor_adapter) if donor_adapter else None)
    finally:
        eng.close()
        if deng is not None:
            deng.close()
    summ = summary(rows)
    doc = {"recipient": recipient, "pack": str(pack), "direct": str(direct), "donor": donor,
           "donor_adapter": str(donor_adapter) if donor_adapter else None, "command": shlex.join(["cmdv", *sys.argv[1:]]),
           "behavior": behavior, "strength": strength, "n_prompts": len(prompts),
           "n_expected": sum(p.expect for p in prompts), "seconds": time.perf_counter() - t0,
           "chance_cos_sd": 1 / float(tp.d_model) ** 0.5, "summary": summ, "layers": rows}
    write_text_atomic(out_path, json.dumps(doc, indent=1))
    md = markdown_table(rows, f"{tp.name}: transferred (T) vs direct (D) edits, {len(prompts)} prompts")
    md += "\n" + "\n".join(f"- {k}: {v if not isinstance(v, float) else round(v, 3)}" for k, v in summ.items()) + "\n"
    md_path = out_path.with_name(out_path.name[: -len(out_path.suffix)] + ".md" if out_path.suffix else
                                 out_path.name + ".md")
    write_text_atomic(md_path, md)
    for line in md.splitlines():
        out.print(safe_text(line), markup=False, soft_wrap=True)
    out.print(safe_text(f"wrote {out_path} and {md_path}"), markup=False)
