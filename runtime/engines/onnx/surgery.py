"""Graph surgery: behavior packs inside an ONNX decoder exported by ``cmdv onnx export`` (onnx + numpy only).

After the residual output of block ``L`` (the graph tensor ``hidden.L``) every
edit site inserts ``h' = h + s · mask[..., None] · delta(h)`` with
``delta(h) = act(h·A + b)·C − (h·P)·Q + e`` (MatMul/Add/activation/MatMul, the
P·Q term, Mul/Add), and the consumers of ``hidden.L`` (the next block and the
graph output) read ``h'``. Several sites at one layer are chained in order.

* **mask** — a float graph input ``[batch, sequence]`` (``cmdv_mask…``): the
  multiplier per prompt row; the engine puts the pack strength on the targeted
  rows and 0 elsewhere. Each mask input has a ``[1, 1]`` zero initializer as its
  default (an ONNX "overridable initializer"), so a caller that does not feed
  it runs the unedited model. The edit sits inside an ``If`` on
  ``sum|mask| > 0`` (computed once per mask input): decode steps (mask not
  fed) skip it at the cost of the test and one ``If`` per site.
* **baked** (:func:`bake_packs`, one file per behavior): ``A, b, C, P, Q, e``
  and ``s`` (the entry strength) are initializers; one mask per (pack, position
  spec) — ``cmdv_mask`` for the first, ``cmdv_mask.1`` … for others.
* **inputs** (:func:`add_pack_slots`, one file for any pack of the recipient):
  each slot ``(layer, j)`` has graph inputs ``cmdv.L{layer}.{j}.{A,b,C,P,Q,e,act,s}``
  (zero defaults) of a fixed maximum rank / P·Q rank; smaller packs are zero
  padded (exact: padded columns of A meet zero rows of C), the activation is
  a one-hot weight over :data:`SLOT_ACTS` (all are computed inside the ``If``,
  only during the prompt pass), and the mask is ``cmdv_mask.L{layer}.{j}``.

What the file holds is described in its ``metadata_props`` (see
:class:`OnnxMeta`); :mod:`commandv.runtime.engines.onnx.engine` builds the feeds.
Surgery edits the ``ModelProto`` in place (models are hundreds of MB).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from commandv.runtime.edit import activations as _activations
from commandv.runtime.edit.lowrank import canonical_activation
from commandv.runtime.errors import CommandVError
from commandv.runtime.pack.model import BehaviorPack, PackError

SLOT_ACTS = _activations.SLOT_ACTS
"""Activation functions in C id order: the one-hot ``act`` input of a slot (from :mod:`commandv.runtime.edit.activations`)."""
_ACT_ALIAS = {n: s for n, s in _activations.SLOT_OF.items() if n != s}
"""Canonical names whose function goes by another name (``gelu_new`` → ``gelu_tanh``)."""
FORMAT_VERSION = 1


class OnnxModelError(CommandVError, ValueError):
    """An ONNX file is not a usable commandv export (missing tensors, metadata or inputs)."""


@dataclass
class OnnxMeta:
    """What a commandv ONNX export says about itself (``metadata_props`` keys ``cmdv.*``)."""

    fingerprint: str
    arch: str
    n_layer: int
    d_model: int
    n_kv_head: int
    head_dim: int
    n_vocab: int
    name: str = ""
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    eog_ids: list[int] = field(default_factory=list)
    n_ctx_train: int = 2048
    quant: str = "fp32"
    pack_mode: str = "none"  # none | baked | inputs
    sites: list[dict] = field(default_factory=list)
    baked: list[dict] = field(default_factory=list)
    max_rank: int = 0
    max_pq_rank: int = 0
    format_version: int = FORMAT_VERSION

    def to_props(self) -> dict[str, str]:
        d = asdict(self)
        return {f"cmdv.{k}": (v if isinstance(v, str) else json.dumps(v)) for k, v in d.items() if v is not None}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "ONNX file") -> "OnnxMeta":
        if "cmdv.fingerprint" not in props:
            raise OnnxModelError(f"{where} has no commandv metadata (cmdv.fingerprint) — was it exported with "
                                 "cmdv onnx export?")
        kw = {}
        for k, f in cls.__dataclass_fields__.items():
            raw = props.get(f"cmdv.{k}")
            if raw is None:
                continue
            try:
                kw[k] = raw if f.type in ("str", "str | None") else json.loads(raw)
            except ValueError:
                raise OnnxModelError(f"{where}: metadata cmdv.{k} is not valid JSON") from None
        try:
            meta = cls(**kw)
        except TypeError as exc:
            raise OnnxModelError(f"{where}: incomplete commandv metadata ({exc})") from None
        if meta.format_version != FORMAT_VERSION:
            raise OnnxModelError(f"{where}: commandv ONNX format {meta.format_version}, this version reads "
                                 f"{FORMAT_VERSION}")
        meta._check(where)
        return meta

    def _check(self, where: str) -> None:
        """Types and ranges of everything the engine sizes or indexes by (the file may have been edited)."""
        def bad(what: str) -> OnnxModelError:
            return OnnxModelError(f"{where}: metadata {what}")

        is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        for k in ("n_layer", "d_model", "n_kv_head", "head_dim", "n_vocab", "n_ctx_train"):
            if not is_int(getattr(self, k)) or getattr(self, k) < 1:
                raise bad(f"cmdv.{k} {getattr(self, k)!r} is not a positive integer")
        for k in ("max_rank", "max_pq_rank"):
            if not is_int(getattr(self, k)) or getattr(self, k) < 0:
                raise bad(f"cmdv.{k} {getattr(self, k)!r} is not a non-negative integer")
        for k in ("fingerprint", "arch", "name", "bos_token", "eos_token", "quant", "pack_mode"):
            if not isinstance(getattr(self, k), str):
                raise bad(f"cmdv.{k} is not a string")
        if self.pack_mode not in ("none", "baked", "inputs"):
            raise bad(f"cmdv.pack_mode {self.pack_mode!r} is not none, baked or inputs")
        if not isinstance(self.eog_ids, list) or not all(is_int(t) and 0 <= t < self.n_vocab for t in self.eog_ids):
            raise bad("cmdv.eog_ids is not a list of token ids")
        keys = {"inputs": ("layer", "prefix", "mask", "slot"), "baked": ("layer", "prefix", "mask", "pack", "positions")}
        if not isinstance(self.sites, list) or not isinstance(self.baked, list):
            raise bad("cmdv.sites / cmdv.baked are not lists")
        for i, site in enumerate(self.sites):
            need = keys.get(self.pack_mode, ())
            if not isinstance(site, dict) or not need or any(k not in site for k in need):
                raise bad(f"cmdv.sites[{i}] lacks {', '.join(need) or 'a pack mode'}")
            if not (is_int(site["layer"]) and 0 <= site["layer"] < self.n_layer):
                raise bad(f"cmdv.sites[{i}] layer {site['layer']!r} out of range")
            if self.pack_mode == "baked" and not (is_int(site["pack"]) and 0 <= site["pack"] < len(self.baked)):
                raise bad(f"cmdv.sites[{i}] pack {site['pack']!r} is not an index into cmdv.baked")
        if any(not isinstance(b, dict) or not isinstance(b.get("digest"), str) or not isinstance(b.get("name"), str)
               for b in self.baked):
            raise bad("cmdv.baked items lack a string name / digest")


def read_meta(model, where: str = "ONNX file") -> OnnxMeta:
    return OnnxMeta.from_props({p.key: p.value for p in model.metadata_props}, where)


def write_meta(model, meta: OnnxMeta) -> None:
    from onnx import helper

    keep = [p for p in model.metadata_props if not p.key.startswith("cmdv.")]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    helper.set_model_props(model, {**{p.key: p.value for p in keep}, **meta.to_props()})


def pack_digest(pack: BehaviorPack) -> str:
    """sha256 of what a baked pack computes (layers, activations, positions, strengths, float32 tensors)."""
    h = hashlib.sha256()
    for e in pack.entries:
        h.update(json.dumps([int(e.layer), canonical_activation(e.act), e.positions, float(e.strength)]).encode())
        for t in (e.A, e.b, e.C, e.P, e.Q, e.e):
            h.update(b"-" if t is None else np.ascontiguousarray(t, np.float32).tobytes() + str(t.shape).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- graph pieces
def _act_nodes(act: str, u: str, p: str) -> tuple[list, str]:
    from onnx import helper

    mk, out = helper.make_node, f"{p}/z"
    c = lambda v: helper.make_tensor(f"{p}/c{v}", 1, [], [v])  # noqa: E731  (FLOAT scalar)
    const = lambda nm, v: mk("Constant", [], [nm], name=nm, value=c(v))  # noqa: E731
    kind = _activations.SLOT_KIND.get(act)
    if kind is not None and kind.onnx_op:  # one operator (Identity, Relu, Tanh, Sigmoid)
        return [mk(kind.onnx_op, [u], [out], name=out)], out
    if act == "silu":
        return [mk("Sigmoid", [u], [f"{p}/sg"], name=f"{p}/sg"), mk("Mul", [u, f"{p}/sg"], [out], name=out)], out
    if act == "gelu":  # 0.5·x·(1 + erf(x/√2))
        return [const(f"{p}/r2", 2 ** -0.5), const(f"{p}/half", 0.5), const(f"{p}/one", 1.0),
                mk("Mul", [u, f"{p}/r2"], [f"{p}/xs"], name=f"{p}/xs"),
                mk("Erf", [f"{p}/xs"], [f"{p}/er"], name=f"{p}/er"),
                mk("Add", [f"{p}/er", f"{p}/one"], [f"{p}/e1"], name=f"{p}/e1"),
                mk("Mul", [u, f"{p}/half"], [f"{p}/hx"], name=f"{p}/hx"),
                mk("Mul", [f"{p}/hx", f"{p}/e1"], [out], name=out)], out
    if act == "gelu_tanh":  # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
        return [const(f"{p}/k", float(np.sqrt(2 / np.pi))), const(f"{p}/a", 0.044715), const(f"{p}/half", 0.5),
                const(f"{p}/one", 1.0), mk("Mul", [u, u], [f"{p}/x2"], name=f"{p}/x2"),
                mk("Mul", [f"{p}/x2", u], [f"{p}/x3"], name=f"{p}/x3"),
                mk("Mul", [f"{p}/x3", f"{p}/a"], [f"{p}/ax3"], name=f"{p}/ax3"),
                mk("Add", [u, f"{p}/ax3"], [f"{p}/in"], name=f"{p}/in"),
                mk("Mul", [f"{p}/in", f"{p}/k"], [f"{p}/kin"], name=f"{p}/kin"),
                mk("Tanh", [f"{p}/kin"], [f"{p}/th"], name=f"{p}/th"),
                mk("Add", [f"{p}/th", f"{p}/one"], [f"{p}/t1"], name=f"{p}/t1"),
                mk("Mul", [u, f"{p}/half"], [f"{p}/hx"], name=f"{p}/hx"),
                mk("Mul", [f"{p}/hx", f"{p}/t1"], [out], name=out)], out
    raise PackError(f"activation {act!r} cannot be written into an ONNX graph")


def _mask_on(mask: str) -> tuple[list, str]:
    """Nodes computing ``sum|mask| > 0`` (a bool scalar), once per mask input."""
    from onnx import helper

    mk, p = helper.make_node, f"cmdv/{mask}"
    return [mk("ReduceL1", [mask], [f"{p}/l1"], name=f"{p}/l1", keepdims=0),
            mk("Constant", [], [f"{p}/zero"], name=f"{p}/zero", value=helper.make_tensor(f"{p}/zv", 1, [], [0.0])),
            mk("Greater", [f"{p}/l1", f"{p}/zero"], [f"{p}/on"], name=f"{p}/on")], f"{p}/on"


def _site_node(x: str, y: str, prefix: str, mask: str, on: str, act: str | None, has_pq: bool, has_e: bool):
    """``If(on, x + s·mask·delta(x), x)`` reading tensors ``{prefix}.{A,b,C,P,Q,e,s[,act]}``."""
    from onnx import TensorProto, helper

    mk, p, t = helper.make_node, f"cmdv/{prefix}", lambda n: f"{prefix}.{n}"  # noqa: E731
    nodes = [mk("MatMul", [x, t("A")], [f"{p}/xA"], name=f"{p}/xA"),
             mk("Add", [f"{p}/xA", t("b")], [f"{p}/u"], name=f"{p}/u")]
    if act is not None:
        more, z = _act_nodes(act, f"{p}/u", f"{p}/act")
        nodes += more
    else:  # one-hot mixture of SLOT_ACTS
        zs = []
        for a in SLOT_ACTS:
            more, z = _act_nodes(a, f"{p}/u", f"{p}/{a}")
            nodes += more + [mk("Unsqueeze", [z, f"{p}/ax-1"], [f"{z}4"], name=f"{z}4")]
            zs.append(f"{z}4")
        nodes = [mk("Constant", [], [f"{p}/ax-1"], name=f"{p}/ax-1", value=helper.make_tensor(
            f"{p}/ax-1v", TensorProto.INT64, [1], [-1]))] + nodes
        nodes += [mk("Concat", zs, [f"{p}/zs"], name=f"{p}/zs", axis=-1),
                  mk("Unsqueeze", [t("act"), f"{p}/ax-1"], [f"{p}/w"], name=f"{p}/w"),
                  mk("MatMul", [f"{p}/zs", f"{p}/w"], [f"{p}/z1"], name=f"{p}/z1"),
                  mk("Squeeze", [f"{p}/z1", f"{p}/ax-1"], [f"{p}/z"], name=f"{p}/z")]
        z = f"{p}/z"
    nodes.append(mk("MatMul", [z, t("C")], [f"{p}/d0"], name=f"{p}/d0"))
    d = f"{p}/d0"
    if has_pq:
        nodes += [mk("MatMul", [x, t("P")], [f"{p}/xP"], name=f"{p}/xP"),
                  mk("MatMul", [f"{p}/xP", t("Q")], [f"{p}/xPQ"], name=f"{p}/xPQ"),
                  mk("Sub", [d, f"{p}/xPQ"], [f"{p}/d1"], name=f"{p}/d1")]
        d = f"{p}/d1"
    if has_e:
        nodes.append(mk("Add", [d, t("e")], [f"{p}/d2"], name=f"{p}/d2"))
        d = f"{p}/d2"
    nodes += [mk("Constant", [], [f"{p}/ax2"], name=f"{p}/ax2",
                 value=helper.make_tensor(f"{p}/ax2v", TensorProto.INT64, [1], [2])),
              mk("Unsqueeze", [mask, f"{p}/ax2"], [f"{p}/m"], name=f"{p}/m"),
              mk("Mul", [d, t("s")], [f"{p}/sd"], name=f"{p}/sd"),
              mk("Mul", [f"{p}/sd", f"{p}/m"], [f"{p}/smd"], name=f"{p}/smd"),
              mk("Add", [x, f"{p}/smd"], [f"{p}/y"], name=f"{p}/y")]
    out = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
    then_g = helper.make_graph(nodes, f"{p}/edit", [], [out(f"{p}/y")])
    else_g = helper.make_graph([mk("Identity", [x], [f"{p}/x"], name=f"{p}/keep")], f"{p}/keep", [], [out(f"{p}/x")])
    return [mk("If", [on], [y], name=f"{p}/if", then_branch=then_g, else_branch=else_g)]


def _insert_sites(model, sites: list[dict], has_pq: dict, has_e: dict, acts: dict) -> None:
    """Insert every site (``layer``, ``prefix``, ``mask``) after its layer's ``hidden.L`` producer."""
    g = model.graph
    producers = {o: i for i, n in enumerate(g.node) for o in n.output}
    by_layer: dict[int, list[dict]] = {}
    for s in sites:
        by_layer.setdefault(int(s["layer"]), []).append(s)
    after: dict[int, list] = {}
    on: dict[str, str] = {}  # mask input → its "edit on" tensor
    first: list = []  # nodes placed at the start of the graph
    for layer, group in by_layer.items():
        name = f"hidden.{layer}"
        if name not in producers:
            raise OnnxModelError(f"ONNX file has no tensor {name!r} (layer {layer} block output) — was it exported "
                                 "with cmdv onnx export?")
        node = g.node[producers[name]]
        raw = f"{name}/raw"
        node.output[list(node.output).index(name)] = raw
        x, new = raw, []
        for k, s in enumerate(group):
            y = name if k == len(group) - 1 else f"cmdv/{s['prefix']}/out"
            if s["mask"] not in on:
                more, on[s["mask"]] = _mask_on(s["mask"])
                first += more
            new += _site_node(x, y, s["prefix"], s["mask"], on[s["mask"]], acts.get(s["prefix"]),
                              has_pq[s["prefix"]], has_e[s["prefix"]])
            x = y
        after[producers[name]] = new
    nodes = list(first)
    for i, n in enumerate(g.node):
        nodes.append(n)
        nodes.extend(after.get(i, []))
    del g.node[:]
    g.node.extend(nodes)


