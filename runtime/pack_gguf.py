"""GGUF encoding of :class:`~commandv.runtime.pack.BehaviorPack` (gguf package writer/reader).

Layout (architecture ``commandv-pack``, format version 1):

* ``commandv.format_version`` u32, ``commandv.created_by`` str
* ``commandv.recipient.{fingerprint,arch,name}`` str, ``commandv.recipient.{n_layer,d_model}`` u32
* ``commandv.meta`` str (JSON: donor, adapter hash, profile hashes, layer rule, …)
* ``commandv.diagnostics`` str (JSON list, one object per layer pair)
* ``commandv.entry_count`` u32; per entry ``i``: ``commandv.entry.{i}.layer`` u32,
  ``.donor_layer`` i32, ``.act`` str, ``.positions`` str, ``.strength`` f32
* tensors ``entry.{i}.A`` ``[d, r]``, ``entry.{i}.b`` ``[r]``, ``entry.{i}.C`` ``[r, d]``, and
  optionally ``entry.{i}.P`` ``[d, q]``, ``entry.{i}.Q`` ``[q, d]``, ``entry.{i}.e`` ``[d]``
  (numpy shapes; GGUF stores dims reversed), f32 or f16.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import __version__
from .pack import (
    FORMAT_VERSION,
    MAX_ENTRIES,
    MAX_STRING,
    PACK_ARCH,
    SUPPORTED_VERSIONS,
    BehaviorPack,
    PackEntry,
    PackError,
)

_TENSORS = ("A", "b", "C", "P", "Q", "e")


def write_pack(pack: BehaviorPack, path: Path, dtype: str = "f32") -> None:
    """Write ``pack`` to ``path`` (caller handles atomicity)."""
    import gguf

    if dtype not in ("f32", "f16"):
        raise PackError(f"pack dtype must be f32 or f16, not {dtype!r}")
    np_dtype = np.float32 if dtype == "f32" else np.float16
    w = gguf.GGUFWriter(str(path), PACK_ARCH)
    w.add_uint32("commandv.format_version", FORMAT_VERSION)
    w.add_string("commandv.created_by", pack.meta.get("created_by", f"commandv {__version__}"))
    w.add_string("general.name", pack.name)
    rec = pack.recipient
    w.add_string("commandv.recipient.fingerprint", str(rec["fingerprint"]))
    w.add_string("commandv.recipient.arch", str(rec["arch"]))
    w.add_string("commandv.recipient.name", str(rec.get("name", "")))
    w.add_uint32("commandv.recipient.n_layer", int(rec["n_layer"]))
    w.add_uint32("commandv.recipient.d_model", int(rec["d_model"]))
    w.add_string("commandv.meta", json.dumps(pack.meta, sort_keys=True))
    w.add_string("commandv.diagnostics", json.dumps(pack.diagnostics, sort_keys=True))
    w.add_uint32("commandv.entry_count", len(pack.entries))
    for i, e in enumerate(pack.entries):
        k = f"commandv.entry.{i}"
        w.add_uint32(f"{k}.layer", int(e.layer))
        w.add_int32(f"{k}.donor_layer", int(e.donor_layer))
        w.add_string(f"{k}.act", e.act)
        w.add_string(f"{k}.positions", e.positions)
        w.add_float32(f"{k}.strength", float(e.strength))
        for name in _TENSORS:
            t = getattr(e, name)
            if t is not None:
                w.add_tensor(f"entry.{i}.{name}", np.ascontiguousarray(t, dtype=np_dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class _Fields:
    """Typed, bounded access to a GGUFReader's key/value fields."""

    def __init__(self, reader, path: Path):
        self.r = reader
        self.path = path

    def _get(self, key: str):
        f = self.r.fields.get(key)
        if f is None:
            raise PackError(f"{self.path}: metadata key {key!r} missing")
        return f

    def string(self, key: str, default: str | None = None) -> str:
        import gguf

        f = self.r.fields.get(key)
        if f is None:
            if default is not None:
                return default
            raise PackError(f"{self.path}: metadata key {key!r} missing")
        if not f.types or f.types[0] != gguf.GGUFValueType.STRING:
            raise PackError(f"{self.path}: metadata key {key!r} is not a string")
        raw = f.parts[f.data[0]]
        if raw.nbytes > MAX_STRING:
            raise PackError(f"{self.path}: metadata key {key!r} is {raw.nbytes} bytes (limit {MAX_STRING})")
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise PackError(f"{self.path}: metadata key {key!r} is not valid UTF-8") from None

    def number(self, key: str, kinds: tuple, default=None):
        import gguf

        f = self.r.fields.get(key)
        if f is None:
            if default is not None:
                return default
            raise PackError(f"{self.path}: metadata key {key!r} missing")
        allowed = {getattr(gguf.GGUFValueType, k) for k in kinds}
        if len(f.types) != 1 or f.types[0] not in allowed:
            raise PackError(f"{self.path}: metadata key {key!r} has type {f.types}, expected {kinds}")
        return f.parts[f.data[0]][0].item()

    def json(self, key: str, default):
        text = self.string(key, default=json.dumps(default))
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise PackError(f"{self.path}: metadata key {key!r} is not valid JSON ({exc.msg})") from None


