"""The hostile-file corpus: files built to hurt a reader, generated at run time into a folder.

Unlike ``tests/data/bad`` (committed bytes), these cases need things git cannot
hold or should not ship: FIFOs, symlinks to ``/dev/zero``, compressed bombs,
packs of megabytes. :func:`build` writes every case into a folder and returns
their descriptions; :func:`tests.bad_corpus.run_case` runs each with its reader
and checks the specific error (class and message substring). Classes covered
(docs/reliability.md, threat model): memory amplification in packs, special
files as inputs, compressed-storage bombs, outputs onto device nodes, summed /
hidden edits past ``--max-delta-norm``.

Add a case with the :func:`case` decorator: the function gets the folder to write
into and returns the case dict (``path`` relative to that folder, ``reader``,
``error``, ``match``, ``note``); ``name`` is filled in as ``hostile:<function name>``.
Run ``python tests/hostile_corpus.py OUT`` to build the corpus into ``OUT``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES: list[Callable[[Path], dict]] = []


def case(fn: Callable[[Path], dict]) -> Callable[[Path], dict]:
    """Register a case builder: ``fn(folder) -> {"path", "reader", "error", "match", "note", ...}``."""
    CASES.append(fn)
    return fn


def build(folder: Path) -> list[dict]:
    """Write every case into ``folder`` (created); returns the case dicts, each with ``name``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for fn in CASES:
        c = fn(folder)
        c["name"] = f"hostile:{fn.__name__}"
        out.append(c)
    return out


# ---------------------------------------------------------------- cases (one section per reader)


# edit size (--max-delta-norm)
# Packs that slipped past the old per-entry, last-token check. Reader "pack_policy" (tests/bad_corpus.py) loads the
# pack and runs PackPolicy.check_size at POLICY_LIMIT on a tiny random llama's hidden states (numpy forward of
# tests/tiny_models.py, written into the corpus folder: no llama.cpp needed).

POLICY_MODEL = "policy_model.gguf"
POLICY_LIMIT = 1.0


def policy_model(folder: Path) -> Path:
    """The tiny random llama GGUF the ``pack_policy`` cases are measured on (written into ``folder`` once)."""
    from tests.tiny_models import write_tiny_llama_gguf

    path = Path(folder) / POLICY_MODEL
    if not path.is_file():
        write_tiny_llama_gguf(path)
    return path


_POLICY_STATES: dict = {}


def policy_reference(model: Path) -> list[dict]:
    """Unedited block outputs ``[{layer: [T, d]}]`` of the tiny GGUF ``model`` on 8 fixed token sequences (seeded),
    each starting with ``<|im_start|>`` like a chat-rendered prompt; cached per file (path, size, mtime)."""
    import numpy as np

    from tests.tiny_models import build_bpe_vocab, reference_forward

    st = Path(model).stat()
    key = (str(model), st.st_size, st.st_mtime_ns)
    if key not in _POLICY_STATES:
        tokens = build_bpe_vocab()[0]
        start, rng = tokens.index("<|im_start|>"), np.random.default_rng(19)
        seqs = [[start, *rng.integers(0, 256, 10 + 2 * k).tolist()] for k in range(8)]
        _POLICY_STATES[key] = [dict(enumerate(reference_forward(model, ids)[0])) for ids in seqs]
    return _POLICY_STATES[key]


def policy_check(pack_path: Path, model: Path, limit: float = POLICY_LIMIT):
    """What reader ``pack_policy`` does: load the pack, fit it to ``model`` (shapes), check its edit at ``limit``
    on :func:`policy_reference` (strength 1). Returns the pack; raises ``PackError`` / ``DeltaNormError``."""
    from commandv.runtime.pack.model import BehaviorPack
    from commandv.runtime.pack.policy import PackPolicy

    pack = BehaviorPack.load(pack_path)
    prompts = policy_reference(model)
    pack.check_model(None, "llama", len(prompts[0]), prompts[0][0].shape[1], force=True)
    PackPolicy("off", max_delta_norm=limit).check_size([pack], [1.0], lambda: prompts)
    return pack


