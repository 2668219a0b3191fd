"""Native float32 kernels for the warm fold (``fold_kernels.c``): a batch of layer pairs in one call.

A warm fold (factors cached) is, per layer pair, two products (``X_D [N, d_D]`` and ``X_R [N, d_R]``
against 16-32 columns) and two Cholesky solves with ``N×N`` factors. Through numpy, OpenBLAS repacks
``X`` for every skinny product and numpy has no ``trsm``, so the solves are many small products.
``fold_kernels.c`` streams each ``X`` once with 16-float vector registers, solves with the float32
factor packed into 16-row panels (:func:`pack_factor`, once per factor), and folds every pair of an export
in one call, so the threads start once and no OpenBLAS worker thread spins between the steps. Timings
against numpy: ``benchmarks/export_speed.py``.

Call :func:`fold_batch` with one :class:`PairFold` per layer pair → per pair, float32 ``[d_R, w]`` then
``[w, d_R]`` arrays, or ``None`` (then fold with numpy); :func:`pack_factor` / :func:`chol_solve` solve with
one factor.

Built on first use with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``;
``-O3 -march=native`` when the compiler takes it, else ``-O3``) into
``cache_home()/native/fold_kernels-<hash>.so``; the hash covers the source, compiler, flags and this
CPU's identity (:func:`commandv.runtime.cpu.build_key`: machine, model name, identity lines, flags), so
a cache shared between machines never loads code built for another CPU. Speed figures of these kernels
hold only for the CPU they were measured on; quote them with its model name. A freshly
loaded library must reproduce numpy float64 results on ragged random problems or it is not used.
Without a compiler, after a failed build or self-test, or with ``COMMANDV_NATIVE=0``,
:func:`available` is False, :func:`unavailable_reason` says why, and callers use numpy.
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from commandv.runtime import cpu
from commandv.runtime.atomic import atomic_path
from commandv.runtime.errors import CommandVError
from commandv.runtime.native.build import cached_library_path, disabled_by_env, toolchain

SOURCE = Path(__file__).with_name("fold_kernels.c")
CFLAGS = ("-std=c11", "-O3", "-ffp-contract=fast", "-fPIC", "-shared", "-pthread", "-Wall")
TUNE = ("-march=native",)
"""Tried first; dropped when the compiler refuses it."""

MAX_THREADS = 8
"""Threads per batch at most (each batch starts its threads afresh, so more threads cost start-up time)."""

_REASON: list[str] = []


class FoldKernelError(CommandVError, RuntimeError):
    """The fold kernels could not be built, loaded or trusted."""


class _Job(ctypes.Structure):
    """``cmdv_fold_job`` in fold_kernels.c (one layer pair)."""

    _fields_ = [("XD", ctypes.c_void_p), ("dD", ctypes.c_long), ("ldd", ctypes.c_long),
                ("XR", ctypes.c_void_p), ("dR", ctypes.c_long), ("ldr", ctypes.c_long),
                ("PR", ctypes.c_void_p), ("PD", ctypes.c_void_p),
                ("M", ctypes.c_void_p), ("kp", ctypes.c_long), ("g1", ctypes.c_long), ("g2", ctypes.c_long),
                ("Y", ctypes.c_void_p), ("out", ctypes.c_void_p), ("outA", ctypes.c_void_p),
                ("outC", ctypes.c_void_p), ("wa", ctypes.c_long), ("wc", ctypes.c_long),
                ("blocks", ctypes.c_void_p), ("nblocks", ctypes.c_long)]


class _Block(ctypes.Structure):
    """``cmdv_block`` in fold_kernels.c: columns of ``M`` that the kernels fill from an edit's array."""

    _fields_ = [("src", ctypes.c_void_p), ("rs", ctypes.c_long), ("cs", ctypes.c_long), ("w", ctypes.c_long),
                ("col", ctypes.c_long), ("f64", ctypes.c_long)]


