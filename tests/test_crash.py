"""runtime.crash: a native crash prints the signal, the running operation and the Python traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests import native_build

CRASH = textwrap.dedent("""
    import ctypes, sys
    from commandv.runtime import crash
    print("notes", crash.enable(), flush=True)
    with crash.operation("capturing hidden states of outer.gguf"):
        with crash.operation("decoding a test batch of model.gguf"):
            pass
        {inner}
""")


def _run(inner: str, home) -> subprocess.CompletedProcess:
    env = dict(os.environ, COMMANDV_HOME=str(home))
    return subprocess.run([sys.executable, "-c", CRASH.format(inner=inner)], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.skipif(sys.platform not in ("linux", "darwin"), reason="POSIX signals")
def test_segfault_names_the_operation(tmp_path):
    if native_build.compiler() is None:
        pytest.skip("no C compiler: crash notes unavailable (faulthandler only)")
    p = _run("ctypes.string_at(0)", tmp_path)  # a real invalid read inside native code
    assert p.stdout.startswith("notes True"), p.stdout + p.stderr
    assert p.returncode == -signal.SIGSEGV, p.returncode
    err = p.stderr
    # our line first, naming the signal and the innermost operation still running (the inner one has ended)
    assert "commandv: native crash, SIGSEGV" in err and "while capturing hidden states of outer.gguf" in err, err
    assert "decoding a test batch" not in err
    assert "cmdv doctor" in err
    # then faulthandler's Python traceback
    assert "Fatal Python error: Segmentation fault" in err and "File \"<string>\"" in err, err
    assert err.index("commandv: native crash") < err.index("Fatal Python error")


@pytest.mark.skipif(sys.platform not in ("linux", "darwin"), reason="POSIX signals")
def test_abort_and_no_compiler_fallback(tmp_path):
    if native_build.compiler() is None:
        pytest.skip("no C compiler")
    p = _run("import os; os.abort()", tmp_path)
    assert p.returncode == -signal.SIGABRT and "SIGABRT" in p.stderr and "outer.gguf" in p.stderr, p.stderr
    env_home = tmp_path / "nocc"
    env = dict(os.environ, COMMANDV_HOME=str(env_home), COMMANDV_NATIVE="0")
    q = subprocess.run([sys.executable, "-c", CRASH.format(inner="ctypes.string_at(0)")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert q.stdout.startswith("notes False") and q.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in q.stderr and "commandv: native crash" not in q.stderr


def test_operation_without_enable_is_harmless():
    from commandv.runtime import crash

    with crash.operation("a"):
        with crash.operation("b"):
            pass
    assert crash._state["stack"] == []
