"""ctypes access to ggml tensors inside a llama.cpp eval callback.

Uses the shared libraries that llama-cpp-python installs (``llama_cpp/lib``):
accessor functions exported by ``libggml-base`` (``ggml_get_name``,
``ggml_nbytes``, ``ggml_backend_tensor_get/set`` ...) plus a ctypes mirror of
``struct ggml_tensor`` (ggml.h of llama-cpp-python 0.3.36) for ``ne``/``nb``.
``check_layout()`` verifies the mirror against the library at load time.

Reads and writes go through ``ggml_backend_tensor_get/set``, so they work
whether or not the tensor's buffer lives in host memory. Every precondition
that ggml would ``GGML_ASSERT`` (and abort the process on) is checked here
first and raised as :class:`GgmlError`.

A tensor is addressed by its pointer (``int``, as an eval callback receives it).
Shapes follow ggml order: ``ne0`` is the fastest axis (the hidden size for
activations), ``ne1`` the token axis. :func:`read_rows` returns ``[ne1, ne0]``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from commandv.runtime.errors import CommandVError

GGML_MAX_DIMS = 4
GGML_MAX_OP_PARAMS = 64
GGML_MAX_SRC = 10
GGML_MAX_NAME = 64
GGML_OBJECT_SIZE = 32  # sizeof(struct ggml_object) in ggml.c
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
_READABLE = {GGML_TYPE_F32: np.float32, GGML_TYPE_F16: np.float16}


class GgmlError(CommandVError, RuntimeError):
    """A ggml tensor cannot be read/written as asked (type, shape, bounds, library)."""


class GgmlTensorStruct(ctypes.Structure):
    """Mirror of ``struct ggml_tensor`` (ggml.h, llama-cpp-python 0.3.36)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


@dataclass(frozen=True)
class TensorInfo:
    """What a callback needs to know about a tensor. ``ne``/``nb`` in ggml order (elements / bytes)."""

    name: str
    type: int
    type_name: str
    ne: tuple[int, int, int, int]
    nb: tuple[int, int, int, int]
    n_dims: int


def _lib_dir() -> Path:
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise GgmlError("llama-cpp-python is not installed (pip install llama-cpp-python==0.3.36)")
    return Path(spec.origin).parent / "lib"


def _find_lib(name: str, lib_dir: Path | None = None, error: type[Exception] = GgmlError) -> Path:
    """``lib<name>.so`` / ``.dylib`` / ``.dll`` in ``lib_dir`` (default: llama-cpp-python's library folder),
    or ``error``. The one lookup of ``libggml-base`` (:func:`lib`, and the native core's link step)."""
    d = _lib_dir() if lib_dir is None else Path(lib_dir)
    cands = {
        "linux": [f"lib{name}.so"],
        "darwin": [f"lib{name}.dylib", f"lib{name}.so"],
        "win32": [f"{name}.dll", f"lib{name}.dll"],
    }.get(sys.platform, [f"lib{name}.so"])
    for c in cands:
        if (d / c).exists():
            return d / c
    raise error(f"shared library {name!r} not found in {d} (tried {cands})")


def ggml_base_path(lib_dir: Path | None = None, error: type[Exception] = GgmlError) -> Path:
    """Path of ``libggml-base`` in ``lib_dir`` (default: llama-cpp-python's), or ``error``."""
    return _find_lib("ggml-base", lib_dir, error)


LAYER_OUTPUT = "l_out-"
"""Name prefix of llama.cpp's per-layer residual output tensors (``l_out-N``, N = the layer)."""


def layer_output_name(layer: int) -> str:
    """``'l_out-<layer>'``: the graph tensor holding block ``layer``'s output."""
    return f"{LAYER_OUTPUT}{int(layer)}"


def layer_outputs(n_layer: int) -> dict[str, int]:
    """``{'l_out-0': 0, …}`` for a model of ``n_layer`` blocks: the one ``l_out-N`` → N table of the eval
    callbacks (edits and captures; the C core parses the same names in ``cmdv_core.c``)."""
    return {layer_output_name(i): i for i in range(int(n_layer))}


