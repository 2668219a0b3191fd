"""Collect the pair reports written by ``cmdv eval`` into ``benchmarks/results/transfer_eval.json``.

Each ``benchmarks/results/transfer/<pair>-<behavior>.json`` was produced by one command per pair, e.g.

    cmdv eval --donor qwen2.5-coder-0.5b-instruct --recipient smollm2-135m-instruct --behavior pirate \\
        --direct adapters/smollm2-135m-instruct/pirate --n 20 --strengths 1,2 --no-donor

This script only aggregates (figure names from issue 5: ``<pair>.offshelf_<b>``, ``.transferred_<b>``,
``.direct_<b>``, ``.recovered_gain``, ``.over_<b>_delta_pts`` …; issue 20 adds the sizes ``.n_harmful``,
``.n_harmless``, ``.n_utility_<b>``, the AdvBench held-out set ``.*_refusal_advbench``, ``.gain_pts_<b>``,
``.donor_share_<b>`` and, for every rate, difference and ratio, ``<name>_ci_low`` / ``<name>_ci_high``: Wilson
95 % for rates, paired bootstrap 95 % for differences; see ``PairReport.figures``). Reports written before
per-prompt outcomes were kept get the intervals their ``samples`` allow (behavior and over-refusal); the
others (utility) are absent, never guessed. ``transfer_score_spearman`` / ``transfer_score_configs`` (and the
response check's ``response_score_spearman``, ``response_score_configs``, ``response_first_token_spearman`` and its
``_configs``, ``_new`` and ``_configs_new``) are copied
from ``benchmarks/results/transfer_score.json`` (``python benchmarks/transfer_score.py``) when it exists.

    python benchmarks/transfer_eval.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_results  # noqa: E402


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help only; no options
    from commandv.exporter.evaluation.evaluate import PairReport

    figures, sources, partial = {}, [], []
    for f in sorted((RESULTS / "transfer").glob("*.json")):
        doc = json.loads(f.read_text())
        if "configs" not in doc:  # e.g. a cmdv diagnose report beside the pair reports
            continue
        rep = PairReport.from_json(doc)
        figures.update(rep.figures())
        sources.append(str(f.relative_to(RESULTS.parent.parent)))
        if not all(c.outcomes for c in rep.configs):
            partial.append(sources[-1])
    if not figures:
        raise SystemExit("no pair reports in benchmarks/results/transfer/ (run `cmdv eval` first)")
    score = RESULTS / "transfer_score.json"  # benchmarks/transfer_score.py: the score's rank correlation
    if score.is_file():
        score_figures = json.loads(score.read_text())["figures"]
        for name in ("transfer_score_spearman", "transfer_score_configs", "transfer_score_spearman_share",
                     "transfer_score_spearman_with_methods", "transfer_score_configs_with_methods",
                     "response_score_spearman", "response_score_configs", "response_first_token_spearman",
                     "response_first_token_configs", "response_first_token_spearman_new",
                     "response_first_token_configs_new"):
            v = score_figures.get(name)
            if v:
                figures[name] = (v["value"], v["unit"])
    extra = {"reports": sources}
    if partial:
        extra["reports_without_per_prompt_outcomes"] = partial  # utility intervals absent for these
    write_results("transfer_eval", figures, extra)
    print(json.dumps({k: round(v[0], 4) for k, v in figures.items()}, indent=1))


if __name__ == "__main__":
    main()
