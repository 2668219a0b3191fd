"""A pack checked by ``load_packs`` is not validated again per request; packs given directly, or changed since,
are (issue #21). A stand-in engine (no model) runs the shared request checks of :class:`TextEngine`."""

from types import SimpleNamespace

import numpy as np
import pytest

from commandv.runtime.edit.positions import Positions, parse_positions
from commandv.runtime.engines.llama import ggml_bindings as gb
from commandv.runtime.engines.llama.editor import compile_entries
from commandv.runtime.engines.request_checks import PositionsError, target_rows
from commandv.runtime.engines.text_engine import TextEngine
from commandv.runtime.pack.model import BehaviorPack, PackEntry, PackError
from commandv.runtime.pack.policy import PackPolicy
from tests.test_pack import make_pack


class FakeEngine(TextEngine):
    def __init__(self, fingerprint="ab" * 32, arch="llama", n_layer=6, d_model=16, force=False):
        self.info = SimpleNamespace(fingerprint=fingerprint, arch=arch)
        self.n_layer, self.d_model, self.force = n_layer, d_model, force
        self.n_ctx, self.n_vocab = 64, 100
        self.policy = PackPolicy(signatures="off")
        self._reference = None


@pytest.fixture
def scans(monkeypatch):
    """Counts full entry validations (the finite / range scans)."""
    n = {"validate": 0, "check_model": 0}
    validate, check_model = PackEntry.validate, BehaviorPack.check_model

    def counted(self, *a, **k):
        n["validate"] += 1
        return validate(self, *a, **k)

    def counted_model(self, *a, **k):
        n["check_model"] += 1
        return check_model(self, *a, **k)

    monkeypatch.setattr(PackEntry, "validate", counted)
    monkeypatch.setattr(BehaviorPack, "check_model", counted_model)
    return n


def test_loaded_pack_is_checked_once(scans):
    eng, pack = FakeEngine(), make_pack()
    [loaded] = eng.load_packs([pack])
    assert loaded is pack and scans == {"validate": 2, "check_model": 1}
    for _ in range(3):
        ids, packs, s = eng._checked_request([1, 2, 3], [pack], [0.5], None)
        assert packs == [pack] and s == [0.5]
    assert scans == {"validate": 2, "check_model": 1}


def test_direct_packs_are_checked_every_request(scans):
    eng, pack = FakeEngine(), make_pack()
    for i in range(1, 3):
        eng._checked_request([1, 2], pack, None, None)
        assert scans == {"validate": 2 * i, "check_model": i}


def test_changed_pack_is_checked_again():
    eng, pack = FakeEngine(), make_pack()
    eng.load_packs(pack)
    pack.entries[0].A = np.full_like(pack.entries[0].A, np.nan)  # a new array: seen
    with pytest.raises(PackError, match="entry 0: tensor A has NaN or Inf values"):
        eng._checked_request([1], [pack], None, None)
    pack = make_pack()
    eng.load_packs(pack)
    pack.entries[1].strength = float("inf")
    with pytest.raises(PackError, match="entry 1: strength inf is not finite"):
        eng._checked_request([1], [pack], None, None)
    pack = make_pack()
    eng.load_packs(pack)
    pack.entries.append(PackEntry(layer=9, A=pack.entries[0].A, b=pack.entries[0].b, C=pack.entries[0].C))
    with pytest.raises(PackError, match="entry 2: layer 9 out of range 0..5"):
        eng._checked_request([1], [pack], None, None)


def test_model_check_follows_the_model_and_force(scans):
    pack = make_pack()
    forced = FakeEngine(arch="qwen2")
    forced.load_packs([pack], force=True)
    with pytest.raises(PackError, match="is for arch 'llama', model is 'qwen2'"):
        forced._checked_request([1], [pack], None, False)  # loaded under force; asked without: checked again
    forced._checked_request([1], [pack], None, True)
    other = FakeEngine(fingerprint="cd" * 32)
    with pytest.raises(PackError, match="was made for model abab"):
        other._checked_request([1], [pack], None, None)  # marked for another model: checked here
    same = FakeEngine()
    same.load_packs(pack)
    n = dict(scans)
    FakeEngine()._checked_request([1], [pack], None, None)  # another engine of the same model
    assert scans == n


