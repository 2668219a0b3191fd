"""Profiling speed and memory: GGUF (llama.cpp) vs HF (transformers fp32) backends, paired.

Same model (SmolLM2-135M-Instruct: the Q4_1 GGUF and its dequantized HF copy),
same prompts, each backend with its own best setting (HF: batches of ``--batch``
with left padding; GGUF: ``capture_gguf``'s default, one prompt at a time with
the shared chat-template prefix decoded once — ``--gguf-batch`` > 1 batches
instead). Both models are loaded and warmed up off the clock; the clock covers chat-template
rendering, tokenization and capture. Each run is a fresh subprocess (so peak RSS is its own); runs
alternate hf, gguf, hf, gguf, …; figures are medians. Also the per-layer
agreement of the two profiles (mean cosine over prompts, min over layers).

    python benchmarks/profile_speed.py [--prompts 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

MODEL = "smollm2-135m-instruct"


def worker(backend: str, n: int, out: str, batch: int) -> None:
    """One timed capture in this process; prints seconds, prompts/s (wall and per CPU-second) and peak RSS."""
    from commandv.profiles.prompts import load_prompt_set
    from commandv.runtime.models import zoo

    prompts = load_prompt_set("general", limit=n).prompts
    if backend == "hf":
        from commandv.profiles.capture_hf import capture_hf
        from commandv.profiles.hf_models import load_hf_model

        model, tok, _ = load_hf_model(MODEL, progress=False)
        capture_hf(model, tok, prompts[:4], batch_size=4, progress=False)  # warm-up
        c0, t0 = time.process_time(), time.perf_counter()
        res = capture_hf(model, tok, prompts, batch_size=batch, progress=False)
    else:
        from commandv.profiles.capture_gguf import capture_gguf
        from commandv.runtime.engines.llama.lowlevel import LlamaModel

        model = LlamaModel(zoo.path(MODEL))  # loaded off the clock, like the HF model
        capture_gguf(model, prompts[:4], batch_prompts=batch, progress=False)  # warm-up
        c0, t0 = time.process_time(), time.perf_counter()
        res = capture_gguf(model, prompts, batch_prompts=batch, progress=False)
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    np.savez(out, *res.layers)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"seconds": secs, "prompts_per_s": n / secs, "prompts_per_cpu_s": n / cpu, "peak_rss_gb": rss,
                      "tokens": int(sum(res.token_counts))}))


def run_worker(backend: str, n: int, out: Path, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", backend, "--prompts", str(n), "--out", str(out), "--batch", str(batch)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{backend} worker failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="HF batch size (and the worker's batch)")
    ap.add_argument("--gguf-batch", type=int, default=1, help="GGUF prompts per llama_decode (1 = prefix reuse)")
    ap.add_argument("--worker", choices=["hf", "gguf"])
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.prompts, args.out, args.batch)
        return
    from commandv.runtime.models import zoo

    zoo.fetch(MODEL)
    runs: dict[str, list[dict]] = {"hf": [], "gguf": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for backend in (("hf", "gguf") if r % 2 == 0 else ("gguf", "hf")):
                batch = args.batch if backend == "hf" else args.gguf_batch
                res = run_worker(backend, args.prompts, Path(tmp) / f"{backend}.npz", batch)
                runs[backend].append(res)
                print(backend, res, flush=True)
        hf = np.load(Path(tmp) / "hf.npz")
        gg = np.load(Path(tmp) / "gguf.npz")
        cos = []
        for k in hf.files:
            a, b = hf[k].astype(np.float64), gg[k].astype(np.float64)
            c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            cos.append(float(c.mean()))
    med = lambda b, k: float(np.median([x[k] for x in runs[b]]))  # noqa: E731
    hf_s, gg_s = med("hf", "prompts_per_s"), med("gguf", "prompts_per_s")
    figures = {
        "hf_prompts_per_s": (hf_s, "prompts/s"),
        "gguf_prompts_per_s": (gg_s, "prompts/s"),
        "gguf_over_hf_speedup": (gg_s / hf_s, "x"),
        "gguf_over_hf_speedup_paired_median": (float(np.median(
            [g["prompts_per_s"] / h["prompts_per_s"] for g, h in zip(runs["gguf"], runs["hf"])])), "x"),
        "gguf_over_hf_cpu_speedup": (med("gguf", "prompts_per_cpu_s") / med("hf", "prompts_per_cpu_s"), "x"),
        "hf_peak_rss_gb": (med("hf", "peak_rss_gb"), "GiB"),
        "gguf_peak_rss_gb": (med("gguf", "peak_rss_gb"), "GiB"),
        "hf_gguf_min_layer_cosine": (min(cos), "cosine"),
    }
    n_l = len(cos)
    thirds = {f"layers {a}-{b - 1}": float(np.mean(cos[a:b])) for a, b in
              ((0, n_l // 3), (n_l // 3, 2 * n_l // 3), (2 * n_l // 3, n_l))}
    print({k: round(v[0], 4) for k, v in figures.items()}, thirds)
    write_results("profile_speed", figures, {"model": MODEL, "prompts": args.prompts, "rounds": args.rounds,
                                             "batch": args.batch, "gguf_batch": args.gguf_batch, "per_layer_cosine": cos,
                                             "mean_cosine_by_layer_range": thirds, "runs": runs})


if __name__ == "__main__":
    main()
