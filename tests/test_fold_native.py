"""Native fold kernels (exporter/transfer/fold_kernels.c) against numpy float64, and their fallbacks."""

import numpy as np
import pytest

from commandv.exporter.adapters.interventions import DonorEdit
from commandv.exporter.transfer import fold_native
from commandv.exporter.transfer.fold import FoldItem, fold_edit, fold_edits
from commandv.exporter.transfer.translators import factorize
from commandv.runtime.native.build import compiler

needs_kernels = pytest.mark.skipif(compiler() is None, reason="no C compiler")


def _pair(rng, n, dR, dD, widths_r, widths_d, strided=False):
    wide = rng.standard_normal((n, dD + 5)).astype(np.float32)
    XD = wide[:, 2:dD + 2] if strided else np.ascontiguousarray(wide[:, :dD])  # a view: row stride != d
    XR = rng.standard_normal((n, dR)).astype(np.float32)
    GR, GD = (X.astype(np.float64) @ X.T.astype(np.float64) for X in (XR, XD))
    PR, PD = (fold_native.pack_factor(np.linalg.cholesky(G).astype(np.float32)) for G in (GR, GD))
    to_r = [rng.standard_normal((dD, w)) for w in widths_r]
    to_d = [rng.standard_normal((dD, w)) for w in widths_d]
    # Reference: X_Rᵀ G⁻¹ X_D M per block, float64 with numpy's dense solve (independent of the kernels).
    XD64, XR64 = XD.astype(np.float64), XR.astype(np.float64)
    want = ([XR64.T @ np.linalg.solve(GR, XD64 @ m) for m in to_r]
            + [XR64.T @ np.linalg.solve(GD, XD64 @ m) for m in to_d])
    return fold_native.PairFold(XD, XR, PR, PD, to_r, to_d), want


@needs_kernels
def test_kernels_build_and_pass_their_self_test():
    assert fold_native.available(), fold_native.unavailable_reason()


@needs_kernels
@pytest.mark.parametrize("n,dR,dD,widths_r,widths_d,threads,jobs", [
    (29, 37, 45, (2, 3), (6,), 1, 1),         # ragged everything, one thread
    (64, 80, 96, (8,), (8,), 2, 1),           # the benchmark's layout: 8 + 8 columns, one pair on both threads
    (64, 80, 96, (8,), (8,), 2, 4),           # … four pairs, whole pairs per thread
    (41, 300, 257, (4, 4), (4, 4, 1), 3, 5),  # LoReFT/NoReFT-like blocks, 3 threads: the last pairs shared
    (9, 10, 11, (1,), (1,), 7, 2),            # more threads than row blocks
    (100, 130, 120, (17,), (15,), 2, 3),      # more than one 16-column panel
])
def test_fold_batch_matches_numpy(n, dR, dD, widths_r, widths_d, threads, jobs, monkeypatch):
    rng = np.random.default_rng(n + jobs)
    pairs, wants = zip(*[_pair(rng, n, dR, dD, widths_r, widths_d, strided=j % 2 == 0) for j in range(jobs)])
    monkeypatch.setattr(fold_native, "threads", lambda: threads)
    got = fold_native.fold_batch(list(pairs))
    assert got is not None and len(got) == jobs
    for outs, want in zip(got, wants):
        outs = outs[:len(widths_r)] + [g.T for g in outs[len(widths_r):]]  # to_d results come as [w, d_R]
        assert [g.shape for g in outs] == [w.shape for w in want]
        for g, w in zip(outs, want):
            assert g.dtype == np.float32
            assert np.abs(g - w).max() / np.abs(w).max() < 1e-4


@needs_kernels
def test_batch_gives_the_same_bits_as_single_pairs(monkeypatch):
    """Whole pairs per thread (a batch) and one pair shared by both threads do the same float32 arithmetic."""
    monkeypatch.setattr(fold_native, "threads", lambda: 2)
    rng = np.random.default_rng(4)
    pairs = [_pair(rng, 70, 90, 110, (8,), (8,))[0] for _ in range(4)]
    batch = fold_native.fold_batch(pairs)
    for p, outs in zip(pairs, batch):
        single = fold_native.fold_batch([p])
        assert all(np.array_equal(a, b) for a, b in zip(outs, single[0]))