def _open_reader(path: Path):
    import gguf

    if not path.is_file():
        raise PackError(f"pack file not found: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise PackError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    try:
        return gguf.GGUFReader(str(path), "r")
    except PackError:
        raise
    except Exception as exc:  # the gguf reader raises many kinds on corrupt input
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PackError(f"{path}: corrupt or truncated GGUF ({type(exc).__name__}: {msg[:200]})") from None


def read_pack(path: Path) -> BehaviorPack:
    """Parse a pack file; shape/value checks are done by ``BehaviorPack.validate``."""
    reader = _open_reader(path)
    f = _Fields(reader, path)
    arch = f.string("general.architecture")
    if arch != PACK_ARCH:
        raise PackError(f"{path}: GGUF architecture is {arch!r}, not a behavior pack ({PACK_ARCH!r})")
    version = f.number("commandv.format_version", ("UINT32",))
    if version not in SUPPORTED_VERSIONS:
        raise PackError(f"{path}: pack format version {version} is not supported (known: {SUPPORTED_VERSIONS})")
    recipient = {
        "fingerprint": f.string("commandv.recipient.fingerprint"),
        "arch": f.string("commandv.recipient.arch"),
        "name": f.string("commandv.recipient.name", default=""),
        "n_layer": int(f.number("commandv.recipient.n_layer", ("UINT32",))),
        "d_model": int(f.number("commandv.recipient.d_model", ("UINT32",))),
    }
    meta = f.json("commandv.meta", {})
    diagnostics = f.json("commandv.diagnostics", [])
    if not isinstance(meta, dict) or not isinstance(diagnostics, list):
        raise PackError(f"{path}: commandv.meta must be a JSON object and commandv.diagnostics a list")
    meta.setdefault("created_by", f.string("commandv.created_by", default=""))
    n = int(f.number("commandv.entry_count", ("UINT32",)))
    if n < 1 or n > MAX_ENTRIES:
        raise PackError(f"{path}: entry_count {n} outside 1..{MAX_ENTRIES}")

    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.tensor_type.name not in ("F32", "F16"):
            raise PackError(f"{path}: tensor {t.name!r} has type {t.tensor_type.name}; packs use F32 or F16")
        tensors[t.name] = np.array(t.data, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)])
    expected = set()
    entries = []
    for i in range(n):
        k = f"commandv.entry.{i}"
        arrays = {}
        for name in _TENSORS:
            key = f"entry.{i}.{name}"
            if key in tensors:
                arrays[name] = tensors[key]
                expected.add(key)
            elif name in ("A", "b", "C"):
                raise PackError(f"{path}: entry {i}: tensor {key!r} missing")
        entries.append(
            PackEntry(
                layer=int(f.number(f"{k}.layer", ("UINT32",))),
                donor_layer=int(f.number(f"{k}.donor_layer", ("INT32",), default=-1)),
                act=f.string(f"{k}.act"),
                positions=f.string(f"{k}.positions"),
                strength=float(f.number(f"{k}.strength", ("FLOAT32",))),
                **arrays,
            )
        )
    extra = sorted(set(tensors) - expected)
    if extra:
        raise PackError(f"{path}: unexpected tensors {extra[:5]} (not referenced by any entry)")
    del reader
    return BehaviorPack(
        entries=entries,
        recipient=recipient,
        meta=meta,
        diagnostics=diagnostics,
        name=f.string("general.name", default=path.stem),
    )
