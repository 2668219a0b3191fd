"""``cmdv doctor``: every line present, values agree with independent sources, no probe raises."""

from __future__ import annotations

import json
import os
import platform

from typer.testing import CliRunner

from commandv.exporter.cli.main import app

KEYS = {"commandv", "python", "platform", "cpu", "cpu_flags", "cpu_amx", "threads", "llama_cpp_python",
        "llama_cpp_system_info", "llama_extra_buffer_types", "onnxruntime", "cache_home", "models_dir",
        "profiles_dir", "native_edit_callback", "native_fold_kernels", "crash_reports", "environment"}


def test_doctor_json(tmp_home):
    res = CliRunner().invoke(app, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert set(d) >= KEYS
    assert d["python"].startswith(platform.python_version())
    assert str(tmp_home) in d["cache_home"] and "GiB free" in d["cache_home"]
    if os.path.exists("/proc/cpuinfo"):
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
        assert d["cpu_amx"] == ("yes" if "amx_tile" in text or "amx_int8" in text or "amx_bf16" in text else "no")
        first_flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                            if ln.lower().startswith(("flags", "features"))), [])
        assert set(d["cpu_flags"].split()) == set(first_flags)
    if d["llama_cpp_python"] != "not installed":
        assert "CPU" in d["llama_cpp_system_info"]
        assert d["llama_extra_buffer_types"].startswith(("on:", "off:"))
    assert not any(v.startswith("unavailable (") for k, v in d.items() if k not in ("onnxruntime",)), d


def test_doctor_plain_lines(tmp_home, monkeypatch):
    monkeypatch.setenv("COMMANDV_EXTRA_BUFTS", "0\x1b[2K")
    res = CliRunner().invoke(app, ["doctor"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("commandv:") and any(ln.startswith("cpu_flags:") for ln in lines)
    # a setting that cannot be understood is reported in its line, escaped, never raised
    assert "\x1b" not in res.output and "\\x1b[2K" in res.output
    extra = next(ln for ln in lines if ln.startswith("llama_extra_buffer_types:"))
    assert "not understood" in extra
