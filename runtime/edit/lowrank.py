"""The low-rank edit every behavior-pack entry applies, in plain numpy.

One entry edits a hidden state row ``h`` (``[d]``, or a batch ``[n, d]``) as

    delta(h) = act(h @ A + b) @ C  -  (h @ P) @ Q  +  e

with ``A [d, r]``, ``b [r]``, ``C [r, d]``, optional ``P [d, q]``, ``Q [q, d]``
and optional offset ``e [d]``. Every pyreft intervention folds into this form
(see ``commandv.exporter.adapters.interventions``). The engines add ``s * delta(h)``.

:class:`LowRankEdit` is the one edit type: a donor's intervention
(:class:`~commandv.exporter.adapters.interventions.DonorEdit`) and a pack entry
(:class:`~commandv.runtime.pack.model.PackEntry`) are this type plus their own metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from commandv.runtime.edit.activations import ACTIVATIONS, canonical_activation  # noqa: F401  (the one table: activations.py)
from commandv.runtime.edit.activations import ALIASES as ACTIVATION_ALIASES  # noqa: F401


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


@dataclass
class LowRankEdit:
    """One layer's edit ``delta(h) = act(h@A + b)@C − (h@P)@Q + e`` of the output of block ``layer``.

    ``A [d, r]``, ``b [r]``, ``C [r, d]``; optional ``P [d, q]``, ``Q [q, d]``, ``e [d]``. Subclasses add what
    their side knows: :class:`~commandv.exporter.adapters.interventions.DonorEdit` the pyreft ``kind`` (float64,
    donor ``d``), :class:`~commandv.runtime.pack.model.PackEntry` positions, strength and donor layer (float32,
    recipient ``d``)::

        edit = LowRankEdit(layer=3, A=A, b=b, C=C, act="relu")
        edit.delta(h)         # [..., d]
        edit.delta_norms(h)   # [...]
    """

    layer: int
    A: np.ndarray
    b: np.ndarray
    C: np.ndarray
    act: str = "linear"
    P: np.ndarray | None = None
    Q: np.ndarray | None = None
    e: np.ndarray | None = None

    @property
    def d(self) -> int:
        """Hidden size the edit reads and writes."""
        return int(self.A.shape[0])

    @property
    def rank(self) -> int:
        """Width ``r`` of ``act(h@A + b)``."""
        return int(self.A.shape[1])

    def delta(self, h: np.ndarray) -> np.ndarray:
        """The edit for hidden states ``h [..., d]`` → ``[..., d]`` (without any strength)."""
        return lowrank_delta(h, self.A, self.b, self.C, self.act, self.P, self.Q, self.e)

    def delta_norms(self, h: np.ndarray) -> np.ndarray:
        """``‖delta(h)‖`` per row of ``h [..., d]`` → ``[...]`` (without forming the deltas)."""
        return delta_row_norms(h, self.A, self.b, self.C, self.act, self.P, self.Q, self.e)
