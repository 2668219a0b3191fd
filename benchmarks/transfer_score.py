"""Does the transferability score (``commandv.exporter.transfer_score``) rank measured transfers? (issue 20)

For every pair report ``benchmarks/results/transfer/<pair>-<behavior>.json`` (written by ``cmdv eval``), the
pack is exported again exactly as the report made it (the report's profile set size, rcond and layer rule; the
adapter it names, else the committed ``adapters/<donor>/<behavior>``), which gives the score the export printed.
Each re-export is checked against the committed pack beside the report (``*.pack.gguf``: the same folded
matrices up to float32 rounding), so the score belongs to the pack that was evaluated.

The measured gain of a configuration: the behavior rate with the pack at strength 1 minus the off-shelf rate
where the behavior is expected, divided by the donor adapter's own gain on the donor (the share of the donor's
effect that arrived; the raw points are kept too). Figures:

* ``transfer_score_spearman``: Spearman ρ between score and donor-normalized gain over the configurations;
* ``transfer_score_spearman_points``: the same against the raw gain in points;
* ``transfer_score_configs``: how many configurations.

    python benchmarks/transfer_score.py        # profiles 964-1024 prompts per model the first time (~20 min)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from commandv.exporter.adapters import load_adapter  # noqa: E402
from commandv.exporter.cli_demo import committed_adapter  # noqa: E402
from commandv.exporter.eval_pair import profiling_set  # noqa: E402
from commandv.exporter.evaluate import PairReport  # noqa: E402
from commandv.exporter.export import export_pack  # noqa: E402
from commandv.exporter.stats import spearman  # noqa: E402
from commandv.profiles.profiler import profile_model  # noqa: E402
from commandv.runtime.pack import BehaviorPack  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "benchmarks" / "results" / "transfer"
OLD_SETTINGS = {"profile set": "general_v1 (1024 prompts)", "layer rule": "nearest", "rcond": 0.003}
"""Reports written before settings were recorded were made with these (checked against their packs below)."""


def report_settings(doc: dict) -> tuple[int, float | None, str, str | None]:
    """``(general prompts, rcond, layer rule, adapter)`` the report was made with."""
    s = doc.get("settings") or OLD_SETTINGS
    m = re.search(r"\[:(\d+)\]", s["profile set"]) or re.search(r"\((\d+) prompts\)", s["profile set"])
    rcond = s.get("rcond")
    return (int(m.group(1)), None if rcond in (None, "plain pinv") else float(rcond), s.get("layer rule", "nearest"),
            s.get("adapter"))


def pack_difference(a: BehaviorPack, b: BehaviorPack) -> float:
    """Largest relative difference of the folded matrices of two packs with the same layers."""
    worst = 0.0
    for x, y in zip(a.entries, b.entries):
        for m, n in ((x.A, y.A), (x.C, y.C)):
            worst = max(worst, float(np.abs(m - n).max() / max(np.abs(n).max(), 1e-30)))
    return worst


def main() -> None:
    rows = []
    for path in sorted(REPORTS.glob("*.json")):
        doc = json.loads(path.read_text())
        if "configs" not in doc:
            continue
        rep = PairReport.from_json(doc)
        off, tr = rep.by_label("recipient"), rep.by_label("recipient+transfer@1")
        d_off, d_ad = rep.by_label("donor"), rep.by_label("donor+adapter")
        if tr is None or d_off is None or d_ad is None:
            print(f"{path.name}: no strength-1 or donor configurations, skipped")
            continue
        n_gen, rcond, rule, adapter_dir = report_settings(doc)
        adapter = load_adapter(REPO / adapter_dir if adapter_dir else committed_adapter(rep.donor, rep.behavior))
        pset = profiling_set(rep.behavior, n_gen)
        dprof, _, _ = profile_model(rep.donor, pset, "gguf")
        rprof, _, _ = profile_model(rep.recipient, pset, "gguf")
        res = export_pack(adapter, dprof, rprof, layer_rule=rule, rcond=rcond)
        committed = path.with_name(path.name.removesuffix(".json") + ".pack.gguf")
        diff = pack_difference(res.pack, BehaviorPack.load(committed)) if committed.is_file() else float("nan")
        donor_gain = d_ad.expected_rate - d_off.expected_rate
        gain = tr.expected_rate - off.expected_rate
        rows.append({"config": path.stem, "score": res.pack.meta.get("transfer_score", float("nan")),
                     "gain_pts": 100 * gain, "donor_gain_pts": 100 * donor_gain,
                     "share": gain / donor_gain if donor_gain > 0 else float("nan"),
                     "n_expected": tr.n_expected, "pack_max_rel_diff": diff,
                     "edit_cos": [d.get("edit_cos") for d in res.diagnostics],
                     "norm_ratio": [d.get("norm_ratio") for d in res.diagnostics]})
        r = rows[-1]
        print(f"{path.stem}: score {r['score']:.3f}, gain {r['gain_pts']:+.0f} pts (share {r['share']:.2f}), "
              f"re-export vs committed pack {diff:.1e}", flush=True)
    ok = [r for r in rows if np.isfinite(r["score"]) and np.isfinite(r["share"])]
    rho = spearman([r["score"] for r in ok], [r["share"] for r in ok])
    rho_pts = spearman([r["score"] for r in ok], [r["gain_pts"] for r in ok])
    print(f"Spearman rho over {len(ok)} configurations: {rho:.3f} (vs points: {rho_pts:.3f})")
    write_results("transfer_score", {"transfer_score_spearman": (rho, "rho"),
                                     "transfer_score_spearman_points": (rho_pts, "rho"),
                                     "transfer_score_configs": (float(len(ok)), "configs")},
                  extra={"configs": rows})


if __name__ == "__main__":
    main()
