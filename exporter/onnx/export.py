"""``cmdv onnx export``: a transformers llama / qwen2 recipient → an ONNX decoder with KV cache (workstation side).

Exporter choice: the graph is written by :mod:`commandv.exporter.onnx.graph`
from the model's state dict (see its docstring for why not ``torch.onnx.export``),
then checked against the torch model on a probe prompt (logits and every block
output; :func:`check_parity`). Spec: an HF folder, or a zoo key / GGUF through
its dequantized HF copy (:func:`commandv.profiles.hf_models.load_hf_model`).

An export folder holds ``model.onnx`` (``model.onnx.data`` beside it when over
1.5 GB) and ``tokenizer.json``; the ONNX ``metadata_props`` carry the source
model's fingerprint, arch and shape (so packs are checked as on llama.cpp), the
chat template and end-of-generation ids. ``quant``: ``fp32``, ``int8`` or
``int4`` (weight-only ``MatMulNBits``, blocks of 32; see :func:`quantize`).
Quantization runs on the plain decoder, before surgery, so pack nodes always
stay float. Packs: ``pack_inputs`` (the default: slots at every layer, fed per
request) or baked ``packs``.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from commandv.exporter.onnx.graph import DecoderSpec, GraphBuildError, build_decoder
from commandv.runtime.engines.onnx.files import MODEL_FILE, QUANTS, TOKENIZER_FILE, onnx_export_dir
from commandv.runtime.engines.onnx.surgery import OnnxMeta, OnnxModelError, add_pack_slots, bake_packs, write_meta
from commandv.runtime.pack.model import BehaviorPack

ARCHS = ("llama", "qwen2")
EXTERNAL_DATA_BYTES = 1_500_000_000
PROBE = "Hello! Please describe, in two sentences, a river at dawn."
_EOG_TEXT = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<end_of_turn>", "<|end|>")


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote: the model file, its metadata, size, time and the parity check."""

    folder: Path
    model_path: Path
    meta: OnnxMeta
    bytes: int
    seconds: float
    parity: dict = field(default_factory=dict)


def decoder_spec(model) -> DecoderSpec:
    """The :class:`DecoderSpec` of a transformers llama / qwen2 causal LM."""
    cfg = model.config
    if cfg.model_type not in ARCHS:
        raise GraphBuildError(f"ONNX export supports {', '.join(ARCHS)}; this model is {cfg.model_type!r}")
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "use_sliding_window", False):
        raise GraphBuildError(f"unsupported {cfg.model_type} variant (hidden_act {cfg.hidden_act!r}, sliding window)")
    rot = model.model.rotary_emb
    if getattr(rot, "rope_type", "default") in ("dynamic", "longrope"):  # frequencies change with the length
        raise GraphBuildError(f"{rot.rope_type} RoPE scaling depends on the sequence length; not supported")
    n_head = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return DecoderSpec(
        arch=str(cfg.model_type), n_layer=int(cfg.num_hidden_layers), d_model=int(cfg.hidden_size), n_head=n_head,
        n_kv_head=int(getattr(cfg, "num_key_value_heads", None) or n_head), head_dim=head_dim,
        d_ff=int(cfg.intermediate_size), n_vocab=int(emb.shape[0]), rms_eps=float(cfg.rms_norm_eps),
        inv_freq=tuple(float(x) for x in rot.inv_freq.float().cpu().numpy()),
        rope_scale=float(getattr(rot, "attention_scaling", 1.0)),
        tied=bool(emb.data_ptr() == head.data_ptr()))