def _recipient(prompts: list[dict], fingerprint: str) -> dict:
    return dict(fingerprint=fingerprint, arch="llama", n_layer=len(prompts[0]), d_model=int(prompts[0][0].shape[1]))


def many_small_entries_pack(prompts: list[dict], layer: int, n: int = 91, each: float = 0.99,
                            fingerprint: str = "0" * 64, seed: int = 0, name: str = "many-small"):
    """``n`` entries on ``layer`` (positions ``l1``), each adding the same constant offset of ``each`` × the
    smallest last-token norm of ``prompts`` (``[{layer: [T, d]}]``): alone each is ``each`` × ‖h‖ at most,
    together ``n × each``. A ``BehaviorPack``."""
    import numpy as np

    from commandv.runtime.pack.model import BehaviorPack, PackEntry

    rng = np.random.default_rng(seed)
    d = int(prompts[0][layer].shape[1])
    m = min(float(np.linalg.norm(np.asarray(p[layer][-1], np.float64))) for p in prompts)
    v = rng.standard_normal(d)
    v *= each * m / np.linalg.norm(v)
    entries = [PackEntry(layer=layer, A=(rng.standard_normal((d, 1)) / np.sqrt(d)).astype(np.float32),
                         b=np.zeros(1, np.float32), C=np.zeros((1, d), np.float32), act="linear", positions="l1",
                         e=v.astype(np.float32)) for _ in range(n)]
    return BehaviorPack(entries=entries, recipient=_recipient(prompts, fingerprint), name=name)


def first_token_gate_pack(prompts: list[dict], layer: int, ratio: float = 480.0, positions: str = "f1+l1",
                          fingerprint: str = "0" * 64, seed: int = 0, name: str = "first-token-gate"):
    """One ReLU entry on ``layer`` whose gate opens only on the first token of ``prompts`` (``[{layer: [T, d]}]``:
    the threshold sits halfway between the first row's projection on its own direction and the largest other
    row's), where it adds ``ratio`` × ‖h‖; on every other row it adds 0. A ``BehaviorPack``."""
    import numpy as np

    from commandv.runtime.pack.model import BehaviorPack, PackEntry

    rng = np.random.default_rng(seed)
    first = np.stack([np.asarray(p[layer][0], np.float64) for p in prompts])
    u = first.mean(0)
    a = u / np.linalg.norm(u)
    top = min(float(f @ a) for f in first)
    rest = max(float(np.max(np.asarray(p[layer][1:], np.float64) @ a)) for p in prompts)
    if top <= rest:
        raise ValueError(f"layer {layer}: the first token is not separable ({top:.3g} <= {rest:.3g})")
    b = -(top + rest) / 2.0
    w = rng.standard_normal(first.shape[1])
    w *= ratio * np.linalg.norm(u) / ((u @ a + b) * np.linalg.norm(w))
    entry = PackEntry(layer=layer, A=a[:, None].astype(np.float32), b=np.array([b], np.float32),
                      C=w[None, :].astype(np.float32), act="relu", positions=positions)
    return BehaviorPack(entries=[entry], recipient=_recipient(prompts, fingerprint), name=name)


def _policy_case(folder: Path, pack, file: str, note: str) -> dict:
    pack.save(Path(folder) / file)
    return {"path": file, "reader": "pack_policy", "recipient": POLICY_MODEL, "limit": POLICY_LIMIT,
            "error": "DeltaNormError", "match": "above the limit", "note": note}


@case
def policy_many_small_entries(folder: Path) -> dict:
    prompts = policy_reference(policy_model(folder))
    return _policy_case(folder, many_small_entries_pack(prompts, layer=2), "policy_many_small.gguf",
                        "91 entries on layer 2, each 0.99× the hidden-state norm, together ~90×")


@case
def policy_first_token_gate(folder: Path) -> dict:
    prompts = policy_reference(policy_model(folder))
    return _policy_case(folder, first_token_gate_pack(prompts, layer=1), "policy_first_token_gate.gguf",
                        "a ReLU gate open only on the first token (f1+l1): 0 on last tokens, 480× on the first")