@functools.lru_cache(maxsize=1)
def lib() -> ctypes.CDLL:
    """``libggml-base`` as loaded by llama-cpp-python (same process-wide instance), with prototypes set."""
    import llama_cpp.llama_cpp  # noqa: F401  -- make sure libllama (and its ggml) is loaded first

    try:
        L = ctypes.CDLL(str(ggml_base_path()))
    except OSError as e:
        raise GgmlError(f"cannot load libggml-base: {e}") from e
    p, sz = ctypes.c_void_p, ctypes.c_size_t
    protos = {
        "ggml_get_name": ([p], ctypes.c_char_p),
        "ggml_nelements": ([p], ctypes.c_int64),
        "ggml_nbytes": ([p], sz),
        "ggml_n_dims": ([p], ctypes.c_int),
        "ggml_is_contiguous": ([p], ctypes.c_bool),
        "ggml_type_name": ([ctypes.c_int], ctypes.c_char_p),
        "ggml_tensor_overhead": ([], sz),
        "ggml_backend_tensor_get": ([p, p, sz, sz], None),
        "ggml_backend_tensor_set": ([p, p, sz, sz], None),
        "ggml_backend_buffer_is_host": ([p], ctypes.c_bool),
    }
    for fname, (args, res) in protos.items():
        fn = getattr(L, fname)
        fn.argtypes, fn.restype = args, res
    check_layout(L)
    return L


def check_layout(L: ctypes.CDLL | None = None) -> None:
    """Raise GgmlError if the ctypes mirror's size differs from the library's ``struct ggml_tensor``."""
    L = L or lib()
    expected = L.ggml_tensor_overhead() - GGML_OBJECT_SIZE
    if ctypes.sizeof(GgmlTensorStruct) != expected:
        raise GgmlError(
            f"struct ggml_tensor mirror is {ctypes.sizeof(GgmlTensorStruct)} bytes, library says {expected}: "
            "llama-cpp-python version mismatch (expected 0.3.36)"
        )


def _ptr(t: int | ctypes.c_void_p | None) -> int:
    if isinstance(t, ctypes.c_void_p):
        t = t.value
    if not t:
        raise GgmlError("null ggml_tensor pointer")
    return int(t)


def _struct(t: int) -> GgmlTensorStruct:
    return GgmlTensorStruct.from_address(_ptr(t))


def tensor_name(t: int) -> str:
    """The tensor's name, e.g. ``'l_out-3'``."""
    return lib().ggml_get_name(_ptr(t)).decode("utf-8", "replace")


def tensor_shape(t: int) -> tuple[int, int, int, int]:
    """``(ne0, ne1, ne2, ne3)``: element counts, ne0 fastest."""
    return tuple(int(x) for x in _struct(t).ne)  # type: ignore[return-value]


def tensor_strides(t: int) -> tuple[int, int, int, int]:
    """``(nb0, nb1, nb2, nb3)``: strides in bytes."""
    return tuple(int(x) for x in _struct(t).nb)  # type: ignore[return-value]


def tensor_type(t: int) -> int:
    """ggml type id (0 = F32, 1 = F16, ...)."""
    return int(_struct(t).type)


def tensor_info(t: int) -> TensorInfo:
    """Name, type, shape and strides of a tensor."""
    L, s = lib(), _struct(t)
    return TensorInfo(
        name=tensor_name(t),
        type=int(s.type),
        type_name=L.ggml_type_name(int(s.type)).decode(),
        ne=tuple(int(x) for x in s.ne),  # type: ignore[arg-type]
        nb=tuple(int(x) for x in s.nb),  # type: ignore[arg-type]
        n_dims=int(L.ggml_n_dims(_ptr(t))),
    )