@needs_kernels
def test_edit_columns_in_any_layout_give_the_same_bits(monkeypatch):
    """The kernels fill M themselves from the edit's arrays: float32 or float64, transposed, reversed,
    every other column; other dtypes are converted first. float32 values are exact in float64, so every
    layout must give the bits of the same values passed as plain float64 columns."""
    monkeypatch.setattr(fold_native, "threads", lambda: 2)
    rng = np.random.default_rng(11)
    p, _ = _pair(rng, 50, 60, 70, (5,), (3,))
    base = rng.standard_normal((70, 16)).astype(np.float32)
    want = fold_native.fold_batch([fold_native.PairFold(p.XD, p.XR, p.PR, p.PD, [base[:, :5].astype(np.float64)],
                                                         [base[:, 5:8].astype(np.float64)])])[0]
    wide = np.zeros((70, 10), np.float32)
    wide[:, ::2] = base[:, :5]
    flipped = np.ascontiguousarray(base[::-1])
    layouts = [
        ([base[:, :5]], [base[:, 5:8]]),                                         # float32 views
        ([np.ascontiguousarray(base[:, :5].T).T], [np.ascontiguousarray(base[:, 5:8].T).T]),  # column-major
        ([wide[:, ::2]], [flipped[::-1, 5:8]]),                                  # every other column; negative row stride
        ([base[:, :5].astype(np.float16).astype(np.float32)[:, :0]] + [base[:, :5]], [base[:, 5:8]]),  # empty block
    ]
    for to_r, to_d in layouts:
        got = fold_native.fold_batch([fold_native.PairFold(p.XD, p.XR, p.PR, p.PD, to_r, to_d)])[0]
        assert all(np.array_equal(a, b) for a, b in zip(got[-2:], want))
    half = base.astype(np.float16)  # not float32/float64: converted before the call
    got = fold_native.fold_batch([fold_native.PairFold(p.XD, p.XR, p.PR, p.PD, [half[:, :5]], [half[:, 5:8]])])[0]
    ref = fold_native.fold_batch([fold_native.PairFold(p.XD, p.XR, p.PR, p.PD, [half[:, :5].astype(np.float64)],
                                                        [half[:, 5:8].astype(np.float64)])])[0]
    assert all(np.array_equal(a, b) for a, b in zip(got, ref))


@needs_kernels
def test_unsuitable_operands_are_refused():
    rng = np.random.default_rng(2)
    p, _ = _pair(rng, 20, 30, 40, (3,), (3,))
    assert fold_native.suits(p)
    other, _ = _pair(rng, 21, 30, 40, (3,), (3,))
    bigger, _ = _pair(rng, 33, 40, 40, (3,), (3,))  # three 16-row panels instead of two
    bad = [
        fold_native.PairFold(p.XD.astype(np.float64), p.XR, p.PR, p.PD, p.to_r, p.to_d),  # float64 profile
        fold_native.PairFold(p.XD, p.XR[:19], p.PR, p.PD, p.to_r, p.to_d),  # prompt counts differ
        fold_native.PairFold(np.asfortranarray(p.XD), p.XR, p.PR, p.PD, p.to_r, p.to_d),  # rows not contiguous
        fold_native.PairFold(p.XD, p.XR, p.PR[:-1], p.PD, p.to_r, p.to_d),  # packed factor cut short
        fold_native.PairFold(p.XD, p.XR, bigger.PR, p.PD, p.to_r, p.to_d),  # a factor of another size
        fold_native.PairFold(p.XD, p.XR, p.PR.astype(np.float64), p.PD, p.to_r, p.to_d),  # not float32
        fold_native.PairFold(p.XD, p.XR, p.PR, p.PD, [np.zeros((39, 3))], p.to_d),  # M rows != d_D
        fold_native.PairFold(p.XD, p.XR, p.PR, p.PD, [], []),  # nothing to fold
    ]
    for q in bad:
        assert not fold_native.suits(q)
        assert fold_native.fold_batch([p, q]) is None  # the caller then folds through numpy
    assert fold_native.fold_batch([p, other]) is None