def test_request_errors_unchanged():
    eng, pack = FakeEngine(), make_pack()
    eng.load_packs([pack])
    with pytest.raises(PackError, match="expected a BehaviorPack or a pack file, got int"):
        eng._checked_request([1], [pack, 3], None, None)
    with pytest.raises(Exception, match="1 packs but 2 strengths"):
        eng._checked_request([1], [pack], [1.0, 2.0], None)
    with pytest.raises(Exception, match="strength nan for pack 0 is not a finite number"):
        eng._checked_request([1], [pack], [float("nan")], None)


def test_onnx_style_refusal_applies_to_loaded_and_direct_packs():
    class NoSites(FakeEngine):
        def _check_packs_fit(self, packs):
            if packs:
                raise PackError("no pack sites")

    eng = NoSites()
    with pytest.raises(PackError, match="no pack sites"):
        eng.load_packs([make_pack()])
    with pytest.raises(PackError, match="no pack sites"):
        eng._checked_request([1], [make_pack()], None, None)
    assert eng.load_packs([]) == []


# ------------------------------------------------------------------ one positions → rows, one l_out-N table

def test_target_rows_is_the_one_positions_step():
    assert target_rows("f1+l2", 5, None, "x") == [0, 3, 4]
    assert target_rows("l1", 5, [3, 1, 3], "x") == [1, 3]
    with pytest.raises(PositionsError, match=r"rows \[5\]… outside the prompt of 5 tokens"):
        target_rows("l1", 5, [5], "x")
    with pytest.raises(PositionsError, match=r"pack 'p' entry 0: positions 'l9' need at least 9 prompt tokens"):
        target_rows("l9", 5, None, "pack 'p' entry 0")
    from commandv.runtime.engines.onnx import feeds as onnx_feeds
    assert onnx_feeds.target_rows is target_rows
    entries = compile_entries([make_pack()], [1.0], 4)
    assert [e.rows.tolist() for e in entries] == [[3], [0, 3]]


def test_parse_positions_is_cached_and_equal():
    assert parse_positions("f1+l1") is parse_positions("f1+l1") == Positions.parse("f1+l1")
    with pytest.raises(ValueError, match="part 'x1' is not fN or lN"):
        parse_positions("x1")


def test_layer_output_names():
    assert gb.layer_outputs(3) == {"l_out-0": 0, "l_out-1": 1, "l_out-2": 2}
    assert gb.layer_output_name(7) == "l_out-7"


def test_ggml_base_lookup(tmp_path):
    with pytest.raises(KeyError, match="not found in"):
        gb.ggml_base_path(tmp_path, KeyError)
    name = {"darwin": "libggml-base.dylib", "win32": "ggml-base.dll"}.get(__import__("sys").platform,
                                                                           "libggml-base.so")
    (tmp_path / name).write_bytes(b"")
    assert gb.ggml_base_path(tmp_path) == tmp_path / name
    from commandv.runtime.native import build
    assert build._ggml_base(tmp_path) == tmp_path / name


def test_torch_engine_checks_a_loaded_pack_once(scans, tiny_hf):
    """The reference engine shares the validate-once step: a loaded pack is not scanned again per request."""
    pytest.importorskip("torch")
    from commandv.runtime.engines.reference import TorchRecipient
    from tests.test_torch_engine import random_pack

    eng = TorchRecipient(*tiny_hf)
    ids = eng.encode("Tell me something nice about rivers.")
    pack = random_pack(layers=(1, 2), seed=4)
    [loaded] = eng.load_packs([pack], force=True)
    assert loaded is pack and scans == {"validate": 2, "check_model": 1}
    for _ in range(3):
        eng.prompt_pass(ids, [pack], [1.0], force=True)
    assert scans == {"validate": 2, "check_model": 1}
    direct = random_pack(layers=(1,), seed=5)
    for i in range(1, 3):  # not loaded: checked in full every time
        eng.prompt_pass(ids, [direct], force=True)
        assert scans == {"validate": 2 + i, "check_model": 1 + i}
