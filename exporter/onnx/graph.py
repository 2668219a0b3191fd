"""A llama / qwen2 decoder written as an ONNX graph with ``onnx.helper``, straight from the weights.

Why not ``torch.onnx.export``: with torch 2.13 and transformers 5.x the TorchScript
exporter is deprecated and tracing the transformers 5 cache / mask code paths
(``DynamicCache`` layers, vmap-built masks, sdpa dispatch) is fragile, and the
dynamo exporter (onnxscript) is slow on small machines and names tensors after
internal FX nodes. The decoders we target are small and fixed (RMSNorm, RoPE,
grouped-query attention with a KV cache, SwiGLU MLP), so this module writes
them directly; :mod:`commandv.exporter.onnx.export` checks the result against
the torch model (logits and every block output to ~1e-6 relative in tests).

The graph (opset 18, IR 8, float32) has

* inputs ``input_ids [batch, sequence]`` int64, ``attention_mask [batch, total]``
  int64 (1 = attend), ``position_ids [batch, sequence]`` int64,
  ``past_key_values.{i}.key`` / ``.value`` ``[batch, n_kv_head, past, head_dim]``;
* outputs ``logits [batch, sequence, vocab]``, ``present.{i}.key`` / ``.value``
  (past + new) and ``hidden.{i}`` ``[batch, sequence, d]``: the residual
  stream after block ``i`` — the tensors behavior-pack surgery edits
  (:mod:`commandv.runtime.engines.onnx.surgery`).

RMSNorm is written as Pow/ReduceMean/Add/Sqrt/Div/Mul (ONNX Runtime fuses it);
grouped-query attention folds the query heads of one KV head into the row axis
instead of repeating K/V, so the cache is never copied per head. Weight
matrices are stored transposed (``[in, out]``) for ``MatMul``; the tied or
untied LM head is a ``Gemm`` with ``transB`` on the ``[vocab, d]`` matrix, so a
tied embedding is stored once (``lm_head_matmul=True`` stores a transposed
copy instead, which weight quantizers can handle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from commandv.runtime.errors import CommandVError

OPSET = 18
IR_VERSION = 8
F32_MIN = float(np.finfo(np.float32).min)


class GraphBuildError(CommandVError, ValueError):
    """The model's configuration or weights cannot be written as this decoder graph."""


@dataclass(frozen=True)
class DecoderSpec:
    """Shape and numerics of a llama-style decoder. ``inv_freq [head_dim/2]`` and ``rope_scale`` (the
    attention scaling of scaled RoPE variants) come from the model's rotary embedding."""

    arch: str
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int
    head_dim: int
    d_ff: int
    n_vocab: int
    rms_eps: float
    inv_freq: tuple[float, ...]
    rope_scale: float = 1.0
    tied: bool = True

    def check(self) -> None:
        if self.n_head % self.n_kv_head:
            raise GraphBuildError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")
        if self.head_dim % 2 or len(self.inv_freq) != self.head_dim // 2:
            raise GraphBuildError(f"rotary inv_freq has {len(self.inv_freq)} values, head_dim is {self.head_dim}")


