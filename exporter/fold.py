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


def _r2d(fR: GramFactor, fD: GramFactor, M: np.ndarray) -> np.ndarray:
    """``C_R→D @ M`` for ``M [d_D, k]`` → ``[d_R, k]``."""
    return fR.pinv_times(fD.x_times(M))


def _d2r(fR: GramFactor, fD: GramFactor, M: np.ndarray) -> np.ndarray:
    """``M @ C_D→R`` for ``M [k, d_D]`` → ``[k, d_R]``."""
    return fR.times_x(fD.times_pinv(M))


def fold_edit(edit: DonorEdit, fR: GramFactor, fD: GramFactor, recipient_layer: int,
              positions: str = "l1", strength: float = 1.0) -> PackEntry:
    """Fold one donor edit into a float32 :class:`PackEntry` for ``recipient_layer``."""
    if fD.d != edit.d:
        raise ValueError(f"donor profile has d={fD.d} but the adapter layer {edit.layer} has d={edit.d}")
    if fR.n != fD.n:
        raise ValueError(f"profiles have different prompt counts (recipient {fR.n}, donor {fD.n})")
    f32 = lambda a: None if a is None else np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return PackEntry(
        layer=recipient_layer,
        donor_layer=edit.layer,
        A=f32(_r2d(fR, fD, edit.A)),
        b=f32(edit.b),
        C=f32(_d2r(fR, fD, edit.C)),
        P=f32(None if edit.P is None else _r2d(fR, fD, edit.P)),
        Q=f32(None if edit.Q is None else _d2r(fR, fD, edit.Q)),
        e=f32(None if edit.e is None else _d2r(fR, fD, edit.e[None, :])[0]),
        act=edit.act,
        positions=positions,
        strength=strength,
    )


def unfolded_delta(edit: DonorEdit, C_rd: np.ndarray, C_dr: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Reference: ``delta_D(h @ C_R→D) @ C_D→R`` with explicit translators (``h [n, d_R]``)."""
    return edit.delta(h @ C_rd) @ C_dr
