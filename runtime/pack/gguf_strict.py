"""Strict, bounded GGUF parsing from one ``bytes`` object (for untrusted files such as packs).

Why not ``gguf.GGUFReader``: it trusts the header's counts. An array value
claiming 2**60 items past the end of the file makes it loop forever while
allocating (gigabytes within seconds), a string claiming 2**60 bytes
is silently cut to what is left, and it memory-maps the path, so the bytes it
parses are not necessarily the bytes whose signature was checked.

This parser reads from bytes already in memory and checks every count and
length against a fixed limit *and* against the bytes left before it uses it,
so a hostile header fails in time linear in the file size, with memory
bounded by it. Every failure is a :class:`GGUFFormatError` naming the file and
the offending field.

Scope: GGUF v2/v3, little-endian; scalar, string and (non-nested) array
values; tensor infos with 1..4 dims whose types the caller lists (with their
byte sizes); tensor data offsets aligned and inside the file, no two tensors
sharing a byte, and all tensors together at most ``Limits.max_expansion`` times
the file size once widened to float32 (so parsing cannot amplify memory).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from commandv.runtime.errors import CommandVError

GGUF_MAGIC = b"GGUF"
SUPPORTED_GGUF_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# GGUF value types
T_STRING, T_ARRAY = 8, 9
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
TYPE_NAMES = {0: "UINT8", 1: "INT8", 2: "UINT16", 3: "INT16", 4: "UINT32", 5: "INT32", 6: "FLOAT32", 7: "BOOL",
              8: "STRING", 9: "ARRAY", 10: "UINT64", 11: "INT64", 12: "FLOAT64"}
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset


class GGUFFormatError(CommandVError, ValueError):
    """The bytes are not a well-formed GGUF file within the given limits."""


@dataclass(frozen=True)
class Limits:
    """Caps on what a header may claim (each also bounded by the bytes actually present)."""

    max_kv: int = 1 << 16
    max_tensors: int = 1 << 16
    max_key: int = 256
    max_string: int = 1 << 20
    max_array: int = 1 << 16
    max_dims: int = 4
    max_dim_len: int = (1 << 31) - 1
    max_name: int = 256
    max_expansion: int = 2  # all tensors as float32 may take at most this many times the file size


@dataclass
class TensorInfo:
    """One tensor: ``dims`` in GGUF order (fastest-varying first), data at ``data[start:start + n_bytes]``."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    start: int
    n_bytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy (row-major) shape: the GGUF dims reversed."""
        return tuple(reversed(self.dims))


@dataclass
class GGUFFile:
    """Parsed header: ``fields[key] = (value type, value)``; array values are ``(item type, list)``."""

    version: int
    fields: dict[str, tuple[int, object]] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    alignment: int = DEFAULT_ALIGNMENT
    data_offset: int = 0


class _Cursor:
    def __init__(self, data: bytes, source: str):
        self.data = memoryview(data)
        self.pos = 0
        self.source = source

    def fail(self, msg: str) -> GGUFFormatError:
        return GGUFFormatError(f"{self.source}: {msg}")

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n > self.left:
            raise self.fail(f"truncated GGUF: {what} at byte {self.pos} needs {n} bytes, {self.left} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str, limit: int) -> str:
        n = self.scalar("<Q", f"{what} length")
        if n > limit:
            raise self.fail(f"{what} claims {n} bytes (limit {limit})")
        raw = self.take(n, what)
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None


def _value(cur: _Cursor, vtype: int, key: str, lim: Limits, in_array: bool = False):
    what = f"metadata key {key!r}"
    if vtype in _SCALARS:
        return cur.scalar(_SCALARS[vtype], what)
    if vtype == T_STRING:
        return cur.string(f"{what} string value", lim.max_string)
    if vtype == T_ARRAY and not in_array:
        itype = cur.scalar("<I", f"{what} array item type")
        n = cur.scalar("<Q", f"{what} array length")
        if n > lim.max_array:
            raise cur.fail(f"{what} is an array of {n} items (limit {lim.max_array})")
        if itype == T_ARRAY:
            raise cur.fail(f"{what} is a nested array (not supported)")
        if itype not in _SCALARS and itype != T_STRING:
            raise cur.fail(f"{what} array has unknown item type {itype}")
        min_item = struct.calcsize(_SCALARS[itype]) if itype in _SCALARS else 8
        if n * min_item > cur.left:
            raise cur.fail(f"truncated GGUF: {what} array of {n} items needs at least {n * min_item} bytes, "
                           f"{cur.left} left")
        return itype, [_value(cur, itype, key, lim, in_array=True) for _ in range(n)]
    raise cur.fail(f"{what} has unknown value type {vtype}")


def parse_gguf(data: bytes, source: str, limits: Limits = Limits(),
               tensor_types: dict[int, tuple[str, int]] | None = None) -> GGUFFile:
    """Parse and bounds-check a whole GGUF file held in ``data``.

    ``tensor_types`` maps accepted ggml type ids to ``(name, bytes per element)``
    (default F32 and F16); any other tensor type is refused.
    """
    tensor_types = tensor_types or {0: ("F32", 4), 1: ("F16", 2)}
    cur = _Cursor(data, source)
    magic = bytes(cur.data[:4])
    if magic != GGUF_MAGIC:
        raise cur.fail(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    cur.pos = 4
    version = cur.scalar("<I", "version")
    if version not in SUPPORTED_GGUF_VERSIONS:
        if int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_GGUF_VERSIONS:
            raise cur.fail("big-endian GGUF is not supported")
        raise cur.fail(f"GGUF version {version} not supported (known: {SUPPORTED_GGUF_VERSIONS})")
    n_tensors = cur.scalar("<Q", "tensor count")
    n_kv = cur.scalar("<Q", "metadata key count")
    if n_kv > limits.max_kv:
        raise cur.fail(f"GGUF header claims {n_kv} metadata keys (limit {limits.max_kv})")
    if n_tensors > limits.max_tensors:
        raise cur.fail(f"GGUF header claims {n_tensors} tensors (limit {limits.max_tensors})")
    if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > cur.left:
        raise cur.fail(f"truncated GGUF: header claims {n_kv} metadata keys and {n_tensors} tensors, "
                       f"only {cur.left} bytes follow")
    out = GGUFFile(version=version)
    for _ in range(n_kv):
        key = cur.string("metadata key name", limits.max_key)
        if "\x00" in key:  # ggml compares key names as C strings: 'a\x00b' would be read as 'a'
            raise cur.fail(f"metadata key name {key!r} contains a NUL byte")
        vtype = cur.scalar("<I", f"metadata key {key!r} value type")
        value = _value(cur, vtype, key, limits)
        if key in out.fields:
            raise cur.fail(f"duplicate metadata key {key!r}")
        out.fields[key] = (vtype, value)
    if "general.alignment" in out.fields:
        vtype, align = out.fields["general.alignment"]
        if vtype != 4 or align < 1 or align > 1 << 16 or align & (align - 1):
            raise cur.fail(f"general.alignment {align!r} is not a power of two up to 65536 (UINT32)")
        out.alignment = int(align)
    infos = []
    for _ in range(n_tensors):
        name = cur.string("tensor name", limits.max_name)
        n_dims = cur.scalar("<I", f"tensor {name!r} dimension count")
        if not 1 <= n_dims <= limits.max_dims:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (allowed 1..{limits.max_dims})")
        dims = tuple(cur.scalar("<Q", f"tensor {name!r} dims") for _ in range(n_dims))
        if max(dims) > limits.max_dim_len:  # also with a zero dim (no bytes), numpy could not shape it
            raise cur.fail(f"tensor {name!r} dimension {max(dims)} exceeds {limits.max_dim_len}")
        ttype = cur.scalar("<I", f"tensor {name!r} type")
        offset = cur.scalar("<Q", f"tensor {name!r} offset")
        infos.append((name, dims, ttype, offset))
    pad = -cur.pos % out.alignment
    out.data_offset = cur.pos + pad
    seen = set()
    for name, dims, ttype, offset in infos:
        if name in seen:
            raise cur.fail(f"duplicate tensor {name!r}")
        seen.add(name)
        if ttype not in tensor_types:
            tname = _ggml_type_name(ttype)
            allowed = " or ".join(n for n, _ in tensor_types.values())
            raise cur.fail(f"tensor {name!r} has type {tname}; packs use {allowed}")
        n_elems = 1
        for d in dims:
            n_elems *= d
        n_bytes = n_elems * tensor_types[ttype][1]
        if offset % out.alignment:
            raise cur.fail(f"tensor {name!r} offset {offset} is not a multiple of the alignment {out.alignment}")
        start = out.data_offset + offset
        if start + n_bytes > len(data):
            raise cur.fail(f"truncated GGUF: tensor {name!r} data (bytes {start}..{start + n_bytes}) lies beyond "
                           f"the end of the file ({len(data)} bytes)")
        out.tensors.append(TensorInfo(name, dims, ttype, start, n_bytes))
    _check_tensor_ranges(cur, out.tensors, tensor_types, limits.max_expansion)
    return out


def _check_tensor_ranges(cur: _Cursor, tensors: list[TensorInfo], tensor_types: dict[int, tuple[str, int]],
                         max_expansion: int) -> None:
    """Refuse tensor data that would expand beyond ``max_expansion`` × the file size as float32, or that
    overlaps another tensor's data (the first overlapping pair in data order is named; empty tensors hold no
    bytes and overlap nothing). Without this, many tensor infos pointing at the same bytes make a small file
    decode to gigabytes."""
    n = len(cur.data)
    decoded = sum(t.n_bytes // tensor_types[t.ggml_type][1] * 4 for t in tensors)
    if decoded > max_expansion * n:
        raise cur.fail(f"tensors would expand to {decoded} bytes as float32, more than {max_expansion} times the "
                       f"file size ({n} bytes): tensor data is shared or overlaps")
    order = sorted((t.start, i) for i, t in enumerate(tensors) if t.n_bytes)
    far = None  # the tensor reaching furthest so far
    for start, i in order:
        t = tensors[i]
        if far is not None and start < far.start + far.n_bytes:
            end = min(far.start + far.n_bytes, start + t.n_bytes)
            raise cur.fail(f"tensors {far.name!r} and {t.name!r} share data bytes {start}..{end} "
                           "(each tensor needs its own bytes)")
        if far is None or start + t.n_bytes > far.start + far.n_bytes:
            far = t


def _ggml_type_name(ttype: int) -> str:
    try:
        import gguf

        return gguf.GGMLQuantizationType(ttype).name
    except (ImportError, ValueError):
        return f"unknown type {ttype}"