# packs
# Memory amplification (tensor infos whose data overlaps, or many at one offset: a ~1.4 MB file that would widen
# to 2 GiB of float32) and special files given as a pack, a signature or a trusted key. Readers "pack" and
# "pack_signed" (the latter trusting case["trusted"]); every file lives under packs/.

PACKS = "packs"
BOMB_ENTRIES, BOMB_D, BOMB_R = 1024, 8192, 32  # A [d, r] and C [r, d] are 1 MiB each as f32


def _packs_path(folder: Path, name: str) -> Path:
    """``folder/packs/name``, with whatever was there before removed (FIFOs and links cannot be overwritten)."""
    import os
    import shutil

    p = Path(folder) / PACKS / name
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif os.path.lexists(p):
        p.unlink()
    return p


def tensor_table_pack(n_entries: int, d: int, r: int, offset, data_bytes: int, n_layer: int = 4) -> bytes:
    """The bytes of a pack of ``n_entries`` entries (``A [d, r]``, ``b [r]``, ``C [r, d]``, f32, act linear,
    positions l1) whose tensor infos say where their data is: ``offset(k, name, n_bytes)`` gives tensor ``k``'s
    offset (a multiple of 32) into a zero-filled data section of ``data_bytes`` bytes. Call as
    ``tensor_table_pack(2, 8, 2, lambda k, name, n: 0, 64)`` (every tensor at offset 0)."""
    import json
    import math
    import struct

    from commandv.runtime.pack import keys as K
    from tests.make_bad_corpus import F32, I32, STR, U32, _s, _val

    kvs = [(K.ARCHITECTURE, STR, K.PACK_ARCH), (K.FORMAT_VERSION, U32, 1),
           (K.NAME, STR, "hostile"), (K.RECIPIENT_FINGERPRINT, STR, "0" * 64),
           (K.RECIPIENT_ARCH, STR, "llama"), (K.RECIPIENT_N_LAYER, U32, n_layer),
           (K.RECIPIENT_D_MODEL, U32, d), (K.META, STR, json.dumps({"donor": "x"})),
           (K.ENTRY_COUNT, U32, n_entries)]
    infos = []
    for i in range(n_entries):
        kvs += [(K.entry_key(key, i), vtype, value) for key, vtype, value in (
            (K.ENTRY_LAYER, U32, i % n_layer), (K.ENTRY_DONOR_LAYER, I32, -1), (K.ENTRY_ACT, STR, "linear"),
            (K.ENTRY_POSITIONS, STR, "l1"), (K.ENTRY_STRENGTH, F32, 1.0))]
        infos += [(K.tensor_name(i, "A"), (d, r)), (K.tensor_name(i, "b"), (r,)), (K.tensor_name(i, "C"), (r, d))]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(kvs)))
    for key, vtype, value in kvs:
        out += _s(key.encode()) + struct.pack("<I", vtype) + _val(vtype, value)
    for k, (name, shape) in enumerate(infos):
        dims = list(reversed(shape))
        n_bytes = 4 * math.prod(shape)
        out += _s(name.encode()) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", 0, offset(k, name, n_bytes))
    out += b"\0" * (-len(out) % 32)
    return bytes(out) + bytes(data_bytes)


def _pack_case(folder: Path, name: str, data: bytes, match: str, note: str) -> dict:
    _packs_path(folder, name).write_bytes(data)
    return {"path": f"{PACKS}/{name}", "reader": "pack", "error": "PackError", "match": match, "note": note}


@case
def pack_shared_data_bomb(folder: Path) -> dict:
    mib = 4 * BOMB_D * BOMB_R
    data = tensor_table_pack(BOMB_ENTRIES, BOMB_D, BOMB_R, lambda k, name, n: 0, mib)
    return _pack_case(folder, "shared_data_bomb.gguf", data, "tensors would expand to 2147614720 bytes as float32",
                      f"{3 * BOMB_ENTRIES} tensor infos all at data offset 0 (1 MiB there): a ~1.4 MB file that "
                      "decoded every tensor to float32 (2 GiB)")


