"""Translators through the Gram matrix vs torch.linalg.pinv (the independent reference)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from commandv.exporter.translators import factorize, fit_diagnostics, translator  # noqa: E402


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
    from commandv.exporter.translators import tril_inv

    rng = np.random.default_rng(n)
    L = np.tril(rng.standard_normal((n, n))) + n * np.eye(n)
    inv = tril_inv(L, block=16)
    assert np.allclose(inv, np.linalg.inv(L), rtol=1e-10, atol=1e-12)
    assert np.array_equal(inv, np.tril(inv))  # stays lower-triangular
