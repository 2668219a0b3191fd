"""Runtime overhead of a behavior pack in the llama.cpp engine.

Same GGUF (SmolLM2-135M Q4_1 by default), same prompts, ALTERNATING runs
(order rotated and reversed from prompt to prompt) of these variants:

* ``vanilla``: the same code on a context with no eval callback (stock llama.cpp);
* ``plain`` / ``pack``: the engine's C callback without / with a pack (a random
  rank-8 pack on every 2nd layer, edit norm ≈ ``--rel-norm`` × the residual norm);
* ``py_plain`` / ``py_pack``: the same with the Python fallback callback.

Per run: prompt tokens/s (clocked from the request's start: pack checks and
edit preparation included, as the wait for the first token) and decode
tokens/s (``--tokens`` decoded, EOG ignored), from wall time and from process CPU time (``*_cpu_*``: tokens per
CPU second, much less sensitive to other load on a shared machine; with
``--threads 1`` it is the compute cost). Overhead = median base tokens/s ÷
median pack tokens/s − 1, plus the median of the adjacent pairs' ratios
(``*_paired``). Peak RSS (and RSS at the end) without / with the pack comes
from two separate subprocesses.

    python benchmarks/runtime_overhead.py [--model smollm2-135m-instruct] [--prompts 10] [--reps 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402


def calibrated_pack(rec, rank: int = 8, layer_step: int = 2, rel_norm: float = 0.2, seed: int = 0):
    """Random rank-``rank`` pack (linear A,b,C plus a rank-``rank`` P/Q term) on every ``layer_step``-th layer,
    scaled so ``|delta(h)| ≈ rel_norm·|h|`` on the last token of a calibration prompt."""
    from commandv.runtime.pack.model import BehaviorPack, PackEntry

    rng = np.random.default_rng(seed)
    d = rec.d_model
    _, hid = rec.prompt_pass(rec.encode("Describe a quiet morning by the sea."), record_layers=True)
    entries = []
    for layer in range(0, rec.n_layer, layer_step):
        h = hid[layer][-1:].astype(np.float64)
        A = rng.standard_normal((d, rank)) / np.sqrt(d)
        C = rng.standard_normal((rank, d))
        P = rng.standard_normal((d, rank)) / np.sqrt(d)
        Q = rng.standard_normal((rank, d))
        b = 0.1 * rng.standard_normal(rank)
        raw = np.linalg.norm((h @ A + b) @ C - (h @ P) @ Q)
        k = rel_norm * np.linalg.norm(h) / max(raw, 1e-9)
        f = lambda x: np.asarray(x, np.float32)  # noqa: E731
        entries.append(PackEntry(layer=layer, A=f(A), b=f(b), C=f(k * C), P=f(P), Q=f(k * Q), act="linear"))
    return BehaviorPack(entries=entries, name="bench-random-r8",
                        recipient=dict(fingerprint=rec.fingerprint, arch=rec.arch, n_layer=rec.n_layer,
                                       d_model=d, name=rec.info.name))


def _run(rec, ids, packs, tokens):
    rec.generate_ids(ids, packs, max_tokens=tokens, stop_at_eog=False)
    st = rec.last_stats
    return st.prompt_tps, st.decode_tps, st.prompt_cpu_tps, st.n_decoded / st.decode_cpu_s  # prompt: preparation included


class Vanilla:
    """The same Recipient code path on a context WITHOUT any eval callback (stock llama.cpp)."""

    def __init__(self, rec, threads):
        from commandv.runtime.engines.llama.editor import PyEditor
        from commandv.runtime.engines.llama.lowlevel import LlamaContext

        self.rec = rec
        self.ctx = LlamaContext(rec.model, n_ctx=rec.n_ctx, n_batch=rec.n_ubatch, n_ubatch=rec.n_ubatch,
                                n_threads=threads)
        self.editor = PyEditor(rec.d_model, rec.n_layer)  # never called by C: no callback installed

    def run(self, ids, tokens):
        saved = self.rec.ctx, self.rec.editor
        self.rec.ctx, self.rec.editor = self.ctx, self.editor
        try:
            return _run(self.rec, ids, [], tokens)
        finally:
            self.rec.ctx, self.rec.editor = saved


KINDS = ("prompt", "decode", "prompt_cpu", "decode_cpu")  # tokens/s of wall time; tokens per CPU second


def measure(variants: dict, prompts_ids, reps: int) -> dict:
    """Run every variant on every prompt, alternating (order rotated and reversed per prompt);
    return per-variant medians ``{kind}_tps_{variant}`` and the raw arrays."""
    from rich.progress import Progress

    names = list(variants)
    res = {n: [[] for _ in KINDS] for n in names}
    with Progress(transient=True) as prog:
        task = prog.add_task("alternating runs", total=reps * len(prompts_ids))
        for rep in range(reps):
            for i, ids in enumerate(prompts_ids):
                k = (rep * len(prompts_ids) + i) % len(names)
                order = names[k:] + names[:k]
                if (rep + i) % 2:
                    order = order[::-1]
                for n in order:
                    for j, v in enumerate(variants[n](ids)):
                        res[n][j].append(v)
                prog.advance(task)
    raw = {n: [np.asarray(v) for v in vals] for n, vals in res.items()}
    med = {f"{kind}_tps_{n}": float(np.median(raw[n][j])) for n in names for j, kind in enumerate(KINDS)}
    return {"medians": med, "raw": raw, "runs_per_variant": reps * len(prompts_ids)}


def overheads(m: dict, base: str, test: str, suffix: str) -> dict:
    """Overhead of ``test`` over ``base`` in % (median tokens/s ratio, and median of the paired ratios)."""
    out = {}
    for j, kind in enumerate(KINDS):
        b, t = m["medians"][f"{kind}_tps_{base}"], m["medians"][f"{kind}_tps_{test}"]
        out[f"{kind}_overhead_pct{suffix}"] = 100 * (b / t - 1)
        out[f"{kind}_overhead_pct{suffix}_paired"] = float(100 * (np.median(m["raw"][base][j] / m["raw"][test][j]) - 1))
    return out


def rss_child(model: str, pack_file: str | None, prompts: list[str], tokens: int, threads: int | None) -> None:
    """Subprocess body: load, run every prompt once (with the pack file if given), print peak RSS in MiB."""
    from commandv.runtime.engines.llama.engine import Recipient

    rec = Recipient(model, n_ctx=2048, n_threads=threads)
    packs = rec.load_packs([pack_file]) if pack_file else []
    for p in prompts:
        rec.generate_ids(rec.encode(p), packs, max_tokens=tokens, stop_at_eog=False)
    end = next((int(ln.split()[1]) / 1024 for ln in Path("/proc/self/status").read_text().splitlines()
                if ln.startswith("VmRSS:")), float("nan"))
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "end_rss_mb": end,
                      "native": rec.native}))


def _rss(args, pack_file: str | None, prompts: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--model", args.model, "--tokens", str(args.tokens), "--rss-child",
           json.dumps({"pack": pack_file, "prompts": prompts, "threads": args.threads})]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32, help="tokens decoded per run")
    ap.add_argument("--rel-norm", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-python", dest="python", action="store_false",
                    help="skip the Python-callback variants")
    ap.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child is not None:
        cfg = json.loads(args.rss_child)
        rss_child(args.model, cfg["pack"], cfg["prompts"], args.tokens, cfg["threads"])
        return

    from commandv.profiles.prompts import load_prompt_set
    from commandv.runtime.engines.llama.engine import Recipient

    prompts = load_prompt_set("general", limit=args.prompts).prompts
    rec = Recipient(args.model, n_ctx=2048, n_threads=args.threads)
    pack = calibrated_pack(rec, rel_norm=args.rel_norm)
    ids = [rec.encode(p) for p in prompts]
    vanilla = Vanilla(rec, args.threads)
    variants = {"vanilla": lambda i: vanilla.run(i, args.tokens),
                "plain": lambda i: _run(rec, i, [], args.tokens),
                "pack": lambda i: _run(rec, i, [pack], args.tokens)}
    py = None
    if args.python:
        py = Recipient(args.model, n_ctx=2048, n_threads=args.threads, native=False)
        variants["py_plain"] = lambda i: _run(py, i, [], args.tokens)
        variants["py_pack"] = lambda i: _run(py, i, [pack], args.tokens)
    for i in ids[:2]:  # warm-up
        for fn in variants.values():
            fn(i[:8])
    m = measure(variants, ids, args.reps)
    res = {**m["medians"], **overheads(m, "plain", "pack", ""), **overheads(m, "vanilla", "pack", "_vs_vanilla")}
    if py is not None:
        res.update(overheads(m, "vanilla", "py_plain", "_py_callback_idle_vs_vanilla"))
        res.update(overheads(m, "vanilla", "py_pack", "_py_callback_pack_vs_vanilla"))
    print({k: round(v, 2) for k, v in res.items()}, flush=True)
    details = {"model": args.model, "file": str(rec.path), "n_layer": rec.n_layer, "d_model": rec.d_model,
               "pack": {"entries": len(pack.entries), "layers": pack.layers, "rank": 8, "pq_rank": 8,
                        "rel_norm": args.rel_norm},
               "prompts": len(prompts), "mean_prompt_tokens": float(np.mean([len(i) for i in ids])),
               "decode_tokens_per_run": args.tokens, "reps": args.reps, "runs_per_variant": m["runs_per_variant"],
               "threads": args.threads or os.cpu_count(), "native_callback": rec.native,
               "variants": {"vanilla": "no eval callback (stock llama.cpp)", "plain": "C callback, no pack",
                            "pack": "C callback, pack applied", "py_plain": "Python callback, no pack",
                            "py_pack": "Python callback, pack applied"},
               "results": res}
    vanilla.ctx.free()
    rec.close()
    if py is not None:
        py.close()
    with tempfile.TemporaryDirectory() as tmp:
        pf = str(pack.save(Path(tmp) / "bench.pack.gguf"))
        rss_plain = _rss(args, None, prompts[:4])
        rss_pack = _rss(args, pf, prompts[:4])
    details["rss"] = {"plain": rss_plain, "pack": rss_pack}
    keys = ["decode_overhead_pct", "prompt_overhead_pct", "decode_overhead_pct_paired", "prompt_overhead_pct_paired",
            "decode_cpu_overhead_pct", "prompt_cpu_overhead_pct",
            "decode_overhead_pct_vs_vanilla", "prompt_overhead_pct_vs_vanilla",
            "decode_cpu_overhead_pct_vs_vanilla", "prompt_cpu_overhead_pct_vs_vanilla"]
    figures = {k: (res[k], "%") for k in keys}
    for n in ("vanilla", "plain", "pack"):
        for kind in ("prompt", "decode"):
            figures[f"{kind}_tps_{n}"] = (res[f"{kind}_tps_{n}"], "tokens/s")
    if py is not None:
        for k in ("decode_overhead_pct_py_callback_idle_vs_vanilla",
                  "decode_cpu_overhead_pct_py_callback_idle_vs_vanilla",
                  "prompt_overhead_pct_py_callback_pack_vs_vanilla"):
            figures[k] = (res[k], "%")
    figures["rss_plain_mb"] = (rss_plain["peak_rss_mb"], "MiB")
    figures["rss_pack_mb"] = (rss_pack["peak_rss_mb"], "MiB")
    figures["rss_overhead_mb"] = (rss_pack["peak_rss_mb"] - rss_plain["peak_rss_mb"], "MiB")
    figures["rss_end_overhead_mb"] = (rss_pack["end_rss_mb"] - rss_plain["end_rss_mb"], "MiB")
    path = write_results("runtime_overhead", figures, details)
    print({k: round(v[0], 2) for k, v in figures.items()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