class _G:
    """Tiny graph-writing helper: nodes with generated names, constants as initializers."""

    def __init__(self):
        self.nodes, self.inits, self._n, self._consts = [], [], 0, {}

    def op(self, op: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> str | list[str]:
        from onnx import helper

        self._n += 1
        outs = [f"{name}:{k}" if n_out > 1 else name for k in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=f"{name}#{self._n}", **attrs))
        return outs if n_out > 1 else outs[0]

    def init(self, name: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const(self, value, dtype=np.int64) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(f"const.{len(self._consts)}", arr)
        return self._consts[key]


def _w(weights: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    if key not in weights:
        raise GraphBuildError(f"weight {key!r} missing")
    return np.asarray(weights[key], np.float32)


def _rmsnorm(g: _G, x: str, w: str, eps: float, name: str) -> str:
    sq = g.op("Pow", [x, g.const(2.0, np.float32)], f"{name}/pow")
    var = g.op("ReduceMean", [sq, g.const([-1])], f"{name}/mean", keepdims=1)
    den = g.op("Sqrt", [g.op("Add", [var, g.const(eps, np.float32)], f"{name}/add_eps")], f"{name}/sqrt")
    return g.op("Mul", [w, g.op("Div", [x, den], f"{name}/div")], f"{name}/out")


def _linear(g: _G, x: str, weights, key: str, name: str) -> str:
    """``x @ W.T (+ b)`` for the HF ``[out, in]`` weight ``key.weight``."""
    y = g.op("MatMul", [x, g.init(f"{key}.weight.T", _w(weights, f"{key}.weight").T)], name)
    if f"{key}.bias" in weights:
        y = g.op("Add", [y, g.init(f"{key}.bias", _w(weights, f"{key}.bias"))], f"{name}/bias")
    return y


def _rope(g: _G, x: str, cos: str, sin: str, half: int, name: str) -> str:
    x1 = g.op("Slice", [x, g.const([0]), g.const([half]), g.const([3])], f"{name}/x1")
    x2 = g.op("Slice", [x, g.const([half]), g.const([2 * half]), g.const([3])], f"{name}/x2")
    rot = g.op("Concat", [g.op("Neg", [x2], f"{name}/neg"), x1], f"{name}/rot", axis=3)
    return g.op("Add", [g.op("Mul", [x, cos], f"{name}/xc"), g.op("Mul", [rot, sin], f"{name}/rs")], f"{name}/out")


def _attention(g: _G, spec: DecoderSpec, x: str, i: int, weights, cos: str, sin: str, bias: str) -> str:
    H, K, D = spec.n_head, spec.n_kv_head, spec.head_dim
    p, n = f"model.layers.{i}.self_attn", f"L{i}/attn"

    def heads(t: str, k: int, nm: str) -> str:  # [b, s, k·D] → [b, k, s, D]
        split = g.op("Reshape", [t, g.const([0, 0, k, D])], f"{nm}/split")
        return g.op("Transpose", [split], f"{nm}/bhsd", perm=[0, 2, 1, 3])

    q = _rope(g, heads(_linear(g, x, weights, f"{p}.q_proj", f"{n}/q"), H, f"{n}/q"), cos, sin, D // 2, f"{n}/q_rope")
    k = _rope(g, heads(_linear(g, x, weights, f"{p}.k_proj", f"{n}/k"), K, f"{n}/k"), cos, sin, D // 2, f"{n}/k_rope")
    v = heads(_linear(g, x, weights, f"{p}.v_proj", f"{n}/v"), K, f"{n}/v")
    pk = g.op("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
    pv = g.op("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
    # grouped-query attention: the H/K query heads of one KV head become rows [b, K, (H/K)*s, D]
    qg = g.op("Reshape", [q, g.const([0, K, -1, D])], f"{n}/q_group")
    kt = g.op("Transpose", [pk], f"{n}/kT", perm=[0, 1, 3, 2])
    scores = g.op("Mul", [g.op("MatMul", [qg, kt], f"{n}/qk"), g.const(D ** -0.5, np.float32)], f"{n}/scale")
    probs = g.op("Softmax", [g.op("Add", [scores, bias], f"{n}/mask")], f"{n}/softmax", axis=-1)
    ctx = g.op("MatMul", [probs, pv], f"{n}/pv")
    ctx = g.op("Reshape", [ctx, g.const([0, H, -1, D])], f"{n}/ungroup")
    ctx = g.op("Transpose", [ctx], f"{n}/bshd", perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.const([0, 0, H * D])], f"{n}/merge")
    return _linear(g, ctx, weights, f"{p}.o_proj", f"{n}/o")


def _mlp(g: _G, x: str, i: int, weights) -> str:
    p, n = f"model.layers.{i}.mlp", f"L{i}/mlp"
    gate = _linear(g, x, weights, f"{p}.gate_proj", f"{n}/gate")
    act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{n}/sigmoid")], f"{n}/silu")
    up = _linear(g, x, weights, f"{p}.up_proj", f"{n}/up")
    return _linear(g, g.op("Mul", [act, up], f"{n}/gated"), weights, f"{p}.down_proj", f"{n}/down")


def _mask_and_rope(g: _G, spec: DecoderSpec) -> tuple[str, str, str]:
    """Additive attention bias ``[b, 1, (H/K)*s, total]`` (causal + padding) and RoPE cos/sin ``[b, 1, s, D]``."""
    past = g.op("Shape", ["past_key_values.0.key"], "mask/past", start=2, end=3)
    seq = g.op("Shape", ["input_ids"], "mask/seq", start=1, end=2)
    total = g.op("Add", [past, seq], "mask/total")
    sc = lambda t, nm: g.op("Squeeze", [t, g.const([0])], nm)  # noqa: E731
    q_pos = g.op("Range", [sc(past, "mask/past_s"), sc(total, "mask/total_s"), g.const(1)], "mask/q_pos")
    k_pos = g.op("Range", [g.const(0), sc(total, "mask/total_s2"), g.const(1)], "mask/k_pos")
    causal = g.op("LessOrEqual", [g.op("Unsqueeze", [k_pos, g.const([0])], "mask/k_row"),
                                  g.op("Unsqueeze", [q_pos, g.const([1])], "mask/q_col")], "mask/causal")
    pad = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], "mask/pad", to=9), g.const([1, 2])], "mask/pad4")
    allowed = g.op("And", [causal, pad], "mask/allowed")
    bias = g.op("Where", [allowed, g.const(0.0, np.float32), g.const(F32_MIN, np.float32)], "mask/bias")
    rep = spec.n_head // spec.n_kv_head
    if rep > 1:
        bias = g.op("Tile", [bias, g.const([1, 1, rep, 1])], "mask/bias_rep")
    inv = g.init("rope.inv_freq", np.asarray(spec.inv_freq, np.float32))
    pos = g.op("Unsqueeze", [g.op("Cast", ["position_ids"], "rope/pos", to=1), g.const([2])], "rope/pos3")
    freqs = g.op("Mul", [pos, inv], "rope/freqs")
    emb = g.op("Concat", [freqs, freqs], "rope/emb", axis=-1)
    cos, sin = g.op("Cos", [emb], "rope/cos"), g.op("Sin", [emb], "rope/sin")
    if spec.rope_scale != 1.0:
        s = g.const(spec.rope_scale, np.float32)
        cos, sin = g.op("Mul", [cos, s], "rope/cos_s"), g.op("Mul", [sin, s], "rope/sin_s")
    u = g.const([1])
    return bias, g.op("Unsqueeze", [cos, u], "rope/cos4"), g.op("Unsqueeze", [sin, u], "rope/sin4")


def build_decoder(spec: DecoderSpec, weights: Mapping[str, np.ndarray], lm_head_matmul: bool = False,
                  name: str = "commandv-decoder"):
    """The decoder as an ``onnx.ModelProto`` from HF-named float weights (``model.layers.{i}.…``)."""
    from onnx import TensorProto, helper

    spec.check()
    g = _G()
    table = _w(weights, "model.embed_tokens.weight")
    if table.shape != (spec.n_vocab, spec.d_model):
        raise GraphBuildError(f"embedding has shape {list(table.shape)}, expected [{spec.n_vocab}, {spec.d_model}]")
    emb = g.init("model.embed_tokens.weight", table)
    bias, cos, sin = _mask_and_rope(g, spec)
    h = g.op("Gather", [emb, "input_ids"], "embed")
    for i in range(spec.n_layer):
        p = f"model.layers.{i}"
        n1 = _rmsnorm(g, h, g.init(f"{p}.input_layernorm.weight", _w(weights, f"{p}.input_layernorm.weight")),
                      spec.rms_eps, f"L{i}/ln1")
        h = g.op("Add", [h, _attention(g, spec, n1, i, weights, cos, sin, bias)], f"L{i}/resid1")
        n2 = _rmsnorm(g, h, g.init(f"{p}.post_attention_layernorm.weight",
                                   _w(weights, f"{p}.post_attention_layernorm.weight")), spec.rms_eps, f"L{i}/ln2")
        h = g.op("Add", [h, _mlp(g, n2, i, weights)], f"hidden.{i}")
    hn = _rmsnorm(g, h, g.init("model.norm.weight", _w(weights, "model.norm.weight")), spec.rms_eps, "final_norm")
    head = emb if spec.tied else g.init("lm_head.weight", _w(weights, "lm_head.weight"))
    if lm_head_matmul:
        wt = _w(weights, "model.embed_tokens.weight" if spec.tied else "lm_head.weight").T
        g.op("MatMul", [hn, g.init("lm_head.weight.T", wt)], "logits")
    else:
        flat = g.op("Reshape", [hn, g.const([-1, spec.d_model])], "lm_head/flat")
        out2 = g.op("Gemm", [flat, head], "lm_head/gemm", transB=1)
        shape = g.op("Concat", [g.op("Shape", ["input_ids"], "lm_head/bs"), g.const([spec.n_vocab])],
                     "lm_head/shape", axis=0)
        g.op("Reshape", [out2, shape], "logits")

    K, D = spec.n_kv_head, spec.head_dim
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    inputs = [vi("input_ids", i64, ["batch", "sequence"]), vi("attention_mask", i64, ["batch", "total"]),
              vi("position_ids", i64, ["batch", "sequence"])]
    outputs = [vi("logits", f32, ["batch", "sequence", spec.n_vocab])]
    for i in range(spec.n_layer):
        for kind in ("key", "value"):
            inputs.append(vi(f"past_key_values.{i}.{kind}", f32, ["batch", K, "past", D]))
            outputs.append(vi(f"present.{i}.{kind}", f32, ["batch", K, "total", D]))
    outputs += [vi(f"hidden.{i}", f32, ["batch", "sequence", spec.d_model]) for i in range(spec.n_layer)]
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="commandv")
    model.ir_version = IR_VERSION
    return model