def _add_input(model, name: str, default: np.ndarray, shape: list) -> None:
    from onnx import TensorProto, helper, numpy_helper

    model.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    model.graph.initializer.append(numpy_helper.from_array(np.array(default, np.float32), name))


def _mask_input(model, name: str) -> None:
    # unnamed dims: the [1, 1] default must not tie the symbolic batch/sequence sizes to 1
    _add_input(model, name, np.zeros((1, 1), np.float32), [None, None])


def _fresh(model, where: str) -> OnnxMeta:
    meta = read_meta(model, where)
    if meta.pack_mode != "none":
        raise OnnxModelError(f"{where} already carries packs ({meta.pack_mode}); start from a plain export")
    return meta


def bake_packs(model, packs: Sequence[BehaviorPack], force: bool = False, where: str = "ONNX file"):
    """Bake ``packs`` into ``model`` as initializers (in place); returns the model."""
    from onnx import numpy_helper

    meta = _fresh(model, where)
    if not packs:
        raise PackError("no packs to bake")
    sites, has_pq, has_e, acts, masks = [], {}, {}, {}, {}
    for pi, pack in enumerate(packs):
        pack.validate()
        pack.check_model(meta.fingerprint, meta.arch, meta.n_layer, meta.d_model, force=force)
        for ei, e in enumerate(pack.entries):
            key = (pi, e.positions)
            if key not in masks:
                masks[key] = "cmdv_mask" if not masks else f"cmdv_mask.{len(masks)}"
                _mask_input(model, masks[key])
            prefix = f"cmdv.{len(sites)}"
            act = canonical_activation(e.act)
            acts[prefix], has_pq[prefix], has_e[prefix] = _ACT_ALIAS.get(act, act), e.P is not None, e.e is not None
            for n in ("A", "b", "C", "P", "Q", "e"):
                if getattr(e, n) is not None:
                    model.graph.initializer.append(numpy_helper.from_array(
                        np.ascontiguousarray(getattr(e, n), np.float32), f"{prefix}.{n}"))
            model.graph.initializer.append(numpy_helper.from_array(np.float32(e.strength), f"{prefix}.s"))
            sites.append(dict(layer=int(e.layer), prefix=prefix, mask=masks[key], pack=pi, entry=ei,
                              positions=e.positions, rank=e.rank))
    _insert_sites(model, sites, has_pq, has_e, acts)
    meta.pack_mode, meta.sites = "baked", sites
    meta.baked = [dict(name=p.name, digest=pack_digest(p), n_entries=len(p.entries)) for p in packs]
    write_meta(model, meta)
    return model


