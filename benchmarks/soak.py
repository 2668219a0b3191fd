"""Soak: many requests with alternating packs on one loaded llama.cpp model.

One :class:`~commandv.runtime.engines.llama.engine.Recipient` serves ``--requests``
greedy requests in a row, cycling through packs (two calibrated random packs,
the two together at other strengths, and no pack) and prompts. Every output
must equal the output of a *fresh* Recipient given the same request (reference
outputs computed first, one new model+context per distinct request). Resident
memory (RSS) is sampled after a warm-up and at the end: growth beyond noise
would mean the per-request pack loading or the C callback leaks.

Figures: ``requests``, ``mismatches`` (outputs differing from a fresh run),
``rss_growth_mb`` (end − after warm-up), ``rss_after_warmup_mb``, ``requests_per_s``.

    python benchmarks/soak.py [--model smollm2-135m-instruct] [--requests 500] [--tokens 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPTS = (
    "Tell me something nice about rivers.",
    "What should I cook tonight?",
    "Name a planet and one fact about it.",
    "How do I tie a bowline knot?",
    "Give me a word that rhymes with light.",
)


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc; psutil elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def make_requests(pack_paths: list[Path], n: int) -> list[tuple[str, tuple[str, ...], tuple[float, ...]]]:
    """``n`` requests ``(prompt, pack paths, strengths)`` cycling packs and prompts (different periods)."""
    a, b = (str(p) for p in pack_paths)
    variants = [((a,), (1.0,)), ((b,), (1.0,)), ((), ()), ((a, b), (0.5, 1.5)), ((b,), (2.0,)), ((a,), (0.7,))]
    return [(PROMPTS[i % len(PROMPTS)],) + variants[i % len(variants)] for i in range(n)]


def run_soak(model: str | os.PathLike, requests: int = 500, tokens: int = 8, workdir: Path | None = None,
             n_ctx: int = 512, threads: int | None = None, warmup: int = 30, progress: bool = True) -> dict:
    """Run the soak; returns a dict of figures and per-request mismatches (see module doc)."""
    from runtime_overhead import calibrated_pack

    from commandv.runtime.engines.llama.engine import Recipient
    from commandv.runtime.pack.policy import PackPolicy
    from commandv.runtime.progress import progress_bar

    workdir = Path(workdir or tempfile.mkdtemp(prefix="cmdv-soak-"))
    off = PackPolicy("off")
    with Recipient(model, n_ctx=n_ctx, n_threads=threads, policy=off) as r:
        paths = [calibrated_pack(r, rank=4, layer_step=3, rel_norm=0.3, seed=s).save(workdir / f"p{s}.gguf")
                 for s in (1, 2)]
    reqs = make_requests(paths, requests)
    fresh: dict = {}
    for req in dict.fromkeys(reqs):  # distinct requests, each on a brand-new model + context
        with Recipient(model, n_ctx=n_ctx, n_threads=threads, policy=off) as r:
            fresh[req] = r.generate(req[0], packs=list(req[1]), strengths=list(req[2]) or None, max_tokens=tokens)
    mismatches = []
    rss_warm = None
    t0 = time.perf_counter()
    with Recipient(model, n_ctx=n_ctx, n_threads=threads, policy=off) as r, \
            progress_bar("soak requests", len(reqs), enabled=progress, unit="requests") as advance:
        for i, req in enumerate(reqs):
            out = r.generate(req[0], packs=list(req[1]), strengths=list(req[2]) or None, max_tokens=tokens)
            advance(1)
            if out != fresh[req]:
                mismatches.append({"request": i, "packs": [Path(p).name for p in req[1]], "got": out,
                                   "fresh": fresh[req]})
            if i + 1 == min(warmup, len(reqs)):
                rss_warm = rss_mb()
                t0 = time.perf_counter()
        rss_end = rss_mb()
    n_timed = max(len(reqs) - min(warmup, len(reqs)), 1)
    return {
        "requests": len(reqs),
        "distinct_requests": len(fresh),
        "mismatches": mismatches,
        "rss_after_warmup_mb": rss_warm,
        "rss_end_mb": rss_end,
        "rss_growth_mb": rss_end - rss_warm,
        "requests_per_s": n_timed / (time.perf_counter() - t0),
        "distinct_outputs": len(set(fresh.values())),
    }


def main() -> None:
    from _common import write_results

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    res = run_soak(args.model, args.requests, args.tokens, threads=args.threads)
    print(f"{res['requests']} requests ({res['distinct_requests']} distinct, {res['distinct_outputs']} distinct "
          f"outputs): {len(res['mismatches'])} differ from a fresh run; RSS {res['rss_after_warmup_mb']:.1f} → "
          f"{res['rss_end_mb']:.1f} MiB ({res['rss_growth_mb']:+.1f}); {res['requests_per_s']:.2f} requests/s")
    write_results("soak", {
        "requests": (res["requests"], "requests"),
        "mismatches": (len(res["mismatches"]), "requests"),
        "rss_growth_mb": (round(res["rss_growth_mb"], 2), "MiB"),
        "rss_after_warmup_mb": (round(res["rss_after_warmup_mb"], 1), "MiB"),
        "requests_per_s": (round(res["requests_per_s"], 3), "requests/s"),
    }, extra={"model": args.model, "tokens": args.tokens, "mismatch_examples": res["mismatches"][:5]})


if __name__ == "__main__":
    main()
