"""Lower-triangular helpers numpy lacks: blocked solves with ``L`` / ``Lᵀ`` and a blocked inverse."""

from __future__ import annotations

import numpy as np


class TriangularSolver:
    """Blocked solves with a lower-triangular ``L [n, n]``: ``L⁻¹ Y`` and ``L⁻ᵀ Y`` (numpy BLAS only).

    numpy has no ``trsm``; this inverts the ``block``-sized diagonal blocks once (:func:`tril_inv`) and
    does the rest as matrix products (~``n²·m`` flops per solve). Torch's ``solve_triangular`` would do, but
    alternating torch (OpenMP) and numpy (OpenBLAS) calls makes their thread pools fight (many times slower).
    """

    def __init__(self, L: np.ndarray, block: int | None = None):
        self.L = L
        n = L.shape[0]
        if block is None:  # tuned for n≈1000 and 8-16 right-hand sides (OpenBLAS); benchmarks/export_speed.py
            block = 128 if L.dtype == np.float32 else 64
        self.bounds = [(s, min(s + block, n)) for s in range(0, n, block)]
        self.dinv = [tril_inv(L[s:e, s:e], block=32) for s, e in self.bounds]  # cheaper than np.linalg.inv

    def solve_lower(self, Y: np.ndarray) -> np.ndarray:
        """``L⁻¹ Y`` for ``Y [n, m]``."""
        X = np.empty_like(Y)
        for (s, e), Di in zip(self.bounds, self.dinv):
            r = Y[s:e] - self.L[s:e, :s] @ X[:s] if s else Y[s:e]
            X[s:e] = Di @ r
        return X

    def solve_upper(self, Y: np.ndarray) -> np.ndarray:
        """``L⁻ᵀ Y`` for ``Y [n, m]``."""
        X = np.empty_like(Y)
        for (s, e), Di in zip(reversed(self.bounds), reversed(self.dinv)):
            r = Y[s:e] - self.L[e:, s:e].T @ X[e:] if e < len(Y) else Y[s:e]
            X[s:e] = Di.T @ r
        return X


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
