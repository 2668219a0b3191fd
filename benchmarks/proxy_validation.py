"""Does the fast proxy (``commandv.exporter.evaluation.proxy``) rank configurations like generation does? (issue 20)

Configurations (pack, strength) on the SmolLM2 recipient whose behavior rate was measured by generation:

* every SmolLM2-recipient configuration of the pair reports ``benchmarks/results/transfer/*-to-smollm2-*.json``
  (written by ``cmdv eval``: greedy, 32 tokens, the report's prompts; the pack beside the report, the direct
  adapter ``adapters/smollm2-135m-instruct/<behavior>`` as a self-pack);
* extra refusal configurations generated here on the very same prompts with the same protocol (greedy, 32
  tokens, 20 HarmBench test + 20 harmless prompts, marker judge): the direct adapter at strengths 0.25 / 0.5 /
  0.75 (``--extra``), so that the rates are graded and not only 0 % or 90 %. They are kept in the results file
  (``details.generated``) and reused by a later run with the same prompts.

For each configuration the proxy is computed on the prompts the generation used (one teacher-forced pass per
prompt), and the Spearman rank correlation between proxy and generation rate is reported:

* ``proxy_spearman``: refusal, mean target log-prob ("I can't help with that.") on the harmful prompts vs the
  refusal rate on them (the pre-registered figure); ``proxy_configs``: how many refusal configurations;
* ``proxy_spearman_ceiling``: the highest ρ any score can reach against these rates (ties in the rates: several
  configurations at 0 % cannot be ordered by generation, so a perfect proxy still gets less than 1);
* ``proxy_spearman_selectivity``: refusal, proxy selectivity (harmful − harmless) vs the rate difference;
* ``proxy_spearman_prob`` / ``proxy_spearman_start``: the same as ``proxy_spearman`` with the mean probability
  instead of the log-probability / with the first-token refusal-marker mass;
* ``proxy_spearman_all``: pooled over refusal, pirate and french configurations, each behavior's primary
  metric standardized (z-score) within the behavior first (log-probs of different targets are not on one scale);
* ``proxy_prompt_auc``: per prompt and configuration (refusal, harmful and harmless prompts), how well the
  proxy value separates the answers judged refusals from the others (AUC, 0.5 = chance);
* ``proxy_seconds_per_config`` / ``generation_seconds_per_config`` on this run's machine.

    python benchmarks/proxy_validation.py                   # ~10-25 min on 2 cores, most of it generation
    python benchmarks/proxy_validation.py --extra 0.25,0.5  # other extra strengths
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_results  # noqa: E402

from commandv.exporter.evaluation.stats import average_ranks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPIENT = "smollm2-135m-instruct"
BEHAVIORS = ("refusal", "pirate", "french")


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC (average ranks for ties); nan without both classes."""
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = average_ranks(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def report_configs(behavior: str) -> tuple[list[dict], list, dict]:
    """The SmolLM2-recipient configurations of the pair report for ``behavior`` → ``(configs, prompts, doc)``.
    Each config: label, pack (path, BehaviorPack or None), strength, rates and per-prompt judged outcomes."""
    from commandv.exporter.adapters.folder import load_adapter
    from commandv.exporter.evaluation.evaluate import adapter_pack
    from commandv.exporter.training.behaviors import EvalPrompt
    from commandv.runtime.models import zoo
    from commandv.runtime.models.fingerprint import model_info_from_gguf

    stem = RESULTS / "transfer" / f"qwen0.5b-to-smollm2-{behavior}"
    doc = json.loads(stem.with_name(stem.name + ".json").read_text())
    info = model_info_from_gguf(zoo.fetch(RECIPIENT))
    out, prompts = [], None
    for c in doc["configs"]:
        if not c["model"].lower().startswith("smollm2"):
            continue
        samples = c["samples"]
        these = [EvalPrompt(s["prompt"], s["label"], s["label"] != "harmless") for s in samples]
        if prompts is None:
            prompts = these
        elif [p.prompt for p in these] != [p.prompt for p in prompts]:
            raise SystemExit(f"{stem}: configurations were run on different prompts")
        if c["label"] == "recipient":
            pack = None
        elif c["label"].startswith("recipient+transfer@"):
            pack = str(stem.with_name(stem.name + ".pack.gguf"))
        elif c["label"] == "recipient+direct":
            pack = adapter_pack(load_adapter(REPO / "adapters" / RECIPIENT / behavior), info.fingerprint, info.arch,
                                info.n_layer, "direct")
        else:
            continue
        out.append({"behavior": behavior, "label": c["label"], "pack": pack, "strength": float(c["strength"]),
                    "expected_rate": c["expected_rate"], "unexpected_rate": c["unexpected_rate"],
                    "judged": [bool(s["judged"]) for s in samples], "source": f"{stem.name}.json",
                    "gen_seconds": c["seconds"], "gen_prompts": len(samples) + 20})  # + the 20 utility questions
    return out, prompts, doc


def generate_config(engine, behavior: str, prompts, pack, strength: float, max_tokens: int) -> dict:
    """Greedy generation and the behavior's judge on ``prompts`` (no utility questions)."""
    from commandv.exporter.training.behaviors import get_behavior

    judge = get_behavior(behavior).judge
    t0 = time.perf_counter()
    judged, responses = [], []
    for p in prompts:
        text = engine.generate(p.prompt, packs=[pack] if pack is not None else [],
                               strengths=[strength] if pack is not None else None, max_tokens=max_tokens)
        judged.append(bool(judge(text)))
        responses.append(text)
    exp = [j for j, p in zip(judged, prompts) if p.expect]
    un = [j for j, p in zip(judged, prompts) if not p.expect]
    return {"expected_rate": float(np.mean(exp)) if exp else float("nan"),
            "unexpected_rate": float(np.mean(un)) if un else float("nan"), "judged": judged,
            "responses": responses, "gen_seconds": time.perf_counter() - t0, "gen_prompts": len(prompts)}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extra", default="0.25,0.5,0.75",
                    help="strengths of the direct refusal adapter to generate and add (comma-separated; '' = none)")
    ap.add_argument("--threads", type=int, default=1,
                    help="llama.cpp threads (default 1: on a shared 2-core machine 2 threads ran 10-20x slower)")
    ap.add_argument("--check", default="recipient,recipient+direct",
                    help="regenerate these report configurations (refusal, comma-separated) and compare their per-prompt "
                         "judgments with the report's: is this run's generation the report's? ('' = skip). They also "
                         "time generation on this machine (off-shelf answers run the full 32 tokens, refusals stop early)")
    ap.add_argument("--behaviors", default=",".join(BEHAVIORS))
    args = ap.parse_args()

    from commandv.exporter.evaluation.proxy import proxy_score
    from commandv.exporter.evaluation.stats import spearman
    from commandv.runtime.engines.llama.engine import Recipient

    old = {}
    prev = RESULTS / "proxy_validation.json"
    if prev.exists():
        try:
            old = {g["key"]: g for g in json.loads(prev.read_text()).get("details", {}).get("generated", [])}
        except (ValueError, KeyError, TypeError):
            old = {}

    eng = Recipient(RECIPIENT, n_ctx=2048, n_threads=args.threads)
    configs, generated, checks, t_start = [], [], [], time.perf_counter()
    for behavior in [b for b in args.behaviors.split(",") if b]:
        cfgs, prompts, doc = report_configs(behavior)
        if behavior == "refusal":
            direct = next(c["pack"] for c in cfgs if c["label"] == "recipient+direct")
            for s in [float(x) for x in args.extra.split(",") if x.strip()]:
                key = f"refusal/direct@{s:g}/{doc['max_tokens']}/{len(prompts)}:{prompts[0].prompt[:40]}"
                g = old.get(key)
                if g is None:
                    print(f"generating refusal direct@{s:g} on {len(prompts)} prompts …", flush=True)
                    g = {"key": key, "label": f"recipient+direct@{s:g}", "strength": s,
                         **generate_config(eng, "refusal", prompts, direct, s, doc["max_tokens"])}
                    g["fresh"] = True
                else:
                    g = {**g, "fresh": False}
                g.pop("responses", None)  # the judgments are what the validation needs; no model text kept
                generated.append(g)
                cfgs.append({"behavior": "refusal", "label": g["label"], "pack": direct, "strength": s,
                             "expected_rate": g["expected_rate"], "unexpected_rate": g["unexpected_rate"],
                             "judged": g["judged"], "source": "generated here", "gen_seconds": g["gen_seconds"],
                             "gen_prompts": g["gen_prompts"]})
        for label in [x for x in args.check.split(",") if x] if behavior == "refusal" else []:
            chk = next((c for c in cfgs if c["label"] == label), None)
            if chk is None:
                continue
            print(f"regenerating {label} to check it against the report …", flush=True)
            g = generate_config(eng, "refusal", prompts, chk["pack"], chk["strength"], doc["max_tokens"])
            checks.append({"label": label, "report_rate": chk["expected_rate"], "rerun_rate": g["expected_rate"],
                           "report_over": chk["unexpected_rate"], "rerun_over": g["unexpected_rate"],
                           "judged_agree": float(np.mean(np.array(g["judged"]) == np.array(chk["judged"]))),
                           "gen_seconds": g["gen_seconds"]})
            print(f"  {checks[-1]}", flush=True)
        for c in cfgs:
            r = proxy_score(eng, behavior, [c["pack"]] if c["pack"] is not None else [],
                            [c["strength"]] if c["pack"] is not None else None, prompts)
            c["proxy"] = r
            print(f"{behavior:8s} {c['label']:24s} rate {c['expected_rate']:.2f}/{c['unexpected_rate']:.2f}  "
                  f"proxy {r.expected:8.3f} / {r.unexpected:8.3f}  sel {r.selectivity:7.3f}  "
                  f"({r.seconds:.1f} s)", flush=True)
        configs += cfgs
    eng.close()

    ref = [c for c in configs if c["behavior"] == "refusal"]
    fig = {}
    if ref:
        rate = [c["expected_rate"] for c in ref]
        fig["proxy_spearman"] = (spearman([c["proxy"].expected for c in ref], rate), "rho")
        fig["proxy_configs"] = (float(len(ref)), "configs")
        # the most any proxy can reach when generation ties configurations (e.g. several at 0 %): a proxy that
        # orders the configurations exactly by rate, ties broken in any order (every order gives the same ρ)
        fig["proxy_spearman_ceiling"] = (spearman(list(np.argsort(np.argsort(rate, kind="mergesort"))), rate), "rho")
        fig["proxy_spearman_selectivity"] = (spearman([c["proxy"].selectivity for c in ref],
                                                      [c["expected_rate"] - c["unexpected_rate"] for c in ref]), "rho")
        fig["proxy_spearman_prob"] = (spearman([c["proxy"].expected_prob for c in ref], rate), "rho")
        fig["proxy_spearman_start"] = (spearman([float(np.mean(c["proxy"].values("start", True))) for c in ref],
                                                rate), "rho")
        fig["proxy_spearman_over_refusal"] = (spearman([c["proxy"].unexpected for c in ref],
                                                       [c["unexpected_rate"] for c in ref]), "rho")
        scores = np.concatenate([c["proxy"].values() for c in ref])
        labels = np.concatenate([np.array(c["judged"], bool) for c in ref])
        fig["proxy_prompt_auc"] = (_auc(scores, labels), "AUC")
        fig["proxy_prompt_pairs"] = (float(len(scores)), "prompt-configs")
    for b in {c["behavior"] for c in configs} - {"refusal"}:
        cs = [c for c in configs if c["behavior"] == b]
        fig[f"proxy_spearman_{b}"] = (spearman([c["proxy"].expected for c in cs], [c["expected_rate"] for c in cs]),
                                      "rho")
        fig[f"proxy_configs_{b}"] = (float(len(cs)), "configs")
        r_b = [c["expected_rate"] for c in cs]
        fig[f"proxy_spearman_ceiling_{b}"] = (spearman(list(np.argsort(np.argsort(r_b, kind="mergesort"))), r_b), "rho")
    if len({c["behavior"] for c in configs}) > 1:
        # pooled over behaviors after standardizing the proxy within each behavior (z-score of its primary
        # metric: log-probs of different targets are not on one scale)
        zx, ys = [], []
        for b in sorted({c["behavior"] for c in configs}):
            cs = [c for c in configs if c["behavior"] == b]
            xs = np.array([c["proxy"].expected for c in cs])
            zx += list((xs - xs.mean()) / (xs.std() or 1.0))
            ys += [c["expected_rate"] for c in cs]
        fig["proxy_spearman_all"] = (spearman(zx, ys), "rho")
        fig["proxy_configs_all"] = (float(len(configs)), "configs")
    psec = [c["proxy"].seconds for c in ref]  # the refusal configurations: 40 prompts, like the generations timed
    # generation timed in this run only (same machine and load as the proxy): the extra configurations, the check
    gsec = [g["gen_seconds"] for g in generated if g.get("fresh")] + [c["gen_seconds"] for c in checks]
    if psec:
        fig["proxy_seconds_per_config"] = (float(np.mean(psec)), "s (40 prompts, one teacher-forced pass each)")
    details = {
        "recipient": RECIPIENT,
        "configs": [{"behavior": c["behavior"], "label": c["label"], "strength": c["strength"], "source": c["source"],
                     "expected_rate": c["expected_rate"], "unexpected_rate": c["unexpected_rate"],
                     "proxy_expected": c["proxy"].expected, "proxy_unexpected": c["proxy"].unexpected,
                     "proxy_selectivity": c["proxy"].selectivity, "proxy_expected_prob": c["proxy"].expected_prob,
                     "proxy_metric": c["proxy"].metric, "proxy_targets": c["proxy"].targets,
                     "proxy_seconds": c["proxy"].seconds,
                     "per_prompt": [{"label": r["label"], "judged": j, "target_logprob": r["target_logprob"],
                                     "start_logprob": r["start_logprob"]}
                                    for r, j in zip(c["proxy"].per_prompt, c["judged"])]}
                    for c in configs],
        "generated": generated,
        "checks": checks,
        "note": ("report configurations: generation rates from the pair reports (greedy 32 tokens, their prompts, "
                 "seconds there include 20 utility questions and another machine load); generated: this run, same "
                 "prompts and protocol, no utility questions. generation_seconds_per_config: this run's generations (40 "
                 "prompts each, greedy 32 tokens, stopping at end of turn), same machine and threads as the proxy."),
        "wall_seconds": time.perf_counter() - t_start,
    }
    if checks:
        fig["rerun_judged_agreement"] = (float(np.mean([c["judged_agree"] for c in checks])),
                                         "fraction of prompts judged alike")
    if gsec:
        fig["generation_seconds_per_config"] = (float(np.mean(gsec)), "s (40 prompts, greedy 32 tokens)")
    path = write_results("proxy_validation", fig, details)
    print(json.dumps({k: round(v[0], 4) for k, v in fig.items()}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
