"""Translators through the Gram matrix vs torch.linalg.pinv (the independent reference)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from commandv.exporter.transfer.translators import factorize, fit_diagnostics, translator  # noqa: E402


def ref_pinv_times(X, Y, rtol=None):
    Xt = torch.from_numpy(np.asarray(X, np.float64))
    kw = {} if rtol is None else {"rtol": rtol}
    return (torch.linalg.pinv(Xt, **kw) @ torch.from_numpy(np.asarray(Y, np.float64))).numpy()


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("n,d", [(20, 64), (64, 48), (40, 40), (300, 500)])
def test_full_rank_matches_pinv(n, d):
    rng = np.random.default_rng(n + d)
    X = rng.standard_normal((n, d))
    Y = rng.standard_normal((n, 33))
    f = factorize(X)
    assert rel(f.pinv_times(Y), ref_pinv_times(X, Y)) < 1e-9
    M = rng.standard_normal((5, d))
    ref = M @ torch.linalg.pinv(torch.from_numpy(X)).numpy()
    assert rel(f.times_pinv(M), ref) < 1e-9


def test_rank_deficient_matches_pinv_with_same_cutoff():
    rng = np.random.default_rng(1)
    X = (rng.standard_normal((50, 7)) @ rng.standard_normal((7, 120))).astype(np.float32)
    Y = rng.standard_normal((50, 9)).astype(np.float32)
    f = factorize(X)
    assert f.rank == 7
    rtol = max(X.shape) * np.finfo(np.float32).eps
    assert rel(f.pinv_times(Y), ref_pinv_times(X, Y, rtol=rtol)) < 1e-6


def test_duplicate_rows_and_zero_matrix():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((10, 30))
    X[5] = X[2]
    f = factorize(X)
    assert f.rank == 9
    Y = rng.standard_normal((10, 4))
    assert rel(f.pinv_times(Y), ref_pinv_times(X, Y)) < 1e-8
    z = factorize(np.zeros((4, 8)))
    assert z.rank == 0 and np.all(z.pinv_times(np.ones((4, 2))) == 0)


def test_translator_matrix_and_diagnostics():
    rng = np.random.default_rng(3)
    XR = rng.standard_normal((30, 40))
    T = rng.standard_normal((40, 50))
    XD = XR @ T  # a perfectly linear relation: held-out R² must be ~1
    fR, fD = factorize(XR), factorize(XD)
    C = translator(fR, XD)
    assert rel(C, ref_pinv_times(XR, XD)) < 1e-8
    held = rng.standard_normal((8, 40))
    diag = fit_diagnostics(fR, fD, held @ np.linalg.pinv(XR) @ XR, (held @ np.linalg.pinv(XR) @ XR) @ T)
    assert diag["r2_r2d"] > 0.999999
    noise = fit_diagnostics(fR, fD, rng.standard_normal((8, 40)), rng.standard_normal((8, 50)))
    assert noise["r2_r2d"] < 0.5


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        factorize(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        factorize(np.zeros((0, 3)))


@pytest.mark.parametrize("rcond", [3e-3, 3e-2])
def test_truncated_pinv_matches_numpy_rcond(rcond):
    """``rtol`` drops singular values below rtol·σ_max, like ``numpy.linalg.pinv(X, rcond)``."""
    rng = np.random.default_rng(5)
    # N > d, spread-out spectrum: singular values from 1 down to 1e-4, so the cutoff bites
    U, _ = np.linalg.qr(rng.standard_normal((120, 40)))
    V, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    X = (U * np.logspace(0, -4, 40)) @ V.T
    Y = rng.standard_normal((120, 7))
    f = factorize(X, rtol=rcond)
    want = np.linalg.pinv(X, rcond=rcond) @ Y
    assert f.rank == int((np.logspace(0, -4, 40) > rcond).sum())
    assert rel(f.pinv_times(Y), want) < 1e-8


@pytest.mark.parametrize("n", [1, 5, 128, 129, 300])
def test_tril_inv_matches_numpy_inverse(n):
    from commandv.exporter.transfer.triangular import tril_inv

    rng = np.random.default_rng(n)
    L = np.tril(rng.standard_normal((n, n))) + n * np.eye(n)
    inv = tril_inv(L, block=16)
    assert np.allclose(inv, np.linalg.inv(L), rtol=1e-10, atol=1e-12)
    assert np.array_equal(inv, np.tril(inv))  # stays lower-triangular


def spectrum_matrix(rng, n, d, svals, dtype=np.float32):
    """``X [n, d]`` with the given singular values (random orthonormal factors)."""
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((d, n)))
    return ((U * svals) @ V.T).astype(dtype)


def test_float32_gram_fast_path_matches_float64_pinv():
    """Well-conditioned float32 profile (N < d): the verified float32 Gram is used and agrees with
    torch's float64 pinv of the same data to ≤ 1e-5 (GRAM32_TOL), on both pinv products."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((200, 700)).astype(np.float32)
    f = factorize(X)
    assert f.gram == "float32" and f.L is not None and f.L.dtype == np.float32 and f.rank == 200
    Y = rng.standard_normal((200, 9))
    assert rel(f.pinv_times(Y), ref_pinv_times(X, Y)) < 1e-5
    M = rng.standard_normal((4, 700))
    ref = M @ torch.linalg.pinv(torch.from_numpy(X.astype(np.float64))).numpy()
    assert rel(f.times_pinv(M), ref) < 1e-5
    assert factorize(X, gram="float64").gram == "float64"


