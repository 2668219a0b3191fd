"""``cmdv doctor``: what this machine is and what the engines will do on it — for bug reports.

Prints ``key: value`` lines (or ``--json``): CPU model and flags, llama.cpp's
version and system info, whether model loads use llama.cpp's extra buffer types
(and why: :func:`commandv.runtime.cpu.extra_buffers`), thread counts, ONNX
Runtime and its providers, cache folders and their free space, and whether the
native parts (edit callback, fold kernels, crash notes) compile and load here.
Every probe is guarded: a missing optional package is reported, never raised.

Call as ``cmdv doctor`` or, in code, ``collect()`` → ``dict[str, str]``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import sys
from typing import Callable

import typer

from commandv.runtime.terminal import safe_text


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _guard(fn: Callable[[], str]) -> str:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a probe that fails is itself the finding
        return f"unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"


def _llama_system_info() -> str:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python not installed"
    import llama_cpp

    raw = llama_cpp.llama_print_system_info()
    return (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)).strip()


def _extra_buffers() -> str:
    from commandv.runtime.cpu import extra_buffers

    return extra_buffers()[1]


def _threads() -> str:
    n = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = n
    return f"{usable} usable of {n} logical CPUs; llama.cpp engine and capture default to {usable}"


def _onnxruntime() -> str:
    if importlib.util.find_spec("onnxruntime") is None:
        return "not installed"
    import onnxruntime

    return f"{onnxruntime.__version__}; providers {', '.join(onnxruntime.get_available_providers())}"


def _space(path) -> str:
    from pathlib import Path

    p = Path(path)
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    return f"{p} ({'exists' if p.exists() else 'not created yet'}; {free / 2**30:.1f} GiB free)"


def _native_core() -> str:
    from commandv.runtime.native import build

    core = build.load()
    return f"ok ({core.path.name})" if core else f"not used: {build.unavailable_reason()}"


def _fold_kernels() -> str:
    from commandv.exporter.transfer import fold_native

    return "ok (self-test passed)" if fold_native.available() else f"not used: {fold_native.unavailable_reason()}"


def _crash_notes() -> str:
    from commandv.runtime import crash

    crash.enable()
    return crash.status()


def collect() -> dict[str, str]:
    """Every doctor line as ``{name: value}`` (strings; probes that fail say so in their value)."""
    from commandv.runtime import __version__
    from commandv.runtime.cpu import cpu_info
    from commandv.runtime.paths import cache_home, models_dir, profiles_dir

    info = cpu_info()
    return {
        "commandv": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "cpu": f"{info.model} ({info.machine})",
        "cpu_flags": " ".join(sorted(info.flags)) or "unknown",
        "cpu_amx": "yes" if info.has_amx else "no",
        "threads": _threads(),
        "llama_cpp_python": _version("llama_cpp_python"),
        "llama_cpp_system_info": _guard(_llama_system_info),
        "llama_extra_buffer_types": _guard(_extra_buffers),
        "onnxruntime": _guard(_onnxruntime),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "cache_home": _guard(lambda: _space(cache_home())),
        "models_dir": _guard(lambda: _space(models_dir())),
        "profiles_dir": _guard(lambda: _space(profiles_dir())),
        "native_edit_callback": _guard(_native_core),
        "native_fold_kernels": _guard(_fold_kernels),
        "crash_reports": _guard(_crash_notes),
        "environment": " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                                if k.startswith(("COMMANDV_", "LLAMA_", "OMP_", "OPENBLAS_"))) or "(no COMMANDV_/LLAMA_ variables)",
    }


def doctor_cmd(as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Print the machine, llama.cpp build, engine settings and native parts: paste this into a bug report."""
    lines = collect()
    if as_json:
        typer.echo(json.dumps(lines, indent=1, ensure_ascii=True))
        return
    width = max(map(len, lines))
    for k, v in lines.items():
        typer.echo(f"{k + ':':<{width + 1}} {safe_text(v)}")