def _eog_ids(model, tok) -> list[int]:
    ids = set()
    for src in (tok.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        ids.update([src] if isinstance(src, int) else list(src or []))
    added = tok.get_added_vocab()  # special tokens only: "</s>" may also be an ordinary BPE piece
    ids.update(added[t] for t in _EOG_TEXT if t in added)
    return sorted(int(i) for i in ids if i is not None)


def _save(model, path: Path) -> None:
    import onnx

    big = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES  # ByteSize() fails past 2 GB
    onnx.save_model(model, str(path), save_as_external_data=big, location=f"{path.name}.data",
                    all_tensors_to_one_file=True)


def save_model_atomic(model, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` (and ``path.data`` when over 1.5 GB) via a temp folder beside it, then rename.
    An existing ``path`` that is not a regular file (device node, FIFO, folder) is refused, never replaced."""
    from commandv.runtime.atomic import AtomicTargetError
    from commandv.runtime.safe_io import check_output_target

    path = Path(path)
    check_output_target(path, "ONNX model", AtomicTargetError)
    check_output_target(path.parent / (path.name + ".data"), "ONNX model data", AtomicTargetError)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.partial-") as work:
        _save(model, Path(work) / path.name)
        for f in sorted(Path(work).iterdir(), key=lambda f: f.suffix != ".data"):  # data first, model last
            os.replace(f, path.parent / f.name)
    return path


def quantize(src: Path, dst: Path, quant: str) -> None:
    """Weight-quantize the plain decoder ``src`` into ``dst`` with ONNX Runtime's ``MatMulNBits`` quantizer.

    ``int8``: the weight MatMuls (and the LM head) to 8 bits, symmetric, blocks of 32; ``int4``: the block
    MatMuls and the embedding table (``GatherBlockQuantized``) to 4 bits, asymmetric, blocks of 32, and the LM
    head to 8 bits (as llama.cpp keeps SmolLM2's tied embedding at Q8_0 in its Q4_1 file; a 4-bit head made
    greedy decoding degenerate into repetitions). ``accuracy_level=4`` lets the kernel quantize activations
    to int8 per block (ONNX Runtime's fast path; without it 8-bit weights decode far slower). Only
    MatMuls with a constant weight are touched: attention products and any ``cmdv/…`` pack node stay float.
    Dynamic int8 (``quantize_dynamic``: activations to uint8 per tensor) is not used: on small models it moves
    the logits far more than this scheme does (``check_parity`` measures an export against the torch model)."""
    import onnx

    if quant not in ("int8", "int4"):
        raise OnnxModelError(f"quant must be int8 or int4, got {quant!r}")
    MatMulNBitsQuantizer = _import_quantizer()
    model = onnx.load(str(src))
    skip = [n.name for n in model.graph.node if n.name.startswith("cmdv/")]
    head = [n.name for n in model.graph.node if "logits" in n.output]
    if quant == "int4":  # blocks and embedding table at 4 bits; the LM head stays at 8 (next pass)
        q = MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=False, accuracy_level=4,
                                 nodes_to_exclude=skip + head, op_types_to_quantize=("MatMul", "Gather"),
                                 quant_axes=(("MatMul", 0), ("Gather", 1)))
        q.process()
        model = q.model.model
    q = MatMulNBitsQuantizer(model, bits=8, block_size=32, is_symmetric=True, accuracy_level=4,
                             nodes_to_exclude=skip, nodes_to_include=head if quant == "int4" else None,
                             op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),))
    q.process()
    _save(q.model.model, dst)


def _import_quantizer():
    """ONNX Runtime's ``MatMulNBitsQuantizer``, without the side effect of importing its module.

    The module calls ``logging.basicConfig(level=INFO)`` on import, which would give the *root* logger a
    handler and turn on every library's INFO messages for the rest of the process; the root logger's level
    and handlers are put back, and the quantizer's own logger keeps to warnings.
    """
    import logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:  # onnxruntime >= 1.22 needs onnx-ir for it
        raise OnnxModelError(f"weight quantization needs onnxruntime's MatMulNBits quantizer ({exc}); "
                             "pip install onnx-ir") from None
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
    logging.getLogger(MatMulNBitsQuantizer.__module__).setLevel(logging.WARNING)
    return MatMulNBitsQuantizer


def check_parity(hf_model, onnx_path: Path, ids: Sequence[int]) -> dict:
    """Max relative error (max|Δ| / max|ref|) of the plain ONNX decoder vs the torch model on ``ids``: logits and
    block outputs."""
    import onnxruntime as ort
    import torch

    with torch.inference_mode():
        out = hf_model(input_ids=torch.tensor([list(ids)]), output_hidden_states=True, use_cache=False)
    ref_logits = out.logits[0].float().numpy()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    meta = OnnxMeta.from_props(sess.get_modelmeta().custom_metadata_map)
    empty = np.zeros((1, meta.n_kv_head, 0, meta.head_dim), np.float32)
    feeds = {"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64),
             "position_ids": np.arange(len(ids), dtype=np.int64)[None]}
    feeds.update({f"past_key_values.{i}.{k}": empty for i in range(meta.n_layer) for k in ("key", "value")})
    names = ["logits"] + [f"hidden.{i}" for i in range(meta.n_layer)]
    res = sess.run(names, feeds)
    rel = lambda a, b: float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))  # noqa: E731
    # hidden_states[i+1] is block i's output, except the last, which transformers returns after the final norm
    hid = [rel(res[1 + i][0], out.hidden_states[i + 1][0].float().numpy()) for i in range(meta.n_layer - 1)]
    return {"logits_max_rel_err": rel(res[0][0], ref_logits), "hidden_max_rel_err": max(hid, default=0.0),
            "n_tokens": len(ids)}


def export_onnx(spec: str | os.PathLike, out: str | os.PathLike | None = None, progress: bool = True,
                **options) -> OnnxExport:
    """Export ``spec`` (zoo key, GGUF, HF folder) to an ONNX folder; ``options`` as :func:`export_model`."""
    from commandv.profiles.hf_models import load_hf_model
    from commandv.profiles.identity import model_identity

    if options.get("quant", "fp32") not in QUANTS:
        raise OnnxModelError(f"quant must be one of {', '.join(QUANTS)}, got {options['quant']!r}")
    options["packs"] = [p if isinstance(p, BehaviorPack) else BehaviorPack.load(p) for p in options.get("packs", ())]
    hf, tok, ref = load_hf_model(spec, progress=progress)
    return export_model(hf, tok, model_identity(ref), out, **options)


def export_model(hf, tok, ident, out: str | os.PathLike | None = None, quant: str = "fp32",
                 packs: Sequence[BehaviorPack] = (), pack_inputs: bool = True, max_rank: int = 16,
                 max_pq_rank: int = 16, layers: Sequence[int] | None = None, slots_per_layer: int = 1,
                 force: bool = False, check: bool = True) -> OnnxExport:
    """Export a loaded transformers model (``ident``: its :class:`~commandv.profiles.identity.ModelIdentity`)
    to ``out`` (default ``onnx_export_dir(fingerprint, quant)``): baked ``packs`` if given, else pack-input
    slots (``pack_inputs``; see :func:`~commandv.runtime.engines.onnx.surgery.add_pack_slots`), else a plain decoder."""
    import onnx

    from commandv.runtime.atomic import atomic_dir, replace_problem

    if quant not in QUANTS:
        raise OnnxModelError(f"quant must be one of {', '.join(QUANTS)}, got {quant!r}")
    t0 = time.perf_counter()
    dspec = decoder_spec(hf)
    weights = {k: v.detach().float().cpu().numpy() for k, v in hf.state_dict().items()}
    model = build_decoder(dspec, weights, lm_head_matmul=quant != "fp32", name=ident.name)
    del weights
    meta = OnnxMeta(fingerprint=ident.fingerprint, arch=ident.arch, n_layer=dspec.n_layer, d_model=dspec.d_model,
                    n_kv_head=dspec.n_kv_head, head_dim=dspec.head_dim, n_vocab=dspec.n_vocab, name=ident.name,
                    chat_template=getattr(tok, "chat_template", None) or None, bos_token=tok.bos_token or "",
                    eos_token=tok.eos_token or "", eog_ids=_eog_ids(hf, tok), quant=quant,
                    n_ctx_train=int(getattr(hf.config, "max_position_embeddings", 2048) or 2048))
    write_meta(model, meta)
    folder = Path(out) if out is not None else onnx_export_dir(ident.fingerprint, quant)
    # replaced as a whole: only an earlier export's own files may be there
    problem = replace_problem(folder, lambda name: name.startswith((MODEL_FILE, TOKENIZER_FILE)))
    if problem:
        raise OnnxModelError(f"refusing to replace {folder}: {problem}; an export replaces its folder: "
                             "choose another --out")
    parity: dict = {}
    with atomic_dir(folder) as tmp, tempfile.TemporaryDirectory(dir=tmp) as work:  # work files die with tmp
        plain = Path(work) / "plain.onnx"
        _save(model, plain)
        del model
        if check:
            parity = check_parity(hf, plain, tok(PROBE, add_special_tokens=False)["input_ids"])
        if quant != "fp32":
            quantize(plain, Path(work) / "q.onnx", quant)
            plain = Path(work) / "q.onnx"
        model = onnx.load(str(plain))
        if packs:
            bake_packs(model, packs, force=force)
        elif pack_inputs:
            add_pack_slots(model, layers=layers, max_rank=max_rank, max_pq_rank=max_pq_rank,
                           slots_per_layer=slots_per_layer)
        _save(model, tmp / MODEL_FILE)
        tok.backend_tokenizer.save(str(tmp / TOKENIZER_FILE))
    path = folder / MODEL_FILE
    size = sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith(MODEL_FILE))
    return OnnxExport(folder, path, read_meta_file(path), size, time.perf_counter() - t0, parity)


def read_meta_file(path: str | os.PathLike) -> OnnxMeta:
    """The commandv metadata of an ONNX file (graph structure only, no weights)."""
    import onnx

    from commandv.runtime.engines.onnx.surgery import read_meta

    return read_meta(onnx.load(str(path), load_external_data=False), str(path))