@case
def pack_overlap_bomb(folder: Path) -> dict:
    mib = 4 * BOMB_D * BOMB_R
    data = tensor_table_pack(BOMB_ENTRIES, BOMB_D, BOMB_R, lambda k, name, n: 32 * k, mib + 32 * 3 * BOMB_ENTRIES)
    return _pack_case(folder, "overlap_bomb.gguf", data, "more than 2 times the file size",
                      "tensor k's 1 MiB of data starts 32 bytes after tensor k-1's: every range overlaps the next "
                      "(2 GiB as float32 from a ~1.5 MB file)")


def _moved_tensor(tensor: str, onto: str, by: int) -> bytes:
    """The corpus base pack with ``tensor``'s data offset set to ``onto``'s plus ``by`` bytes."""
    import struct

    from tests.make_bad_corpus import base

    data, enc = base()
    first = min(v for k, v in enc.off.items() if k.startswith("data:"))
    dims = 2 if tensor.endswith(("A", "C", "P", "Q")) else 1
    at = enc.off[f"ti:{tensor}"] + 8 + len(tensor) + 4 + 8 * dims + 4
    rel = enc.off[f"data:{onto}"] - first + by
    return data[:at] + struct.pack("<Q", rel) + data[at + 8:]


@case
def pack_overlapping_ranges(folder: Path) -> dict:
    return _pack_case(folder, "overlapping_ranges.gguf", _moved_tensor("entry.1.C", "entry.1.A", 32),
                      "tensors 'entry.1.A' and 'entry.1.C' share data bytes",
                      "entry 1's C starts in the middle of its A (bytes shared, under the size bound)")


@case
def pack_shared_pair(folder: Path) -> dict:
    return _pack_case(folder, "shared_pair.gguf", _moved_tensor("entry.0.C", "entry.0.A", 0),
                      "tensors 'entry.0.A' and 'entry.0.C' share data bytes", "entry 0's C and A at one offset")


@case
def pack_fifo(folder: Path) -> dict:
    import os

    os.mkfifo(_packs_path(folder, "fifo.gguf"))
    return {"path": f"{PACKS}/fifo.gguf", "reader": "pack", "error": "PackError",
            "match": "fifo.gguf is a FIFO (named pipe), not a regular file",
            "note": "a FIFO with no writer as the pack (a blocking open would hang)"}


@case
def pack_dev_zero(folder: Path) -> dict:
    _packs_path(folder, "zero.gguf").symlink_to("/dev/zero")
    return {"path": f"{PACKS}/zero.gguf", "reader": "pack", "error": "PackError",
            "match": "zero.gguf is a character device, not a regular file",
            "note": "a symlink to /dev/zero as the pack (st_size 0, endless bytes)"}


@case
def pack_folder(folder: Path) -> dict:
    _packs_path(folder, "folder.gguf").mkdir()
    return {"path": f"{PACKS}/folder.gguf", "reader": "pack", "error": "PackError",
            "match": "folder.gguf is a folder, not a regular file", "note": "a folder named like a pack"}


def _signed_pack(folder: Path, name: str, sig: bool = True) -> str:
    """A valid pack ``packs/name`` (its ``.sig`` by the corpus' trusted key when ``sig``) and
    ``packs/keys/trusted.pub``; returns the pack's relative path."""
    from cryptography.hazmat.primitives import serialization

    from tests.make_bad_corpus import base, corpus_key

    key = corpus_key("trusted")
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _packs_path(folder, "keys/trusted.pub").write_bytes(pub)
    data, _ = base()
    _packs_path(folder, name).write_bytes(data)
    sp = _packs_path(folder, name + ".sig")
    if sig:
        from commandv.runtime.pack.signing import sign_bytes

        sp.write_text(sign_bytes(data, key).to_json())
    return f"{PACKS}/{name}"


@case
def pack_sig_fifo(folder: Path) -> dict:
    import os

    rel = _signed_pack(folder, "sig_fifo.gguf", sig=False)
    os.mkfifo(Path(folder) / (rel + ".sig"))
    return {"path": rel, "reader": "pack_signed", "trusted": f"{PACKS}/keys/trusted.pub", "error": "SignatureError",
            "match": "malformed signature file (a FIFO (named pipe), not a regular file)",
            "note": "a FIFO with no writer as the pack's .sig"}


