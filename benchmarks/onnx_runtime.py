"""Behavior packs on ONNX Runtime: parity with the torch reference, pack overhead, quantized variants, vs llama.cpp.

SmolLM2-135M-Instruct (the zoo's Q4_1 GGUF; ONNX exports are made from its
dequantized fp32 HF copy with ``cmdv onnx export``, cached). Steps:

1. **parity**: the fp32 pack-inputs export vs the torch reference engine with a
   calibrated random pack (rank 8 + P·Q rank 8 on every 2nd layer, edit norm ≈
   ``--rel-norm`` × residual norm, as ``runtime_overhead.py``): max relative error
   (max|Δ|/max|ref|) of the logits and of every edited block output over
   ``--parity-prompts`` prompts, and whether greedy continuations are identical.
2. **quantized variants**: int8 / int4 exports (and, for context, llama.cpp on
   the Q4_1 GGUF) vs the fp32 export, greedy (``--tokens`` tokens, EOG ignored)
   with the pack: share of identical continuations, mean matching-prefix
   fraction, first-token agreement; file sizes. Note: the fp32 weights are the
   dequantized Q4_1 GGUF, so llama.cpp's Q4_1 re-creates them exactly, while
   ONNX Runtime's 4-bit grid (integer zero point) does not line up with it.
3. **speed**: ALTERNATING runs (order rotated and reversed per prompt) of
   ``plain`` (fp32 export without pack sites), ``idle`` (fp32 pack-inputs export,
   no pack), ``pack`` (same file, pack applied), ``baked`` (pack baked in),
   ``int8_pack``, ``int4_pack`` and llama.cpp's ``llama_plain`` / ``llama_pack`` on
   the Q4_1 GGUF; overheads as ``runtime_overhead.py`` (median ratio and median of
   paired ratios). One thread per engine by default (``--threads``).

    python benchmarks/onnx_runtime.py [--prompts 8] [--reps 2] [--tokens 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402
from runtime_overhead import _run, calibrated_pack, measure, overheads  # noqa: E402

MODEL = "smollm2-135m-instruct"


def _export(quant: str, **kw) -> Path:
    """The cached export of MODEL (made once), or a fresh one with options ``kw`` (e.g. ``out=``, ``packs=``)."""
    from commandv.exporter.onnx.export import export_onnx
    from commandv.runtime.engines.onnx.files import find_onnx_model
    from commandv.runtime.engines.onnx.surgery import OnnxModelError

    if kw:
        return export_onnx(MODEL, quant=quant, progress=False, **kw).model_path
    try:
        return find_onnx_model(MODEL, quant)
    except OnnxModelError:
        return export_onnx(MODEL, quant=quant, progress=False).model_path


def parity(rec, pack, prompts: list[str]) -> dict:
    """ONNX engine vs the torch reference with ``pack``: max rel err of logits / edited hidden; greedy identity."""
    from commandv.profiles.hf_models import torch_recipient
    from commandv.runtime.engines.reference import pack_edits

    rel = lambda a, b: float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))  # noqa: E731
    tr = torch_recipient(MODEL)
    out = {"logits": [], "hidden": [], "greedy_identical": 0, "greedy_identical_no_pack": 0}
    for p in prompts:
        ids = rec.encode(p)
        assert ids == tr.encode(p), "tokenizers disagree"
        lt, ht = tr.prompt_forward(ids, pack_edits([pack]), record_hidden=True)
        lo, ho = rec.prompt_pass(ids, [pack], record_layers=True, all_logits=True)
        out["logits"].append(rel(lo, lt))
        out["hidden"].append(max(rel(ho[i], ht[i]) for i in range(rec.n_layer)))
        for packs, key in (([pack], "greedy_identical"), ([], "greedy_identical_no_pack")):
            a = tr.generate_ids(ids, pack_edits(packs), max_new_tokens=24)
            b = rec.generate_ids(ids, packs, max_tokens=24)
            out[key] += int(a == b)
    del tr
    gc.collect()
    return {"logits_max_rel_err": max(out["logits"]), "hidden_max_rel_err": max(out["hidden"]),
            "greedy_identical": out["greedy_identical"], "greedy_identical_no_pack": out["greedy_identical_no_pack"],
            "prompts": len(prompts)}


def agreement(ref, other, pack, prompts: list[str], tokens: int) -> dict:
    """Greedy agreement of ``other`` with ``ref`` (both with ``pack``)."""
    same = first = 0
    prefix = []
    for p in prompts:
        ids = ref.encode(p)
        a = ref.generate_ids(ids, [pack], max_tokens=tokens, stop_at_eog=False)
        b = other.generate_ids(ids, [pack], max_tokens=tokens, stop_at_eog=False)
        k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        same, first = same + int(a == b), first + int(a[:1] == b[:1])
        prefix.append(k / max(len(a), 1))
    return {"identical": same / len(prompts), "first_token": first / len(prompts),
            "mean_prefix_fraction": float(np.mean(prefix))}


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.parent.iterdir() if f.name.startswith(path.name)) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--parity-prompts", type=int, default=6)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rel-norm", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    from commandv.profiles.prompts import load_prompt_set
    from commandv.runtime.engines.llama.engine import Recipient
    from commandv.runtime.engines.onnx.engine import OnnxRecipient

    load0 = os.getloadavg()
    prompts = load_prompt_set("general", limit=max(args.prompts, args.parity_prompts)).prompts
    paths = {q: _export(q) for q in ("fp32", "int8", "int4")}
    with tempfile.TemporaryDirectory() as tmp:
        paths["plain"] = _export("fp32", out=Path(tmp) / "plain", pack_inputs=False, check=False)
        fp32 = OnnxRecipient(paths["fp32"], n_threads=args.threads)
        pack = calibrated_pack(fp32, rel_norm=args.rel_norm)
        paths["baked"] = _export("fp32", out=Path(tmp) / "baked", packs=[pack], check=False)
        par = parity(fp32, pack, prompts[: args.parity_prompts])
        print("parity", par, flush=True)
        recs = {k: OnnxRecipient(paths[k], n_threads=args.threads) for k in ("plain", "baked", "int8", "int4")}
        llama = Recipient(MODEL, n_ctx=2048, n_threads=args.threads)
        quant = {q: agreement(fp32, r, pack, prompts[: args.prompts], args.tokens)
                 for q, r in (("int8", recs["int8"]), ("int4", recs["int4"]), ("llama_q4_1", llama))}
        print("quant", quant, flush=True)
        sizes = {k: _size_mb(p) for k, p in paths.items()}
        sizes["gguf_q4_1"] = llama.path.stat().st_size / 1e6
        ids = [fp32.encode(p) for p in prompts[: args.prompts]]
        t = args.tokens
        variants = {"plain": lambda i: _run(recs["plain"], i, [], t), "idle": lambda i: _run(fp32, i, [], t),
                    "pack": lambda i: _run(fp32, i, [pack], t), "baked": lambda i: _run(recs["baked"], i, [pack], t),
                    "int8_pack": lambda i: _run(recs["int8"], i, [pack], t),
                    "int4_pack": lambda i: _run(recs["int4"], i, [pack], t),
                    "llama_plain": lambda i: _run(llama, i, [], t), "llama_pack": lambda i: _run(llama, i, [pack], t)}
        for fn in variants.values():  # warm-up
            fn(ids[0][:8])
        m = measure(variants, ids, args.reps)
        llama.close()
    res = {**m["medians"], **overheads(m, "plain", "pack", ""), **overheads(m, "idle", "pack", "_vs_idle"),
           **overheads(m, "plain", "idle", "_sites_idle"), **overheads(m, "plain", "baked", "_baked"),
           **overheads(m, "llama_plain", "llama_pack", "_llama")}
    med = m["medians"]
    ratio = lambda a, b, kind="decode": med[f"{kind}_tps_{a}"] / med[f"{kind}_tps_{b}"]  # noqa: E731
    figures = {
        "parity_max_rel_err": (max(par["logits_max_rel_err"], par["hidden_max_rel_err"]), "ratio"),
        "parity_greedy_identical": (par["greedy_identical"] / par["prompts"], "fraction"),
        "decode_overhead_pct": (res["decode_overhead_pct_paired"], "%"),
        "prompt_overhead_pct": (res["prompt_overhead_pct_paired"], "%"),
        "decode_overhead_pct_vs_idle": (res["decode_overhead_pct_vs_idle_paired"], "%"),
        "decode_cpu_overhead_pct": (res["decode_cpu_overhead_pct_paired"], "%"),
        "decode_overhead_pct_baked": (res["decode_overhead_pct_baked_paired"], "%"),
        "decode_overhead_pct_llama": (res["decode_overhead_pct_llama_paired"], "%"),
        "onnx_over_llama_decode_ratio": (ratio("pack", "llama_pack"), "ratio"),
        "onnx_int8_over_llama_decode_ratio": (ratio("int8_pack", "llama_pack"), "ratio"),
        "onnx_int4_over_llama_decode_ratio": (ratio("int4_pack", "llama_pack"), "ratio"),
        "onnx_over_llama_prompt_ratio": (ratio("pack", "llama_pack", "prompt"), "ratio"),
        "int8_greedy_identical": (quant["int8"]["identical"], "fraction"),
        "int4_greedy_identical": (quant["int4"]["identical"], "fraction"),
        "int8_prefix_fraction": (quant["int8"]["mean_prefix_fraction"], "fraction"),
        "int4_prefix_fraction": (quant["int4"]["mean_prefix_fraction"], "fraction"),
        "llama_q4_1_prefix_fraction": (quant["llama_q4_1"]["mean_prefix_fraction"], "fraction"),
        "int8_first_token_agreement": (quant["int8"]["first_token"], "fraction"),
        "int4_first_token_agreement": (quant["int4"]["first_token"], "fraction"),
    }
    for k in ("plain", "idle", "pack", "baked", "int8_pack", "int4_pack", "llama_plain", "llama_pack"):
        figures[f"decode_tps_{k}"] = (med[f"decode_tps_{k}"], "tokens/s")
        figures[f"prompt_tps_{k}"] = (med[f"prompt_tps_{k}"], "tokens/s")
    for k in ("fp32", "int8", "int4", "baked", "gguf_q4_1"):
        figures[f"size_mb_{k}"] = (sizes[k], "MB")
    details = {"model": MODEL, "threads": args.threads, "prompts": len(ids), "reps": args.reps,
               "decode_tokens_per_run": t, "runs_per_variant": m["runs_per_variant"],
               "mean_prompt_tokens": float(np.mean([len(i) for i in ids])),
               "pack": {"entries": len(pack.entries), "layers": pack.layers, "rank": 8, "pq_rank": 8,
                        "rel_norm": args.rel_norm},
               "load_average_start": load0, "load_average_end": os.getloadavg(),
               "parity": par, "quant_agreement_with_fp32": quant, "sizes_mb": sizes,
               "variants": {"plain": "fp32 ONNX export without pack sites", "idle": "fp32 pack-inputs export, no pack",
                            "pack": "fp32 pack-inputs export, pack fed", "baked": "fp32 export with the pack baked in",
                            "int8_pack": "int8 (MatMulNBits 8-bit) pack-inputs export, pack fed",
                            "int4_pack": "int4 (MatMulNBits 4-bit + quantized embedding), pack fed",
                            "llama_plain": "llama.cpp engine, Q4_1 GGUF, no pack",
                            "llama_pack": "llama.cpp engine, Q4_1 GGUF, pack"},
               "results": res}
    path = write_results("onnx_runtime", figures, details)
    print({k: round(v[0], 4) for k, v in figures.items()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
