"""Where ``cmdv onnx export`` folders live, and opening one in ONNX Runtime with its inputs checked (no torch).

An export folder holds ``model.onnx`` (+ ``model.onnx.data`` for big models)
and ``tokenizer.json``; by default it lives in
``cache_home()/onnx/<model fingerprint[:16]>-<quant>`` so a zoo key or GGUF
path finds its export.
"""

from __future__ import annotations

import os
from pathlib import Path

from commandv.runtime.engines.onnx.surgery import OnnxMeta, OnnxModelError
from commandv.runtime.errors import EngineError, ModelError
from commandv.runtime.models.ref import resolve_model
from commandv.runtime.paths import cache_home

MODEL_FILE, TOKENIZER_FILE = "model.onnx", "tokenizer.json"
QUANTS = ("fp32", "int8", "int4")
"""Weight precisions `cmdv onnx export --quant` writes (one export folder each)."""


def onnx_export_dir(fingerprint: str, quant: str = "fp32") -> Path:
    """Where ``cmdv onnx export`` keeps the export of the model with this fingerprint."""
    return cache_home() / "onnx" / f"{fingerprint[:16]}-{quant}"


def find_onnx_model(spec: str | os.PathLike, quant: str = "fp32") -> Path:
    """The ``.onnx`` file for ``spec``: a ``.onnx`` file, an export folder, or a zoo key / GGUF already exported
    (``quant``: which of its exports)."""
    if quant not in QUANTS:
        raise OnnxModelError(f"unknown ONNX quantization {quant!r}; use one of {', '.join(QUANTS)}")
    p = Path(spec)
    if p.is_file() and p.suffix == ".onnx":
        return p
    if p.is_dir() and (p / MODEL_FILE).is_file():
        return p / MODEL_FILE
    try:
        ref = resolve_model(str(spec), auto_fetch=False)
    except ModelError as exc:
        raise OnnxModelError(f"{spec} is not an ONNX file or export folder ({exc})") from None
    if ref.kind != "gguf":
        raise OnnxModelError(f"{spec} is an HF folder; pass the folder `cmdv onnx export` wrote")
    from commandv.runtime.models.fingerprint import file_fingerprint

    folder = onnx_export_dir(file_fingerprint(ref.path), quant)
    if not (folder / MODEL_FILE).is_file():
        raise OnnxModelError(f"no {quant} ONNX export of {spec} yet; run: cmdv onnx export {spec}"
                             + ("" if quant == "fp32" else f" --quant {quant}"))
    return folder / MODEL_FILE


_LEVELS = {"none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "all": "ORT_ENABLE_ALL"}


def open_session(path: Path, n_threads: int | None, optimization: str):
    """A CPU ``InferenceSession`` on ``path``; :class:`OnnxModelError` when ONNX Runtime refuses the file."""
    import onnxruntime as ort

    if optimization not in _LEVELS:
        raise EngineError(f"optimization must be one of {', '.join(_LEVELS)}, got {optimization!r}")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[optimization])
    if n_threads:
        so.intra_op_num_threads = int(n_threads)
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise OnnxModelError(f"ONNX Runtime cannot load {path}: {exc}") from None


def check_io(session, info: OnnxMeta, path: Path) -> tuple[set[str], set[str]]:
    """The session's input names (overridable initializers included) and output names, checked against what a
    commandv export of ``info`` must have."""
    inputs = {i.name for i in [*session.get_inputs(), *session.get_overridable_initializers()]}
    outputs = {o.name for o in session.get_outputs()}
    kv = [f"{i}.{k}" for i in range(int(info.n_layer)) for k in ("key", "value")]
    need_in = {"input_ids", "attention_mask", "position_ids", *(f"past_key_values.{x}" for x in kv)}
    for s in info.sites:
        need_in |= {s["mask"]} | ({f"{s['prefix']}.A"} if info.pack_mode == "inputs" else set())
    missing = sorted(need_in - inputs) + sorted({"logits", *(f"present.{x}" for x in kv)} - outputs)
    if missing:
        raise OnnxModelError(f"ONNX file {path} has no input/output {missing[0]!r} — was it exported with "
                             "cmdv onnx export?")
    # the metadata sizes what the engine feeds: it must agree with the graph's fixed dimensions
    shapes = {i.name: list(i.shape) for i in [*session.get_inputs(), *session.get_overridable_initializers()]}
    want = {"past_key_values.0.key": [None, info.n_kv_head, None, info.head_dim]}
    if info.pack_mode == "inputs":
        for st in info.sites:
            want[f"{st['prefix']}.A"] = [info.d_model, info.max_rank]
    for name, dims in want.items():
        got = shapes.get(name, [])
        if len(got) != len(dims) or any(w is not None and isinstance(g, int) and g != w for g, w in zip(got, dims)):
            raise OnnxModelError(f"ONNX file {path}: input {name} has shape {got}, but the commandv metadata "
                                 f"implies {[w if w is not None else '*' for w in dims]} (edited metadata?)")
    return inputs, outputs
