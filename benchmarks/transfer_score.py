"""Does the transferability score (``commandv.exporter.transfer.score``) rank measured transfers? (issue 20)

For every pair report ``benchmarks/results/transfer/<pair>-<behavior>.json`` and every variant beside them
(``transfer/variants/``: the same pair exported another way), written by ``cmdv eval``, the
pack is exported again exactly as the report made it (the report's profile set size, rcond and layer rule; the
adapter it names, else the committed ``adapters/<donor>/<behavior>``), which gives the score the export printed.
Each re-export is checked against the committed pack beside the report (``*.pack.gguf``: the same folded
matrices up to float32 rounding), so the score belongs to the pack that was evaluated. Packs that cannot be
re-exported from the profile store (``--method pinv-tokens``, profiles with training prompts) give the score the
evaluated pack carries in its metadata. Reports of ``--method gated`` are left out: the score measures how a
translator carries the whole edit (``edit_cos`` on profile prompts), and a gated edit is zero on most of them.

The measured gain of a configuration: the behavior rate with the pack at strength 1 minus the off-shelf rate
where the behavior is expected, in points (and, where the report has donor rows, divided by the donor adapter's own
gain on the donor: the share of the donor's effect that arrived). Figures:

* ``transfer_score_spearman``: Spearman ρ between score and gain (points, strength 1) over the reports;
  ``transfer_score_configs``: how many;
* ``transfer_score_spearman_share``: the same against the donor-normalized gain (reports with donor rows);
* ``transfer_score_spearman_with_methods``: pooled with every (method, strength) of the method sweeps
  (``benchmarks/transfer_methods.py``: gains on the tuning prompts), ``transfer_score_configs_with_methods``.

    python benchmarks/transfer_score.py        # profiles general[:1024] once per model (Qwen1.5B: ~6 min)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from commandv.exporter.adapters.folder import load_adapter  # noqa: E402
from commandv.exporter.cli.demo import committed_adapter  # noqa: E402
from commandv.exporter.evaluation.evaluate import PairReport  # noqa: E402
from commandv.exporter.evaluation.pair import profiling_set  # noqa: E402
from commandv.exporter.evaluation.stats import spearman  # noqa: E402
from commandv.exporter.transfer.export import export_pack  # noqa: E402
from commandv.profiles.profiler import profile_model  # noqa: E402
from commandv.profiles.prompts import load_prompt_set  # noqa: E402
from commandv.profiles.store import Profile  # noqa: E402
from commandv.runtime.pack.model import BehaviorPack  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "benchmarks" / "results" / "transfer"
OLD_SETTINGS = {
    "qwen0.5b-to-qwen1.5b-pirate": {"profile set": "general_v1 (1024 prompts)", "layer rule": "nearest",
                                    "rcond": 0.003},
    "qwen0.5b-to-smollm2-pirate": {"profile set": "general_v1 (256 prompts)", "layer rule": "nearest",
                                   "rcond": None},
}
"""Settings of the reports written before settings were recorded (from the README of the time; checked against
their committed packs below)."""


class NotReexportable(Exception):
    """A report's pack cannot be exported again from the profile store (the message says why): its score is
    the one the evaluated pack carries."""


def report_settings(doc: dict, stem: str) -> tuple[int, float | None, str, str | None, str]:
    """``(general prompts, rcond, layer rule, adapter, method)`` the report ``stem`` was made with."""
    s = doc.get("settings") or OLD_SETTINGS[stem]
    m = re.search(r"\[:(\d+)\]", s["profile set"]) or re.search(r"\((\d+) prompts\)", s["profile set"])
    rcond = s.get("rcond")
    return (int(m.group(1)), None if rcond in (None, "plain pinv") else float(rcond), s.get("layer rule", "nearest"),
            s.get("adapter"), s.get("method", "pinv"))


def report_prompt_set(behavior: str, n_gen: int, settings: dict):
    """The profiling prompts of a report: today's :func:`profiling_set`, or, for reports made before the style
    behaviors were reported on 160 prompts, ``general[:n_gen]`` without only the behavior's own held-out prompts,
    or the whole ``general[:n_gen]`` (earlier still): the one with the prompt count the report recorded."""
    from commandv.exporter.training.behaviors import get_behavior
    from commandv.profiles.prompts import combine_prompt_sets

    m = re.search(r"\((\d+) prompts\)", settings["profile set"])
    want = int(m.group(1)) if m else None
    gen = load_prompt_set("general", limit=n_gen)
    own = {p.prompt for p in get_behavior(behavior).eval_prompts()}
    keep = [i for i, p in enumerate(gen.prompts) if p not in own]
    older = combine_prompt_sets(f"{gen.name}[:{n_gen}]-{behavior}-eval",
                                [([gen.prompts[i] for i in keep], [gen.ids[i] for i in keep], gen.source)])
    for cand in (profiling_set(behavior, n_gen), older, gen):
        if want is None or len(cand) == want:
            return cand
    raise NotReexportable(f"no prompt set of {want} prompts for {behavior} (general[:{n_gen}])")


MAX_PACK_DIFF = 1e-2
"""A re-export further than this (largest relative difference of the folded matrices) from the committed pack
is not the pack the report evaluated (float32 rounding and profiling give ~1e-3 at most)."""

_FULL: dict[str, Profile] = {}


@functools.cache
def _general_1024():
    return load_prompt_set("general", limit=1024)


def rows_of(model: str, pset) -> Profile:
    """``model``'s profile on ``pset``, cut out of one profile on general[:1024] (a prompt's last-token states do
    not depend on the other prompts), so each model is profiled once for every report."""
    general = _general_1024()
    if model not in _FULL:
        _FULL[model], _, _ = profile_model(model, general, "gguf")
    full = _FULL[model]
    index = {p: i for i, p in enumerate(general.prompts)}
    missing = [p for p in pset.prompts if p not in index]
    if missing:
        raise NotReexportable(f"{len(missing)} prompts of {pset.name} are not in general[:1024]")
    rows = np.array([index[p] for p in pset.prompts])
    meta = dataclasses.replace(full.meta, n_prompts=len(rows), prompt_set=pset.name, prompt_sha256=pset.sha256)
    return Profile(layers=[x[rows] for x in full.layers], meta=meta)


def pack_difference(a: BehaviorPack, b: BehaviorPack) -> float:
    """Largest relative difference of the folded matrices of two packs with the same layers."""
    worst = 0.0
    for x, y in zip(a.entries, b.entries):
        for m, n in ((x.A, y.A), (x.C, y.C)):
            worst = max(worst, float(np.abs(m - n).max() / max(np.abs(n).max(), 1e-30)))
    return worst


def main() -> None:
    rows = []
    for path in sorted(REPORTS.glob("*.json")) + sorted((REPORTS / "variants").glob("*.json")):
        doc = json.loads(path.read_text())
        if "configs" not in doc:
            continue
        rep = PairReport.from_json(doc)
        off, tr = rep.by_label("recipient"), rep.by_label("recipient+transfer@1")
        d_off, d_ad = rep.by_label("donor"), rep.by_label("donor+adapter")
        if tr is None:
            print(f"{path.name}: no strength-1 configuration, skipped")
            continue
        n_gen, rcond, rule, adapter_dir, method = report_settings(doc, path.stem)
        if method == "gated":  # the score reads whole-edit folds; a gated edit is zero on most profile prompts
            print(f"{path.stem}: skipped (method gated: the score's edit_cos is not defined for a gated edit)")
            continue
        committed = path.with_name(path.name.removesuffix(".json") + ".pack.gguf")
        try:
            if method == "pinv-tokens":  # its fit rows come from prompt passes, not from the profile store
                raise NotReexportable("token rows are not re-captured here")
            adapter = load_adapter(REPO / adapter_dir if adapter_dir else committed_adapter(rep.donor, rep.behavior))
            pset = report_prompt_set(rep.behavior, n_gen, doc.get("settings") or OLD_SETTINGS[path.stem])
            dprof, rprof = (rows_of(model, pset) for model in (rep.donor, rep.recipient))
            res = export_pack(adapter, dprof, rprof, layer_rule=rule, rcond=rcond, method=method)
            pack, diags = res.pack, res.diagnostics
            diff = pack_difference(pack, BehaviorPack.load(committed)) if committed.is_file() else float("nan")
        except NotReexportable as why:  # not re-exportable here: the score the evaluated pack itself carries
            if not committed.is_file():
                print(f"{path.stem}: skipped ({why}; no committed pack)")
                continue
            pack = BehaviorPack.load(committed)
            diags, diff = pack.diagnostics, 0.0
            print(f"{path.stem}: score read from the evaluated pack ({why})")
        donor_gain = d_ad.expected_rate - d_off.expected_rate if d_off and d_ad else float("nan")
        gain = tr.expected_rate - off.expected_rate
        rows.append({"config": path.stem, "score": pack.meta.get("transfer_score", float("nan")),
                     "gain_pts": 100 * gain, "donor_gain_pts": 100 * donor_gain,
                     "share": gain / donor_gain if donor_gain > 0 else float("nan"),
                     "n_expected": tr.n_expected, "pack_max_rel_diff": diff,
                     "edit_cos": [d.get("edit_cos") for d in diags],
                     "norm_ratio": [d.get("norm_ratio") for d in diags]})
        r = rows[-1]
        print(f"{path.stem}: score {r['score']:.3f}, gain {r['gain_pts']:+.0f} pts (share {r['share']:.2f}), "
              f"re-export vs committed pack {diff:.1e}", flush=True)
    # a re-export that is not the evaluated pack (its adapter or profile changed since) says nothing about it
    ok = [r for r in rows if np.isfinite(r["score"]) and np.isfinite(r["gain_pts"])
          and not r["pack_max_rel_diff"] > MAX_PACK_DIFF]
    for r in rows:
        if r["pack_max_rel_diff"] > MAX_PACK_DIFF:
            print(f"{r['config']}: left out, the re-export differs from the evaluated pack")
    rho = spearman([r["score"] for r in ok], [r["gain_pts"] for r in ok])
    shared = [r for r in ok if np.isfinite(r["share"])]
    rho_share = spearman([r["score"] for r in shared], [r["share"] for r in shared])
    methods = method_rows()
    both = ok + methods
    rho_all = spearman([r["score"] for r in both], [r["gain_pts"] for r in both])
    print(f"Spearman rho over {len(ok)} (pair, behavior) reports: {rho:.3f} (donor-normalized, {len(shared)}: "
          f"{rho_share:.3f}); with {len(methods)} method-sweep configurations: {rho_all:.3f}")
    write_results("transfer_score", {"transfer_score_spearman": (rho, "rho"),
                                     "transfer_score_configs": (float(len(ok)), "configs"),
                                     "transfer_score_spearman_share": (rho_share, "rho"),
                                     "transfer_score_spearman_with_methods": (rho_all, "rho"),
                                     "transfer_score_configs_with_methods": (float(len(both)), "configs")},
                  extra={"configs": rows, "method_configs": methods})


def method_rows() -> list[dict]:
    """Every (method, strength) of the method sweeps (``benchmarks/results/transfer_methods-*.json``, written by
    ``benchmarks/transfer_methods.py``, which stores each pack's score beside its judged rates on the tuning
    prompts): ``{"config", "score", "gain_pts"}``."""
    out = []
    for path in sorted((REPO / "benchmarks" / "results").glob("transfer_methods-*.json")):
        res = json.loads(path.read_text())["details"]["results"]
        off = res["off-shelf"]["1"]["expected"]
        for method, by_s in res.items():
            for s, v in by_s.items():
                if "transfer_score" in v:
                    out.append({"config": f"{path.stem}:{method}@{s}", "score": v["transfer_score"],
                                "gain_pts": 100 * (v["expected"] - off)})
    return out


if __name__ == "__main__":
    main()