@dataclass
class PairFold:
    """One layer pair for :func:`fold_batch`: ``X_Rᵀ G_R⁻¹ X_D M`` ``[d_R, w]`` for each ``M`` in ``to_r``
    and ``(X_Rᵀ G_D⁻¹ X_D M)ᵀ`` ``[w, d_R]`` for each in ``to_d``.

    ``XD [N, d_D]``, ``XR [N, d_R]``: float32 with contiguous rows (any row stride); ``PR``, ``PD``:
    the lower Cholesky factors of ``X_R X_Rᵀ`` and ``X_D X_Dᵀ`` packed by :func:`pack_factor`;
    each ``M [d_D, w]``.
    """

    XD: np.ndarray
    XR: np.ndarray
    PR: np.ndarray
    PD: np.ndarray
    to_r: Sequence[np.ndarray]
    to_d: Sequence[np.ndarray]


def library_path(cc: str) -> Path:
    """Where the library built from the current source with compiler ``cc`` for this CPU lives."""
    return cached_library_path("fold_kernels", (SOURCE.read_bytes(), cc.encode(), " ".join(CFLAGS + TUNE).encode(),
                                                cpu.build_key(), sys.platform.encode()))


def build(force: bool = False) -> Path:
    """Compile ``fold_kernels.c`` (unless built already) → library path; :class:`FoldKernelError` on failure."""
    cc = toolchain(FoldKernelError)
    target = library_path(cc)
    if target.is_file() and not force:
        return target
    flags = ["-dynamiclib" if f == "-shared" and sys.platform == "darwin" else f for f in CFLAGS]
    error = None
    for tune in (list(TUNE), []):  # -march=native first; some compilers (Apple clang on arm64) refuse it
        try:
            with atomic_path(target, suffix=target.suffix) as tmp:  # a failed compile leaves no file behind
                proc = subprocess.run([cc, *flags, *tune, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True)
                if proc.returncode != 0:
                    tail = " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
                    raise FoldKernelError(f"compiling {SOURCE.name} failed: {tail}")
            return target
        except FoldKernelError as exc:
            error = exc
    raise error


def threads() -> int:
    """Threads for a batch: the CPUs this process may run on, at most :data:`MAX_THREADS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_THREADS))


def _self_test(lib: ctypes.CDLL) -> None:
    """Whole batches against numpy float64 on ragged shapes (1 and 3 threads; whole-job and phased paths)."""
    rng = np.random.default_rng(7)
    n, dD, dR = 29, 45, 37
    pairs, wants, grams_d = [], [], []
    for _ in range(3):
        XD = rng.standard_normal((n, dD)).astype(np.float32)
        XR = rng.standard_normal((n, dR)).astype(np.float32)
        GR, GD = (X.astype(np.float64) @ X.T.astype(np.float64) for X in (XR, XD))
        PR, PD = (_pack(lib, np.linalg.cholesky(G).astype(np.float32)) for G in (GR, GD))
        M = rng.standard_normal((dD, 19))
        pairs.append(PairFold(XD, XR, PR, PD, [M[:, :2], M[:, 2:11]], [M[:, 11:]]))
        grams_d.append(GD)
        Y = XD.astype(np.float64) @ M
        wants.append(XR.T.astype(np.float64) @ np.concatenate([np.linalg.solve(GR, Y[:, :11]),
                                                               np.linalg.solve(GD, Y[:, 11:])], 1))
    for nt in (1, 3, 2):  # 2 threads, 3 jobs: two whole jobs, then one phase by phase
        got = _fold_batch(lib, pairs, nt)
        for outs, want in zip(got, wants):  # two to_r blocks [d_R, w], then one to_d block [w, d_R]
            _agree(np.concatenate([outs[0], outs[1], outs[2].T], axis=1), want)
    Yw = rng.standard_normal((n, 11))
    _agree(_solve(lib, pairs[0].PD, n, Yw), np.linalg.solve(grams_d[0], Yw))


def _agree(got: np.ndarray, want: np.ndarray) -> None:
    if not np.allclose(got, want, rtol=1e-3, atol=1e-4 * float(np.abs(want).max())):
        raise FoldKernelError("fold kernels disagree with numpy on the self-test; not used")


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    if disabled_by_env():
        _REASON.append("disabled by COMMANDV_NATIVE=0")
        return None
    try:
        lib = ctypes.CDLL(str(build()))
        lib.cmdv_fold_batch.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_int]
        lib.cmdv_fold_batch.restype = ctypes.c_int
        lib.cmdv_fold_job_size.restype = ctypes.c_long
        lib.cmdv_panels_size.argtypes, lib.cmdv_panels_size.restype = [ctypes.c_long], ctypes.c_long
        lib.cmdv_pack_panels.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p]
        lib.cmdv_chol_solve.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_long]
        if lib.cmdv_fold_job_size() != ctypes.sizeof(_Job):
            raise FoldKernelError(f"cmdv_fold_job is {lib.cmdv_fold_job_size()} bytes in C, "
                                  f"{ctypes.sizeof(_Job)} in Python")
        _self_test(lib)
        return lib
    except (FoldKernelError, OSError, AttributeError) as exc:
        _REASON.append(str(exc))
        return None


def available() -> bool:
    """True when the kernels are built, loaded and passed their self-test."""
    return _lib() is not None


def unavailable_reason() -> str | None:
    return _REASON[-1] if _REASON else None


def _rows_ok(X: np.ndarray) -> bool:
    """float32 ``[N, d]`` with contiguous, 4-byte aligned rows (any row stride)."""
    return (isinstance(X, np.ndarray) and X.dtype == np.float32 and X.ndim == 2 and X.shape[0] > 0
            and X.shape[1] > 0 and X.strides[1] == 4 and X.strides[0] >= 4 * X.shape[1]
            and X.strides[0] % 4 == 0 and X.flags.aligned)


def _packed_ok(lib: ctypes.CDLL, P: np.ndarray, n: int) -> bool:
    """The C code reads ``cmdv_panels_size(n)`` floats of a packed factor: anything else is refused (this
    guards memory; that the factor belongs to these profiles is the caller's, as with any solve)."""
    return (isinstance(P, np.ndarray) and P.dtype == np.float32 and P.ndim == 1 and P.flags.c_contiguous
            and P.flags.aligned and n > 0 and P.size == _panels_size(lib, n))


@functools.lru_cache(maxsize=64)
def _panels_size(lib: ctypes.CDLL, n: int) -> int:
    return lib.cmdv_panels_size(n)


def _pack(lib: ctypes.CDLL, L: np.ndarray) -> np.ndarray:
    L = np.ascontiguousarray(L, dtype=np.float32)
    P = np.empty(_panels_size(lib, L.shape[0]), np.float32)
    lib.cmdv_pack_panels(L.ctypes.data, L.shape[0], L.shape[0], P.ctypes.data)
    return P


def _solve(lib: ctypes.CDLL, P: np.ndarray, n: int, Y: np.ndarray) -> np.ndarray:
    k = Y.shape[1]
    groups = -(-k // 8)
    Yp = np.zeros((n, groups * 8), np.float32)
    Yp[:, :k] = Y
    B = np.ascontiguousarray(Yp.reshape(n, groups, 8).transpose(1, 0, 2))  # column groups of 8, each [n][8]
    lib.cmdv_chol_solve(P.ctypes.data, n, B.ctypes.data, groups)
    return B.transpose(1, 0, 2).reshape(n, groups * 8)[:, :k]


def pack_factor(L: np.ndarray) -> np.ndarray | None:
    """The lower-triangular float32 Cholesky factor ``L [N, N]`` packed for the kernels (16-row panels,
    ~N²/2 floats), or ``None`` when the kernels are unavailable or ``L`` is not a float32 square matrix."""
    lib = _lib()
    if lib is None or not isinstance(L, np.ndarray) or L.dtype != np.float32 or L.ndim != 2 or L.shape[0] != L.shape[1]:
        return None
    return _pack(lib, L)


def chol_solve(P: np.ndarray, n: int, Y: np.ndarray) -> np.ndarray:
    """``(L Lᵀ)⁻¹ Y`` for ``Y [N, k]`` with ``P = pack_factor(L)`` → float32 ``[N, k]``."""
    lib = _lib()
    if lib is None:
        raise FoldKernelError(f"fold kernels unavailable: {unavailable_reason()}")
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape[0] != n:
        raise ValueError(f"right-hand sides must be [{n}, k], got {Y.shape}")
    if not _packed_ok(lib, P, n):
        raise ValueError(f"not a packed factor for N={n} (use pack_factor)")
    return _solve(lib, P, n, Y)


def suits(p: PairFold) -> bool:
    """Whether the kernels take this pair (float32 operands of agreeing shapes, see :class:`PairFold`)."""
    lib = _lib()
    n = p.XD.shape[0] if isinstance(p.XD, np.ndarray) and p.XD.ndim == 2 else -1
    return (lib is not None and _rows_ok(p.XD) and _rows_ok(p.XR) and p.XR.shape[0] == n
            and _packed_ok(lib, p.PR, n) and _packed_ok(lib, p.PD, n) and len(p.to_r) + len(p.to_d) > 0
            and all(np.ndim(m) == 2 and np.shape(m)[0] == p.XD.shape[1] for m in list(p.to_r) + list(p.to_d)))


def _fold_batch(lib: ctypes.CDLL, pairs: Sequence[PairFold], nthreads: int) -> list[list[np.ndarray]]:
    n = pairs[0].XD.shape[0]
    pad8 = lambda w: -(-w // 8) * 8  # noqa: E731
    jobs = (_Job * len(pairs))()
    keep, layout = [], []
    for b, p in enumerate(pairs):
        dD, dR = p.XD.shape[1], p.XR.shape[1]
        wa, wc = sum(m.shape[1] for m in p.to_r), sum(m.shape[1] for m in p.to_d)
        s1 = pad8(wa)  # G_R⁻¹ columns, then G_D⁻¹ ones, each group of 8 whole
        s2 = s1 + pad8(wc)
        kp = -(-s2 // 16) * 16
        srcs, cols = [], []
        for group, off in ((p.to_r, 0), (p.to_d, s1)):
            for m in group:
                srcs.append(m), cols.append(off)
                off += m.shape[1]
        blocks = (_Block * len(srcs))()
        for i, (m, col) in enumerate(zip(srcs, cols)):
            m = np.asarray(m)
            size = m.itemsize
            if m.dtype not in (np.float64, np.float32) or any(st % size for st in m.strides):
                m = np.ascontiguousarray(m, dtype=np.float64)
                size = m.itemsize
            blocks[i] = _Block(m.ctypes.data, m.strides[0] // size, m.strides[1] // size, m.shape[1], col,
                               int(m.dtype == np.float64))
            keep.append(m)
        M = np.empty((dD, kp), np.float32)  # filled by the kernels from the blocks
        Y = np.empty(kp * n, np.float32)
        out = np.empty((dR, kp), np.float32)
        outA, outC = np.empty((dR, wa), np.float32), np.empty((wc, dR), np.float32)
        jobs[b] = _Job(p.XD.ctypes.data, dD, p.XD.strides[0] // 4, p.XR.ctypes.data, dR, p.XR.strides[0] // 4,
                       p.PR.ctypes.data, p.PD.ctypes.data, M.ctypes.data, kp, s1 // 8, s2 // 8,
                       Y.ctypes.data, out.ctypes.data, outA.ctypes.data, outC.ctypes.data, wa, wc,
                       ctypes.addressof(blocks), len(srcs))
        keep += [M, Y, out, blocks]
        layout.append((outA, [m.shape[1] for m in p.to_r], outC, [m.shape[1] for m in p.to_d]))
    if lib.cmdv_fold_batch(jobs, len(pairs), n, nthreads) != 0:
        raise FoldKernelError("fold kernels could not allocate their task counters")
    results = []
    for outA, widths_a, outC, widths_c in layout:
        bounds_a, bounds_c = np.cumsum([0] + widths_a), np.cumsum([0] + widths_c)
        results.append([outA[:, a:b] for a, b in zip(bounds_a[:-1], bounds_a[1:])]
                       + [outC[a:b] for a, b in zip(bounds_c[:-1], bounds_c[1:])])
    return results


def fold_batch(pairs: Sequence[PairFold]) -> list[list[np.ndarray]] | None:
    """Fold every pair in one native call → per pair, float32 ``[d_R, w]`` arrays for ``to_r`` then
    ``[w, d_R]`` arrays for ``to_d`` (in order); ``None`` when the kernels are unavailable, a pair does not :func:`suits`
    them, the pairs' prompt counts differ, or the call could not start (the caller then uses numpy)."""
    lib = _lib()
    if lib is None or not pairs or not all(suits(p) for p in pairs):
        return None
    if len({p.XD.shape[0] for p in pairs}) != 1:
        return None
    try:
        return _fold_batch(lib, pairs, threads())
    except FoldKernelError as exc:  # the kernels could not allocate their task counters: numpy folds instead
        _REASON.append(str(exc))
        return None
