"""Build ``runtime/native`` (the C core, pack reader, session and host programs) with CMake for tests.

Compiled against the headers and shared libraries that llama-cpp-python installs (its ``include/`` and
``llama_cpp/lib/``), like ``runtime/native/build.py`` does for the Python runtime's callback. Builds are
cached per pytest session (one per configuration), so several test modules share them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "runtime" / "native"
ANDROID = ROOT / "android_demo"
_BUILDS: dict[tuple, Path] = {}


def llama_dirs() -> tuple[Path, Path] | None:
    """(include dir with llama.h / gguf.h, lib dir with libllama / libggml-base) of llama-cpp-python, or None."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    pkg = Path(spec.origin).parent
    for inc in (pkg.parent / "include", pkg / "include"):
        if (inc / "llama.h").is_file() and (inc / "gguf.h").is_file():
            return inc, pkg / "lib"
    return None


def compiler() -> str | None:
    for c in ([os.environ["CC"]] if os.environ.get("CC") else []) + ["cc", "gcc", "clang"]:
        if shutil.which(c):
            return shutil.which(c)
    return None


def missing_toolchain() -> str | None:
    """Why the native build cannot run here (None when it can)."""
    if shutil.which("cmake") is None:
        return "cmake not found"
    if compiler() is None:
        return "no C compiler (cc/gcc/clang) found"
    if llama_dirs() is None:
        return "llama-cpp-python with headers (include/llama.h, gguf.h) not installed"
    return None


def build(dest: Path, sanitize: bool = False, targets: tuple[str, ...] = ()) -> Path:
    """Configure and build into ``dest`` (or reuse this session's build of the same configuration).

    ``sanitize``: -fsanitize=address,undefined. ``targets``: only these (default: all). Returns the build dir.
    """
    key = (sanitize, targets)
    if key in _BUILDS:
        return _BUILDS[key]
    inc, lib = llama_dirs()
    cfg = ["cmake", "-S", str(NATIVE), "-B", str(dest), f"-DLLAMA_INCLUDE_DIR={inc}", f"-DLLAMA_LIB_DIR={lib}",
           f"-DCMAKE_BUILD_TYPE={'RelWithDebInfo' if sanitize else 'Release'}",
           f"-DCMDV_SANITIZE={'ON' if sanitize else 'OFF'}", f"-DCMAKE_C_COMPILER={compiler()}"]
    _run(cfg)
    cmd = ["cmake", "--build", str(dest), "-j2"]
    for t in targets:
        cmd += ["--target", t]
    _run(cmd)
    _BUILDS[key] = dest
    return dest


def _run(cmd: list[str]) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{(p.stdout + p.stderr)[-4000:]}")