def _check_io(t: int, writing: bool) -> tuple[GgmlTensorStruct, int, int, int]:
    """Validate what ggml would assert on; return (struct, ne0, n_rows, row_stride_bytes)."""
    s = _struct(t)
    ttype = int(s.type)
    if writing and ttype != GGML_TYPE_F32:
        raise GgmlError(f"tensor {tensor_name(t)!r} has type {lib().ggml_type_name(ttype).decode()}; only f32 is writable")
    if ttype not in _READABLE:
        raise GgmlError(f"tensor {tensor_name(t)!r} has type {lib().ggml_type_name(ttype).decode()}; only f32/f16 are readable")
    buf = s.buffer
    if s.view_src:
        buf = GgmlTensorStruct.from_address(s.view_src).buffer
    if not buf or not s.data:
        raise GgmlError(f"tensor {tensor_name(t)!r} is not allocated (no buffer/data)")
    ne0, ne1, ne2, ne3 = (int(x) for x in s.ne)
    nb0, nb1 = int(s.nb[0]), int(s.nb[1])
    esize = np.dtype(_READABLE[ttype]).itemsize
    if nb0 != esize:
        raise GgmlError(f"tensor {tensor_name(t)!r} rows are not contiguous (nb0={nb0}, element size {esize})")
    if ne2 * ne3 != 1 and not lib().ggml_is_contiguous(_ptr(t)):
        raise GgmlError(f"tensor {tensor_name(t)!r} is non-contiguous with shape {(ne0, ne1, ne2, ne3)}; only 2-D views supported")
    return s, ne0, ne1 * ne2 * ne3, nb1


def read_rows(t: int, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Copy of the tensor as ``[n_rows, ne0]`` float32 (rows = tokens for activations).

    ``n_rows = ne1*ne2*ne3``; with ``rows`` given, only those rows, in that order ``[len(rows), ne0]``.
    """
    L = lib()
    s, ne0, n_rows, nb1 = _check_io(t, writing=False)
    dt = _READABLE[int(s.type)]
    itemsize = np.dtype(dt).itemsize
    row_bytes = ne0 * itemsize
    if rows is None:
        out = np.empty((n_rows, ne0), dtype=dt)
        if nb1 == row_bytes or n_rows == 1:
            L.ggml_backend_tensor_get(_ptr(t), out.ctypes.data, 0, out.nbytes)
            return out.astype(np.float32, copy=False)
        rows = range(n_rows)
    idx = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n_rows):
        raise GgmlError(f"row index out of range [0, {n_rows}) for tensor {tensor_name(t)!r}: {idx.tolist()[:8]}")
    out = np.empty((idx.size, ne0), dtype=dt)
    for j, r in enumerate(idx.tolist()):
        L.ggml_backend_tensor_get(_ptr(t), out[j].ctypes.data, r * nb1, row_bytes)
    return out.astype(np.float32, copy=False)


def write_rows(t: int, row_indices: Sequence[int] | np.ndarray, values: np.ndarray) -> None:
    """Overwrite rows ``row_indices`` of an f32 tensor in place with ``values`` ``[k, ne0]``."""
    L = lib()
    s, ne0, n_rows, nb1 = _check_io(t, writing=True)
    idx = np.asarray(row_indices, dtype=np.int64).reshape(-1)
    vals = np.ascontiguousarray(values, dtype=np.float32)
    if vals.ndim == 1:
        vals = vals[None, :]
    if vals.shape != (idx.size, ne0):
        raise GgmlError(f"values shape {vals.shape} != ({idx.size}, {ne0}) for tensor {tensor_name(t)!r}")
    if idx.size and (idx.min() < 0 or idx.max() >= n_rows):
        raise GgmlError(f"row index out of range [0, {n_rows}) for tensor {tensor_name(t)!r}: {idx.tolist()}")
    row_bytes = ne0 * 4
    if idx.size == n_rows and np.array_equal(idx, np.arange(n_rows)) and nb1 == row_bytes:
        L.ggml_backend_tensor_set(_ptr(t), vals.ctypes.data, 0, vals.nbytes)
        return
    for j, r in enumerate(idx.tolist()):
        L.ggml_backend_tensor_set(_ptr(t), vals[j].ctypes.data, r * nb1, row_bytes)
