"""The one table of pack-entry activations; every other representation is derived from it.

A pack entry names its activation in transformers' ``ACT2FN`` spelling (what pyreft passes as ``act_fn``).
Several names share one function: :data:`KINDS` lists each function once, in C id order, with

* ``slot``: the function's own name, also the ONNX pack-slot name (:data:`SLOT_ACTS`) and, upper-cased,
  the C enum ``CMDV_ACT_<SLOT>`` of ``runtime/native/cmdv_core.h`` (``tests/test_lowrank.py`` checks the C
  enum and the name table of ``cmdv_spec.c`` against this table);
* ``c_id``: the C activation id;
* ``names``: the pack spellings computing it (each is canonical: :func:`canonical_activation` returns it);
* ``numpy``: the function on numpy arrays;
* ``torch``: the name of the function in ``torch`` / ``torch.nn.functional`` with its keyword arguments
  (torch is imported only by the torch engine).

:data:`ALIASES` are further spellings that mean a canonical name (``identity`` → ``linear``). Derived:
``lowrank.ACTIVATIONS`` (name → numpy), :data:`ACT_IDS` (name → C id, ``native.build.ACT_IDS``),
:data:`SLOT_ACTS` / :data:`SLOT_OF` (``engines/onnx/surgery.SLOT_ACTS`` / ``_ACT_ALIAS``), ``engines/reference._TORCH_ACTS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu_erf(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class ActivationKind:
    """One activation function and every name it goes by (see the module docstring)."""

    slot: str
    c_id: int
    names: tuple[str, ...]
    numpy: Callable[[np.ndarray], np.ndarray]
    torch: tuple[str, dict] = field(default=("", {}))
    """``(function, kwargs)``: ``"Tensor.<m>"`` is a tensor method, else a ``torch.nn.functional`` function;
    ``""`` is the identity."""
    onnx_op: str = ""
    """The ONNX operator computing it in one node, or ``""`` (``engines/onnx/surgery.py`` composes it from several)."""

    @property
    def c_enum(self) -> str:
        return f"CMDV_ACT_{self.slot.upper()}"


KINDS: tuple[ActivationKind, ...] = (
    ActivationKind("linear", 0, ("linear",), lambda x: x, ("", {}), "Identity"),
    ActivationKind("relu", 1, ("relu",), lambda x: np.maximum(x, 0.0), ("Tensor.clamp_min", {"min": 0}), "Relu"),
    ActivationKind("gelu", 2, ("gelu",), _gelu_erf, ("gelu", {})),
    ActivationKind("gelu_tanh", 3, ("gelu_new", "gelu_pytorch_tanh"), _gelu_tanh, ("gelu", {"approximate": "tanh"})),
    ActivationKind("silu", 4, ("silu", "swish"), _silu, ("silu", {})),
    ActivationKind("tanh", 5, ("tanh",), np.tanh, ("Tensor.tanh", {}), "Tanh"),
    ActivationKind("sigmoid", 6, ("sigmoid",), _sigmoid, ("Tensor.sigmoid", {}), "Sigmoid"),
)
"""Every activation, in C id order (``c_id`` = index)."""

ALIASES = {"identity": "linear", "none": "linear", "": "linear"}
"""Further spellings (after strip + lower-case) → canonical name."""

KIND_OF: dict[str, ActivationKind] = {n: k for k in KINDS for n in k.names}
"""Canonical name → its :class:`ActivationKind`."""

ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {n: k.numpy for n, k in KIND_OF.items()}
"""Canonical activation name (transformers ``ACT2FN`` spelling) → numpy function."""

ACT_IDS: dict[str, int] = {n: k.c_id for n, k in KIND_OF.items()}
"""Canonical activation name → C activation id (``CMDV_ACT_*``)."""

SLOT_ACTS: tuple[str, ...] = tuple(k.slot for k in KINDS)
"""Function names in C id order: the one-hot ``act`` input of an ONNX pack slot."""

SLOT_OF: dict[str, str] = {n: k.slot for n, k in KIND_OF.items()}
"""Canonical name → function (slot) name."""

SLOT_KIND: dict[str, ActivationKind] = {k.slot: k for k in KINDS}
"""Function (slot) name → its :class:`ActivationKind`."""

def canonical_activation(name: str | None) -> str:
    """Return the canonical activation name, or raise ``ValueError`` naming the unknown one."""
    key = (name or "linear").strip().lower()
    key = ALIASES.get(key, key)
    if key not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; supported: {', '.join(sorted(ACTIVATIONS))}"
        )
    return key


def kind(name: str | None) -> ActivationKind:
    """The :class:`ActivationKind` of any accepted spelling; ``ValueError`` for an unknown one."""
    return KIND_OF[canonical_activation(name)]


def torch_activation(name: str | None) -> Callable:
    """The activation as a function on torch tensors (imports torch)."""
    import torch

    fn, kw = kind(name).torch
    if not fn:
        return lambda t: t
    if fn.startswith("Tensor."):
        method = getattr(torch.Tensor, fn[len("Tensor."):])
        return lambda t: method(t, **kw)
    f = getattr(torch.nn.functional, fn)
    return lambda t: f(t, **kw)