@needs_kernels
def test_chol_solve_matches_numpy():
    rng = np.random.default_rng(3)
    for n in (70, 16, 17, 5):  # whole panels, one panel, a ragged last panel
        X = rng.standard_normal((n, 90)).astype(np.float32)
        G = X.astype(np.float64) @ X.T.astype(np.float64)
        P = fold_native.pack_factor(np.linalg.cholesky(G).astype(np.float32))
        for k in (1, 8, 13):
            Y = rng.standard_normal((n, k))
            got = fold_native.chol_solve(P, n, Y)
            want = np.linalg.solve(G, Y)
            assert got.shape == (n, k) and np.abs(got - want).max() / np.abs(want).max() < 1e-4
    with pytest.raises(ValueError, match="packed factor for N=90"):
        fold_native.chol_solve(P, 90, np.zeros((90, 1)))
    with pytest.raises(ValueError, match=r"\[5, k\]"):
        fold_native.chol_solve(P, 5, np.zeros((4, 1)))


def _edit(rng, kind, dD, r=4):
    A, C = rng.standard_normal((dD, r)) / 12, rng.standard_normal((r, dD))
    R = np.linalg.qr(rng.standard_normal((dD, r)))[0]
    extra = {"LoReFT": dict(P=R, Q=R.T), "NoReFT": dict(P=C.T, Q=C, e=rng.standard_normal(dD))}.get(kind, {})
    return DonorEdit(2, A, rng.standard_normal(r), C, "relu", **extra, kind=kind)


@needs_kernels
@pytest.mark.parametrize("kind", ["LoReFT", "NoReFT", "NodiReFT"])
def test_native_and_numpy_folds_agree(kind, monkeypatch):
    """The same edits through the native batch and through numpy (native switched off)."""
    rng = np.random.default_rng(11)
    n, dR, dD = 50, 120, 140
    items = []
    for layer in range(3):
        fR = factorize(rng.standard_normal((n, dR)).astype(np.float32))
        fD = factorize(rng.standard_normal((n, dD)).astype(np.float32))
        assert fR.gram == fD.gram == "float32" and fR.panels() is not None
        items.append(FoldItem(_edit(rng, kind, dD), fR, fD, layer))
    calls = []
    real = fold_native.fold_batch
    monkeypatch.setattr(fold_native, "fold_batch", lambda pairs: calls.append(len(pairs)) or real(pairs))
    native = fold_edits(items)
    assert calls == [3]  # one native call for the whole batch, and it was taken
    monkeypatch.setattr(fold_native, "fold_batch", lambda pairs: None)
    numpy = fold_edits(items)
    assert [e.layer for e in native] == [0, 1, 2]
    for a_entry, b_entry in zip(native, numpy):
        for name in ("A", "C", "P", "Q", "e"):
            a, b = getattr(a_entry, name), getattr(b_entry, name)
            assert (a is None) == (b is None)
            if a is not None:
                assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


def test_float64_factors_stay_on_numpy(monkeypatch):
    rng = np.random.default_rng(5)
    XR, XD = rng.standard_normal((20, 30)), rng.standard_normal((20, 40))
    fR, fD = factorize(XR), factorize(XD)
    assert fR.L is None or fR.L.dtype == np.float64
    monkeypatch.setattr(fold_native, "fold_batch", lambda pairs: pytest.fail("native path taken"))
    edit = DonorEdit(0, rng.standard_normal((40, 2)), rng.standard_normal(2),
                     rng.standard_normal((2, 40)), "linear", kind="NodiReFT")
    entry = fold_edit(edit, fR, fD, 0)
    want = XR.T @ np.linalg.solve(XR @ XR.T, XD @ edit.A)
    assert np.abs(entry.A - want).max() / np.abs(want).max() < 1e-5


