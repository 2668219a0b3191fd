"""Build and load the native edit callback ``cmdv_core.c`` (optional fast path).

On first use the C file is compiled with the system C compiler
(``$CC``, else ``cc``/``gcc``/``clang``) against the ggml headers and the
``libggml-base`` that llama-cpp-python installs, into
``cache_home()/native/cmdv_core-<hash>.so`` (atomic rename; the hash covers the
source, compiler, flags and ggml header, so a new llama-cpp-python rebuilds).

:func:`load` returns a :class:`NativeCore` or ``None`` when no compiler is
available, the build fails, or ``COMMANDV_NATIVE=0``; :func:`unavailable_reason`
then says why. Callers fall back to the Python callback.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from commandv.runtime.atomic import atomic_path
from commandv.runtime.edit.activations import ACT_IDS as _ACT_IDS
from commandv.runtime.errors import CommandVError
from commandv.runtime.paths import cache_home

SOURCE = Path(__file__).with_name("cmdv_core.c")
HEADER = SOURCE.with_name("cmdv_core.h")  # included by SOURCE (public API, shared with native apps)
CFLAGS = ("-std=c11", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-Wall")
"""No ``-march``/``-mcpu``: the library runs on any CPU of the machine architecture, so its cache key holds the
architecture (``platform.machine()``) but not the CPU identity. A build tuned with ``-march=native`` must put
:func:`commandv.runtime.cpu.build_key` in its key (as ``exporter/transfer/fold_native.py`` does)."""
ABI_VERSION = 1
ACT_IDS = _ACT_IDS
"""Activation name (canonical) → C activation id: derived from the one table, :mod:`commandv.runtime.edit.activations`."""

_REASON: list[str] = []


class NativeBuildError(CommandVError, RuntimeError):
    """The native callback library could not be compiled or loaded."""


def _llama_dirs() -> tuple[Path, Path]:
    """(include dir with ggml.h, lib dir with libggml-base) of the installed llama-cpp-python."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise NativeBuildError("llama-cpp-python is not installed")
    pkg = Path(spec.origin).parent
    lib_dir = Path(os.environ["LLAMA_CPP_LIB_PATH"]) if os.environ.get("LLAMA_CPP_LIB_PATH") else pkg / "lib"
    for inc in (pkg.parent / "include", pkg / "include"):
        if (inc / "ggml.h").is_file() and (inc / "ggml-backend.h").is_file():
            return inc, lib_dir
    raise NativeBuildError(f"ggml.h not found next to {pkg} (llama-cpp-python installed without headers?)")


def _ggml_base(lib_dir: Path) -> Path:
    from commandv.runtime.engines.llama.ggml_bindings import ggml_base_path  # the one lookup of libggml-base

    return ggml_base_path(lib_dir, NativeBuildError)