def test_float32_gram_falls_back_when_ill_conditioned():
    """σ from 1 to 3e-3 (κ(G) ≈ 1e5): float32 Gram rounding would show, so the float64 Gram is used."""
    rng = np.random.default_rng(12)
    X = spectrum_matrix(rng, 60, 200, np.logspace(0, -2.5, 60))
    f = factorize(X)
    assert f.gram == "float64"
    Y = rng.standard_normal((60, 5))
    rtol = 200 * np.finfo(np.float32).eps
    # the final X_ᵀ product runs in X's float32: error ≲ κ(X)·eps32 ≈ 4e-5
    assert rel(f.pinv_times(Y), ref_pinv_times(X, Y, rtol=rtol)) < 2e-4


def test_float32_gram_falls_back_when_cutoff_bites():
    """Well conditioned (σ 1 → 0.2, passes the accuracy probe) but ``rtol=0.3`` cuts the small
    directions: pinv ≠ inverse, so the Cholesky fast path must not be taken."""
    rng = np.random.default_rng(13)
    s = np.linspace(1, 0.2, 50)
    X = spectrum_matrix(rng, 50, 150, s)
    f = factorize(X, rtol=0.3)
    assert f.gram == "float64" and f.rank == int((s > 0.3).sum())
    Y = rng.standard_normal((50, 3))
    assert rel(f.pinv_times(Y), np.linalg.pinv(X.astype(np.float64), rcond=0.3) @ Y) < 1e-5
    assert factorize(X).gram == "float32"  # with the default cutoff the same matrix takes the fast path


def test_float32_nan_still_rejected():
    X = np.ones((4, 16), np.float32)
    X[2, 7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        factorize(X)
    with pytest.raises(ValueError, match="gram"):
        factorize(np.ones((2, 4)), gram="float16")


@pytest.mark.parametrize("n,block", [(1, 64), (63, 64), (64, 64), (200, 64), (257, 32)])
def test_triangular_solver_matches_numpy(n, block):
    from commandv.exporter.transfer.triangular import TriangularSolver

    rng = np.random.default_rng(n)
    L = np.tril(rng.standard_normal((n, n))) + n * np.eye(n)
    Y = rng.standard_normal((n, 3))
    t = TriangularSolver(L, block=block)
    assert np.allclose(t.solve_lower(Y), np.linalg.solve(L, Y), rtol=1e-10, atol=1e-12)
    assert np.allclose(t.solve_upper(Y), np.linalg.solve(L.T, Y), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [100, 300])
def test_triangular_solver_float32_default_block(n):
    """float32 factors (the float32-Gram path) use their own default block; results stay float32
    and agree with a float64 solve to float32 precision."""
    from commandv.exporter.transfer.triangular import TriangularSolver

    rng = np.random.default_rng(n)
    L = np.tril(rng.standard_normal((n, n))) / n + np.eye(n)
    Y = rng.standard_normal((n, 4))
    t = TriangularSolver(L.astype(np.float32))
    lo, up = t.solve_lower(Y.astype(np.float32)), t.solve_upper(Y.astype(np.float32))
    assert lo.dtype == up.dtype == np.float32
    assert rel(lo, np.linalg.solve(L, Y)) < 1e-5 and rel(up, np.linalg.solve(L.T, Y)) < 1e-5
