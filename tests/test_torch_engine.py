"""Reference engine: edits land only on targeted prompt rows, reach later layers and the cache,
equal the numpy pack math, and the unfolded path equals the folded one."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from commandv.exporter.adapters.interventions import DonorEdit  # noqa: E402
from commandv.exporter.transfer.fold import fold_edit  # noqa: E402
from commandv.exporter.transfer.translators import factorize  # noqa: E402
from commandv.runtime.engines.reference import TorchRecipient, pack_edits, unfolded_edits  # noqa: E402
from commandv.runtime.engines.request_checks import StrengthError  # noqa: E402
from commandv.runtime.pack.model import BehaviorPack, PackEntry, PackError  # noqa: E402
from tests.helpers import rel_err  # noqa: E402


def random_pack(d=64, n_layer=4, layers=(1,), r=3, seed=0, positions="l1", scale=0.5):
    rng = np.random.default_rng(seed)
    entries = [PackEntry(layer=l, A=(rng.standard_normal((d, r)) / np.sqrt(d)).astype(np.float32),
                         b=rng.standard_normal(r).astype(np.float32),
                         C=(scale * rng.standard_normal((r, d))).astype(np.float32), act="relu",
                         positions=positions) for l in layers]
    return BehaviorPack(entries=entries, recipient=dict(fingerprint="0" * 64, arch="llama", n_layer=n_layer,
                                                        d_model=d))


@pytest.fixture(scope="module")
def eng(tiny_hf):
    return TorchRecipient(*tiny_hf)


def test_edit_only_on_targeted_rows(eng):
    ids = eng.encode("Tell me something nice about rivers.")
    pack = random_pack(layers=(1,), positions="l1")
    _, base = eng.prompt_forward(ids, [], record_hidden=True)
    _, edited = eng.prompt_forward(ids, pack_edits([pack]), record_hidden=True)
    T = len(ids)
    # layer 0 untouched; at layer 1 only the last row changes, by exactly delta(h)
    assert np.array_equal(base[0], edited[0])
    assert np.array_equal(base[1][: T - 1], edited[1][: T - 1])
    want = base[1][-1] + pack.entries[0].delta(base[1][-1][None])[0]
    assert rel_err(edited[1][-1], want) < 1e-5
    # later layers: earlier rows cannot see the last token (causal), the last row changes
    for l in (2, 3):
        assert np.allclose(base[l][: T - 1], edited[l][: T - 1], atol=1e-6)
        assert not np.allclose(base[l][-1], edited[l][-1], atol=1e-3)


def test_first_and_last_positions(eng):
    ids = eng.encode("Hello there, how are you?")
    pack = random_pack(layers=(2,), positions="f1+l1")
    _, base = eng.prompt_forward(ids, [], record_hidden=True)
    _, edited = eng.prompt_forward(ids, pack_edits([pack]), record_hidden=True)
    changed = np.where(np.abs(base[2] - edited[2]).max(-1) > 0)[0].tolist()
    assert changed == [0, len(ids) - 1]


def test_generated_tokens_feel_edit_only_through_cache(eng):
    ids = eng.encode("Name a colour.")
    pack = random_pack(layers=(1,), scale=3.0)
    edits = pack_edits([pack])
    a = eng.generate_ids(ids, [], max_new_tokens=6)
    b = eng.generate_ids(ids, edits, max_new_tokens=6)
    # re-run the continuation as one plain forward over prompt+generated with the edit on the prompt row only:
    full = ids + b
    logits, _ = eng.prompt_forward(full, [])  # no edit: differs from the cached run
    e2 = [type(e)(e.layer, e.fn, e.strength, type(e.positions)(first=0, last=0)) for e in edits]
    assert b != a or True  # random pack may or may not change greedy tokens; the cache check follows
    # Independent check of the cache semantics: the edited prompt pass then one uncached step equals
    # a full pass where only row len(ids)-1 is edited.
    from commandv.runtime.edit.positions import Positions

    class AtRow:  # positions object targeting exactly one absolute row
        def __init__(self, row):
            self.row = row

        def indices(self, n):
            return [self.row]

    row_edits = [type(e)(e.layer, e.fn, e.strength, AtRow(len(ids) - 1)) for e in edits]
    lg_row, _ = eng.prompt_forward(full, row_edits)
    greedy = [int(x) for x in lg_row[len(ids) - 1: len(full) - 1].argmax(-1)]
    assert greedy == b
    assert e2 and Positions.parse("l1").indices(3) == [2] and logits.shape[0] == len(full)


def test_strength_zero_and_composition(eng):
    ids = eng.encode("Say hi.")
    p1, p2 = random_pack(layers=(1,), seed=1), random_pack(layers=(1,), seed=2)
    base, _ = eng.prompt_forward(ids, [])
    zero, _ = eng.prompt_forward(ids, pack_edits([p1], [0.0]))
    assert np.array_equal(base, zero)
    _, h = eng.prompt_forward(ids, [], record_hidden=True)
    _, h12 = eng.prompt_forward(ids, pack_edits([p1, p2], [1.0, 0.5]), record_hidden=True)
    x = h[1][-1][None]
    x = x + p1.entries[0].delta(x)
    x = x + 0.5 * p2.entries[0].delta(x)
    assert rel_err(h12[1][-1], x[0]) < 1e-5
    with pytest.raises(StrengthError, match="strengths"):  # same check and error as the llama.cpp engine
        pack_edits([p1, p2], [1.0])
    with pytest.raises(StrengthError, match="not a finite number"):
        pack_edits([p1], [float("nan")])


def test_folded_equals_unfolded(eng):
    rng = np.random.default_rng(7)
    n, dD = 40, 48
    XR = rng.standard_normal((n, 64)).astype(np.float32)
    XD = rng.standard_normal((n, dD)).astype(np.float32)
    edit = DonorEdit(5, rng.standard_normal((dD, 4)) / 7, rng.standard_normal(4),
                     rng.standard_normal((4, dD)) / 2, "silu", kind="NodiReFT")
    fR, fD = factorize(XR), factorize(XD)
    entry = fold_edit(edit, fR, fD, recipient_layer=2)
    pack = BehaviorPack(entries=[entry], recipient=dict(fingerprint="0" * 64, arch="llama", n_layer=4, d_model=64))
    C_rd = (torch.linalg.pinv(torch.from_numpy(XR).double()) @ torch.from_numpy(XD).double()).numpy()
    C_dr = (torch.linalg.pinv(torch.from_numpy(XD).double()) @ torch.from_numpy(XR).double()).numpy()
    ids = eng.encode("What is two plus two?")
    lf, hf = eng.prompt_forward(ids, pack_edits([pack]), record_hidden=True)
    lu, hu = eng.prompt_forward(ids, unfolded_edits([edit], [(5, 2)], {5: C_rd}, {5: C_dr}), record_hidden=True)
    assert rel_err(hf[3], hu[3]) < 1e-4
    assert rel_err(lf, lu) < 1e-4


def test_pack_mismatch_refused(eng):
    p = random_pack(d=32)
    with pytest.raises(PackError, match="d=32"):
        eng.generate("hi", packs=[p])


def test_engine_protocol_names(eng):
    """``prompt_pass(record_layers=)`` and ``max_tokens=`` (the names all engines share) give what the edit-level
    ``prompt_forward(record_hidden=)`` and the old ``max_new_tokens=`` give."""
    prompt = "Tell me something nice about rivers."
    ids = eng.encode(prompt)
    pack = random_pack(layers=(1, 2), seed=4)
    lf, hf = eng.prompt_forward(ids, pack_edits([pack], [1.5]), record_hidden=True)
    lp, hp = eng.prompt_pass(ids, [pack], [1.5], record_layers=True, all_logits=True, force=True)
    assert np.array_equal(lp, lf) and sorted(hp) == sorted(hf) == list(range(eng.n_layer))
    assert all(np.array_equal(hp[i], hf[i]) for i in hf)
    last, hidden = eng.prompt_pass(ids, [pack], [1.5], force=True)
    assert hidden == {} and np.array_equal(last, lf[-1])
    assert eng.generate(prompt, [pack], max_tokens=3, force=True) == eng.generate(prompt, [pack], max_new_tokens=3,
                                                                                  force=True)
    assert eng.generate_ids(ids, [], max_tokens=3) == eng.generate_ids(ids, [], max_new_tokens=3)
    with eng as same:
        assert same is eng
