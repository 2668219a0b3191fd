"""Generate ``tests/data/bad/``: hostile and broken packs, signatures, adapter folders and profiles.

Run ``python tests/make_bad_corpus.py`` (deterministic: same bytes every run).
``manifest.json`` lists each case: ``path`` (relative), ``reader`` (one of
:data:`READERS`), ``error`` (exception class name), ``match`` (substring the
message must contain) and a ``note``. :func:`run_case` runs a reader on a case
and classifies the outcome; ``tests/test_bad_inputs.py`` and
``benchmarks/fuzz_long.py`` use it.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent / "data" / "bad"
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT.parents[2]))

from commandv.runtime.pack import keys as K  # noqa: E402
from commandv.runtime.pack.gguf_io import write_pack  # noqa: E402
from commandv.runtime.pack.model import BehaviorPack, PackEntry  # noqa: E402

D, R, N_LAYER = 8, 2, 4
FP = "c0ffee" * 10 + "abcd"
KEY = "layer_{}_comp_block_output_unit_pos_nunit_1#0"
U32, I32, F32, STR, ARR = 4, 5, 6, 8, 9
from tests.bad_corpus import READERS  # noqa: E402

MODEL = dict(fingerprint=FP, arch="llama", n_layer=N_LAYER, d_model=D)


# ---------------------------------------------------------------- a minimal GGUF encoder (for header lies)
@dataclass
class Enc:
    """Bytes of a GGUF plus where each piece starts: ``off["kv:<key>"]`` (value type field),
    ``off["ti:<name>"]`` (tensor info: name length), ``off["data:<name>"]`` (tensor data)."""

    data: bytes
    off: dict


def _s(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def _val(vtype: int, v) -> bytes:
    if vtype == STR:
        return _s(v.encode() if isinstance(v, str) else v)
    return struct.pack({U32: "<I", I32: "<i", F32: "<f"}[vtype], v)


def encode(kvs, tensors, version=3, align=32, n_kv=None, n_tensors=None) -> Enc:
    """``kvs``: ``[(key, vtype, value)]``; ``tensors``: ``[(name, array f32/f16)]``; counts may lie."""
    off, out = {}, bytearray(b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                                   len(kvs) if n_kv is None else n_kv))
    for key, vtype, value in kvs:
        out += _s(key.encode())
        off[f"kv:{key}"] = len(out)
        out += struct.pack("<I", vtype) + _val(vtype, value)
    rel, blobs = 0, []
    for name, arr in tensors:
        off[f"ti:{name}"] = len(out)
        dims = list(reversed(arr.shape))
        out += _s(name.encode()) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", 0 if arr.dtype == np.float32 else 1, rel)
        blob = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        blobs.append((name, blob + b"\0" * (-len(blob) % align)))
        rel += len(blobs[-1][1])
    out += b"\0" * (-len(out) % align)
    for name, blob in blobs:
        off[f"data:{name}"] = len(out)
        out += blob
    return Enc(bytes(out), off)


def describe(pack: BehaviorPack, dtype=np.float32):
    """The (kvs, tensors) write_pack produces for ``pack`` (checked against it in :func:`base`)."""
    r = pack.recipient
    kvs = [(K.ARCHITECTURE, STR, K.PACK_ARCH), (K.FORMAT_VERSION, U32, 1),
           (K.CREATED_BY, STR, pack.meta["created_by"]), (K.NAME, STR, pack.name),
           (K.RECIPIENT_FINGERPRINT, STR, r["fingerprint"]), (K.RECIPIENT_ARCH, STR, r["arch"]),
           (K.RECIPIENT_NAME, STR, r.get("name", "")), (K.RECIPIENT_N_LAYER, U32, r["n_layer"]),
           (K.RECIPIENT_D_MODEL, U32, r["d_model"]),
           (K.META, STR, json.dumps(pack.meta, sort_keys=True)),
           (K.DIAGNOSTICS, STR, json.dumps(pack.diagnostics, sort_keys=True)),
           (K.ENTRY_COUNT, U32, len(pack.entries))]
    tensors = []
    for i, e in enumerate(pack.entries):
        kvs += [(K.entry_key(key, i), vtype, value) for key, vtype, value in (
            (K.ENTRY_LAYER, U32, e.layer), (K.ENTRY_DONOR_LAYER, I32, e.donor_layer), (K.ENTRY_ACT, STR, e.act),
            (K.ENTRY_POSITIONS, STR, e.positions), (K.ENTRY_STRENGTH, F32, e.strength))]
        tensors += [(K.tensor_name(i, n), np.ascontiguousarray(getattr(e, n), dtype=dtype))
                    for n in K.TENSOR_NAMES if getattr(e, n) is not None]
    return kvs, tensors


def base_pack(seed: int = 0) -> BehaviorPack:
    """A small valid pack: two entries (one with P/Q/e), d=8, rank 2, 4 recipient layers."""
    rng = np.random.default_rng(seed)
    f = lambda *s: (0.5 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    return BehaviorPack(
        entries=[PackEntry(layer=1, A=f(D, R), b=f(R), C=f(R, D), act="relu", positions="f1+l1", strength=1.5,
                           P=f(D, 1), Q=f(1, D), e=f(D), donor_layer=2),
                 PackEntry(layer=3, A=f(D, R), b=f(R), C=f(R, D), act="linear", positions="l1", donor_layer=5)],
        recipient=dict(MODEL, name="tiny"), meta={"created_by": "commandv bad-corpus", "donor": "donor-x"},
        diagnostics=[{"donor_layer": 2, "recipient_layer": 1, "r2": 0.9}], name="base")


def pack_bytes(pack: BehaviorPack, dtype: str = "f32") -> bytes:
    """What ``write_pack`` writes (no validation: used for value-level lies)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_pack(pack, Path(tmp) / "p.gguf", dtype=dtype)
        return (Path(tmp) / "p.gguf").read_bytes()


