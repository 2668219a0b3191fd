"""GGUF encoding of :class:`~commandv.runtime.pack.model.BehaviorPack` (gguf package writer, strict reader).

Layout (architecture ``commandv-pack``, format version 1; every key and tensor name is defined once, in
:mod:`commandv.runtime.pack.keys`):

* ``commandv.format_version`` u32, ``commandv.created_by`` str
* ``commandv.recipient.{fingerprint,arch,name}`` str, ``commandv.recipient.{n_layer,d_model}`` u32
* ``commandv.meta`` str (JSON: donor, adapter hash, profile hashes, layer rule, …)
* ``commandv.diagnostics`` str (JSON list, one object per layer pair)
* ``commandv.entry_count`` u32; per entry ``i``: ``commandv.entry.{i}.layer`` u32,
  ``.donor_layer`` i32, ``.act`` str, ``commandv.runtime.edit.positions`` str, ``.strength`` f32
* tensors ``entry.{i}.A`` ``[d, r]``, ``entry.{i}.b`` ``[r]``, ``entry.{i}.C`` ``[r, d]``, and
  optionally ``entry.{i}.P`` ``[d, q]``, ``entry.{i}.Q`` ``[q, d]``, ``entry.{i}.e`` ``[d]``
  (numpy shapes; GGUF stores dims reversed), f32 or f16.

Reading goes through :mod:`commandv.runtime.pack.gguf_strict` on bytes read once (not ``gguf.GGUFReader``,
which trusts header counts): every count, length and offset is capped and
bounds-checked before use, so a hostile header fails fast in bounded memory, and
a signature can be checked on exactly the bytes that are parsed.

This module knows the file layout only: :func:`write_pack` takes a pack, :func:`decode_pack` returns its
parts as plain values, and :func:`~commandv.runtime.pack.model.parse_pack` / ``BehaviorPack.load`` build the
:class:`~commandv.runtime.pack.model.BehaviorPack` from them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from commandv.runtime.errors import PackError
from commandv.runtime.pack import keys as K
from commandv.runtime.pack.gguf_strict import T_STRING, TYPE_NAMES, GGUFFormatError, Limits, parse_gguf
from commandv.runtime.safe_io import json_problem, read_regular
from commandv.runtime.version import __version__

if TYPE_CHECKING:  # annotations only: pack.py imports this module
    from commandv.runtime.pack.model import BehaviorPack

PACK_ARCH = K.PACK_ARCH
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_ENTRIES = 4096
MAX_STRING = 1 << 20  # 1 MiB of metadata text per field

_TENSORS = K.TENSOR_NAMES
F16_MAX = float(np.finfo(np.float16).max)


def write_pack(pack: BehaviorPack, path: Path, dtype: str = "f32") -> None:
    """Write ``pack`` to ``path`` (caller handles atomicity)."""
    import gguf

    if dtype not in ("f32", "f16"):
        raise PackError(f"pack dtype must be f32 or f16, not {dtype!r}")
    np_dtype = np.float32 if dtype == "f32" else np.float16
    w = gguf.GGUFWriter(str(path), PACK_ARCH)
    w.add_uint32(K.FORMAT_VERSION, FORMAT_VERSION)
    w.add_string(K.CREATED_BY, pack.meta.get("created_by", f"commandv {__version__}"))
    w.add_string(K.NAME, pack.name)
    rec = pack.recipient
    w.add_string(K.RECIPIENT_FINGERPRINT, str(rec["fingerprint"]))
    w.add_string(K.RECIPIENT_ARCH, str(rec["arch"]))
    w.add_string(K.RECIPIENT_NAME, str(rec.get("name", "")))
    w.add_uint32(K.RECIPIENT_N_LAYER, int(rec["n_layer"]))
    w.add_uint32(K.RECIPIENT_D_MODEL, int(rec["d_model"]))
    w.add_string(K.META, json.dumps(pack.meta, sort_keys=True))
    w.add_string(K.DIAGNOSTICS, json.dumps(pack.diagnostics, sort_keys=True))
    w.add_uint32(K.ENTRY_COUNT, len(pack.entries))
    for i, e in enumerate(pack.entries):
        w.add_uint32(K.entry_key(K.ENTRY_LAYER, i), int(e.layer))
        w.add_int32(K.entry_key(K.ENTRY_DONOR_LAYER, i), int(e.donor_layer))
        w.add_string(K.entry_key(K.ENTRY_ACT, i), e.act)
        w.add_string(K.entry_key(K.ENTRY_POSITIONS, i), e.positions)
        w.add_float32(K.entry_key(K.ENTRY_STRENGTH, i), float(e.strength))
        for name in _TENSORS:
            t = getattr(e, name)
            if t is not None:
                if dtype == "f16" and t.size and float(np.max(np.abs(t))) > F16_MAX:
                    raise PackError(f"entry {i}: tensor {name} has values beyond the f16 range ±{F16_MAX:g} "
                                    "(save as f32)")
                w.add_tensor(K.tensor_name(i, name), np.ascontiguousarray(t, dtype=np_dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


MAX_PACK_BYTES = 1 << 31  # 2 GiB: far above any real pack (a 4096-entry rank-64 pack for d=8192 is ~1 GiB f16)
_LIMITS = Limits(max_kv=64 + 8 * MAX_ENTRIES, max_tensors=len(_TENSORS) * MAX_ENTRIES, max_string=MAX_STRING)
_KINDS = {"UINT32": 4, "INT32": 5, "FLOAT32": 6}


class _Fields:
    """Typed access to the parsed key/value fields (sizes were capped by the parser)."""

    def __init__(self, fields: dict, path: Path | str):
        self.fields = fields
        self.path = path

    def string(self, key: str, default: str | None = None) -> str:
        f = self.fields.get(key)
        if f is None:
            if default is not None:
                return default
            raise PackError(f"{self.path}: metadata key {key!r} missing")
        if f[0] != T_STRING:
            raise PackError(f"{self.path}: metadata key {key!r} is not a string")
        return f[1]

    def number(self, key: str, kinds: tuple, default=None):
        f = self.fields.get(key)
        if f is None:
            if default is not None:
                return default
            raise PackError(f"{self.path}: metadata key {key!r} missing")
        if f[0] not in {_KINDS[k] for k in kinds}:
            raise PackError(f"{self.path}: metadata key {key!r} has type {TYPE_NAMES.get(f[0], f[0])}, "
                            f"expected {' or '.join(kinds)}")
        return f[1]

    def json(self, key: str, default):
        text = self.string(key, default=json.dumps(default))
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:  # also deep nesting and ints over Python's digit limit
            raise PackError(f"{self.path}: metadata key {key!r} is not valid JSON ({json_problem(exc)})") from None


_DIAG_NUMBERS = ("r2_r2d", "r2_d2r", "cycle_err", "delta_energy", "donor_delta_energy")


def _check_diagnostics(diags: list, path) -> None:
    """Diagnostics are shown by ``cmdv inspect``: objects of scalars, integer layers, numeric fit figures."""
    if len(diags) > MAX_ENTRIES:
        raise PackError(f"{path}: {K.DIAGNOSTICS} has {len(diags)} items, more than {MAX_ENTRIES}")
    for i, d in enumerate(diags):
        if not isinstance(d, dict) or not all(isinstance(v, (int, float, str, type(None))) for v in d.values()):
            raise PackError(f"{path}: {K.DIAGNOSTICS} item {i} is not an object of scalar values")
        if not all(type(d.get(k)) is int for k in ("donor_layer", "recipient_layer")):
            raise PackError(f"{path}: {K.DIAGNOSTICS} item {i} lacks integer donor_layer/recipient_layer")
        bad = [k for k in _DIAG_NUMBERS if k in d and type(d[k]) not in (int, float)]
        if bad:
            raise PackError(f"{path}: {K.DIAGNOSTICS} item {i}: {bad[0]} is not a number")


def read_pack_bytes(path: Path) -> bytes:
    """The whole pack file at ``path``, read once; returns its bytes.

    Goes through :func:`~.safe_io.read_regular`: a missing file, a FIFO, a device (also behind a symlink, e.g.
    to ``/dev/zero``), a folder or a file over ``MAX_PACK_BYTES`` raises :class:`PackError` with a one-line
    message, without blocking and without reading more than the cap.
    """
    return read_regular(Path(path), MAX_PACK_BYTES, what="pack file", error=PackError)


def decode_pack(data: bytes, path: Path | str) -> dict:
    """Decode pack bytes into the keyword arguments of :class:`~commandv.runtime.pack.model.BehaviorPack`
    (``entries``: a list of :class:`~commandv.runtime.pack.model.PackEntry` keyword-argument dicts, tensors float32);
    ``path`` only names the source in messages. Data only: use :func:`~commandv.runtime.pack.model.parse_pack`
    for the pack itself.

    Memory stays bounded by the input: tensors whose data overlaps, or that would take more than twice
    ``len(data)`` as float32, are refused by the parser, and each tensor is copied (once, to float32) only after
    every entry and tensor reference has been checked. Raises :class:`PackError`. Shape/value checks are done
    by ``BehaviorPack.validate``.
    """
    try:
        g = parse_gguf(data, str(path), _LIMITS)
    except GGUFFormatError as exc:
        raise PackError(str(exc)) from None
    f = _Fields(g.fields, path)
    arch = f.string(K.ARCHITECTURE)
    if arch != PACK_ARCH:
        raise PackError(f"{path}: GGUF architecture is {arch!r}, not a behavior pack ({PACK_ARCH!r})")
    version = f.number(K.FORMAT_VERSION, ("UINT32",))
    if version not in SUPPORTED_VERSIONS:
        raise PackError(f"{path}: pack format version {version} is not supported (known: {SUPPORTED_VERSIONS})")
    recipient = {
        "fingerprint": f.string(K.RECIPIENT_FINGERPRINT),
        "arch": f.string(K.RECIPIENT_ARCH),
        "name": f.string(K.RECIPIENT_NAME, default=""),
        "n_layer": int(f.number(K.RECIPIENT_N_LAYER, ("UINT32",))),
        "d_model": int(f.number(K.RECIPIENT_D_MODEL, ("UINT32",))),
    }
    meta = f.json(K.META, {})
    diagnostics = f.json(K.DIAGNOSTICS, [])
    if not isinstance(meta, dict) or not isinstance(diagnostics, list):
        raise PackError(f"{path}: {K.META} must be a JSON object and {K.DIAGNOSTICS} a list")
    _check_diagnostics(diagnostics, path)
    meta.setdefault("created_by", f.string(K.CREATED_BY, default=""))
    n = int(f.number(K.ENTRY_COUNT, ("UINT32",)))
    if n < 1 or n > MAX_ENTRIES:
        raise PackError(f"{path}: entry_count {n} outside 1..{MAX_ENTRIES}")

    # Read-only views into ``data`` (no copy) until every entry and tensor reference has been checked; only
    # then are the referenced tensors widened to float32 (the parser bounded their total to 2x the file size).
    tensors: dict[str, np.ndarray] = {}
    for t in g.tensors:
        dt = "<f4" if t.ggml_type == 0 else "<f2"
        count = t.n_bytes // np.dtype(dt).itemsize
        view = np.frombuffer(data, dtype=dt, count=count, offset=t.start)
        try:
            tensors[t.name] = view.reshape(t.shape)
        except ValueError:  # e.g. dims [0, 2^31-1, 2^31-1]: no bytes, but a shape numpy cannot hold
            raise PackError(f"{path}: tensor {t.name!r} has shape {list(t.shape)}, which no pack tensor can have") from None
    expected = set()
    entries = []
    for i in range(n):
        arrays = {}
        for name in _TENSORS:
            key = K.tensor_name(i, name)
            if key in tensors:
                arrays[name] = tensors[key]
                expected.add(key)
            elif name in K.REQUIRED_TENSORS:
                raise PackError(f"{path}: entry {i}: tensor {key!r} missing")
        entries.append(
            dict(
                layer=int(f.number(K.entry_key(K.ENTRY_LAYER, i), ("UINT32",))),
                donor_layer=int(f.number(K.entry_key(K.ENTRY_DONOR_LAYER, i), ("INT32",), default=-1)),
                act=f.string(K.entry_key(K.ENTRY_ACT, i)),
                positions=f.string(K.entry_key(K.ENTRY_POSITIONS, i)),
                strength=float(f.number(K.entry_key(K.ENTRY_STRENGTH, i), ("FLOAT32",))),
                **arrays,
            )
        )
    extra = sorted(set(tensors) - expected)
    if extra:
        raise PackError(f"{path}: unexpected tensors {extra[:5]} (not referenced by any entry)")
    for e in entries:  # every tensor is referenced exactly once (names are unique): one float32 copy each
        for name in _TENSORS:
            if name in e:
                e[name] = e[name].astype(np.float32)
    return dict(
        entries=entries,
        recipient=recipient,
        meta=meta,
        diagnostics=diagnostics,
        name=f.string(K.NAME, default=Path(str(path)).stem),
    )
