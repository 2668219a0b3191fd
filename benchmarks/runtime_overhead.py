"""Runtime overhead of a behavior pack in the llama.cpp engine.

Same GGUF (SmolLM2-135M Q4_1 by default), same prompts, ALTERNATING runs
without and with a pack (a random rank-8 pack on every 2nd layer, edit norm
≈ ``--rel-norm`` × the residual norm; order flipped every repetition):
prompt tokens/s and decode tokens/s (fixed ``--tokens`` decoded per run, EOG
ignored), their medians and ratio. Overhead = median plain tokens/s ÷ median
pack tokens/s − 1 (also the median of the adjacent pairs' ratios, which
cancels slow drifts of a shared machine), from wall time and from process CPU
time (``*_cpu_*``: tokens per CPU second, far less sensitive to other load on
the machine; with ``--threads 1`` it is the compute cost). Peak RSS without / with the pack
comes from two separate subprocesses. A third variant runs the same code on a
context with no eval callback at all (stock llama.cpp, ``*_vs_vanilla``). The Python fallback callback is measured
too (``--python-reps``) to show why the callback is in C.

    python benchmarks/runtime_overhead.py [--model smollm2-135m-instruct] [--prompts 12] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
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
    from commandv.runtime.pack import BehaviorPack, PackEntry

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
    return st.prompt_tps, st.decode_tps, st.n_prompt / st.prompt_cpu_s, st.n_decoded / st.decode_cpu_s


class Vanilla:
    """The same Recipient code path on a context WITHOUT any eval callback (stock llama.cpp)."""

    def __init__(self, rec, threads):
        from commandv.runtime.llama_edit import PyEditor
        from commandv.runtime.llama_lowlevel import LlamaContext

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


def measure(rec, prompts_ids, pack, reps, tokens, label, vanilla=None):
    """Alternate the variants (order rotated per run) → medians of prompt / decode tokens/s and overheads."""
    from rich.progress import Progress

    variants = {"plain": lambda ids: _run(rec, ids, [], tokens), "pack": lambda ids: _run(rec, ids, [pack], tokens)}
    if vanilla is not None:
        variants["vanilla"] = lambda ids: vanilla.run(ids, tokens)
    names = list(variants)
    res = {n: ([], [], [], []) for n in names}
    with Progress(transient=True) as prog:
        task = prog.add_task(label, total=reps * len(prompts_ids))
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
    a = {n: [np.asarray(v) for v in vals] for n, vals in res.items()}
    kinds = ("prompt", "decode", "prompt_cpu", "decode_cpu")  # tokens/s of wall time; tokens per CPU second
    out = {"runs_per_variant": int(a["plain"][0].size)}
    for n in names:
        for j, kind in enumerate(kinds):
            out[f"{kind}_tps_{n}"] = float(np.median(a[n][j]))
    for base in [b for b in ("plain", "vanilla") if b in a]:
        suf = "" if base == "plain" else "_vs_vanilla"
        for j, kind in enumerate(kinds):
            out[f"{kind}_overhead_pct{suf}"] = 100 * (out[f"{kind}_tps_{base}"] / out[f"{kind}_tps_pack"] - 1)
            out[f"{kind}_overhead_pct{suf}_paired"] = float(100 * (np.median(a[base][j] / a["pack"][j]) - 1))
    return out


def rss_child(model: str, pack_file: str | None, prompts: list[str], tokens: int, threads: int | None) -> None:
    """Subprocess body: load, run every prompt once (with the pack file if given), print peak RSS in MiB."""
    from commandv.runtime.llama_engine import Recipient

    rec = Recipient(model, n_ctx=2048, n_threads=threads)
    packs = rec.load_packs([pack_file]) if pack_file else []
    for p in prompts:
        rec.generate_ids(rec.encode(p), packs, max_tokens=tokens, stop_at_eog=False)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "native": rec.native}))


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
    ap.add_argument("--python-reps", type=int, default=1, help="repetitions for the Python-callback variant (0: skip)")
    ap.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child is not None:
        cfg = json.loads(args.rss_child)
        rss_child(args.model, cfg["pack"], cfg["prompts"], args.tokens, cfg["threads"])
        return

    from commandv.profiles.prompts import load_prompt_set
    from commandv.runtime.llama_engine import Recipient

    prompts = load_prompt_set("general", limit=args.prompts).prompts
    rec = Recipient(args.model, n_ctx=2048, n_threads=args.threads)
    pack = calibrated_pack(rec, rel_norm=args.rel_norm)
    ids = [rec.encode(p) for p in prompts]
    for i in ids[:2]:  # warm-up
        _run(rec, i, [pack], 4)
    vanilla = Vanilla(rec, args.threads)
    native = measure(rec, ids, pack, args.reps, args.tokens, "C callback", vanilla)
    vanilla.ctx.free()
    print("C callback:", {k: round(v, 2) for k, v in native.items()}, flush=True)
    details = {"model": args.model, "file": str(rec.path), "n_layer": rec.n_layer, "d_model": rec.d_model,
               "pack": {"entries": len(pack.entries), "layers": pack.layers, "rank": 8, "pq_rank": 8,
                        "rel_norm": args.rel_norm},
               "prompts": len(prompts), "mean_prompt_tokens": float(np.mean([len(i) for i in ids])),
               "decode_tokens_per_run": args.tokens, "reps": args.reps, "threads": args.threads,
               "native_callback": rec.native, "c_callback": native}
    rec.close()
    if args.python_reps > 0:
        py = Recipient(args.model, n_ctx=2048, n_threads=args.threads, native=False)
        pyres = measure(py, ids, pack, args.python_reps, args.tokens, "Python callback")
        print("Python callback:", {k: round(v, 2) for k, v in pyres.items()}, flush=True)
        details["python_callback"] = pyres
        py.close()
    with tempfile.TemporaryDirectory() as tmp:
        pf = str(pack.save(Path(tmp) / "bench.pack.gguf"))
        rss_plain = _rss(args, None, prompts[:4])
        rss_pack = _rss(args, pf, prompts[:4])
    details["rss"] = {"plain": rss_plain, "pack": rss_pack}
    figures = {
        "decode_overhead_pct": (native["decode_overhead_pct"], "%"),
        "prompt_overhead_pct": (native["prompt_overhead_pct"], "%"),
        "decode_overhead_pct_paired": (native["decode_overhead_pct_paired"], "%"),
        "prompt_overhead_pct_paired": (native["prompt_overhead_pct_paired"], "%"),
        "decode_tps_plain": (native["decode_tps_plain"], "tokens/s"),
        "decode_tps_pack": (native["decode_tps_pack"], "tokens/s"),
        "decode_tps_vanilla": (native["decode_tps_vanilla"], "tokens/s"),
        "decode_overhead_pct_vs_vanilla": (native["decode_overhead_pct_vs_vanilla"], "%"),
        "prompt_overhead_pct_vs_vanilla": (native["prompt_overhead_pct_vs_vanilla"], "%"),
        "prompt_tps_vanilla": (native["prompt_tps_vanilla"], "tokens/s"),
        "prompt_tps_plain": (native["prompt_tps_plain"], "tokens/s"),
        "prompt_tps_pack": (native["prompt_tps_pack"], "tokens/s"),
        "decode_cpu_overhead_pct": (native["decode_cpu_overhead_pct"], "%"),
        "prompt_cpu_overhead_pct": (native["prompt_cpu_overhead_pct"], "%"),
        "decode_cpu_overhead_pct_vs_vanilla": (native["decode_cpu_overhead_pct_vs_vanilla"], "%"),
        "prompt_cpu_overhead_pct_vs_vanilla": (native["prompt_cpu_overhead_pct_vs_vanilla"], "%"),
        "rss_plain_mb": (rss_plain["peak_rss_mb"], "MiB"),
        "rss_pack_mb": (rss_pack["peak_rss_mb"], "MiB"),
        "rss_overhead_mb": (rss_pack["peak_rss_mb"] - rss_plain["peak_rss_mb"], "MiB"),
    }
    if "python_callback" in details:
        figures["python_callback_decode_overhead_pct"] = (details["python_callback"]["decode_overhead_pct"], "%")
        figures["python_callback_decode_tps_plain"] = (details["python_callback"]["decode_tps_plain"], "tokens/s")
        figures["python_vs_c_plain_decode_cpu_pct"] = (
            100 * (native["decode_cpu_tps_plain"] / details["python_callback"]["decode_cpu_tps_plain"] - 1), "%")
    path = write_results("runtime_overhead", figures, details)
    print({k: round(v[0], 2) for k, v in figures.items()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
