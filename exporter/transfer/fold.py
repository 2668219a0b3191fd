"""Fold translators and a donor intervention into a recipient-side pack entry.

For a recipient row ``h [d_R]`` the transferred edit is
``delta_R(h) = delta_D(h @ C_R→D) @ C_D→R`` with ``C_R→D = pinv(X_R) X_D`` and
``C_D→R = pinv(X_D) X_R``. With ``delta_D(x) = act(x A + b) C − (x P) Q + e`` this is
exactly ``act(h A' + b) C' − (h P') Q' + e'`` where

    A' = C_R→D A   [d_R, r]      C' = C C_D→R   [r, d_R]
    P' = C_R→D P   [d_R, q]      Q' = Q C_D→R   [q, d_R]      e' = e C_D→R  [d_R]

computed through the Gram factorizations, never forming ``C_R→D`` or ``C_D→R``.
When every pair of an export took the float32-Gram path, all of them run in one call of the
native fold kernels (:mod:`commandv.exporter.transfer.fold_native`), else in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from commandv.exporter.adapters.interventions import DonorEdit
from commandv.exporter.transfer import fold_native
from commandv.exporter.transfer.translators import GramFactor
from commandv.runtime.pack.model import PackEntry


@dataclass
class FoldItem:
    """One donor edit to fold: the edit, the two profile layers' factors, and the pack entry's fields."""

    edit: DonorEdit
    fR: GramFactor
    fD: GramFactor
    recipient_layer: int
    positions: str = "l1"
    strength: float = 1.0


def fold_edit(edit: DonorEdit, fR: GramFactor, fD: GramFactor, recipient_layer: int,
              positions: str = "l1", strength: float = 1.0) -> PackEntry:
    """Fold one donor edit into a float32 :class:`PackEntry` for ``recipient_layer``.

    One pass over each profile: ``Y = X_D @ [A P | Cᵀ Qᵀ eᵀ]`` ``[N, k]``, then ``Z = [G_R⁺ Y₁ | G_D⁺ Y₂]``,
    then ``X_Rᵀ @ Z`` ``[d_R, k]`` holds ``A' P'`` and ``(C' Q' e')ᵀ`` (``pinv(X) = Xᵀ G⁺``).
    """
    return fold_edits([FoldItem(edit, fR, fD, recipient_layer, positions, strength)])[0]


def fold_edits(items: Sequence[FoldItem]) -> list[PackEntry]:
    """Fold several edits (an export's layer pairs) → one :class:`PackEntry` each, in order.

    When every pair took the verified float32-Gram path (float32 profiles and Cholesky factors), all
    of them run in one call of the native kernels (:mod:`commandv.exporter.transfer.fold_native`); otherwise, or without the
    kernels, each runs through numpy.
    """
    blocks = []
    for it in items:
        edit, fR, fD = it.edit, it.fR, it.fD
        if fD.d != edit.d:
            raise ValueError(f"donor profile has d={fD.d} but the adapter layer {edit.layer} has d={edit.d}")
        if fR.n != fD.n:
            raise ValueError(f"profiles have different prompt counts (recipient {fR.n}, donor {fD.n})")
        r2d = [edit.A] + ([] if edit.P is None else [edit.P])  # each [d_D, ·]: C_R→D @ M
        d2r = [edit.C] + ([] if edit.Q is None else [edit.Q]) + ([] if edit.e is None else [edit.e[None, :]])
        blocks.append(([np.asarray(m) for m in r2d], [np.asarray(m).T for m in d2r]))  # M @ C_D→R as C_D→Rᵀ Mᵀ
    outs = _native_folds(items, blocks)
    if outs is None:
        outs = [_numpy_fold(it.fR, it.fD, to_r, to_d) for it, (to_r, to_d) in zip(items, blocks)]
    return [_entry(it, o) for it, o in zip(items, outs)]


def _numpy_fold(fR: GramFactor, fD: GramFactor, to_r: list[np.ndarray], to_d: list[np.ndarray]) -> list[np.ndarray]:
    """The fold through numpy: ``[d_R, w]`` for each ``to_r`` block, then ``[w, d_R]`` for each ``to_d`` one."""
    cols = to_r + to_d
    M = np.concatenate(cols, axis=1)
    k1 = sum(m.shape[1] for m in to_r)
    Y = fD.x_times(M)  # [N, k]: X_D @ M (one pass over X_D)
    Z = np.concatenate([fR.solve(Y[:, :k1]), fD.solve(Y[:, k1:])], axis=1)
    out = fR.times_x(Z.T).T  # [d_R, k]: X_Rᵀ @ Z (one pass over X_R)
    parts = np.split(out, np.cumsum([m.shape[1] for m in cols])[:-1], axis=1)
    return parts[: len(to_r)] + [q.T for q in parts[len(to_r):]]  # the to_d results as [w, d_R], like the kernels


def _native_folds(items: Sequence[FoldItem], blocks: list) -> list[list[np.ndarray]] | None:
    """All pairs in one native call when every one has float32 profiles and float32 Cholesky factors
    (the verified float32-Gram path), else ``None``."""
    pairs = []
    for it, (to_r, to_d) in zip(items, blocks):
        PR, PD = it.fR.panels(), it.fD.panels()
        if PR is None or PD is None:
            return None
        pairs.append(fold_native.PairFold(it.fD.X, it.fR.X, PR, PD, to_r, to_d))
    return fold_native.fold_batch(pairs)


def _entry(it: FoldItem, outs: list[np.ndarray]) -> PackEntry:
    edit = it.edit
    parts = iter(outs)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    A = f32(next(parts))  # [d_R, r]
    P = None if edit.P is None else f32(next(parts))
    C = f32(next(parts))  # [r, d_R]
    Q = None if edit.Q is None else f32(next(parts))
    e = None if edit.e is None else f32(next(parts)[0])
    return PackEntry(layer=it.recipient_layer, donor_layer=edit.layer, A=A, b=f32(edit.b), C=C, P=P, Q=Q, e=e,
                     act=edit.act, positions=it.positions, strength=it.strength)


def unfolded_delta(edit: DonorEdit, C_rd: np.ndarray, C_dr: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Reference: ``delta_D(h @ C_R→D) @ C_D→R`` with explicit translators (``h [n, d_R]``)."""
    return edit.delta(h @ C_rd) @ C_dr