def base() -> tuple[bytes, Enc]:
    data = pack_bytes(base_pack())
    enc = encode(*describe(base_pack()))
    assert enc.data == data, "corpus encoder drifted from write_pack's layout"
    return data, enc


def patch(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


# ---------------------------------------------------------------- keys (deterministic test keys)
def corpus_key(name: str):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"commandv bad-corpus key {name}".encode()).digest())


# ---------------------------------------------------------------- cases
class Corpus:
    """Collects files and manifest entries under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.cases: list[dict] = []

    def add(self, rel: str, reader: str, error: str, match: str, note: str, data: bytes | None = None, **extra):
        if data is not None:
            p = self.root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        assert reader in READERS and not any(c["path"] == rel and c["reader"] == reader for c in self.cases)
        self.cases.append(dict(name=f"{reader}:{Path(rel).stem}", path=rel, reader=reader, error=error,
                               match=match, note=note, **extra))


def _with_value(pack_mut) -> bytes:
    p = base_pack()
    pack_mut(p)
    return pack_bytes(p)


def pack_cases(c: Corpus) -> None:
    data, enc = base()
    kvs, tensors = describe(base_pack())
    o = enc.off
    add = lambda name, match, note, b: c.add(f"pack/{name}.gguf", "pack", "PackError", match, note, b)  # noqa: E731

    def kv_at(key: str, i: int | None = None) -> int:
        """Offset of the value type of metadata key ``key`` (a per-entry template: of entry ``i``)."""
        return o["kv:" + (key if i is None else K.entry_key(key, i))]

    def info_at(i: int, name: str) -> int:
        """Offset of the tensor info (name length) of tensor ``name`` of entry ``i``."""
        return o["ti:" + K.tensor_name(i, name)]

    def data_at(i: int, name: str) -> int:
        """Offset of the data of tensor ``name`` of entry ``i``."""
        return o["data:" + K.tensor_name(i, name)]

    def with_value(key: str, value) -> list:
        """``kvs`` with the value of ``key`` replaced."""
        return [(k, t, value if k == key else v) for k, t, v in kvs]

    # truncations
    for cut, match in ((0, "magic"), (3, "magic"), (12, "truncated"), (kv_at(K.META) + 9, "truncated"),
                       (info_at(0, "C") + 5, "truncated"), (data_at(1, "A") + 4, "truncated"),
                       (len(data) - 1, "truncated")):
        add(f"truncated_{cut}", match, f"first {cut} of {len(data)} bytes", data[:cut])
    # magic / versions
    add("wrong_magic", "magic", "GGUG instead of GGUF", b"GGUG" + data[4:])
    add("pickle_named_gguf", "magic", "a pickle file with a .gguf name", pickle.dumps({"A": [1.0] * 4}))
    for v in (1, 4, 0xFFFFFFFF):
        add(f"gguf_version_{v}", f"GGUF version {v} not supported", "GGUF container version", patch(data, 4, struct.pack("<I", v)))
    add("gguf_big_endian", "big-endian", "version field byte-swapped", patch(data, 4, struct.pack(">I", 3)))
    fv = kv_at(K.FORMAT_VERSION) + 4
    add("pack_format_version_2", "pack format version 2 is not supported", "future pack format",
        patch(data, fv, struct.pack("<I", 2)))
    add("pack_format_version_0", "pack format version 0 is not supported", "pack format 0", patch(data, fv, struct.pack("<I", 0)))
    add("not_a_pack_arch", "not a behavior pack", "a GGUF of another architecture",
        encode(with_value(K.ARCHITECTURE, "llama"), tensors).data)
    # flipped bytes in the header / metadata
    add("flip_type_n_layer", "has type INT32, expected UINT32", "value type of recipient.n_layer flipped 4→5",
        patch(data, kv_at(K.RECIPIENT_N_LAYER), struct.pack("<I", I32)))
    add("flip_type_unknown", "unknown value type 77", "value type byte flipped to 77",
        patch(data, kv_at(K.ENTRY_COUNT), struct.pack("<I", 77)))
    k = kv_at(K.ENTRY_COUNT) - 2  # last char of the key name
    add("flip_key_name", f"metadata key '{K.ENTRY_COUNT}' missing", "one byte of a key name flipped",
        patch(data, k, bytes([data[k] ^ 0x20])))
    add("flip_meta_json", f"'{K.META}' is not valid JSON", "first byte of the meta JSON flipped",
        patch(data, kv_at(K.META) + 12, b"?"))
    add("flip_utf8", "not valid UTF-8", "0xff inside the act string", patch(data, kv_at(K.ENTRY_ACT, 0) + 12, b"\xff"))
    ti = info_at(0, "A") + 8 + len(K.tensor_name(0, "A"))
    add("flip_tensor_dims", f"tensors '{K.tensor_name(0, 'A')}' and '{K.tensor_name(0, 'b')}' share data bytes",
        "A's d dimension 8→9: "
        "A's data now runs into b's",
        patch(data, ti + 4 + 8, struct.pack("<Q", D + 1)))
    add("flip_tensor_type_q4", "has type Q4_0; packs use F32 or F16", "tensor type F32→Q4_0",
        patch(data, ti + 4 + 16, struct.pack("<I", 2)))
    add("flip_tensor_type_f64", "has type F64", "tensor type F32→F64", patch(data, ti + 4 + 16, struct.pack("<I", 28)))
    add("flip_tensor_offset", "not a multiple of the alignment", "tensor data offset moved by 4 bytes",
        patch(data, ti + 4 + 16 + 4, struct.pack("<Q", 4)))
    add("tensor_3d", "dimensions (allowed 1..4)", "tensor n_dims 5", patch(data, ti, struct.pack("<I", 5)))
    add("alignment_3", "general.alignment 3 is not a power of two", "general.alignment = 3",
        encode(kvs + [("general.alignment", U32, 3)], tensors).data)
    # flipped bytes in tensor data
    a0 = data_at(0, "A")
    add("data_nan", "tensor A has NaN or Inf values", "A[0,0] bytes → NaN", patch(data, a0, struct.pack("<f", float("nan"))))
    add("data_inf", "tensor C has NaN or Inf values", "C[0,0] → +Inf", patch(data, data_at(1, "C"), b"\x00\x00\x80\x7f"))
    add("data_huge", "beyond ±1e+06", "b[0] exponent byte flipped → ~1e38", patch(data, data_at(0, "b") + 3, b"\x7e"))
    add("strength_nan", "strength nan is not finite", "entry 0 strength NaN",
        patch(data, kv_at(K.ENTRY_STRENGTH, 0) + 4, struct.pack("<f", float("nan"))))
    # values that lie (written by the real writer, which does not validate)
    nan = lambda p: p.entries[1].b.__setitem__(0, np.nan)  # noqa: E731
    add("nan_b_f16", "tensor b has NaN or Inf values", "NaN in b, f16 pack",
        pack_bytes((lambda p: (nan(p), p)[1])(base_pack()), dtype="f16"))
    add("inf_e", "tensor e has NaN or Inf values", "Inf in e", _with_value(lambda p: p.entries[0].e.__setitem__(3, np.inf)))
    add("shape_A_d", "A has shape [9, 2], expected [d=8, r]", "A is [d+1, r]",
        _with_value(lambda p: setattr(p.entries[0], "A", np.ones((D + 1, R), np.float32))))
    add("shape_b_len", "b has shape [3], expected [r=2]", "b has r+1 values",
        _with_value(lambda p: setattr(p.entries[0], "b", np.ones(R + 1, np.float32))))
    add("shape_C", "C has shape [2, 7], expected [r=2, d=8]", "C is [r, d-1]",
        _with_value(lambda p: setattr(p.entries[1], "C", np.ones((R, D - 1), np.float32))))
    add("shape_e", "e has shape [4], expected [d=8]", "e too short",
        _with_value(lambda p: setattr(p.entries[0], "e", np.ones(4, np.float32))))
    add("shape_Q", "Q has shape", "Q is [q, d-1]", _with_value(lambda p: setattr(p.entries[0], "Q", np.ones((1, D - 1), np.float32))))
    add("p_without_q", "P and Q must be given together", "P present, Q absent", _with_value(lambda p: setattr(p.entries[0], "Q", None)))
    add("d_model_lie", "A has shape [8, 2], expected [d=16, r]", "recipient.d_model says 16, tensors are d=8",
        patch(data, kv_at(K.RECIPIENT_D_MODEL) + 4, struct.pack("<I", 16)))
    add("d_model_zero", "d_model 0 outside", "recipient.d_model 0", patch(data, kv_at(K.RECIPIENT_D_MODEL) + 4, struct.pack("<I", 0)))
    add("layer_out_of_range", "layer 4 out of range 0..3", "entry layer = n_layer",
        patch(data, kv_at(K.ENTRY_LAYER, 1) + 4, struct.pack("<I", N_LAYER)))
    add("layer_u32_max", "layer 4294967295 out of range", "entry layer 2^32-1",
        patch(data, kv_at(K.ENTRY_LAYER, 0) + 4, struct.pack("<I", 0xFFFFFFFF)))
    zr = lambda p: [setattr(p.entries[0], n, np.zeros(s, np.float32)) for n, s in (("A", (D, 0)), ("b", (0,)), ("C", (0, D)))]  # noqa: E731
    add("zero_rank", "rank 0 outside 1..4096", "A [d, 0], b [0], C [0, d]", _with_value(zr))
    add("unknown_activation", "unknown activation 'swishy'", "act = swishy", _with_value(lambda p: setattr(p.entries[0], "act", "swishy")))
    add("unknown_positions", "bad positions spec 'x3'", "positions = x3", _with_value(lambda p: setattr(p.entries[1], "positions", "x3")))
    add("positions_huge", "count 2000 outside 1..1024", "positions = l2000", _with_value(lambda p: setattr(p.entries[1], "positions", "l2000")))
    stray, c1, act1, layer0 = (K.tensor_name(7, "A"), K.tensor_name(1, "C"), K.entry_key(K.ENTRY_ACT, 1),
                               K.entry_key(K.ENTRY_LAYER, 0))
    add("extra_tensor", f"unexpected tensors [{stray!r}]", "a tensor no entry references",
        encode(kvs, tensors + [(stray, np.ones((D, R), np.float32))]).data)
    add("missing_tensor_C", f"tensor {c1!r} missing", "entry 1 without C", encode(kvs, [t for t in tensors if t[0] != c1]).data)
    add("missing_key_act", f"metadata key {act1!r} missing", "entry 1 without act",
        encode([kv for kv in kvs if kv[0] != act1], tensors).data)
    add("dup_entry_key", f"duplicate metadata key {layer0!r}", "entry 0 layer key twice",
        encode(kvs + [(layer0, U32, 2)], tensors).data)
    add("dup_tensor", f"duplicate tensor {K.tensor_name(0, 'b')!r}", "tensor entry.0.b twice",
        encode(kvs, tensors + [tensors[1]]).data)
    ec = kv_at(K.ENTRY_COUNT) + 4
    add("entry_count_0", "entry_count 0 outside", "entry_count 0", patch(data, ec, struct.pack("<I", 0)))
    add("entry_count_3", f"entry 2: tensor {K.tensor_name(2, 'A')!r} missing", "entry_count claims 3 of 2", patch(data, ec, struct.pack("<I", 3)))
    add("entry_count_huge", "entry_count 4294967295 outside", "entry_count 2^32-1", patch(data, ec, struct.pack("<I", 0xFFFFFFFF)))
    add("meta_deep_json", f"'{K.META}' is not valid JSON (", "20k nested JSON arrays "
        "(json.loads raised RecursionError)", encode(with_value(K.META, "[" * 20000), tensors).data)
    add("meta_long_int", f"'{K.META}' is not valid JSON (Exceeds the limit (4300 digits)", "a 5000-digit "
        "number in the meta JSON (json.loads raised a bare ValueError)",
        encode(with_value(K.META, '{"n": ' + "7" * 5000 + "}"), tensors).data)
    for name, diag, match in (("diag_not_objects", "[1, 2]", "diagnostics item 0 is not an object"),
                              ("diag_no_layers", '[{"r2_r2d": 0.5}]', "lacks integer donor_layer/recipient_layer"),
                              ("diag_text_figure", '[{"donor_layer": 1, "recipient_layer": 1, "r2_r2d": "high"}]',
                               "r2_r2d is not a number")):
        add(name, match, "diagnostics `cmdv inspect` would crash on (was an uncaught error there)",
            encode(with_value(K.DIAGNOSTICS, diag), tensors).data)
    add("meta_not_object", "must be a JSON object", "commandv.meta is a JSON list",
        encode(with_value(K.META, "[1, 2]"), tensors).data)
    # huge header counts and lengths (must fail fast, in bounded memory)
    big = 1 << 60
    add("huge_kv_count", f"claims {big} metadata keys", "kv count 2^60", patch(data, 16, struct.pack("<Q", big)))
    add("huge_tensor_count", f"claims {big} tensors", "tensor count 2^60", patch(data, 8, struct.pack("<Q", big)))
    add("kv_count_beyond_file", "truncated GGUF: header claims 30000 metadata keys", "kv count 30000 (under the cap) in a 3 kB file",
        patch(data, 16, struct.pack("<Q", 30000)))
    add("huge_key_length", f"metadata key name claims {big} bytes", "first key's length 2^60", patch(data, 24, struct.pack("<Q", big)))
    add("huge_string_length", f"string value claims {big} bytes", "commandv.meta length 2^60",
        patch(data, kv_at(K.META) + 4, struct.pack("<Q", big)))
    arr = lambda n, it: b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _s(b"general.tags") + struct.pack("<IIQ", ARR, it, n)  # noqa: E731
    add("huge_array_count", f"array of {big} items", "an array claiming 2^60 UINT8 items (gguf's reader loops forever on this)",
        arr(big, 0))
    add("huge_string_array", f"array of {big} items", "an array claiming 2^60 strings", arr(big, STR))
    add("array_beyond_file", "truncated GGUF: metadata key 'general.tags' array of 60000 items", "60000 u64 items claimed, none present",
        arr(60000, 10))
    add("nested_array", "nested array", "array of arrays", arr(2, ARR) + struct.pack("<IQ", 0, 0) * 2)
    add("huge_dim", "lies beyond the end of the file", "A dims claim 2^33 elements (32 GiB)", patch(data, ti + 4, struct.pack("<Q", 1 << 30)))
    zd = patch(patch(data, ti + 4, struct.pack("<Q", 0)), ti + 12, struct.pack("<Q", 1 << 62))
    add("fuzz_zero_times_huge_dim", f"dimension {1 << 62} exceeds", "found by fuzzing: dims (0, 2^62) hold 0 bytes "
        "but numpy cannot shape them (was a ValueError)", zd)
    add("huge_n_dims", "dimensions (allowed 1..4)", "n_dims 2^32-1", patch(data, ti, struct.pack("<I", 0xFFFFFFFF)))
    # recipient mismatch: a valid pack offered to another model
    c.add("pack/valid_base.gguf", "pack_recipient", "PackError", "was made for model", "valid pack, other model file",
          data, model=dict(MODEL, fingerprint="0" * 64))
    for what, model, match in (("d", dict(MODEL, d_model=16), "this model has d=16"),
                               ("n_layer", dict(MODEL, n_layer=30), "n_layer=30"),
                               ("arch", dict(MODEL, arch="qwen2"), "is for arch 'llama', model is 'qwen2'")):
        c.add(f"pack/valid_base.gguf#{what}", "pack_recipient", "PackError", match, f"valid pack, model with other {what}",
              model=model)


def signed_cases(c: Corpus) -> None:
    """Signature policy ``require`` with ``keys/trusted.pub`` trusted."""
    from cryptography.hazmat.primitives import serialization

    from commandv.runtime.pack.signing import Signature, sign_bytes

    trusted = corpus_key("trusted")
    pub = trusted.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (c.root / "keys").mkdir(parents=True, exist_ok=True)
    (c.root / "keys" / "trusted.pub").write_bytes(pub)
    data, enc = base()
    sig = sign_bytes(data, trusted)

    def add(name, match, note, pack: bytes, sig_text: str | bytes | None):
        c.add(f"signed/{name}.gguf", "pack_signed", "SignatureError", match, note, pack)
        if sig_text is not None:
            (c.root / "signed" / f"{name}.gguf.sig").write_bytes(sig_text.encode() if isinstance(sig_text, str) else sig_text)

    add("unsigned", "pack is unsigned", "valid pack, no .sig", data, None)
    add("unsigned_hostile", "pack is unsigned", "huge-count header, no .sig: refused before parsing",
        patch(data, 16, struct.pack("<Q", 1 << 60)), None)
    add("unknown_signer", "signed by unknown key", "signed by a key nobody trusts", data,
        sign_bytes(data, corpus_key("stranger")).to_json())
    flip = enc.off["data:" + K.tensor_name(0, "C")] + 1  # a low mantissa byte: still a valid pack, silently changed
    add("tampered_pack", "pack was tampered with", "one tensor byte changed after signing (the pack alone still loads)",
        patch(data, flip, bytes([data[flip] ^ 0x01])), sig.to_json())
    forged = Signature(sig.key_id, hashlib.sha256(data[:-1] + b"\x01").hexdigest(), len(data), sig.signature)
    add("tampered_hash", "pack was tampered with", "sha256 in the .sig edited", data, forged.to_json())
    bad = Signature(sig.key_id, sig.sha256, sig.size, bytes([sig.signature[0] ^ 1]) + sig.signature[1:])
    add("bad_signature", "bad signature", "signature bytes altered", data, bad.to_json())
    j = json.loads(sig.to_json())
    add("sig_not_json", "malformed signature file (not JSON", ".sig is not JSON", data, "ed25519:" + j["signature"])
    add("sig_not_object", "not a JSON object", ".sig is a JSON list", data, "[1, 2]")
    add("sig_algorithm", "algorithm 'rsa-pss' is not supported", "algorithm rsa-pss", data, json.dumps(dict(j, algorithm="rsa-pss")))
    add("sig_key_id", "key_id 'ZZZZ' is not 16", "key_id not hex", data, json.dumps(dict(j, key_id="ZZZZ")))
    add("sig_short", "not base64 of 64 bytes", "signature truncated", data, json.dumps(dict(j, signature=j["signature"][:40])))
    add("sig_missing_sha", "sha256 None is not 64", "no sha256 field", data, json.dumps({k: v for k, v in j.items() if k != "sha256"}))
    add("sig_deep_json", "malformed signature file (not JSON", ".sig is 10k nested arrays (RecursionError in "
        "json.loads on CPython 3.11)", data, "[" * 10000)
    add("sig_huge", "malformed signature file (larger than", ".sig of 17 kB", data, " " * (17 << 10) + "{}")
    add("sig_long_int", "not JSON: Exceeds the limit (4300 digits)", "a 5000-digit size (json.loads raised ValueError)",
        data, sig.to_json().replace(f'"size": {len(data)}', '"size": ' + "9" * 5000))


# ---------------------------------------------------------------- adapters
class _Exec:
    """Unpickling this runs code (it raises SystemExit, so a reader that unpickles it cannot pass silently)."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('commandv bad corpus: a reader unpickled code')",))