@case
def pack_trusted_key_fifo(folder: Path) -> dict:
    import os

    rel = _signed_pack(folder, "signed_fifo_key.gguf")
    os.mkfifo(_packs_path(folder, "keys/fifo.pub"))
    return {"path": rel, "reader": "pack_signed", "trusted": f"{PACKS}/keys/fifo.pub", "error": "SignatureError",
            "match": "fifo.pub is a FIFO (named pipe), not a regular file",
            "note": "a FIFO as the trusted public key (was reported as 'key file not found')"}


@case
def pack_trusted_key_dev_zero(folder: Path) -> dict:
    rel = _signed_pack(folder, "signed_zero_key.gguf")
    _packs_path(folder, "keys/zero.pub").symlink_to("/dev/zero")
    return {"path": rel, "reader": "pack_signed", "trusted": f"{PACKS}/keys/zero.pub", "error": "SignatureError",
            "match": "zero.pub is a character device, not a regular file",
            "note": "a symlink to /dev/zero as the trusted public key"}


# adapters, profiles, prompts, outputs
# Special files as inputs (a FIFO hangs a blocking open / read; a symlink to /dev/zero or /dev/urandom reports st_size
# 0 and reads until memory runs out), a deflated torch zip entry that expands 1000-fold under torch.load, a sparse
# tensor, and outputs onto device nodes / FIFOs / folders (a rename would replace the node). Readers: "adapter",
# "profile", "prompts", "output" (write_text_atomic) and "export_out" (cmdv export's up-front target check).

_NODI = "<class 'pyreft.interventions.NodireftIntervention'>"
_KEY0 = "layer_0_comp_block_output_unit_pos_nunit_1#0"
_D, _R = 8, 2
BOMB_BYTES = 1 << 30


