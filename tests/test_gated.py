"""The gated fold (exporter/transfer/gated.py): ridge read, gate, difference edit; export_pack(method="gated").

References are independent: numpy least squares for the maps, the donor edit's own outputs for the difference."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from commandv.exporter.adapters.folder import Adapter  # noqa: E402
from commandv.exporter.adapters.interventions import DonorEdit  # noqa: E402
from commandv.exporter.evaluation.pair import EvalSettingsError, PairEvalSettings  # noqa: E402
from commandv.exporter.transfer.export import ExportError, export_pack  # noqa: E402
from commandv.exporter.transfer.gated import Contrast, gated_entry, read_ridge  # noqa: E402
from tests.test_store import make_profile  # noqa: E402


def world(n_base=300, n_exp=60, dR=16, dD=12, seed=0, shift=10.0):
    """Recipient rows; donor rows a fixed linear map of them; expected rows shifted along one direction."""
    rng = np.random.default_rng(seed)
    XR = rng.standard_normal((n_base + n_exp, dR))
    XR[n_base:] += shift * rng.standard_normal(dR) / np.sqrt(dR)
    M = rng.standard_normal((dR, dD)) / np.sqrt(dR)
    XD = XR @ M + 0.01 * rng.standard_normal((len(XR), dD))
    edit = DonorEdit(0, rng.standard_normal((dD, 3)), rng.standard_normal(3), rng.standard_normal((3, dD)), "linear",
                     kind="NodiReFT")
    contrast = Contrast(expected=np.arange(n_base, n_base + n_exp), baseline=np.arange(n_base), last_token=len(XR))
    return XR, XD, edit, contrast


def test_read_ridge_recovers_a_linear_map_like_least_squares():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((500, 10)) * rng.uniform(0.1, 30, 10)  # very different scales per dimension
    Z = X @ rng.standard_normal((10, 3)) + rng.standard_normal(3)
    W, w0, r2 = read_ridge(X, Z)
    ref = np.linalg.lstsq(np.c_[X, np.ones(len(X))], Z, rcond=None)[0]
    Xn = rng.standard_normal((50, 10)) * 5
    assert r2 > 0.999
    np.testing.assert_allclose(Xn @ W + w0, np.c_[Xn, np.ones(50)] @ ref, rtol=0, atol=0.05 * np.abs(Z).max())


def test_entry_adds_the_donor_difference_on_expected_and_nothing_on_baseline():
    XR, XD, edit, c = world()
    C_dr = np.linalg.lstsq(XD, XR, rcond=None)[0]  # the write map
    entry, figs = gated_entry(edit, XR, XD, lambda M: M @ C_dr, c, recipient_layer=2, positions="l1")
    assert entry.act == "relu" and entry.A.shape == (16, 1) and entry.C.shape == (1, 16) and entry.layer == 2
    want = (edit.delta(XD[c.expected]).mean(0) - edit.delta(XD[c.baseline]).mean(0)) @ C_dr
    got = entry.delta(XR[c.expected].astype(np.float32)).astype(np.float64).mean(0)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.15  # the relu trims a few expected rows
    base_mean = entry.delta(XR[c.baseline].mean(0, keepdims=True).astype(np.float32))
    assert np.abs(base_mean).max() == 0.0  # an average ordinary prompt: gate closed
    assert figs["gate_expected_open"] > 0.85 and figs["gate_baseline_open"] < 0.3 and figs["ridge_read_r2"] > 0.9


def test_no_entry_where_the_gate_cannot_separate():
    XR, XD, edit, c = world(shift=0.0)
    rng = np.random.default_rng(3)
    c = Contrast(expected=rng.choice(300, 40, replace=False), baseline=np.arange(300), last_token=360)
    entry, figs = gated_entry(edit, XR, XD, lambda M: M @ np.linalg.pinv(XD) @ XR, c, 0, "l1")
    assert entry is None and "gate_tau" in figs


@pytest.mark.parametrize("rows, words", [
    (dict(expected=np.array([1]), baseline=np.arange(5), last_token=10), "at least 2 expected"),
    (dict(expected=np.array([1, 2]), baseline=np.arange(5), last_token=11), "last-token rows 11"),
    (dict(expected=np.array([1, 12]), baseline=np.arange(5), last_token=10), "expected rows outside"),
])
def test_contrast_problems(rows, words):
    assert words in Contrast(**rows).validate(10)


def test_export_pack_gated():
    XR, XD, edit, c = world()
    n = len(XR)
    donor = make_profile(n=n, d=12, L=2, fp="d" * 64, net="x" * 64)
    recip = make_profile(n=n, d=16, L=3, fp="r" * 64, net="y" * 64)
    donor.layers = [XD.astype(np.float32), XD.astype(np.float32)]
    recip.layers = [XR.astype(np.float32)] * 3
    ad = Adapter(edits=[edit], kind="NodiReFT", positions="l1", component="block_output", sha256="a" * 64, source="t")
    with pytest.raises(ExportError, match="needs contrast rows"):
        export_pack(ad, donor, recip, method="gated")
    res = export_pack(ad, donor, recip, method="gated", contrast=c)
    (entry,) = res.pack.entries
    assert entry.act == "relu" and res.pack.meta["method"] == "gated"
    assert "transfer_score" not in res.pack.meta  # not defined for a gated edit
    assert {"ridge_read_r2", "gate_expected_open", "gate_baseline_open", "r2_r2d"} <= set(res.diagnostics[0])
    with pytest.raises(ExportError, match="at no layer"):
        export_pack(ad, donor, recip, method="gated",
                    contrast=Contrast(expected=np.arange(10, 50), baseline=np.arange(300), last_token=n))


def test_eval_settings_gated_needs_training_prompts():
    with pytest.raises(EvalSettingsError, match="profile-train-prompts"):
        PairEvalSettings(method="gated").validate()
    PairEvalSettings(method="gated", profile_train_prompts=256).validate()


@pytest.mark.parametrize("rcond", [None, 0.05])
def test_gated_write_is_the_exports_translator_with_its_cutoff(rcond):
    """The gated entry writes the donor difference through ``pinv(X_D)·X_R`` on the export's fit rows, truncated at
    ``rcond`` like the pinv translators (reference: numpy's SVD pseudo-inverse on the same rows)."""
    from commandv.exporter.transfer.export import holdout_rows

    XR, XD, edit, c = world()
    XD = XD @ np.diag(np.geomspace(1, 1e-3, XD.shape[1]))  # a spread spectrum: the cutoff drops directions
    n = len(XR)
    donor = make_profile(n=n, d=12, L=1, fp="d" * 64, net="x" * 64)
    recip = make_profile(n=n, d=16, L=1, fp="r" * 64, net="y" * 64)
    donor.layers, recip.layers = [XD.astype(np.float32)], [XR.astype(np.float32)]
    ad = Adapter(edits=[edit], kind="NodiReFT", positions="l1", component="block_output", sha256="a" * 64, source="t")
    (entry,) = export_pack(ad, donor, recip, method="gated", contrast=c, rcond=rcond).pack.entries
    fit, _ = holdout_rows(n, 0.1)
    XDf, XRf = XD.astype(np.float32)[fit].astype(np.float64), XR.astype(np.float32)[fit].astype(np.float64)
    C_dr = np.linalg.pinv(XDf, rcond=rcond if rcond is not None else 1e-15) @ XRf
    dD = edit.delta(XD.astype(np.float32)[c.expected]).mean(0) - edit.delta(XD.astype(np.float32)[c.baseline]).mean(0)
    want = dD @ C_dr
    got = entry.C[0].astype(np.float64)
    cos = got @ want / np.linalg.norm(got) / np.linalg.norm(want)
    assert cos > 0.999
    if rcond:  # the cutoff changes the write: the untruncated map points elsewhere
        full = dD @ (np.linalg.pinv(XDf, rcond=1e-15) @ XRf)
        assert abs(got @ full) / np.linalg.norm(got) / np.linalg.norm(full) < 0.99


def test_diagnostics_table_shows_the_gate_columns_only_for_gated_packs():
    from rich.console import Console

    from commandv.exporter.transfer.export import diagnostics_table

    def render(diags):
        con = Console(width=250, record=True)
        con.print(diagnostics_table(diags))
        return con.export_text()

    plain = {"donor_layer": 0, "recipient_layer": 1, "r2_r2d": 0.5}
    gated = {**plain, "ridge_read_r2": 0.875, "gate_expected_open": 0.961, "gate_baseline_open": 0.171}
    assert "gate open" not in render([plain]) and "edit cos" in render([plain])
    text = render([gated, plain])
    assert "gate open: behavior" in text and "0.961" in text and "0.171" in text and "0.875" in text
    assert "edit cos" not in text  # the whole-edit figures measure the gate here
