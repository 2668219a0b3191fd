"""The transferred-vs-direct diagnostic (issue 20): cosines and norm ratios equal numpy on hand-built edits, an
edit against itself gives 1 / 1 and against its negation −1 / 1, nearest-layer and summed rows, the mapped
direction through an exact translator, and the engine wrapper on the tiny GGUF."""

from __future__ import annotations

import numpy as np
import pytest

from commandv.exporter.evaluation.diagnose import (
    compare_edits,
    cosine,
    d2r_mapper,
    layer_edits,
    mapped_directions,
    markdown_table,
    summary,
)
from commandv.runtime.pack.model import BehaviorPack, PackEntry

D, N_LAYER = 16, 6


def _pack(layers, seed, d=D, act="linear", scale=1.0, strength=1.0, pq=False, offset=False) -> BehaviorPack:
    rng = np.random.default_rng(seed)
    entries = []
    for l in layers:
        kw = {}
        if pq:
            kw.update(P=rng.standard_normal((d, 2)).astype(np.float32), Q=rng.standard_normal((2, d)).astype(np.float32))
        if offset:
            kw["e"] = rng.standard_normal(d).astype(np.float32)
        entries.append(PackEntry(layer=l, A=rng.standard_normal((d, 3)).astype(np.float32),
                                 b=rng.standard_normal(3).astype(np.float32),
                                 C=(scale * rng.standard_normal((3, d))).astype(np.float32), act=act,
                                 strength=strength, **kw))
    return BehaviorPack(entries=entries, recipient=dict(fingerprint="0" * 64, arch="llama", n_layer=N_LAYER,
                                                        d_model=d), name=f"p{seed}")


def _negated(p: BehaviorPack) -> BehaviorPack:
    ents = [PackEntry(layer=e.layer, A=e.A, b=e.b, C=-e.C, act=e.act, strength=e.strength, P=e.P,
                      Q=None if e.Q is None else -e.Q, e=None if e.e is None else -e.e) for e in p.entries]
    return BehaviorPack(entries=ents, recipient=p.recipient, name="neg")


def _hidden(seed=0, n=10):
    rng = np.random.default_rng(seed)
    return {l: rng.standard_normal((n, D)).astype(np.float32) + (l + 1) for l in range(N_LAYER)}


EXPECT = [True] * 6 + [False] * 4


@pytest.mark.parametrize("act,pq,offset", [("linear", False, False), ("silu", True, True)])
def test_edit_against_itself_and_its_negation(act, pq, offset):
    h = _hidden()
    p = _pack((0, 2, 4), 1, act=act, pq=pq, offset=offset)
    same = compare_edits(h, p, p, EXPECT)
    neg = compare_edits(h, p, _negated(p), EXPECT)
    twice = compare_edits(h, p, p, EXPECT, strength=2.0)
    assert [r["layer"] for r in same] == [0, 2, 4, "sum"]
    for r in same:
        for k in ("cos_mean", "cos_min", "cos_of_means", "cos_expected", "cos_unexpected", "cos_selective"):
            assert r[k] == pytest.approx(1.0, abs=1e-9), k
        assert r["ratio_median"] == pytest.approx(1.0, abs=1e-12)
    for r in neg:
        for k in ("cos_mean", "cos_of_means", "cos_selective"):
            assert r[k] == pytest.approx(-1.0, abs=1e-9), k
        assert r["ratio_median"] == pytest.approx(1.0, abs=1e-12)
    assert all(r["ratio_median"] == pytest.approx(2.0) and r["cos_mean"] == pytest.approx(1.0) for r in twice)