def add_pack_slots(model, layers: Sequence[int] | None = None, max_rank: int = 16, max_pq_rank: int = 16,
                   slots_per_layer: int = 1, where: str = "ONNX file"):
    """Give ``model`` pack slots fed as graph inputs (in place): ``slots_per_layer`` at each of ``layers``
    (default: all), rank ≤ ``max_rank``, P·Q rank ≤ ``max_pq_rank`` (0: no P·Q term). Returns the model."""
    meta = _fresh(model, where)
    d = meta.d_model
    layers = list(range(meta.n_layer)) if layers is None else sorted({int(x) for x in layers})
    bad = [x for x in layers if not 0 <= x < meta.n_layer]
    if bad or not layers or max_rank < 1 or max_pq_rank < 0 or slots_per_layer < 1:
        raise OnnxModelError(f"bad slot layout: layers {bad or layers} (model has {meta.n_layer}), rank {max_rank}, "
                             f"P·Q rank {max_pq_rank}, {slots_per_layer} slots per layer")
    sites, R, Q = [], int(max_rank), int(max_pq_rank)
    shapes = {"A": [d, R], "b": [R], "C": [R, d], "e": [d], "act": [len(SLOT_ACTS)], "s": []}
    if Q:
        shapes.update(P=[d, Q], Q=[Q, d])
    for layer in layers:
        for j in range(slots_per_layer):
            prefix = f"cmdv.L{layer}.{j}"
            _mask_input(model, f"cmdv_mask.L{layer}.{j}")
            for n, shp in shapes.items():
                _add_input(model, f"{prefix}.{n}", np.zeros(shp, np.float32), shp)
            sites.append(dict(layer=layer, prefix=prefix, mask=f"cmdv_mask.L{layer}.{j}", slot=j))
    _insert_sites(model, sites, {s["prefix"]: Q > 0 for s in sites}, {s["prefix"]: True for s in sites}, {})
    meta.pack_mode, meta.sites, meta.max_rank, meta.max_pq_rank = "inputs", sites, R, Q
    write_meta(model, meta)
    return model
