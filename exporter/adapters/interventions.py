"""pyreft interventions → one internal low-rank form per donor layer.

Every pyreft intervention (pyreft 0.1.0 ``interventions.py``) is, on a row ``h [d]``::

    LoReFT    h + (act(h Wᵀ + b) − h R) Rᵀ          R [d, r] orthonormal columns
    NoReFT    h + (act(h Wᵀ + b) − (h Pᵀ + p)) P    P [r, d] (proj_layer), p optional bias
    DiReFT    h + act(h Wᵀ + b) Rᵀ
    NodiReFT  h + act(h Wᵀ + b) P                   (proj_layer.bias unused in the forward)
    ConsReFT  h + (c − h R) Rᵀ                      c [r] learned constant
    LobiReFT  h + c Rᵀ

All of them are ``h + act(h A + b) C − (h P) Q + e`` with
``A [d, r]``, ``b [r]``, ``C [r, d]``, ``P [d, q]``, ``Q [q, d]``, ``e [d]``:
:class:`DonorEdit` holds that form; :func:`from_state_dict` builds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from commandv.runtime.edit.lowrank import LowRankEdit, canonical_activation
from commandv.runtime.errors import CommandVError

INTERVENTION_TYPES = ("LoReFT", "NoReFT", "DiReFT", "NodiReFT", "ConsReFT", "LobiReFT")
_CLASS_NAMES = {
    "loreftintervention": "LoReFT",
    "noreftintervention": "NoReFT",
    "direftintervention": "DiReFT",
    "nodireftintervention": "NodiReFT",
    "consreftintervention": "ConsReFT",
    "lobireftintervention": "LobiReFT",
}


class AdapterError(CommandVError, ValueError):
    """An adapter folder or state dict cannot be read as a pyreft intervention."""


def normalize_type(name: str) -> str:
    """Map ``"<class 'pyreft.interventions.NodireftIntervention'>"``, ``"nodireft"``, … to a canonical name."""
    key = str(name).rsplit(".", 1)[-1].strip("'<> ").lower()
    if key in _CLASS_NAMES:
        return _CLASS_NAMES[key]
    for canon in INTERVENTION_TYPES:
        if key in (canon.lower(), canon.lower() + "intervention"):
            return canon
    raise AdapterError(f"unknown intervention type {name!r}; supported: {', '.join(INTERVENTION_TYPES)}")


@dataclass
class DonorEdit(LowRankEdit):
    """One donor layer's intervention in the common form (donor hidden size ``d``): a
    :class:`~commandv.runtime.edit.lowrank.LowRankEdit` (float64 arrays) with the pyreft intervention ``kind``
    it was read from (keyword: ``DonorEdit(layer, A, b, C, act, kind="NodiReFT")``).
    """

    kind: str = field(kw_only=True)


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").double().numpy() if hasattr(t, "detach") else np.asarray(t, np.float64)


def orthogonal_weight(state: dict, prefix: str = "rotate_layer") -> np.ndarray:
    """Effective ``[d, r]`` weight of a torch-orthogonal-parametrized ``LowRankRotateLayer``.

    pyreft 0.1.0 saves ``{prefix}.parametrizations.weight.original`` and
    ``{prefix}.parametrizations.weight.0.base``; the weight is what torch's
    parametrization computes from both, so we rebuild that module and read it.
    The rebuild runs in float64 whatever the saved dtype (CPU torch has no
    bf16 Householder) and leaves torch's global RNG untouched.
    """
    import torch

    orig_key = f"{prefix}.parametrizations.weight.original"
    base_key = f"{prefix}.parametrizations.weight.0.base"
    _need(state, orig_key, base_key)  # without base the rotation would be a fresh random one
    original = state[orig_key]
    if original.ndim != 2:
        raise AdapterError(f"{orig_key} must be 2-D, got shape {list(original.shape)}")
    d, r = original.shape

    class _Rotate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(d, r, dtype=torch.float64))

    sub = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
    with torch.random.fork_rng(devices=[]):  # registering the parametrization draws torch.randn
        mod = torch.nn.utils.parametrizations.orthogonal(_Rotate())
    try:
        mod.load_state_dict(sub, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise AdapterError(f"cannot rebuild the orthogonal rotation: {detail[:240]}") from None
    with torch.no_grad():
        return _np(mod.weight)


def _need(state: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise AdapterError(f"state dict lacks {missing} (has {sorted(state)[:8]})")


def infer_type(state: dict) -> str:
    """Guess the intervention type from the saved keys; raise when ambiguous."""
    keys = set(state)
    if "rotate_layer" in keys and "weight" in keys:
        return "LoReFT"
    if any(k.startswith("rotate_layer.parametrizations") for k in keys):
        if "learned_source.weight" in keys:
            return "DiReFT"
        raise AdapterError("cannot tell ConsReFT from LobiReFT from the weights alone; pass the type")
    if "proj_layer.weight" in keys:
        raise AdapterError("cannot tell NoReFT from NodiReFT from the weights alone; pass the type")
    raise AdapterError(f"state dict keys {sorted(keys)[:8]} match no pyreft intervention")


def from_state_dict(state: dict, kind: str | None, layer: int, act: str | None = None) -> DonorEdit:
    """Build the :class:`DonorEdit` of one saved pyreft intervention state dict."""
    kind = normalize_type(kind) if kind else infer_type(state)
    try:
        act = canonical_activation(act)
    except ValueError as exc:
        raise AdapterError(str(exc)) from None
    if kind == "LoReFT":
        _need(state, "weight", "bias", "rotate_layer")
        W, b, R = _np(state["weight"]), _np(state["bias"]), _np(state["rotate_layer"])
        edit = DonorEdit(layer, W.T, b, R.T, act, P=R, Q=R.T, kind=kind)
    elif kind in ("NoReFT", "NodiReFT"):
        _need(state, "proj_layer.weight", "learned_source.weight", "learned_source.bias")
        Pw = _np(state["proj_layer.weight"])
        W, b = _np(state["learned_source.weight"]), _np(state["learned_source.bias"])
        edit = DonorEdit(layer, W.T, b, Pw, act, kind=kind)
        if kind == "NoReFT":
            edit.P, edit.Q = Pw.T, Pw
            if "proj_layer.bias" in state:
                p = _np(state["proj_layer.bias"])
                if p.shape != Pw.shape[:1] or Pw.ndim != 2:
                    raise AdapterError(
                        f"layer {layer}: proj_layer.bias{list(p.shape)} does not fit proj_layer.weight{list(Pw.shape)}"
                    )
                edit.e = -p @ Pw
    elif kind == "DiReFT":
        _need(state, "learned_source.weight", "learned_source.bias")
        R = orthogonal_weight(state)
        W, b = _np(state["learned_source.weight"]), _np(state["learned_source.bias"])
        edit = DonorEdit(layer, W.T, b, R.T, act, kind=kind)
    else:  # ConsReFT / LobiReFT: constant source c [r], no input dependence in the act term
        _need(state, "learned_source")
        R = orthogonal_weight(state)
        c = _np(state["learned_source"]).reshape(-1)
        d, r = R.shape
        edit = DonorEdit(layer, np.zeros((d, r)), c, R.T, "linear", kind=kind)
        if kind == "ConsReFT":
            edit.P, edit.Q = R, R.T
    _check_shapes(edit)
    return edit


def _check_shapes(edit: DonorEdit) -> None:
    for name, ndim in (("A", 2), ("b", 1), ("C", 2), ("P", 2), ("Q", 2), ("e", 1)):
        t = getattr(edit, name)
        if t is not None and t.ndim != ndim:
            raise AdapterError(f"layer {edit.layer}: {name} must be {ndim}-D, got shape {list(t.shape)}")
    d, r = edit.A.shape
    if r < 1:
        raise AdapterError(f"layer {edit.layer}: rank is 0")
    if edit.b.shape != (r,) or edit.C.shape != (r, d):
        raise AdapterError(
            f"layer {edit.layer}: inconsistent shapes A{list(edit.A.shape)} b{list(edit.b.shape)} "
            f"C{list(edit.C.shape)}"
        )
    if edit.P is not None and (edit.P.shape[0] != d or edit.Q.shape != (edit.P.shape[1], d)):
        raise AdapterError(f"layer {edit.layer}: inconsistent shapes P{list(edit.P.shape)} Q{list(edit.Q.shape)}")
    for name in ("A", "b", "C", "P", "Q", "e"):
        t = getattr(edit, name)
        if t is not None and not np.all(np.isfinite(t)):
            raise AdapterError(f"layer {edit.layer}: tensor {name} has NaN or Inf values")
