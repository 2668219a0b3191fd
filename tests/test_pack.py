"""BehaviorPack GGUF round trip and validation."""

import numpy as np
import pytest

from commandv.runtime.pack.model import BehaviorPack, PackEntry, PackError


def make_pack(d=16, r=4, n_layer=6, with_pq=True, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    entries = [
        PackEntry(layer=1, A=f(d, r), b=f(r), C=f(r, d), act="relu", positions="l1", strength=1.5,
                  P=f(d, 2) if with_pq else None, Q=f(2, d) if with_pq else None, e=f(d), donor_layer=2),
        PackEntry(layer=4, A=f(d, r), b=f(r), C=f(r, d), act="linear", positions="f1+l1", donor_layer=8),
    ]
    return BehaviorPack(entries=entries, name="unit",
                        recipient=dict(fingerprint="ab" * 32, arch="llama", n_layer=n_layer, d_model=d, name="tiny"),
                        meta={"donor": "donor-x", "layer_rule": "nearest"},
                        diagnostics=[{"donor_layer": 2, "recipient_layer": 1, "r2_r2d": 0.9}])


def test_roundtrip_bit_exact(tmp_path):
    p = make_pack()
    path = p.save(tmp_path / "p.gguf")
    q = BehaviorPack.load(path)
    assert q.recipient == p.recipient and q.meta["donor"] == "donor-x"
    assert q.diagnostics == p.diagnostics and q.name == "unit"
    for a, b in zip(p.entries, q.entries):
        for name in ("A", "b", "C", "P", "Q", "e"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None and y is None) or (x.tobytes() == y.tobytes() and x.shape == y.shape)
        assert (a.layer, a.act, a.positions, a.strength, a.donor_layer) == (
            b.layer, b.act, b.positions, b.strength, b.donor_layer)


def test_f16_roundtrip_close(tmp_path):
    p = make_pack()
    q = BehaviorPack.load(p.save(tmp_path / "p16.gguf", dtype="f16"))
    assert np.allclose(q.entries[0].A, p.entries[0].A, rtol=1e-3, atol=1e-3)
    assert (tmp_path / "p16.gguf").stat().st_size < (p.save(tmp_path / "p32.gguf")).stat().st_size


def test_delta_matches_numpy_formula():
    e = make_pack().entries[0]
    h = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    ref = np.maximum(h @ e.A + e.b, 0) @ e.C - (h @ e.P) @ e.Q + e.e
    assert np.allclose(e.delta(h), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "mutate,msg",
    [
        (lambda p: setattr(p.entries[0], "layer", 6), "out of range"),
        (lambda p: setattr(p.entries[0], "A", np.zeros((15, 4), np.float32)), "A has shape"),
        (lambda p: setattr(p.entries[0], "b", np.zeros(3, np.float32)), "b has shape"),
        (lambda p: setattr(p.entries[0], "C", np.zeros((4, 15), np.float32)), "C has shape"),
        (lambda p: setattr(p.entries[0], "Q", None), "P and Q"),
        (lambda p: p.entries[1].A.__setitem__((0, 0), np.nan), "NaN"),
        (lambda p: setattr(p.entries[0], "act", "swishy"), "unknown activation"),
        (lambda p: setattr(p.entries[0], "positions", "x3"), "positions"),
        (lambda p: setattr(p.entries[0], "strength", float("inf")), "strength"),
        (lambda p: p.entries.clear(), "no entries"),
        (lambda p: p.recipient.pop("fingerprint"), "fingerprint"),
    ],
)
def test_validation_errors(tmp_path, mutate, msg):
    p = make_pack()
    mutate(p)
    with pytest.raises(PackError, match=msg):
        p.save(tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_load_errors(tmp_path):
    with pytest.raises(PackError, match="not found"):
        BehaviorPack.load(tmp_path / "nope.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(PackError, match="magic"):
        BehaviorPack.load(tmp_path / "junk.gguf")
    good = make_pack().save(tmp_path / "good.gguf").read_bytes()
    (tmp_path / "trunc.gguf").write_bytes(good[: len(good) // 2])
    with pytest.raises(PackError):
        BehaviorPack.load(tmp_path / "trunc.gguf")


def test_not_a_pack(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(PackError, match="not a behavior pack"):
        BehaviorPack.load(tmp_path / "m.gguf")


def test_check_model():
    p = make_pack()
    p.check_model("ab" * 32, "llama", 6, 16)
    with pytest.raises(PackError, match="d=16"):
        p.check_model("ab" * 32, "llama", 6, 32, force=True)
    with pytest.raises(PackError, match="made for model"):
        p.check_model("cd" * 32, "llama", 6, 16)
    p.check_model("cd" * 32, "qwen2", 6, 16, force=True)


def test_strength_is_bounded(tmp_path):
    from commandv.runtime.pack.model import MAX_ABS_VALUE

    pack = make_pack()
    pack.entries[0].strength = MAX_ABS_VALUE
    pack.validate()
    for s in (3e38, -2e6):
        pack.entries[0].strength = s
        with pytest.raises(PackError, match=r"entry 0: strength .* beyond ±1e\+06"):
            pack.save(tmp_path / "p.gguf")
    assert not (tmp_path / "p.gguf").exists()


@pytest.mark.parametrize("case", ["f16 overflow", "diagnostics"])
def test_save_never_writes_what_load_refuses(tmp_path, case):
    """A pack that passes validate() but would not load back is refused by save, and an existing file at the
    target is left as it was."""
    target = tmp_path / "p.gguf"
    good = make_pack()
    good.save(target)
    before = target.read_bytes()
    pack = make_pack()
    if case == "f16 overflow":
        pack.entries[0].C[0, 0] = 1e5  # within ±1e6, beyond float16
        with pytest.raises(PackError, match=r"tensor C has values beyond the f16 range ±65504 \(save as f32\)"):
            pack.save(target, dtype="f16")
        pack.save(tmp_path / "ok.gguf", dtype="f32")  # the same values are fine in f32
    else:
        pack.diagnostics = [{"note": "no layer keys"}]
        with pytest.raises(PackError, match=f"refusing to write {target}: the written pack would not load"):
            pack.save(target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == (["ok.gguf", "p.gguf"] if case == "f16 overflow"
                                                         else ["p.gguf"])


def test_zero_size_tensor_with_huge_dims_is_a_pack_error(tmp_path):
    """A tensor with a zero dimension has no bytes, so the strict parser lets dims up to 2^31-1 through; numpy
    cannot hold that shape: a PackError, not a ValueError (found by review; the C reader refuses it too)."""
    import struct

    from tests.make_bad_corpus import base_pack, describe, encode

    kvs, tensors = describe(base_pack())
    name = "entry.9.x"
    enc = encode(kvs, tensors + [(name, np.zeros((1, 1, 0), np.float32))])
    at = enc.off[f"ti:{name}"] + 8 + len(name) + 4  # dims: [0, 1, 1] (GGUF order)
    data = enc.data[:at + 8] + struct.pack("<QQ", 2**31 - 1, 2**31 - 1) + enc.data[at + 24:]
    f = tmp_path / "huge.gguf"
    f.write_bytes(data)
    with pytest.raises(PackError, match=r"tensor 'entry.9.x' has shape .*2147483647.*which no pack tensor can have"):
        BehaviorPack.load(f)
