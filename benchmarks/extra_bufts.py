"""What llama.cpp's extra (repacked-weight) buffer types are worth on this CPU: prompt and decode tokens/s
with them on and off (``COMMANDV_EXTRA_BUFTS``), paired and alternating, medians and ratios.

Model loads turn them off only on CPUs with AMX (runtime/cpu.py); this measures what turning them off
always would cost on a CPU without AMX. Greedy tokens of both loads are compared too (a repack must not
change results beyond kernel rounding).

    python benchmarks/extra_bufts.py [--model smollm2-135m-instruct] [--rounds 6] [--tokens 64]

Writes ``benchmarks/results/extra_bufts.json``: ``prompt_tps_on``/``_off``, ``decode_tps_on``/``_off``,
``prompt_off_over_on``, ``decode_off_over_on`` (ratios of per-round paired values, median), ``greedy_match``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_results  # noqa: E402
from commandv.runtime import cpu  # noqa: E402
from commandv.runtime.engines.llama.engine import Recipient  # noqa: E402
from commandv.runtime.pack.policy import REFERENCE_PROMPTS  # noqa: E402


def _load(model: str, on: bool, threads: int) -> Recipient:
    os.environ[cpu.ENV_EXTRA_BUFTS] = "1" if on else "0"
    try:
        rec = Recipient(model, n_ctx=2048, n_threads=threads)
    finally:
        os.environ.pop(cpu.ENV_EXTRA_BUFTS, None)
    assert rec.model.extra_buffers is on
    return rec


def _one(rec: Recipient, ids: list[int], tokens: int) -> tuple[float, float, list[int]]:
    out = rec.generate_ids(ids, max_tokens=tokens, stop_at_eog=False)
    st = rec.last_stats
    return st.prompt_tps, st.decode_tps, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    recs = {True: _load(args.model, True, args.threads), False: _load(args.model, False, args.threads)}
    # a ~300-token prompt: long enough for the batched (repacked) matmul path that AMX CPUs crash in
    text = " ".join(REFERENCE_PROMPTS * 4)
    ids = recs[True].encode(text)
    for r in recs.values():  # warm-up
        _one(r, ids, 8)
    runs = {True: [], False: []}
    match, total = 0, 0
    for k in range(args.rounds):
        order = (True, False) if k % 2 == 0 else (False, True)
        got = {on: _one(recs[on], ids, args.tokens) for on in order}
        for on in (True, False):
            runs[on].append(got[on][:2])
        a, b = got[True][2], got[False][2]
        match += sum(x == y for x, y in zip(a, b))
        total += max(len(a), len(b))
        print(f"round {k + 1}/{args.rounds}: prompt {got[True][0]:.1f} vs {got[False][0]:.1f} tok/s (on/off), "
              f"decode {got[True][1]:.1f} vs {got[False][1]:.1f}", flush=True)
    med = {on: [statistics.median(v[i] for v in runs[on]) for i in (0, 1)] for on in runs}
    ratio = [statistics.median(off[i] / on[i] for on, off in zip(runs[True], runs[False])) for i in (0, 1)]
    figures = {
        "prompt_tps_on": (round(med[True][0], 1), "tokens/s"),
        "prompt_tps_off": (round(med[False][0], 1), "tokens/s"),
        "decode_tps_on": (round(med[True][1], 1), "tokens/s"),
        "decode_tps_off": (round(med[False][1], 1), "tokens/s"),
        "prompt_off_over_on": (round(ratio[0], 3), "ratio"),
        "decode_off_over_on": (round(ratio[1], 3), "ratio"),
        "greedy_match": (round(match / max(total, 1), 4), "fraction"),
    }
    info = cpu.cpu_info()
    path = write_results("extra_bufts", figures, extra={
        "model": args.model, "prompt_tokens": len(ids), "decode_tokens": args.tokens, "rounds": args.rounds,
        "threads": args.threads, "cpu_has_amx": info.has_amx, "rule_here": cpu.extra_buffers()[1],
        "cpu_flags": " ".join(sorted(info.flags))})
    for k, (v, u) in figures.items():
        print(f"{k}: {v} {u}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
