"""Fold translators and a donor intervention into a recipient-side pack entry.

For a recipient row ``h [d_R]`` the transferred edit is
``delta_R(h) = delta_D(h @ C_R→D) @ C_D→R`` with ``C_R→D = pinv(X_R) X_D`` and
``C_D→R = pinv(X_D) X_R``. With ``delta_D(x) = act(x A + b) C − (x P) Q + e`` this is
exactly ``act(h A' + b) C' − (h P') Q' + e'`` where

    A' = C_R→D A   [d_R, r]      C' = C C_D→R   [r, d_R]
    P' = C_R→D P   [d_R, q]      Q' = Q C_D→R   [q, d_R]      e' = e C_D→R  [d_R]

computed through the Gram factorizations, never forming ``C_R→D`` or ``C_D→R``.
"""

from __future__ import annotations

import numpy as np

from commandv.runtime.pack import PackEntry

from .interventions import DonorEdit
from .translators import GramFactor


def fold_edit(edit: DonorEdit, fR: GramFactor, fD: GramFactor, recipient_layer: int,
              positions: str = "l1", strength: float = 1.0) -> PackEntry:
    """Fold one donor edit into a float32 :class:`PackEntry` for ``recipient_layer``.

    One pass over each profile: ``Y = X_D @ [A P | Cᵀ Qᵀ eᵀ]`` ``[N, k]``, then ``Z = [G_R⁺ Y₁ | G_D⁺ Y₂]``,
    then ``X_Rᵀ @ Z`` ``[d_R, k]`` holds ``A' P'`` and ``(C' Q' e')ᵀ`` (``pinv(X) = Xᵀ G⁺``).
    """
    if fD.d != edit.d:
        raise ValueError(f"donor profile has d={fD.d} but the adapter layer {edit.layer} has d={edit.d}")
    if fR.n != fD.n:
        raise ValueError(f"profiles have different prompt counts (recipient {fR.n}, donor {fD.n})")
    r2d = [edit.A] + ([] if edit.P is None else [edit.P])  # each [d_D, ·]: C_R→D @ M
    d2r = [edit.C] + ([] if edit.Q is None else [edit.Q]) + ([] if edit.e is None else [edit.e[None, :]])  # M @ C_D→R
    widths = [m.shape[1] for m in r2d] + [m.shape[0] for m in d2r]
    k1 = sum(widths[: len(r2d)])
    M = np.concatenate([np.asarray(m) for m in r2d] + [np.asarray(m).T for m in d2r], axis=1)
    Y = fD.x_times(M)  # [N, k]: X_D @ M (one pass over X_D)
    Z = np.concatenate([fR.solve(Y[:, :k1]), fD.solve(Y[:, k1:])], axis=1)
    out = fR.times_x(Z.T).T  # [d_R, k]: X_Rᵀ @ Z (one pass over X_R)
    it = iter(np.split(out, np.cumsum(widths)[:-1], axis=1))
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    A = f32(next(it))
    P = None if edit.P is None else f32(next(it))
    C = f32(next(it).T)
    Q = None if edit.Q is None else f32(next(it).T)
    e = None if edit.e is None else f32(next(it)[:, 0])
    return PackEntry(layer=recipient_layer, donor_layer=edit.layer, A=A, b=f32(edit.b), C=C, P=P, Q=Q, e=e,
                     act=edit.act, positions=positions, strength=strength)


def unfolded_delta(edit: DonorEdit, C_rd: np.ndarray, C_dr: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Reference: ``delta_D(h @ C_R→D) @ C_D→R`` with explicit translators (``h [n, d_R]``)."""
    return edit.delta(h @ C_rd) @ C_dr
