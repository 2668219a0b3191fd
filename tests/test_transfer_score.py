"""transfer_score: per-layer figures equal a torch-pinv reference; identical models score 1, scrambled ones less."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from commandv.exporter.transfer.export import clear_factor_cache, export_pack, holdout_rows  # noqa: E402
from commandv.exporter.transfer.layermap import map_layer  # noqa: E402
from commandv.exporter.transfer.score import pack_score, pair_score  # noqa: E402
from tests.test_export import setup  # noqa: E402


def _cos_rows(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_layer_figures_match_explicit_pinv_reference():
    clear_factor_cache()
    ad, donor, recip = setup(n=60)
    res = export_pack(ad, donor, recip, holdout=0.25)
    fit, held = holdout_rows(60, 0.25)
    for edit, d in zip(ad.edits, res.diagnostics):
        l_r = map_layer(edit.layer, 8, 6, "nearest")
        XR = torch.from_numpy(recip.layers[l_r]).double()
        XD = torch.from_numpy(donor.layers[edit.layer]).double()
        C_rd = (torch.linalg.pinv(XR[fit]) @ XD[fit]).numpy()
        C_dr = (torch.linalg.pinv(XD[fit]) @ XR[fit]).numpy()
        hR, hD = XR[held].numpy(), XD[held].numpy()
        dD = edit.delta(hD)
        dR = edit.delta(hR @ C_rd) @ C_dr  # the transferred edit, unfolded
        assert abs(d["edit_cos"] - _cos_rows(dR @ C_rd, dD).mean()) < 1e-4
        rel = lambda dx, h: np.median(np.linalg.norm(dx, axis=1) / np.linalg.norm(h, axis=1))  # noqa: E731
        assert abs(d["norm_ratio"] - rel(dR, hR) / rel(dD, hD)) < 1e-4 * d["norm_ratio"]
        fA, tA = hR @ C_rd @ edit.A, hD @ edit.A
        r2 = 1 - ((fA - tA) ** 2).sum() / ((tA - tA.mean(0)) ** 2).sum()
        assert abs(d["read_r2"] - r2) < 1e-4
    assert res.pack.meta["transfer_score"] == pytest.approx(pack_score(res.diagnostics))


def test_identical_models_score_one_and_unrelated_ones_less():
    clear_factor_cache()
    ad, donor, _ = setup(n=80, dD=16)
    same = export_pack(ad, donor, donor, holdout=0.25)  # N > d: the translators are the identity
    assert same.pack.meta["transfer_score"] == pytest.approx(1.0, abs=1e-4)
    _, _, recip = setup(n=80, dD=16, dR=16, seed=5)  # unrelated random states: nothing maps
    other = export_pack(ad, donor, recip, holdout=0.25)
    assert other.pack.meta["transfer_score"] < 0.5


def test_pair_score_bounds():
    assert pair_score({"edit_cos": 0.8, "norm_ratio": 2.0}) == pytest.approx(0.4)
    assert pair_score({"edit_cos": 0.8, "norm_ratio": 0.5}) == pytest.approx(0.4)
    assert pair_score({"edit_cos": -0.3, "norm_ratio": 1.0}) == 0.0
    assert pair_score({"edit_cos": 0.9, "norm_ratio": float("nan")}) == 0.0
    assert np.isnan(pack_score([]))
    figs = [{"edit_cos": 1.0, "norm_ratio": 0.5, "donor_edit_energy": 1.0},
            {"edit_cos": 0.5, "norm_ratio": 1.0, "donor_edit_energy": 3.0}]
    assert pack_score(figs) == pytest.approx((1 * 0.5 + 3 * 0.5) / 4)
    assert pack_score(figs, strength=2.0) == pytest.approx((1 * 1.0 + 3 * 0.25) / 4)  # strength scales the norms
