"""Least-squares translators between two models' activation spaces, via the Gram matrix.

For profiles ``X_R [N, d_R]`` and ``X_D [N, d_D]`` (same N prompts, one layer each)::

    C_R→D = pinv(X_R) @ X_D   [d_R, d_D]        C_D→R = pinv(X_D) @ X_R   [d_D, d_R]

are applied without forming them: with N < d, ``pinv(X) = Xᵀ (X Xᵀ)⁺``, so each profile layer is factored
once through its N×N Gram matrix ``G = X Xᵀ`` and a product such as ``C_R→D @ W [d_D, r]`` costs
``O(N·d·r)``::

    fR, fD = factorize(X_R), factorize(X_D)
    CW = fR.pinv_times(fD.x_times(W))  # C_R→D @ W = pinv(X_R) @ (X_D @ W) → float64 [d_R, r]
    fit = fit_diagnostics(fR, fD, XR_held, XD_held)  # held-out r2_r2d, r2_d2r, cycle_err

Cutoff: ``torch.linalg.pinv``'s rule, ``σ ≤ rtol·σ_max`` dropped with ``rtol = max(N, d)·eps`` of the
profile's dtype (``λ = σ²``: ``λ ≤ rtol²·λ_max``), never keeping eigenvalues below the float64 noise floor
``N·eps64·λ_max``; ``factorize(X, rtol=…)`` truncates harder.

Two factorizations, one meaning:

* float32 Cholesky (float32 profiles with N ≤ d): the Gram is formed in float32, Cholesky-factored in float64
  and the factor stored in float32. It is kept only when a random probe solved with it (against an exact
  float64 product) is within :data:`GRAM32_TOL` and inverse iteration puts the smallest eigenvalue above the
  pinv cutoff by a wide margin, so ``pinv = inverse``;
* otherwise (ill-conditioned or rank-deficient profiles, as real LLM profiles usually are) the float64 Gram:
  Cholesky when provably above the cutoff, else an eigendecomposition ``G = U diag(λ) Uᵀ`` keeping
  ``(U, 1/λ)`` above the cutoff.

Solves with a float32 factor run in the native fold kernels (:mod:`commandv.exporter.transfer.fold_native`) when they are available,
else as blocked numpy products (:class:`commandv.exporter.transfer.triangular.TriangularSolver`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from commandv.exporter.transfer import fold_native
from commandv.exporter.transfer.triangular import TriangularSolver, tril_inv

GRAM32_TOL = 1e-5
"""Largest accepted relative solve error of the float32-Gram factor (measured by a random probe)."""

_CUTOFF_MARGIN = 1e3


@dataclass
class GramFactor:
    """Factorization of one profile layer ``X [N, d]`` for applying ``pinv(X)``.

    ``X`` is kept as float32/float64 ``[N, d]``. ``G⁺ = (X Xᵀ)⁺`` is held either as kept eigenpairs
    ``U [N, k]``, ``inv_lam [k]`` (``G⁺ = U diag(inv_lam) Uᵀ``, ``k`` = numerical rank), or, when ``G``
    is safely invertible, as its lower Cholesky factor ``L [N, N]`` (``G = L Lᵀ``; float32 when
    ``gram == "float32"``, the precision the Gram was formed in, else float64).
    """

    X: np.ndarray
    U: np.ndarray | None
    inv_lam: np.ndarray | None
    rank: int
    L: np.ndarray | None = None
    gram: str = "float64"
    _tri: "TriangularSolver | None" = field(default=None, repr=False, compare=False)
    _panels: "np.ndarray | None" = field(default=None, repr=False, compare=False)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.X.shape[1])

    def panels(self) -> np.ndarray | None:
        """The float32 Cholesky factor packed for the native fold kernels (built once), or ``None`` (no
        float32 factor, or the kernels are unavailable: see :mod:`commandv.exporter.transfer.fold_native`)."""
        if self._panels is None and self.L is not None and self.L.dtype == np.float32:
            self._panels = fold_native.pack_factor(self.L)
        return self._panels

    def solve(self, Y: np.ndarray) -> np.ndarray:
        """``G⁺ @ Y`` for ``Y [N, m]`` (or ``[N]``) → same shape, float64 (solved in ``L``'s dtype)."""
        if self.L is not None:
            Yl = np.asarray(Y, dtype=self.L.dtype)
            P = self.panels()
            if P is not None:
                Z = fold_native.chol_solve(P, self.n, Yl.reshape(self.n, -1))
            else:
                if self._tri is None:
                    self._tri = TriangularSolver(self.L)
                Z = self._tri.solve_upper(self._tri.solve_lower(Yl.reshape(self.n, -1)))
            return Z.reshape(Yl.shape).astype(np.float64, copy=False)
        Y = np.asarray(Y, dtype=np.float64)
        Z = self.U.T @ Y
        Z *= self.inv_lam.reshape((-1,) + (1,) * (Y.ndim - 1))
        return self.U @ Z

    def x_times(self, M: np.ndarray) -> np.ndarray:
        """``X @ M`` for ``M [d, m]`` → ``[N, m]`` float64 (BLAS in X's dtype; no float64 copy of X)."""
        return (self.X @ np.asarray(M, dtype=self.X.dtype)).astype(np.float64, copy=False)

    def times_x(self, M: np.ndarray) -> np.ndarray:
        """``M @ X`` for ``M [m, N]`` → ``[m, d]`` float64."""
        return (np.asarray(M, dtype=self.X.dtype) @ self.X).astype(np.float64, copy=False)

    def pinv_times(self, Y: np.ndarray) -> np.ndarray:
        """``pinv(X) @ Y`` for ``Y [N, m]`` → ``[d, m]`` (float64; the N×N part in float64)."""
        return self.times_x(self.solve(Y).T).T

    def times_pinv(self, M: np.ndarray) -> np.ndarray:
        """``M @ pinv(X)`` for ``M [m, d]`` → ``[m, N]`` (float64)."""
        return self.solve(self.x_times(np.asarray(M).T)).T


def factorize(X: np.ndarray, rtol: float | None = None, gram: str = "auto") -> GramFactor:
    """Factor ``X [N, d]`` for pseudo-inverse products (see module docstring for cutoff and precision).

    ``gram``: ``"auto"`` tries the verified float32 Gram for float32 profiles with N ≤ d;
    ``"float64"`` always forms the Gram in float64.
    """
    X = _checked(X)
    if gram not in ("auto", "float64"):
        raise ValueError(f"gram must be 'auto' or 'float64', got {gram!r}")
    rtol = _rtol(X, rtol)
    if gram == "auto" and X.dtype == np.float32 and X.shape[0] <= X.shape[1]:
        fast = _float32_gram_factor(X, X @ X.T, rtol)
        if fast is not None:
            return fast
    return _float64_factor(X, rtol)


def _checked(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"profile layer must be a non-empty [N, d] matrix, got shape {X.shape}")
    return X


def _rtol(X: np.ndarray, rtol: float | None) -> float:
    """torch.linalg.pinv's default: ``max(N, d)·eps`` of the profile's dtype (float32 for other dtypes)."""
    if rtol is not None:
        return rtol
    return max(X.shape) * float(np.finfo(X.dtype if X.dtype in (np.float32, np.float64) else np.float32).eps)


def _float64_factor(X: np.ndarray, rtol: float) -> GramFactor:
    """Float64 Gram: Cholesky when provably above the cutoff, else eigendecomposition with the cutoff."""
    if not np.all(np.isfinite(X)):
        raise ValueError("profile layer contains NaN or Inf")
    n = X.shape[0]
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


def _gram_times_exact(X: np.ndarray, z: np.ndarray, block: int = 128) -> np.ndarray:
    """``X (Xᵀ z)`` in float64 for float32 ``X [N, d]``, ``z [N]``: column blocks, no float64 copy of X."""
    y = np.zeros(X.shape[0])
    for j in range(0, X.shape[1], block):
        Xc = X[:, j:j + block].astype(np.float64)
        y += Xc @ (Xc.T @ z)
    return y


def _float32_gram_factor(X: np.ndarray, G32: np.ndarray, rtol: float) -> GramFactor | None:
    """Cholesky factor (stored float32) of the float32 Gram ``G32 = X Xᵀ`` when a probe shows it
    accurate and the cutoff cannot bite.

    Returns ``None`` (use the float64 Gram) on non-finite values, a failed Cholesky, a probe error
    above :data:`GRAM32_TOL`, or a smallest-eigenvalue estimate within 1000× of the pinv cutoff.
    """
    n = X.shape[0]
    G = G32.astype(np.float64)
    if not np.all(np.isfinite(np.diagonal(G))):  # G_ii = Σ_j X_ij²: a NaN/Inf anywhere in row i shows here
        return None
    try:
        L = np.linalg.cholesky(G)
    except np.linalg.LinAlgError:
        return None
    f = GramFactor(X=X, U=None, inv_lam=None, rank=n, L=L.astype(np.float32), gram="float32")
    rng = np.random.default_rng(0x5EED)
    z = rng.standard_normal(n)
    # One solve serves the accuracy probe (column 0) and the first inverse-iteration step (columns 1-2).
    W = f.solve(np.column_stack([_gram_times_exact(X, z), rng.standard_normal((n, 2))]))
    probe_err = float(np.linalg.norm(W[:, 0] - z) / np.linalg.norm(z))
    if not probe_err <= GRAM32_TOL:
        return None
    # Second inverse-iteration step: W = G⁻¹ V, whose Rayleigh quotient Wᵀ G W / Wᵀ W = Wᵀ V / Wᵀ W
    # is ≥ λ_min and converges to it.
    V = W[:, 1:] / np.linalg.norm(W[:, 1:], axis=0)
    W = f.solve(V)
    lam_min_est = float(np.min(np.sum(W * V, axis=0) / np.sum(W * W, axis=0)))
    if not lam_min_est > _CUTOFF_MARGIN * _cutoff_upper_bound(G, rtol):
        return None
    return f


def _cutoff_upper_bound(G: np.ndarray, rtol: float) -> float:
    """An upper bound of the eigenvalue cutoff ``max(rtol², N·eps64)·λ_max`` (``λ_max ≤ ‖G‖_F``)."""
    return max(rtol * rtol, G.shape[0] * np.finfo(np.float64).eps) * float(np.linalg.norm(G))


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
    if lam_min_lb <= 4.0 * _cutoff_upper_bound(G, rtol):
        return None
    return GramFactor(X=X, U=None, inv_lam=None, rank=n, L=L)


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


def compressed_pair(XR: np.ndarray, XD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``XR [N, d_R]``, ``XD [N, d_D]`` with N > d_R + d_D → ``(R_R [k, d_R], R_D [k, d_D])``, k = d_R + d_D,
    from the QR factor of ``[XR | XD]``: ``pinv(R_R)·R_D = pinv(XR)·XD`` and ``pinv(R_D)·R_R = pinv(XD)·XR``
    exactly, with the same singular values (so ``rcond`` cuts the same directions), at a k×k Gram's cost."""
    Rm = np.linalg.qr(np.concatenate([np.asarray(XR, np.float64), np.asarray(XD, np.float64)], axis=1), mode="r")
    d_r = XR.shape[1]
    return np.ascontiguousarray(Rm[:, :d_r]), np.ascontiguousarray(Rm[:, d_r:])
