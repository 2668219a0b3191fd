"""runtime/edit/lowrank.py: the row norms of a low-rank delta against norms of the formed deltas."""

import numpy as np
import pytest

from commandv.runtime.edit.lowrank import delta_row_norms, lowrank_delta


@pytest.mark.parametrize("act", ["linear", "relu", "gelu", "silu", "tanh"])
@pytest.mark.parametrize("with_pq,with_e", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_delta_row_norms_equal_the_norms_of_the_deltas(act, with_pq, with_e, dtype):
    rng = np.random.default_rng(5)
    d, r, q = 37, 4, 3
    h = rng.standard_normal((2, 9, d)).astype(dtype)  # any leading shape
    A, C = rng.standard_normal((d, r)).astype(dtype), rng.standard_normal((r, d)).astype(dtype)
    b = rng.standard_normal(r).astype(dtype)
    P = rng.standard_normal((d, q)).astype(dtype) if with_pq else None
    Q = rng.standard_normal((q, d)).astype(dtype) if with_pq else None
    e = rng.standard_normal(d).astype(dtype) if with_e else None
    want = np.linalg.norm(lowrank_delta(h.astype(np.float64), A, b, C, act, P, Q, e), axis=-1)
    got = delta_row_norms(h, A, b, C, act, P, Q, e)
    assert got.shape == (2, 9)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * float(want.max()))


def test_a_zero_delta_has_zero_norm():
    h = np.ones((3, 5))
    got = delta_row_norms(h, np.zeros((5, 2)), np.zeros(2), np.ones((2, 5)))
    np.testing.assert_array_equal(got, np.zeros(3))


def test_pack_entries_and_donor_edits_are_one_edit_type_with_the_written_out_formula():
    """LowRankEdit.delta against the formula spelled out in numpy, through both subclasses."""
    from commandv.exporter.adapters.interventions import DonorEdit
    from commandv.runtime.edit.lowrank import LowRankEdit
    from commandv.runtime.pack.model import PackEntry

    rng = np.random.default_rng(11)
    d, r, q = 12, 3, 2
    A, b, C = rng.standard_normal((d, r)), rng.standard_normal(r), rng.standard_normal((r, d))
    P, Q, e = rng.standard_normal((d, q)), rng.standard_normal((q, d)), rng.standard_normal(d)
    h = rng.standard_normal((4, d))
    want = np.maximum(h @ A + b, 0.0) @ C - (h @ P) @ Q + e
    edits = [PackEntry(layer=1, A=A, b=b, C=C, act="relu", P=P, Q=Q, e=e, strength=2.0),
             DonorEdit(1, A, b, C, "relu", P=P, Q=Q, e=e, kind="LoReFT")]
    for edit in edits:
        assert isinstance(edit, LowRankEdit) and (edit.d, edit.rank) == (d, r)
        np.testing.assert_allclose(edit.delta(h), want, rtol=1e-12, atol=1e-12)  # strength is not part of delta
        np.testing.assert_allclose(edit.delta_norms(h), np.linalg.norm(want, axis=-1), rtol=1e-10)
    with pytest.raises(TypeError):
        DonorEdit(1, A, b, C, "relu")  # the intervention kind is required, by keyword