def test_cosines_and_ratios_equal_numpy():
    h = _hidden(1)
    t, d = _pack((0, 2, 3), 2, strength=0.5), _pack((0, 2, 4), 3, act="silu")
    rows = {r["layer"]: r for r in compare_edits(h, t, d, EXPECT, strength=1.5)}
    ex = np.array(EXPECT)
    for l in (0, 2):
        et = 1.5 * 0.5 * t.entries[[e.layer for e in t.entries].index(l)].delta(h[l].astype(np.float64))
        ed = d.entries[[e.layer for e in d.entries].index(l)].delta(h[l].astype(np.float64))
        cos = np.einsum("ij,ij->i", et, ed) / (np.linalg.norm(et, axis=1) * np.linalg.norm(ed, axis=1))
        ratio = np.linalg.norm(et, axis=1) / np.linalg.norm(ed, axis=1)
        r = rows[l]
        assert r["cos_mean"] == pytest.approx(cos.mean()) and r["cos_min"] == pytest.approx(cos.min())
        assert r["ratio_median"] == pytest.approx(np.median(ratio))
        m1, m2 = et.mean(0), ed.mean(0)
        assert r["cos_of_means"] == pytest.approx(m1 @ m2 / np.linalg.norm(m1) / np.linalg.norm(m2))
        s1, s2 = et[ex].mean(0) - et[~ex].mean(0), ed[ex].mean(0) - ed[~ex].mean(0)
        assert r["cos_selective"] == pytest.approx(s1 @ s2 / np.linalg.norm(s1) / np.linalg.norm(s2))
        hh = h[l].astype(np.float64)
        rdir = hh[ex].mean(0) - hh[~ex].mean(0)
        assert r["cos_t_behavior_dir"] == pytest.approx(cosine(et.mean(0), rdir))
        assert r["rel_norm_t"] == pytest.approx(np.median(np.linalg.norm(et, axis=1) / np.linalg.norm(hh, axis=1)))
    # layer 3: transferred only → against the direct edit at the nearest direct layer (2 and 4 tie: the lower)
    r3 = rows[3]
    assert (r3["in_transferred"], r3["in_direct"], r3["nearest_layer"]) == (True, False, 2)
    et3 = 0.75 * t.entries[2].delta(h[3].astype(np.float64))
    ed2 = d.entries[1].delta(h[2].astype(np.float64))
    c = np.einsum("ij,ij->i", et3, ed2) / (np.linalg.norm(et3, axis=1) * np.linalg.norm(ed2, axis=1))
    assert r3["nearest_cos_mean"] == pytest.approx(c.mean())
    assert rows[4]["nearest_layer"] == 3 and not rows[4]["in_transferred"]
    # the summed edit: every layer's edit on its own layer's h, added up
    st = sum(layer_edits(t, 1.5, h).values())
    sd = sum(layer_edits(d, 1.0, h).values())
    cs = np.einsum("ij,ij->i", st, sd) / (np.linalg.norm(st, axis=1) * np.linalg.norm(sd, axis=1))
    assert rows["sum"]["cos_mean"] == pytest.approx(cs.mean())
    s = summary(list(rows.values()))
    assert s["layers_both"] == [0, 2] and s["sum_cos_mean"] == pytest.approx(cs.mean())
    md = markdown_table(list(rows.values()), "t")
    assert md.count("\n| ") == 6 and "(vs 2)" in md


def test_two_entries_on_one_layer_add_up():
    h = _hidden(2)
    p = _pack((1, 1), 4)
    both = layer_edits(p, 1.0, h)[1]
    want = sum(e.delta(h[1].astype(np.float64)) for e in p.entries)
    np.testing.assert_allclose(both, want, rtol=1e-12)


