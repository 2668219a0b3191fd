"""The low-rank edit every behavior-pack entry applies, in plain numpy.

One entry edits a hidden state row ``h`` (``[d]``, or a batch ``[n, d]``) as

    delta(h) = act(h @ A + b) @ C  -  (h @ P) @ Q  +  e

with ``A [d, r]``, ``b [r]``, ``C [r, d]``, optional ``P [d, q]``, ``Q [q, d]``
and optional offset ``e [d]``. Every pyreft intervention folds into this form
(see ``commandv.exporter.interventions``). The engines add ``s * delta(h)``.
"""

from __future__ import annotations

import math

import numpy as np

# Activation names follow transformers' ACT2FN keys (what pyreft passes as act_fn).
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


ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu": _gelu_erf,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "silu": _silu,
    "swish": _silu,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
}
"""Supported activation names (transformers ``ACT2FN`` spelling) → numpy functions."""

ACTIVATION_ALIASES = {"identity": "linear", "none": "linear", "": "linear"}


def canonical_activation(name: str | None) -> str:
    """Return the canonical activation name, or raise ``ValueError`` naming the unknown one."""
    key = (name or "linear").strip().lower()
    key = ACTIVATION_ALIASES.get(key, key)
    if key not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; supported: {', '.join(sorted(ACTIVATIONS))}"
        )
    return key


def apply_activation(name: str, x: np.ndarray) -> np.ndarray:
    """Apply activation ``name`` elementwise."""
    return ACTIVATIONS[canonical_activation(name)](x)


def _hidden(h: np.ndarray, A: np.ndarray, b: np.ndarray, act: str) -> np.ndarray:
    """``act(h@A + b)`` ``[..., r]`` in the dtype of ``h`` promoted with ``A``."""
    return apply_activation(act, h @ A + b).astype(np.result_type(h, A), copy=False)


def lowrank_delta(
    h: np.ndarray,
    A: np.ndarray,
    b: np.ndarray,
    C: np.ndarray,
    act: str = "linear",
    P: np.ndarray | None = None,
    Q: np.ndarray | None = None,
    e: np.ndarray | None = None,
) -> np.ndarray:
    """``act(h@A + b)@C - (h@P)@Q + e`` for ``h`` of shape ``[..., d]``; returns ``[..., d]``.

    Computed in the dtype of ``h`` promoted with the matrices (float32 packs on
    float32 states stay float32).
    """
    z = _hidden(h, A, b, act)
    out = z @ C
    if P is not None and Q is not None and P.shape[1] > 0:
        out = out - (h @ P) @ Q
    if e is not None:
        out = out + e
    return out


def delta_row_norms(
    h: np.ndarray,
    A: np.ndarray,
    b: np.ndarray,
    C: np.ndarray,
    act: str = "linear",
    P: np.ndarray | None = None,
    Q: np.ndarray | None = None,
    e: np.ndarray | None = None,
) -> np.ndarray:
    """``‖lowrank_delta(h, …)‖`` over the last axis, ``[...]``, without forming the ``[..., d]`` deltas.

    The delta is ``u @ W`` with ``u = [act(h@A + b), −h@P, 1]`` and ``W = [C; Q; e]`` stacked, so its
    squared norm is ``u (W Wᵀ) uᵀ``, with ``W Wᵀ`` only ``(r + q + 1)²``: a row costs ``O(d·(r + q))``.
    """
    z = _hidden(h, A, b, act)
    parts, rows = [z], [C]
    if P is not None and Q is not None and P.shape[1] > 0:
        parts.append(-(h @ P))
        rows.append(Q)
    if e is not None:
        parts.append(np.ones(z.shape[:-1] + (1,), z.dtype))
        rows.append(np.asarray(e)[None, :])
    u = np.concatenate(parts, axis=-1)
    W = np.concatenate(rows, axis=0).astype(u.dtype, copy=False)
    sq = np.einsum("...i,ij,...j->...", u, W @ W.T, u)
    return np.sqrt(np.maximum(sq, 0.0))