def _state(seed=0, d=D, r=R):
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"proj_layer.weight": torch.randn(r, d, generator=g), "learned_source.weight": torch.randn(r, d, generator=g),
            "learned_source.bias": torch.randn(r, generator=g)}


def adapter_cases(c: Corpus) -> None:
    import torch

    nodi = "<class 'pyreft.interventions.NodireftIntervention'>"

    def folder(name, match, note, states: dict, types=None, config=True, raw: dict | None = None, meta=None, **extra):
        f = c.root / "adapter" / name
        f.mkdir(parents=True, exist_ok=True)
        for key, st in states.items():
            torch.save(st, f / f"intkey_{key}.bin")
        for fname, blob in (raw or {}).items():
            (f / fname).write_bytes(blob)
        if config is True:
            keys = list(states) + [n[len("intkey_"):-4] for n in (raw or {}) if n.startswith("intkey_")]
            cfg = {"sorted_keys": keys, "intervention_types": types or [nodi] * len(keys)}
            (f / "config.json").write_text(json.dumps(cfg))
        elif isinstance(config, str):
            (f / "config.json").write_text(config)
        if meta is not None:
            (f / "training_metadata.json").write_text(json.dumps(meta))
        c.add(f"adapter/{name}", "adapter", "AdapterError", match, note, **extra)

    k0, k2 = KEY.format(0), KEY.format(2)
    folder("pickle_code", "refusing to unpickle", "plain pickle whose load would exec code", {},
           raw={f"intkey_{k0}.bin": pickle.dumps({"proj_layer.weight": _Exec()}, protocol=2)})
    buf = c.root / ".tmp.bin"
    torch.save({"proj_layer.weight": _Exec()}, buf)
    folder("torch_zip_code", "refusing to unpickle", "torch.save zip whose data.pkl would exec code", {},
           raw={f"intkey_{k0}.bin": buf.read_bytes()})
    torch.save(_state(), buf)
    good = buf.read_bytes()
    buf.unlink()
    folder("truncated_bin", "not a readable torch state dict", "intkey file cut in half", {},
           raw={f"intkey_{k0}.bin": good[: len(good) // 2]})
    folder("empty_bin", "not a readable torch state dict", "zero-byte intkey file", {}, raw={f"intkey_{k0}.bin": b""})
    s = _state()
    s["proj_layer.weight"][1, 3] = float("nan")
    folder("nan", "tensor C has NaN or Inf values", "NaN in proj_layer.weight", {k0: s})
    s = _state()
    s["learned_source.bias"][0] = float("inf")
    folder("inf", "tensor b has NaN or Inf values", "Inf in learned_source.bias", {k0: s})
    s = _state()
    s["proj_layer.weight"] = torch.randn(R, D - 2, generator=torch.Generator().manual_seed(5))
    folder("wrong_shapes", "inconsistent shapes", "proj_layer.weight [r, d-2]", {k0: s})
    s = _state()
    s["proj_layer.weight"] = torch.randn(R * D, generator=torch.Generator().manual_seed(6))
    folder("one_d_weight", "C must be 2-D", "proj_layer.weight flattened", {k0: s})
    folder("zero_rank", "rank is 0", "rank-0 weights", {k0: _state(r=0)})
    folder("hidden_size_mismatch", "disagree on the hidden size", "layer 0 d=8, layer 2 d=12", {k0: _state(), k2: _state(1, d=12)})
    folder("unknown_type", "unknown intervention type", "config names FooIntervention", {k0: _state()},
           types=["<class 'pyreft.interventions.FooIntervention'>"])
    folder("ambiguous_no_config", "cannot tell NoReFT from NodiReFT", "no config.json and no type given", {k0: _state()}, config=False)
    folder("unknown_activation", "unknown activation 'swoosh'", "training_metadata act_fn = swoosh", {k0: _state()},
           meta={"act_fn": "swoosh"})
    folder("non_float", "non-float weights", "int32 weights", {k0: {k: v.to(torch.int32) for k, v in _state().items()}})
    folder("not_a_dict", "expected a dict of tensors", "intkey file holds a list", {k0: [torch.zeros(3)]})
    folder("non_tensor_value", "non-tensor values", "a dict of ints", {k0: {"proj_layer.weight": 3}})
    folder("config_not_json", "config.json: invalid JSON", "config.json broken", {k0: _state()}, config="{not json")
    folder("config_missing_file", "intkey_layer_2_comp_block_output_unit_pos_nunit_1#0.bin is missing",
           "config lists a file that is absent", {k0: _state()},
           config=json.dumps({"sorted_keys": [k0, k2], "intervention_types": [nodi, nodi]}))
    folder("config_deep_json", "config.json: invalid JSON (", "config.json is 20k nested arrays",
           {k0: _state()}, config="[" * 20000)
    folder("metadata_long_int", "training_metadata.json: invalid JSON (Exceeds the limit", "a 5000-digit number",
           {k0: _state()}, meta=None, raw={"training_metadata.json": b'{"positions": ' + b"1" * 5000 + b"}"})
    folder("config_lengths", "different lengths", "sorted_keys and intervention_types disagree", {k0: _state()},
           config=json.dumps({"sorted_keys": [k0], "intervention_types": []}))
    folder("bad_key", "not of the form", "intervention key not pyvene's", {"weights": _state()})
    folder("unsupported_component", "component 'mlp_output' not supported", "an MLP-output intervention",
           {"layer_0_comp_mlp_output_unit_pos_nunit_1#0": _state()})
    folder("no_intkey_files", "no intkey_*.bin files", "config.json only", {}, config=json.dumps({"sorted_keys": []}))


# ---------------------------------------------------------------- profiles
def profile_cases(c: Corpus) -> None:
    from safetensors.numpy import save_file

    from commandv.profiles.store import Profile, ProfileMeta

    rng = np.random.default_rng(3)
    n, layers = 3, [rng.standard_normal((3, D)).astype(np.float32) for _ in range(2)]
    meta = ProfileMeta(model_fingerprint=FP, network_fingerprint=FP[::-1], model_name="tiny", arch="llama", n_layer=2,
                       d_model=D, n_prompts=n, prompt_set="corpus", prompt_sha256="ab" * 32, backend="gguf",
                       template=None, rendered_example="hi", tool_version="corpus")
    tmp = c.root / ".tmp.safetensors"
    Profile(layers=layers, meta=meta).save(tmp)
    good = tmp.read_bytes()
    tmp.unlink()
    from dataclasses import asdict

    def raw(name, match, note, tensors=None, meta_text=None, data=None):
        if data is None:
            p = c.root / "profile" / f"{name}.safetensors"
            p.parent.mkdir(parents=True, exist_ok=True)
            tensors = {f"layer.{i}": x for i, x in enumerate(layers)} if tensors is None else tensors
            md = {"commandv.profile": meta_text} if meta_text is not None else None
            save_file(tensors, str(p), metadata=md)
            data = p.read_bytes()
        c.add(f"profile/{name}.safetensors", "profile", "ProfileError", match, note, data)

    m = asdict(meta)
    js = lambda **kw: json.dumps(dict(m, **kw))  # noqa: E731
    raw("truncated", "corrupt profile", "file cut in half", data=good[: len(good) // 2])
    raw("truncated_header", "corrupt profile", "first 6 bytes", data=good[:6])
    raw("header_len_huge", "corrupt profile", "safetensors header length 2^60", data=struct.pack("<Q", 1 << 60) + good[8:])
    raw("pickle", "corrupt profile", "a pickle with a .safetensors name", data=pickle.dumps({"layer.0": _Exec()}))
    raw("no_meta", "not a commandv profile", "safetensors without commandv metadata", meta_text=None)
    raw("bad_meta_json", "metadata is not valid JSON", "metadata JSON broken", meta_text="{not json")
    raw("meta_deep_json", "metadata is not valid JSON (", "metadata is 20k nested arrays",
        meta_text="[" * 20000)
    raw("meta_long_int", "metadata is not valid JSON (Exceeds the limit", "a 5000-digit n_prompts",
        meta_text=js(n_prompts=0).replace('"n_prompts": 0', '"n_prompts": ' + "3" * 5000))
    raw("meta_not_object", "metadata is not a JSON object", "metadata is a JSON list", meta_text="[1, 2]")
    raw("meta_unknown_field", "metadata fields do not match", "an unexpected metadata field", meta_text=js(evil=1))
    raw("meta_n_layer_huge", "n_layer 1000000000000 outside", "n_layer = 10^12 (building the key set would hang)",
        meta_text=js(n_layer=10**12))
    raw("meta_n_layer_str", "n_layer '2' is not an integer", "n_layer is a string", meta_text=js(n_layer="2"))
    raw("version_2", "profile version 2 not supported", "future profile version", meta_text=js(version=2))
    raw("wrong_shape", "layer 1 has shape [3, 7], expected [3, 8]", "layer 1 is [N, d-1]", meta_text=js(),
        tensors={"layer.0": layers[0], "layer.1": layers[1][:, :-1].copy()})
    raw("n_prompts_lie", "expected [4, 8]", "n_prompts says 4, tensors have 3", meta_text=js(n_prompts=4))
    nanl = layers[1].copy()
    nanl[2, 5] = np.nan
    raw("nan", "layer 1 has NaN or Inf values", "NaN in layer 1", meta_text=js(), tensors={"layer.0": layers[0], "layer.1": nanl})
    raw("missing_layer", "missing", "layer.1 absent", meta_text=js(), tensors={"layer.0": layers[0]})
    raw("extra_tensor", "extra", "a stray tensor", meta_text=js(), tensors={"layer.0": layers[0], "layer.1": layers[1],
                                                                             "evil": layers[0]})
    raw("f16_layers", "dtype float16, expected float32", "layers stored as f16", meta_text=js(),
        tensors={f"layer.{i}": x.astype(np.float16) for i, x in enumerate(layers)})



def main(root: Path = ROOT) -> int:
    """Regenerate the whole corpus under ``root`` (removed first) and write ``manifest.json``."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    c = Corpus(root)
    pack_cases(c)
    signed_cases(c)
    adapter_cases(c)
    profile_cases(c)
    doc = {"about": "Bad-input corpus generated by tests/make_bad_corpus.py; see tests/test_bad_inputs.py.",
           "cases": c.cases}
    (root / "manifest.json").write_text(json.dumps(doc, indent=1) + "\n")
    counts = {r: sum(x["reader"] == r for x in c.cases) for r in READERS}
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"{len(c.cases)} cases, {size / 1e3:.0f} kB: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