def test_mapped_direction_through_an_exact_translator():
    rng = np.random.default_rng(5)
    dD, dR, n_prof = 12, 8, 60
    M = rng.standard_normal((dD, dR))
    XD = rng.standard_normal((n_prof, dD))
    mapper = d2r_mapper(XD.astype(np.float32), XD @ M, rcond=None)
    hd = rng.standard_normal((10, dD)) + np.where(np.array(EXPECT)[:, None], 2.0, 0.0)
    hr = hd @ M
    rows = mapped_directions({3: hd}, {2: hr}, EXPECT, [(3, 2)], {(3, 2): mapper})
    assert rows[0]["cos_mapped_dir"] == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["mapped_dir_norm_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert rows[0]["r2_d2r_prompts"] == pytest.approx(1.0, abs=1e-6)
    # a recipient whose direction is the opposite one
    rows = mapped_directions({3: hd}, {2: -hr}, EXPECT, [(3, 2)], {(3, 2): mapper})
    assert rows[0]["cos_mapped_dir"] == pytest.approx(-1.0, abs=1e-5)


def test_diagnose_on_the_tiny_gguf(tiny_gguf):
    pytest.importorskip("llama_cpp")
    from commandv.exporter.evaluation.diagnose import diagnose, last_token_states
    from commandv.exporter.training.behaviors import EvalPrompt
    from commandv.profiles.store import Profile, ProfileMeta
    from commandv.runtime.engines.llama.engine import Recipient
    from tests.test_llama_parity import random_pack

    with Recipient(tiny_gguf, n_ctx=256, kv_type="f32", flash_attn=False, n_threads=1) as rec:
        t = random_pack(layers=(1, 2), seed=7, fingerprint=rec.fingerprint)
        for e in t.entries:
            e.donor_layer = e.layer
        t.meta = {"rcond": None, "holdout_fraction": 0.0}
        prompts = [EvalPrompt(f"Tell me about rivers number {i}.", "harmful", True) for i in range(4)]
        prompts += [EvalPrompt(f"What is {i} plus {i}?", "harmless", False) for i in range(4)]
        rows = diagnose(rec, t, t, prompts)
        assert all(r["cos_mean"] == pytest.approx(1.0) and r["ratio_median"] == pytest.approx(1.0) for r in rows)
        # the donor is the recipient itself, profiled on more prompts than d: the translator is the identity
        gen = [f"Please write about the sea and the model {i}, layer {i % 7}." for i in range(80)]
        st = last_token_states(rec, gen)
        meta = ProfileMeta("f" * 64, "n" * 64, "tiny", "llama", rec.n_layer, rec.d_model, len(gen), "t", "s" * 64,
                           "gguf", None, "")
        prof = Profile([st[l] for l in range(rec.n_layer)], meta)
        from commandv.exporter.adapters.folder import Adapter
        from commandv.exporter.adapters.interventions import DonorEdit

        ad = Adapter(edits=[DonorEdit(e.layer, e.A.astype(np.float64), e.b.astype(np.float64),
                                      e.C.astype(np.float64), e.act, kind="NodiReFT") for e in t.entries],
                     kind="NodiReFT", positions="l1", component="block_output", sha256="s" * 64, source="x")
        rows = diagnose(rec, t, t, prompts, donor=rec, donor_profile=prof, recipient_profile=prof, donor_adapter=ad)
        mapped = [r for r in rows if isinstance(r["layer"], int) and "cos_mapped_dir" in r]
        assert [r["layer"] for r in mapped] == [1, 2]
        for r in mapped:  # identity translator on a full-rank profile: everything is carried
            assert r["cos_mapped_dir"] == pytest.approx(1.0, abs=1e-4)
            assert r["donor_edit_kept"] == pytest.approx(1.0, abs=1e-4)
            assert r["direct_edit_in_image"] == pytest.approx(1.0, abs=1e-4)
        assert rows[-1]["layer"] == "translator"


def test_translator_kept_and_image_fractions():
    rng = np.random.default_rng(6)
    dD, dR, n = 10, 8, 40
    # donor states in a 3-dim subspace (plus nothing else): the truncated pinv keeps exactly that subspace
    basis = np.linalg.qr(rng.standard_normal((dD, 3)))[0].T  # [3, dD] orthonormal rows
    XD = rng.standard_normal((n, 3)) @ basis
    M = rng.standard_normal((dD, dR))
    tr = d2r_mapper(XD, XD @ M, rcond=1e-6)
    assert tr.rank == 3
    inside = rng.standard_normal((4, 3)) @ basis
    outside = rng.standard_normal((4, dD))
    outside -= (outside @ basis.T) @ basis
    np.testing.assert_allclose(tr.kept(inside), 1.0, atol=1e-8)
    np.testing.assert_allclose(tr.kept(outside), 0.0, atol=1e-8)
    # the image: the 3-dim space basis @ M; a recipient vector there is fully inside, its complement not at all
    assert tr.image_rank == 3
    img = rng.standard_normal((2, 3)) @ (basis @ M)
    np.testing.assert_allclose(tr.in_image(img), 1.0, atol=1e-8)
    q = np.linalg.qr((basis @ M).T)[0]  # [dR, 3]
    w = rng.standard_normal((2, dR))
    w -= (w @ q) @ q.T
    np.testing.assert_allclose(tr.in_image(w), 0.0, atol=1e-8)
    np.testing.assert_allclose(tr(inside), inside @ M, rtol=1e-8, atol=1e-8)  # exact on the kept subspace
