"""Least-squares translators between two models' activation spaces, via the Gram matrix.

For profiles ``X_R [N, d_R]`` and ``X_D [N, d_D]`` (same N prompts, one layer each):

    C_R→D = pinv(X_R) @ X_D   [d_R, d_D]        C_D→R = pinv(X_D) @ X_R   [d_D, d_R]

With N < d, ``pinv(X) = Xᵀ (X Xᵀ)⁺``: everything goes through the N×N Gram
matrix ``G = X Xᵀ``. We eigendecompose ``G = U diag(λ) Uᵀ`` once per profile
layer (float64) and keep ``(U, 1/λ)`` for the eigenvalues above the pinv
cutoff, so the full ``d_R×d_D`` matrices are never formed: products like
``C_R→D @ W [d_D, r]`` cost ``O(N·d·r)``.

Cutoff: ``torch.linalg.pinv`` drops singular values ``σ ≤ rtol·σ_max`` with
``rtol = max(N, d)·eps(dtype)``; with ``λ = σ²`` that is ``λ ≤ rtol²·λ_max``. We
use the same rule with eps of the profile's dtype (float32 profiles → float32
eps), and never keep eigenvalues below ``N·eps64·λ_max`` (the float64 noise
floor of the Gram eigendecomposition).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GramFactor:
    """Factorization of one profile layer ``X [N, d]`` for applying ``pinv(X)``.

    ``X`` is kept as float32/float64 ``[N, d]``; ``U [N, k]`` and ``inv_lam [k]``
    hold the kept eigenpairs of ``X Xᵀ`` (``k`` = numerical rank).
    """

    X: np.ndarray
    U: np.ndarray
    inv_lam: np.ndarray
    rank: int

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.X.shape[1])

    def x_times(self, M: np.ndarray) -> np.ndarray:
        """``X @ M`` for ``M [d, m]`` → ``[N, m]`` float64 (BLAS in X's dtype; no float64 copy of X)."""
        return (self.X @ np.asarray(M, dtype=self.X.dtype)).astype(np.float64, copy=False)

    def times_x(self, M: np.ndarray) -> np.ndarray:
        """``M @ X`` for ``M [m, N]`` → ``[m, d]`` float64."""
        return (np.asarray(M, dtype=self.X.dtype) @ self.X).astype(np.float64, copy=False)

    def pinv_times(self, Y: np.ndarray) -> np.ndarray:
        """``pinv(X) @ Y`` for ``Y [N, m]`` → ``[d, m]`` (float64; the N×N part in float64)."""
        Z = self.U.T @ np.asarray(Y, dtype=np.float64)
        Z *= self.inv_lam[:, None]
        W = self.U @ Z
        return (self.X.T @ W.astype(self.X.dtype)).astype(np.float64, copy=False)

    def times_pinv(self, M: np.ndarray) -> np.ndarray:
        """``M @ pinv(X)`` for ``M [m, d]`` → ``[m, N]`` (float64)."""
        Z = (np.asarray(M, dtype=self.X.dtype) @ self.X.T).astype(np.float64, copy=False)
        Z = Z @ self.U
        Z *= self.inv_lam[None, :]
        return Z @ self.U.T


def factorize(X: np.ndarray, rtol: float | None = None) -> GramFactor:
    """Factor ``X [N, d]`` for pseudo-inverse products (see module docstring for the cutoff)."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"profile layer must be a non-empty [N, d] matrix, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("profile layer contains NaN or Inf")
    n, d = X.shape
    eps = np.finfo(X.dtype if X.dtype in (np.float32, np.float64) else np.float32).eps
    if rtol is None:
        rtol = max(n, d) * eps
    X64 = X.astype(np.float64, copy=False)
    G = X64 @ X64.T
    fast = _cholesky_factor(X, G, rtol)
    if fast is not None:
        return fast
    lam, U = np.linalg.eigh(G)
    lam_max = float(lam[-1]) if lam.size else 0.0
    if lam_max <= 0:
        return GramFactor(X=X, U=np.zeros((n, 0)), inv_lam=np.zeros(0), rank=0)
    cutoff = max(rtol * rtol * lam_max, n * np.finfo(np.float64).eps * lam_max)
    keep = lam > cutoff
    return GramFactor(X=X, U=np.ascontiguousarray(U[:, keep]), inv_lam=1.0 / lam[keep], rank=int(keep.sum()))


def _cholesky_factor(X: np.ndarray, G: np.ndarray, rtol: float) -> GramFactor | None:
    """Fast path when ``G`` is provably above the cutoff: ``G⁻¹ = L⁻ᵀ L⁻¹`` (then pinv = inverse).

    Proof of "above the cutoff" without an eigendecomposition: ``λ_min ≥ 1/‖L⁻¹‖_F²``
    and ``λ_max ≤ ‖G‖_F``. Returns ``None`` (use ``eigh``) when the bound fails.
    """
    n = G.shape[0]
    try:
        L = np.linalg.cholesky(G)
    except np.linalg.LinAlgError:
        return None
    Linv = tril_inv(L)
    if not np.all(np.isfinite(Linv)):
        return None
    lam_min_lb = 1.0 / float(np.sum(Linv * Linv))
    lam_max_ub = float(np.linalg.norm(G))
    cutoff_ub = max(rtol * rtol, n * np.finfo(np.float64).eps) * lam_max_ub
    if lam_min_lb <= 4.0 * cutoff_ub:
        return None
    # G⁻¹ = Linvᵀ Linv: store U = Linvᵀ and unit weights so the eigh code path applies unchanged.
    return GramFactor(X=X, U=np.ascontiguousarray(Linv.T), inv_lam=np.ones(n), rank=n)


def tril_inv(L: np.ndarray, block: int = 128) -> np.ndarray:
    """Inverse of a lower-triangular ``L [n, n]`` by recursive 2×2 blocking (BLAS-3 products).

    ``inv([[A, 0], [B, C]]) = [[A⁻¹, 0], [−C⁻¹·B·A⁻¹, C⁻¹]]``: about ⅔·n³ flops against ~2·n³ for
    ``np.linalg.inv`` (LU of a general matrix); numpy has no triangular inverse of its own.
    """
    n = L.shape[0]
    if n <= block:
        return np.tril(np.linalg.inv(L))
    k = n // 2
    a_inv, c_inv = tril_inv(L[:k, :k], block), tril_inv(L[k:, k:], block)
    out = np.zeros_like(L)
    out[:k, :k] = a_inv
    out[k:, k:] = c_inv
    out[k:, :k] = -(c_inv @ (L[k:, :k] @ a_inv))
    return out


def translator(src: GramFactor, dst_X: np.ndarray) -> np.ndarray:
    """The full matrix ``pinv(X_src) @ X_dst`` ``[d_src, d_dst]`` (for checks and diagnostics only)."""
    return src.pinv_times(dst_X)


def fit_diagnostics(
    fR: GramFactor, fD: GramFactor, XR_held: np.ndarray, XD_held: np.ndarray
) -> dict[str, float]:
    """Held-out fit figures for one layer pair, never forming ``d_R×d_D`` matrices.

    * ``r2_r2d``: R² of ``X_R_held @ C_R→D`` against ``X_D_held`` (1 = perfect).
    * ``r2_d2r``: the same for ``C_D→R``.
    * ``cycle_err``: ``‖X_R_held @ C_R→D @ C_D→R − X_R_held‖ / ‖X_R_held‖``.
    """
    XR = np.asarray(XR_held, dtype=np.float64)
    XD = np.asarray(XD_held, dtype=np.float64)
    # X_R_held @ C_R→D = (X_R_held @ pinv(X_R)) @ X_D, and X_R_held @ pinv(X_R) = fR.times_pinv(X_R_held)
    coef_r = fR.times_pinv(XR)  # [M, N]
    pred_d = fD.times_x(coef_r)
    coef_d = fD.times_pinv(XD)
    pred_r = fR.times_x(coef_d)
    cyc = fR.times_x(fD.times_pinv(pred_d))

    def r2(pred: np.ndarray, true: np.ndarray) -> float:
        ss_res = float(np.sum((true - pred) ** 2))
        ss_tot = float(np.sum((true - true.mean(axis=0)) ** 2))
        return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")

    return {
        "r2_r2d": r2(pred_d, XD),
        "r2_d2r": r2(pred_r, XR),
        "cycle_err": float(np.linalg.norm(cyc - XR) / max(np.linalg.norm(XR), 1e-30)),
    }