def _nodi_state(seed: int = 0) -> dict:
    """A valid NodiReFT state dict (d=8, rank 2) as pyreft saves it."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"proj_layer.weight": torch.randn(_R, _D, generator=g), "learned_source.weight": torch.randn(_R, _D, generator=g),
            "learned_source.bias": torch.randn(_R, generator=g)}


def _adapter_folder(folder: Path, name: str, config: bool = True, state: dict | None = None) -> Path:
    """``folder/adapter/<name>/``: a valid one-intervention adapter (config.json as pyvene writes its shape fields,
    ``intkey_<_KEY0>.bin``); callers then swap one file for something hostile."""
    import json
    import shutil

    import torch

    f = Path(folder) / "adapter" / name
    shutil.rmtree(f, ignore_errors=True)  # a rebuild must not write into last build's FIFO (it would block)
    f.mkdir(parents=True)
    torch.save(_nodi_state() if state is None else state, f / f"intkey_{_KEY0}.bin")
    if config:
        rep = [0, "block_output", "pos", 1, _R] + [None] * 9
        (f / "config.json").write_text(json.dumps({"sorted_keys": [_KEY0], "intervention_types": [_NODI],
                                                   "intervention_dimensions": [_D], "representations": [rep]}))
    return f


def _special(path: Path, kind: str) -> None:
    """Replace ``path`` by a FIFO (``kind="fifo"``) or a symlink to the device ``kind`` (``"/dev/zero"``…)."""
    import os

    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(kind)


def _adapter_case(folder: Path, name: str, file: str, kind: str, match: str, note: str) -> dict:
    f = _adapter_folder(folder, name)
    _special(f / file, kind)
    return {"path": f"adapter/{name}", "reader": "adapter", "error": "AdapterError", "match": match, "note": note}


@case
def adapter_config_dev_zero(folder: Path) -> dict:
    return _adapter_case(folder, "config_dev_zero", "config.json", "/dev/zero", "is a character device, not a regular file",
                         "config.json is a symlink to /dev/zero (st_size 0: passed the size cap, read forever)")


@case
def adapter_metadata_dev_urandom(folder: Path) -> dict:
    return _adapter_case(folder, "metadata_dev_urandom", "training_metadata.json", "/dev/urandom",
                         "is a character device, not a regular file",
                         "training_metadata.json is a symlink to /dev/urandom")


@case
def adapter_config_fifo(folder: Path) -> dict:
    return _adapter_case(folder, "config_fifo", "config.json", "fifo", "is a FIFO (named pipe), not a regular file",
                         "config.json is a FIFO with no writer (a blocking open hangs forever)")


@case
def adapter_intkey_fifo(folder: Path) -> dict:
    return _adapter_case(folder, "intkey_fifo", f"intkey_{_KEY0}.bin", "fifo", "is a FIFO (named pipe), not a regular file",
                         "the intkey_*.bin file is a FIFO (torch.load would hang)")


@case
def adapter_intkey_dev_zero(folder: Path) -> dict:
    return _adapter_case(folder, "intkey_dev_zero", f"intkey_{_KEY0}.bin", "/dev/zero",
                         "is a character device, not a regular file", "the intkey_*.bin file is a symlink to /dev/zero")


def _zeros_deflated(n_bytes: int) -> tuple[bytes, int]:
    """(raw deflate stream of ``n_bytes`` zeros, their CRC-32), made from one compressed MiB repeated: after a full
    flush the compressor starts afresh, so every MiB compresses to the same bytes (~1 kB each)."""
    import zlib

    mib = bytes(1 << 20)
    assert n_bytes % len(mib) == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(n_bytes // len(mib)):
        crc = zlib.crc32(mib, crc)
    return block * (n_bytes // len(mib)) + c.flush(), crc


def _zip(entries: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip archive of ``(name, stored bytes, method (0 stored / 8 deflate), uncompressed size, crc32)`` entries."""
    import struct

    out, central = bytearray(), bytearray()
    for name, data, method, size, crc in entries:
        n = name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size, len(n), 0) + n + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(data), size,
                               len(n), 0, 0, 0, 0, 0, offset) + n
    return bytes(out + central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central),
                                             len(out), 0))


def torch_bomb(n_bytes: int = BOMB_BYTES) -> bytes:
    """A torch zip save of ``{"proj_layer.weight": float32 [n_bytes / 4]}`` whose storage entry is deflated zeros:
    ~``n_bytes / 1000`` bytes on disk that ``torch.load`` expands to ``n_bytes`` (plus the copies it makes)."""
    import collections
    import io
    import pickle
    import zlib

    import torch

    numel = n_bytes // 4

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (Storage(), 0, (numel,), (1,), False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, Storage) else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"proj_layer.weight": Tensor()})
    data, crc = _zeros_deflated(n_bytes)
    small = [("archive/data.pkl", buf.getvalue()), ("archive/byteorder", b"little"), ("archive/version", b"3\n")]
    return _zip([(n, b, 0, len(b), zlib.crc32(b)) for n, b in small] + [("archive/data/0", data, 8, n_bytes, crc)])


@case
def adapter_deflate_bomb(folder: Path) -> dict:
    f = _adapter_folder(folder, "deflate_bomb")
    (f / f"intkey_{_KEY0}.bin").write_bytes(torch_bomb())
    return {"path": "adapter/deflate_bomb", "reader": "adapter", "error": "AdapterError",
            "match": "refusing a possible decompression bomb",
            "note": "a 1 MB intkey zip whose deflated storage entry expands to 1 GiB (1.3 GB resident under torch.load)"}


@case
def adapter_zip_many_entries(folder: Path) -> dict:
    import zlib

    f = _adapter_folder(folder, "zip_many_entries")
    entries = [(f"archive/x{i}", b"", 0, 0, zlib.crc32(b"")) for i in range(5000)]
    (f / f"intkey_{_KEY0}.bin").write_bytes(_zip(entries))
    return {"path": "adapter/zip_many_entries", "reader": "adapter", "error": "AdapterError",
            "match": "declares 5000 entries", "note": "an intkey zip of 5000 empty entries (at 46 bytes each, a "
                                                      "512 MB file would be 11 million zipfile objects)"}