def test_disabled_by_env(monkeypatch):
    monkeypatch.setenv("COMMANDV_NATIVE", "0")
    fold_native._lib.cache_clear()
    try:
        assert not fold_native.available()
        assert "COMMANDV_NATIVE" in fold_native.unavailable_reason()
        rng = np.random.default_rng(1)
        XR, XD = (rng.standard_normal((12, d)).astype(np.float32) for d in (30, 40))
        fR, fD = factorize(XR), factorize(XD)
        assert fR.gram == "float32" and fR.panels() is None  # numpy's blocked solves
        edit = DonorEdit(0, rng.standard_normal((40, 2)), rng.standard_normal(2),
                         rng.standard_normal((2, 40)), "linear", kind="NodiReFT")
        entry = fold_edit(edit, fR, fD, 0)  # numpy triangular solves instead
        X64 = XR.astype(np.float64)
        want = X64.T @ np.linalg.solve(X64 @ X64.T, XD.astype(np.float64) @ edit.A)
        assert np.abs(entry.A - want).max() / np.abs(want).max() < 1e-4
    finally:
        monkeypatch.delenv("COMMANDV_NATIVE")
        fold_native._lib.cache_clear()


def test_failed_compile_leaves_no_library(tmp_home, monkeypatch, tmp_path):
    bad_cc = tmp_path / "cc"
    bad_cc.write_text("#!/bin/sh\necho 'cc: error: no such thing' >&2\nexit 1\n")
    bad_cc.chmod(0o755)
    monkeypatch.setenv("CC", str(bad_cc))
    with pytest.raises(fold_native.FoldKernelError, match="compiling fold_kernels.c failed: cc: error"):
        fold_native.build(force=True)
    native_dir = tmp_home / "native"
    assert not native_dir.exists() or not any(native_dir.iterdir())


def test_cache_path_is_keyed_by_the_cpu(tmp_home, monkeypatch):
    """A ``-march=native`` build is cached per CPU: a cache folder shared between machines never hands one
    machine the library built for another (that would die with an illegal instruction)."""
    from commandv.runtime import cpu

    def on(model, flags, ident=""):
        monkeypatch.setattr(cpu, "cpu_info", lambda: cpu.CpuInfo(model=model, flags=frozenset(flags.split()),
                                                                 machine="x86_64", ident=ident))
        return fold_native.library_path("/usr/bin/cc")

    zen = on("AMD EPYC 7B13", "fpu sse2 avx avx2 fma")
    assert on("AMD EPYC 7B13", "avx2 fma fpu sse2 avx") == zen  # same CPU (flag order aside): same library
    assert zen.parent == tmp_home / "native" and zen.name.startswith("fold_kernels-")
    xeon = on("Intel(R) Xeon(R) Platinum 8480+", "fpu sse2 avx avx2 fma avx512f amx_tile")
    assert xeon != zen
    assert on("AMD EPYC 7B13", "fpu sse2 avx avx2 fma avx512f") != zen  # same name, other flags
    assert on("AMD EPYC 7B13", "fpu sse2 avx avx2 fma", ident="cpu family=25;model=1") != zen


def test_export_folds_every_pair_in_one_call(monkeypatch):
    from commandv.exporter.adapters.folder import Adapter
    from commandv.exporter.transfer.export import clear_factor_cache, export_pack
    from tests.test_store import make_profile

    rng = np.random.default_rng(8)
    donor = make_profile(n=40, d=48, L=4, fp="d" * 64, net="x" * 64)
    recip = make_profile(n=40, d=44, L=3, fp="r" * 64, net="y" * 64)
    donor.layers = [rng.standard_normal((40, 48)).astype(np.float32) for _ in range(4)]
    recip.layers = [rng.standard_normal((40, 44)).astype(np.float32) for _ in range(3)]
    edits = [DonorEdit(l, rng.standard_normal((48, 4)) / 6, rng.standard_normal(4),
                       rng.standard_normal((4, 48)) / 6, "linear", kind="NodiReFT") for l in (3, 0, 2)]
    ad = Adapter(edits=edits, kind="NodiReFT", positions="l1", component="block_output", sha256="a" * 64, source="t")
    calls = []
    real = fold_native.fold_batch
    monkeypatch.setattr(fold_native, "fold_batch", lambda pairs: calls.append(len(pairs)) or real(pairs))
    clear_factor_cache()
    res = export_pack(ad, donor, recip, holdout=0.2)
    assert calls == [3]
    assert [e.donor_layer for e in res.pack.entries] == [0, 2, 3]  # donor-layer order
    assert [d["donor_layer"] for d in res.diagnostics] == [0, 2, 3]
