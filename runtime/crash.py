"""Native crashes that say what was running, instead of a bare "Segmentation fault".

The CLI calls :func:`enable` once: Python's :mod:`faulthandler` prints the
Python traceback of every thread on SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGABRT, and a
small C handler (``runtime/native/crash_handler.c``, compiled on first use like the
edit callback) writes one line before it naming the signal and the operation
noted last. Code that calls into llama.cpp where a crash is likely wraps the
call in :func:`operation`; outside the CLI (no :func:`enable`) it costs a string
format.

Call as::

    crash.enable()                                   # in the CLI's main()
    with crash.operation(f"capturing hidden states of {model.path.name}"):
        ...llama_decode...
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import sys
from pathlib import Path
from typing import Iterator

SOURCE = Path(__file__).resolve().parent / "native" / "crash_handler.c"
CFLAGS = ("-std=c11", "-O2", "-fPIC", "-shared", "-Wall")

_state: dict = {"lib": None, "enabled": False, "why": None, "stack": []}


def _build() -> Path:
    """Compile ``crash_handler.c`` into the native cache (once per source/compiler); returns the library path."""
    import subprocess

    from commandv.runtime.atomic import atomic_path
    from commandv.runtime.native.build import NativeBuildError, cached_library_path, toolchain

    cc = toolchain(NativeBuildError)
    target = cached_library_path("cmdv_crash", (SOURCE.read_bytes(), cc.encode(), " ".join(CFLAGS).encode(),
                                                sys.platform.encode()))
    if target.is_file():
        return target
    with atomic_path(target, suffix=target.suffix) as tmp:
        cmd = [cc, *CFLAGS, str(SOURCE), "-o", str(tmp)]
        if sys.platform == "darwin":
            cmd[cmd.index("-shared")] = "-dynamiclib"
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise NativeBuildError(f"compiling {SOURCE.name} failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return target


def enable() -> bool:
    """Turn crash reports on for this process (faulthandler + the C note handler); idempotent.

    Returns True when the operation notes are active, False when only faulthandler's traceback is (no compiler,
    not Linux/macOS, or ``COMMANDV_NATIVE=0``; :func:`status` says why).
    """
    if _state["enabled"]:
        return _state["lib"] is not None
    _state["enabled"] = True
    with contextlib.suppress(Exception):  # no usable stderr (e.g. a GUI host): nothing to report to
        faulthandler.enable(file=sys.__stderr__ or sys.stderr, all_threads=True)
    try:
        from commandv.runtime.native.build import disabled_by_env

        if disabled_by_env():
            raise OSError("disabled by COMMANDV_NATIVE=0")
        lib = ctypes.CDLL(str(_build()))
        lib.cmdv_crash_note.argtypes, lib.cmdv_crash_note.restype = [ctypes.c_char_p], None
        lib.cmdv_crash_install.argtypes, lib.cmdv_crash_install.restype = [], ctypes.c_int
        if lib.cmdv_crash_install() != 0:
            raise OSError("sigaction failed")
        _state["lib"] = lib
    except Exception as exc:  # noqa: BLE001 - crash notes are a nicety: never the reason a command fails
        _state["why"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return _state["lib"] is not None


def status() -> str:
    """One line for ``cmdv doctor``: whether crash reports name the running operation."""
    if not _state["enabled"]:
        return "off (not enabled in this process)"
    if _state["lib"] is None:
        return f"faulthandler traceback only ({_state['why']})"
    return "on (faulthandler traceback + the operation that was running)"


def _note(text: str) -> None:
    lib = _state["lib"]
    if lib is not None:
        lib.cmdv_crash_note(text.encode("utf-8", "replace"))


@contextlib.contextmanager
def operation(label: str) -> Iterator[None]:
    """Note ``label`` (e.g. ``"decoding a prompt batch of smollm2.gguf"``) as the running operation for the block;
    the previous note is restored after it. Thread-safe enough for reports: the last noted label wins."""
    stack = _state["stack"]
    stack.append(label)
    _note(label)
    try:
        yield
    finally:
        stack.remove(label)
        _note(stack[-1] if stack else "")
