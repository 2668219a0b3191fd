"""export_pack: adapter + two profiles → pack equal to the explicit-pinv reference; diagnostics; errors."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from commandv.exporter.adapters.folder import Adapter  # noqa: E402
from commandv.exporter.adapters.interventions import DonorEdit  # noqa: E402
from commandv.exporter.transfer.export import ExportError, clear_factor_cache, export_pack, holdout_rows  # noqa: E402
from commandv.exporter.transfer.layermap import map_layer  # noqa: E402
from commandv.runtime.pack.model import BehaviorPack  # noqa: E402
from tests.helpers import rel_err  # noqa: E402
from tests.test_store import make_profile  # noqa: E402


def setup(n=50, dR=24, dD=32, LR=6, LD=8, seed=0):
    rng = np.random.default_rng(seed)
    donor = make_profile(n=n, d=dD, L=LD, fp="d" * 64, net="x" * 64)
    recip = make_profile(n=n, d=dR, L=LR, fp="r" * 64, net="y" * 64)
    donor.layers = [rng.standard_normal((n, dD)).astype(np.float32) for _ in range(LD)]
    recip.layers = [rng.standard_normal((n, dR)).astype(np.float32) for _ in range(LR)]
    edits = [DonorEdit(l, rng.standard_normal((dD, 4)) / 6, rng.standard_normal(4),
                       rng.standard_normal((4, dD)) / 6, "linear", kind="NodiReFT") for l in (1, 3, 7)]
    ad = Adapter(edits=edits, kind="NodiReFT", positions="l1", component="block_output", sha256="a" * 64, source="t")
    return ad, donor, recip


def test_export_matches_reference_and_roundtrips(tmp_path):
    clear_factor_cache()
    ad, donor, recip = setup()
    res = export_pack(ad, donor, recip, holdout=0.2, name="t")
    fit, held = holdout_rows(50, 0.2)
    assert len(held) == 10 and len(set(fit) & set(held)) == 0
    for edit, entry in zip(ad.edits, res.pack.entries):
        l_r = map_layer(edit.layer, 8, 6, "nearest")
        assert entry.layer == l_r and entry.donor_layer == edit.layer
        XR = torch.from_numpy(recip.layers[l_r][fit]).double()
        XD = torch.from_numpy(donor.layers[edit.layer][fit]).double()
        C_rd = (torch.linalg.pinv(XR) @ XD).numpy()
        C_dr = (torch.linalg.pinv(XD) @ XR).numpy()
        assert rel_err(entry.A, C_rd @ edit.A) < 1e-4
        assert rel_err(entry.C, edit.C @ C_dr) < 1e-4
    d = res.diagnostics[0]
    assert {"r2_r2d", "r2_d2r", "cycle_err", "delta_energy", "donor_delta_energy"} <= set(d)
    assert res.pack.meta["layer_rule"] == "nearest" and res.pack.meta["adapter_sha256"] == "a" * 64
    q = BehaviorPack.load(res.pack.save(tmp_path / "p.gguf"))
    assert q.diagnostics == res.diagnostics and q.recipient["fingerprint"] == "r" * 64


def test_floor_rule_and_shared_recipient_layer():
    ad, donor, recip = setup(LR=2)
    res = export_pack(ad, donor, recip, layer_rule="floor", holdout=0.1)
    assert [e.layer for e in res.pack.entries] == [0, 0, 1]
    assert [e.donor_layer for e in res.pack.entries] == [1, 3, 7]


def test_linear_relation_gives_high_r2():
    ad, donor, recip = setup()
    rng = np.random.default_rng(3)
    T = rng.standard_normal((24, 32))
    for l in range(8):
        donor.layers[l] = (recip.layers[min(l, 5)] @ T).astype(np.float32)
    res = export_pack(ad, donor, recip, holdout=0.2)
    # donor layer 7 -> recipient 5, exact linear map: R² ~ 1 on held-out rows
    assert res.diagnostics[-1]["r2_r2d"] > 0.999


def test_errors():
    ad, donor, recip = setup()
    recip.meta.prompt_sha256 = "z" * 64
    with pytest.raises(ExportError, match="different prompt sets"):
        export_pack(ad, donor, recip)
    ad, donor, recip = setup(dD=16)
    ad2, _, _ = setup()
    with pytest.raises(ExportError, match="hidden size"):
        export_pack(ad2, donor, recip)
    ad, donor, recip = setup(LD=4)
    with pytest.raises(ExportError, match="out of range"):
        export_pack(ad, donor, recip)


def test_edit_order_in_the_adapter_does_not_matter():
    """Edits listed out of layer order (a hand-built Adapter) fold with their own layer's profiles and land at
    their own recipient layer, exactly as when sorted."""
    ad, donor, recip = setup()
    want = export_pack(ad, donor, recip, holdout=0.2)
    ad.edits = [ad.edits[2], ad.edits[0], ad.edits[1]]
    got = export_pack(ad, donor, recip, holdout=0.2)
    assert [(e.donor_layer, e.layer) for e in got.pack.entries] == [(e.donor_layer, e.layer) for e in want.pack.entries]
    assert [(d["donor_layer"], d["recipient_layer"]) for d in got.diagnostics] == [
        (e.donor_layer, e.layer) for e in want.pack.entries]
    for a, b in zip(got.pack.entries, want.pack.entries):
        assert np.array_equal(a.A, b.A) and np.array_equal(a.C, b.C)


def test_factor_cache_keys_on_matrix_and_rows():
    from commandv.exporter.transfer.export import cached_factor

    clear_factor_cache()
    rng = np.random.default_rng(9)
    X = rng.standard_normal((30, 40)).astype(np.float32)
    fit_a, fit_b = np.arange(0, 25), np.arange(5, 30)
    fa = cached_factor(("k",), X, rows=fit_a)
    assert cached_factor(("k",), X, rows=fit_a.copy()) is fa  # same rows: a hit
    fb = cached_factor(("k",), X, rows=fit_b)  # other rows under the same key: not the cached factor
    assert fb is not fa
    np.testing.assert_array_equal(fb.X, X[fit_b])
    Y = X.copy()
    Y[::2] += 1.0  # another matrix under the same key
    assert cached_factor(("k",), Y, rows=fit_a) is not fa
    whole = cached_factor(("k",), X)
    assert whole is not fa and whole.n == 30


def test_warm_export_reuses_held_out_figures_and_matches_a_cold_one():
    """A second export of the same pair reuses the factors and the adapter-independent held-out figures
    (R², cycle error): its pack and diagnostics equal those of a cold export, and the edit's energies
    equal norms of the deltas formed directly."""
    from commandv.exporter.transfer import export as ex

    ad, donor, recip = setup(seed=4)
    clear_factor_cache()
    first = export_pack(ad, donor, recip, holdout=0.2)
    assert len(ex._HELD) == 3 and len(ex._FACTORS) == 6
    rng = np.random.default_rng(8)
    ad2 = Adapter(edits=[DonorEdit(e.layer, rng.standard_normal(e.A.shape) / 6, rng.standard_normal(4),
                                   rng.standard_normal(e.C.shape) / 6, "relu", kind="NodiReFT") for e in ad.edits],
                  kind="NodiReFT", positions="l1", component="block_output", sha256="b" * 64, source="t")
    warm = export_pack(ad2, donor, recip, holdout=0.2)
    assert len(ex._HELD) == 3 and len(ex._FACTORS) == 6  # all hits
    clear_factor_cache()
    cold = export_pack(ad2, donor, recip, holdout=0.2)
    assert warm.diagnostics == cold.diagnostics
    for a, b in zip(warm.pack.entries, cold.pack.entries):
        assert np.array_equal(a.A, b.A) and np.array_equal(a.C, b.C)
    assert [d["r2_r2d"] for d in warm.diagnostics] == [d["r2_r2d"] for d in first.diagnostics]  # adapter-free
    _, held = holdout_rows(50, 0.2)
    for edit, entry, d in zip(ad2.edits, warm.pack.entries, warm.diagnostics):
        hr = recip.layers[entry.layer][held].astype(np.float64)
        hd = donor.layers[edit.layer][held].astype(np.float64)
        want_r = np.linalg.norm(entry.delta(hr), axis=1).mean() / np.linalg.norm(hr, axis=1).mean()
        want_d = np.linalg.norm(edit.delta(hd), axis=1).mean() / np.linalg.norm(hd, axis=1).mean()
        assert d["delta_energy"] == pytest.approx(want_r, rel=1e-5)
        assert d["donor_delta_energy"] == pytest.approx(want_d, rel=1e-9)


def test_held_out_cache_keys_on_the_split():
    from commandv.exporter.transfer import export as ex

    ad, donor, recip = setup(seed=5)
    clear_factor_cache()
    a = export_pack(ad, donor, recip, holdout=0.2)
    b = export_pack(ad, donor, recip, holdout=0.3)  # other rows: other factors and held-out sets
    assert len(ex._HELD) == 6
    assert a.pack.meta["n_held"] == 10 and b.pack.meta["n_held"] == 15
    clear_factor_cache()
    assert export_pack(ad, donor, recip, holdout=0.3).diagnostics == b.diagnostics
    none = export_pack(ad, donor, recip, holdout=0.0)
    assert "r2_r2d" not in none.diagnostics[0]


def test_pinv_cal_matches_donor_relative_edit_size():
    clear_factor_cache()
    ad, donor, recip = setup()
    plain = export_pack(ad, donor, recip, holdout=0.2)
    cal = export_pack(ad, donor, recip, holdout=0.2, method="pinv-cal")
    assert cal.pack.meta["method"] == "pinv-cal" and plain.pack.meta["method"] == "pinv"
    fit, _ = holdout_rows(50, 0.2)
    for edit, p, c in zip(ad.edits, plain.pack.entries, cal.pack.entries):
        XR = recip.layers[c.layer][fit].astype(np.float64)
        XD = donor.layers[edit.layer][fit].astype(np.float64)
        rel = lambda d, X: np.median(np.linalg.norm(d, axis=1) / np.linalg.norm(X, axis=1))  # noqa: E731
        assert rel(c.delta(XR), XR) == pytest.approx(rel(edit.delta(XD), XD), rel=1e-4)
        assert np.allclose(c.A, p.A) and np.allclose(c.b, p.b)  # only the write side is scaled
        k = np.linalg.norm(c.C) / np.linalg.norm(p.C)
        assert np.allclose(c.C, p.C * k, rtol=1e-5, atol=1e-7)


def test_unknown_method_is_refused():
    ad, donor, recip = setup()
    with pytest.raises(ExportError, match="unknown method 'ridge'"):
        export_pack(ad, donor, recip, method="ridge")


def test_choose_method_auto_rule():
    """auto: pinv-tokens only across families into a wider recipient with GGUF profiles on both sides, gated there
    when the behavior's prompts are profiled; named methods pass through; anything else is refused by name."""
    import dataclasses

    from commandv.exporter.transfer.export import choose_method

    narrow, wide = make_profile(d=8).meta, make_profile(d=12).meta  # arch "llama"
    other_wide = dataclasses.replace(wide, arch="qwen2")
    other_narrow = dataclasses.replace(narrow, arch="qwen2")
    assert choose_method("auto", narrow, other_wide) == (
        "pinv-tokens", "auto: across families (llama → qwen2) into a wider recipient (d 8 → 12)")
    assert choose_method("auto", narrow, wide) == ("pinv", "auto: same model family (llama)")
    assert choose_method("auto", wide, other_narrow) == ("pinv", "auto: recipient not wider than the donor (d 12 → 8)")
    assert choose_method("auto", narrow, other_narrow)[0] == "pinv"  # equal widths: not wider
    hf = dataclasses.replace(other_wide, backend="hf")
    assert choose_method("auto", narrow, hf) == ("pinv", "auto: token rows need GGUF models on both sides")
    assert choose_method("auto", narrow, other_wide, contrast=True) == (
        "gated", "auto: across families (llama → qwen2) into a wider recipient (d 8 → 12), the behavior's prompts profiled")
    for other in ((narrow, wide), (wide, other_narrow), (narrow, hf)):  # gated only where pinv-tokens would be
        assert choose_method("auto", *other, contrast=True) == choose_method("auto", *other)
    assert choose_method("pinv-cal", narrow, wide) == ("pinv-cal", "as asked")
    assert choose_method("gated", narrow, other_wide) == ("gated", "as asked")
    anchored = "auto: token rows on the donor's behavior text (anchor texts)"
    for pair in ((narrow, wide), (wide, other_narrow), (narrow, other_wide)):  # anchor texts: pinv-tokens, any pair
        assert choose_method("auto", *pair, anchored=True) == ("pinv-tokens", anchored)
    assert choose_method("gated", narrow, other_wide, anchored=True) == ("gated", "as asked")
    for bad, words in (("pinv", "which pinv does not fit"), ("pinv-cal", "which pinv-cal does not fit")):
        with pytest.raises(ExportError, match=words):
            choose_method(bad, narrow, wide, anchored=True)
    with pytest.raises(ExportError, match="anchor texts need GGUF models on both sides"):
        choose_method("auto", narrow, hf, anchored=True)
    for pair in ((narrow, hf), (hf, narrow)):  # gated's write map needs token rows: GGUF on both sides
        with pytest.raises(ExportError, match=r"gated fold's write map needs token rows.*\(profiles: "):
            choose_method("gated", *pair)
    with pytest.raises(ExportError, match="unknown method 'best'; choose auto or one of: pinv, pinv-cal"):
        choose_method("best", narrow, wide)