def disabled_by_env() -> bool:
    """True when ``COMMANDV_NATIVE`` says no (``0``/``false``/``no``/``off``): use the Python/numpy paths."""
    return os.environ.get("COMMANDV_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def compiler() -> str | None:
    """Path of the C compiler to use, or None."""
    cand = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for c in cand:
        p = shutil.which(c)
        if p:
            return p
    return None


def cached_library_path(stem: str, parts: Iterable[bytes]) -> Path:
    """``cache_home()/native/<stem>-<hash>.so`` (``.dylib`` on macOS); the hash covers every part
    (source, headers, compiler, flags, …), so a change to any of them builds a new library."""
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    ext = ".dylib" if sys.platform == "darwin" else ".so"
    return cache_home() / "native" / f"{stem}-{h.hexdigest()[:16]}{ext}"


def library_path() -> Path:
    """Where the built library for the current source / compiler / ggml lives."""
    inc, lib_dir = _llama_dirs()
    cc = compiler() or "none"
    return cached_library_path("cmdv_core", (SOURCE.read_bytes(), HEADER.read_bytes(), (inc / "ggml.h").read_bytes(),
                                             cc.encode(), " ".join(CFLAGS).encode(), str(lib_dir.resolve()).encode(),
                                             sys.platform.encode(), platform.machine().encode()))


def toolchain(error: type[Exception]) -> str:
    """The C compiler for a native build on this platform, or ``error`` saying why there is none."""
    if sys.platform not in ("linux", "darwin"):
        raise error(f"native build not supported on {sys.platform}")
    cc = compiler()
    if cc is None:
        raise error("no C compiler found (set CC or install cc/gcc/clang)")
    return cc


def build(force: bool = False) -> Path:
    """Compile ``cmdv_core.c`` (if not built yet) and return the library path; :class:`NativeBuildError` on failure."""
    cc = toolchain(NativeBuildError)
    inc, lib_dir = _llama_dirs()
    base = _ggml_base(lib_dir)
    target = library_path()
    if target.is_file() and not force:
        return target
    ext = target.suffix
    with atomic_path(target, suffix=ext) as tmp:
        cmd = [cc, *CFLAGS, f"-I{inc}", str(SOURCE), "-o", str(tmp), str(base), "-lm",
               f"-Wl,-rpath,{lib_dir.resolve()}"]
        if sys.platform == "darwin":
            cmd[cmd.index("-shared")] = "-dynamiclib"
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise NativeBuildError(f"compiling {SOURCE.name} failed: {' / '.join(tail)}")
    return target


@dataclass
class NativeCore:
    """The loaded library with prototypes set. ``eval_cb`` is the C callback's address."""

    lib: ctypes.CDLL
    path: Path

    @property
    def eval_cb(self) -> int:
        return ctypes.cast(self.lib.cmdv_eval_cb, ctypes.c_void_p).value


def _prototypes(L: ctypes.CDLL) -> None:
    p, i32, i64, f = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.POINTER(ctypes.c_float)
    pi = ctypes.POINTER(ctypes.c_int32)
    protos = {
        "cmdv_abi_version": ([], i32),
        "cmdv_tensor_struct_size": ([], ctypes.c_size_t),
        "cmdv_state_new": ([i32, i32], p),
        "cmdv_state_free": ([p], None),
        "cmdv_state_clear": ([p], None),
        "cmdv_state_add_entry": ([p, i32, i32, i32, f, f, f, i32, f, f, f, ctypes.c_double, pi, i32], i32),
        "cmdv_state_begin": ([p, i32, i32, pi, i32], i32),
        "cmdv_state_end": ([p], None),
        "cmdv_state_set_record": ([p, f, i32], None),
        "cmdv_state_n_applied": ([p], i64),
        "cmdv_state_n_entries": ([p], i32),
        "cmdv_state_error": ([p], ctypes.c_char_p),
        "cmdv_state_reset_error": ([p], None),
        "cmdv_apply_entry": ([p, i32, f, i32, i64], i32),
    }
    for name, (args, res) in protos.items():
        fn = getattr(L, name)
        fn.argtypes, fn.restype = args, res


def _check(core: NativeCore) -> None:
    from commandv.runtime.engines.llama import ggml_bindings as gb

    if core.lib.cmdv_abi_version() != ABI_VERSION:
        raise NativeBuildError(f"{core.path.name}: ABI version {core.lib.cmdv_abi_version()} != {ABI_VERSION}")
    want = gb.lib().ggml_tensor_overhead() - gb.GGML_OBJECT_SIZE
    got = core.lib.cmdv_tensor_struct_size()
    if got != want:
        raise NativeBuildError(f"ggml.h struct ggml_tensor is {got} bytes, the loaded libggml says {want}")


@functools.lru_cache(maxsize=1)
def _load_cached() -> NativeCore | None:
    if disabled_by_env():
        _REASON.append("disabled by COMMANDV_NATIVE=0")
        return None
    try:
        import llama_cpp.llama_cpp  # noqa: F401  -- libggml-base must be the process's instance

        path = build()
        core = NativeCore(ctypes.CDLL(str(path)), path)
        _prototypes(core.lib)
        _check(core)
        return core
    except (NativeBuildError, OSError) as exc:
        _REASON.append(str(exc))
        return None


def load() -> NativeCore | None:
    """The native core (built on first use), or None when unavailable (see :func:`unavailable_reason`)."""
    return _load_cached()


def unavailable_reason() -> str | None:
    """Why :func:`load` returned None (None if it did not)."""
    return _REASON[-1] if _REASON else None


if __name__ == "__main__":  # python -m commandv.runtime.native.build
    print(build(force="--force" in sys.argv))