@case
def adapter_sparse_tensor(folder: Path) -> dict:
    state = _nodi_state()
    state["proj_layer.weight"] = state["proj_layer.weight"].to_sparse()
    _adapter_folder(folder, "sparse_tensor", state=state)
    return {"path": "adapter/sparse_tensor", "reader": "adapter", "error": "AdapterError",
            "match": "has layout sparse_coo; only dense tensors are read",
            "note": "proj_layer.weight saved as a sparse COO tensor (a TypeError traceback before)"}


def _special_file(folder: Path, rel: str, kind: str) -> Path:
    path = Path(folder) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    _special(path, kind)
    return path


@case
def profile_fifo(folder: Path) -> dict:
    _special_file(folder, "profile/fifo.safetensors", "fifo")
    return {"path": "profile/fifo.safetensors", "reader": "profile", "error": "ProfileError",
            "match": "is a FIFO (named pipe), not a regular file", "note": "a FIFO with a profile's name"}


@case
def profile_dev_zero(folder: Path) -> dict:
    _special_file(folder, "profile/dev_zero.safetensors", "/dev/zero")
    return {"path": "profile/dev_zero.safetensors", "reader": "profile", "error": "ProfileError",
            "match": "is a character device, not a regular file", "note": "a profile symlinked to /dev/zero"}


@case
def prompts_fifo(folder: Path) -> dict:
    _special_file(folder, "prompts/fifo.jsonl", "fifo")
    return {"path": "prompts/fifo.jsonl", "reader": "prompts", "error": "PromptSetError",
            "match": "is a FIFO (named pipe), not a regular file",
            "note": "a FIFO given as the prompt file (was reported as 'not found')"}


@case
def prompts_dev_zero(folder: Path) -> dict:
    _special_file(folder, "prompts/dev_zero.txt", "/dev/zero")
    return {"path": "prompts/dev_zero.txt", "reader": "prompts", "error": "PromptSetError",
            "match": "is a character device, not a regular file", "note": "a .txt prompt file symlinked to /dev/zero"}


@case
def output_dev_null(folder: Path) -> dict:
    _special_file(folder, "out/dev_null.gguf", "/dev/null")
    return {"path": "out/dev_null.gguf", "reader": "output", "error": "AtomicTargetError",
            "match": "is a character device; refusing to replace it",
            "note": "an output path that is a symlink to /dev/null (the rename would replace the node; as root on "
                    "/dev/null itself, the system's)"}


@case
def output_fifo(folder: Path) -> dict:
    _special_file(folder, "out/fifo.json", "fifo")
    return {"path": "out/fifo.json", "reader": "output", "error": "AtomicTargetError",
            "match": "is a FIFO (named pipe); refusing to replace it", "note": "an output path that is a FIFO"}


@case
def output_folder(folder: Path) -> dict:
    (Path(folder) / "out" / "a_folder.md").mkdir(parents=True, exist_ok=True)
    return {"path": "out/a_folder.md", "reader": "output", "error": "AtomicTargetError",
            "match": "is a folder; refusing to replace it", "note": "an output path that is a folder"}


@case
def export_out_dev_null(folder: Path) -> dict:
    _special_file(folder, "out/export_dev_null.gguf", "/dev/null")
    return {"path": "out/export_dev_null.gguf", "reader": "export_out", "error": "ExportError",
            "match": "is a character device; refusing to replace it",
            "note": "cmdv export -o <a character device>: refused before any work"}


@case
def export_out_folder(folder: Path) -> dict:
    (Path(folder) / "out" / "export_folder").mkdir(parents=True, exist_ok=True)
    return {"path": "out/export_folder", "reader": "export_out", "error": "ExportError",
            "match": "is a folder; with one --adapter --out names the pack file",
            "note": "cmdv export -o <existing folder> with one adapter: refused up front (was refused after all "
                    "the work, naming a temp file)"}


if __name__ == "__main__":
    for c in build(Path(sys.argv[1])):
        print(c["name"], c["reader"], c["path"])
