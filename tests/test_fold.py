"""Folded edits equal the unfolded translate → intervene → translate-back computation."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from commandv.exporter.adapters.interventions import DonorEdit  # noqa: E402
from commandv.exporter.transfer.fold import fold_edit, unfolded_delta  # noqa: E402
from commandv.exporter.transfer.translators import factorize  # noqa: E402


def make_edit(kind, d, r, rng, act):
    A = rng.standard_normal((d, r)) / np.sqrt(d)
    b = rng.standard_normal(r)
    C = rng.standard_normal((r, d))
    R = np.linalg.qr(rng.standard_normal((d, r)))[0]
    if kind == "LoReFT":
        return DonorEdit(3, A, b, R.T, act, P=R, Q=R.T, kind=kind)
    if kind == "NoReFT":
        return DonorEdit(3, A, b, C, act, P=C.T, Q=C, e=-rng.standard_normal(r) @ C, kind=kind)
    if kind in ("DiReFT", "NodiReFT"):
        return DonorEdit(3, A, b, C, act, kind=kind)
    if kind == "ConsReFT":
        return DonorEdit(3, np.zeros((d, r)), b, R.T, "linear", P=R, Q=R.T, kind=kind)
    return DonorEdit(3, np.zeros((d, r)), b, R.T, "linear", kind=kind)


@pytest.mark.parametrize("kind", ["LoReFT", "NoReFT", "DiReFT", "NodiReFT", "ConsReFT", "LobiReFT"])
@pytest.mark.parametrize("act", ["linear", "relu", "gelu"])
def test_fold_equals_unfolded(kind, act):
    rng = np.random.default_rng(hash((kind, act)) % 2**32)
    n, dR, dD, r = 40, 48, 64, 4
    XR = rng.standard_normal((n, dR))
    XD = rng.standard_normal((n, dD))
    edit = make_edit(kind, dD, r, rng, act)
    entry = fold_edit(edit, factorize(XR), factorize(XD), recipient_layer=2)
    # independent reference: explicit translators from torch's pinv
    C_rd = (torch.linalg.pinv(torch.from_numpy(XR)) @ torch.from_numpy(XD)).numpy()
    C_dr = (torch.linalg.pinv(torch.from_numpy(XD)) @ torch.from_numpy(XR)).numpy()
    h = rng.standard_normal((7, dR))
    ref = unfolded_delta(edit, C_rd, C_dr, h)
    got = entry.delta(h.astype(np.float32)).astype(np.float64)
    assert entry.A.shape == (dR, r) and entry.C.shape == (r, dR)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
    assert entry.layer == 2 and entry.donor_layer == 3


def test_fold_rejects_mismatched_profiles():
    rng = np.random.default_rng(0)
    edit = make_edit("DiReFT", 16, 2, rng, "linear")
    with pytest.raises(ValueError, match="d=8"):
        fold_edit(edit, factorize(rng.standard_normal((5, 12))), factorize(rng.standard_normal((5, 8))), 0)
    with pytest.raises(ValueError, match="prompt counts"):
        fold_edit(edit, factorize(rng.standard_normal((6, 12))), factorize(rng.standard_normal((5, 16))), 0)


@pytest.mark.parametrize("kind", ["LoReFT", "NoReFT", "NodiReFT"])
def test_fold_float32_profiles_fast_path(kind):
    """Float32 profiles (N < d, well conditioned) go through the float32-Gram Cholesky path and the
    one-pass-per-profile fold; still equal to the unfolded computation with torch's float64 pinv."""
    rng = np.random.default_rng(7)
    n, dR, dD, r = 60, 160, 200, 4
    XR = rng.standard_normal((n, dR)).astype(np.float32)
    XD = rng.standard_normal((n, dD)).astype(np.float32)
    fR, fD = factorize(XR), factorize(XD)
    assert fR.gram == fD.gram == "float32"
    edit = make_edit(kind, dD, r, rng, "relu")
    entry = fold_edit(edit, fR, fD, recipient_layer=1)
    X64 = lambda a: torch.from_numpy(a.astype(np.float64))  # noqa: E731
    C_rd = (torch.linalg.pinv(X64(XR)) @ X64(XD)).numpy()
    C_dr = (torch.linalg.pinv(X64(XD)) @ X64(XR)).numpy()
    h = rng.standard_normal((5, dR))
    ref = unfolded_delta(edit, C_rd, C_dr, h)
    got = entry.delta(h.astype(np.float32)).astype(np.float64)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
    assert (entry.P is None) == (edit.P is None) and (entry.e is None) == (edit.e is None)
