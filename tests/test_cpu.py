"""runtime.cpu: the extra-buffer rule (AMX off) on simulated CPUs, the same rule in C, and model loads obeying it."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess

import pytest

from commandv.runtime import cpu
from commandv.runtime.cpu import CpuInfo, CpuSettingError, extra_buffers
from tests import native_build

SAPPHIRE_RAPIDS = ("fpu sse2 avx avx2 avx512f avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8").split()
EPYC = "fpu sse2 avx avx2 fma f16c avx512f".split()
NEOVERSE = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp".split()


def _cpu(flags) -> CpuInfo:
    return CpuInfo(model="test", flags=frozenset(flags), machine="x86_64")


@pytest.mark.parametrize("flags, use", [(SAPPHIRE_RAPIDS, False), (EPYC, True), (NEOVERSE, True), ((), True),
                                        (["amx_tile"], False), (["amx_int8"], False), (["amx_bf16"], False)])
def test_rule_on_simulated_cpus(flags, use):
    got, why = extra_buffers(_cpu(flags), env={})
    assert got is use
    assert ("the CPU has AMX" in why) is (not use)


@pytest.mark.parametrize("value, use", [("1", True), ("on", True), (" YES ", True), ("true", True),
                                        ("0", False), ("off", False), ("No", False), ("auto", None), ("", None)])
def test_environment_overrides_the_rule(value, use):
    for flags in (SAPPHIRE_RAPIDS, EPYC):
        rule = not any(f.startswith("amx") for f in flags)
        got, why = extra_buffers(_cpu(flags), env={cpu.ENV_EXTRA_BUFTS: value})
        assert got is (rule if use is None else use)
        if use is not None:
            assert cpu.ENV_EXTRA_BUFTS in why


def test_unknown_environment_value_is_one_line_error():
    with pytest.raises(CpuSettingError, match="COMMANDV_EXTRA_BUFTS='maybe' is not understood"):
        extra_buffers(_cpu(EPYC), env={cpu.ENV_EXTRA_BUFTS: "maybe"})


def test_cpuinfo_parsing_x86_and_arm():
    x86 = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu amx_tile avx2\n\nprocessor: 1\n"
    model, flags = cpu._parse_cpuinfo(x86)
    assert model == "Intel(R) Xeon(R) Platinum 8480+" and flags == {"fpu", "amx_tile", "avx2"}
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd asimddp\nCPU implementer\t: 0x41\n"
    assert cpu._parse_cpuinfo(arm)[1] == {"fp", "asimd", "asimddp"}


def test_build_key_tells_cpus_apart(monkeypatch):
    """The cache key of ``-march=native`` builds: equal for the same CPU, different for another one."""
    a, b = _cpu(EPYC), _cpu(SAPPHIRE_RAPIDS)
    assert a.build_key != b.build_key
    assert a.build_key == CpuInfo(model="test", flags=frozenset(reversed(EPYC)), machine="x86_64").build_key
    assert CpuInfo(model="other", flags=a.flags, machine="x86_64").build_key != a.build_key
    assert CpuInfo(model="test", flags=a.flags, machine="aarch64").build_key != a.build_key
    assert CpuInfo(model="test", flags=a.flags, machine="x86_64", ident="cpu part=0xd0c").build_key != a.build_key
    monkeypatch.setattr(cpu, "cpu_info", lambda: b)
    assert cpu.build_key() == b.build_key


def test_cpuinfo_identity_lines():
    arm = ("processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\n"
           "CPU part\t: 0xd0c\nCPU revision\t: 1\n\nprocessor\t: 1\nCPU part\t: 0xd40\n")
    assert cpu._parse_ident(arm) == ("cpu implementer=0x41;cpu architecture=8;cpu variant=0x1;cpu part=0xd0c;"
                                     "cpu revision=1")
    x86 = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7B13\nstepping\t: 0\n"
    assert cpu._parse_ident(x86) == "cpu family=25;model=1;stepping=0"


def test_this_cpu_matches_lscpu():
    """The flags read here are the ones ``lscpu`` reports (an independent reader of the same kernel data)."""
    if not os.path.exists("/proc/cpuinfo") or not __import__("shutil").which("lscpu"):
        pytest.skip("no /proc/cpuinfo or lscpu")
    out = subprocess.run(["lscpu"], capture_output=True, text=True, env=dict(os.environ, LC_ALL="C")).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("Flags:")), None)
    if line is None:
        pytest.skip("lscpu prints no Flags line here")
    assert cpu.cpu_info().flags == frozenset(line.split(":", 1)[1].split())


# ------------------------------------------------------------------ model loads obey the rule

@pytest.mark.llama
def test_llama_model_loads_without_extra_buffers_on_amx(tiny_gguf, monkeypatch):
    pytest.importorskip("llama_cpp")
    from commandv.runtime.engines.llama.lowlevel import LlamaModel, ModelLoadError

    monkeypatch.delenv(cpu.ENV_EXTRA_BUFTS, raising=False)
    monkeypatch.setattr(cpu, "cpu_info", lambda: _cpu(SAPPHIRE_RAPIDS))
    with LlamaModel(tiny_gguf) as m:
        assert m.extra_buffers is False and "AMX" in m.extra_buffers_reason
    monkeypatch.setattr(cpu, "cpu_info", lambda: _cpu(EPYC))
    with LlamaModel(tiny_gguf) as m:
        assert m.extra_buffers is True
    monkeypatch.setenv(cpu.ENV_EXTRA_BUFTS, "0")
    with LlamaModel(tiny_gguf) as m:
        assert m.extra_buffers is False
    monkeypatch.setenv(cpu.ENV_EXTRA_BUFTS, "sometimes")
    with pytest.raises(ModelLoadError, match="not understood"):
        LlamaModel(tiny_gguf)


def test_llama_params_carry_the_field():
    """The pinned llama-cpp-python's llama_model_params has use_extra_bufts (else the setting would be ignored)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    assert "use_extra_bufts" in dict(llama_cpp.llama_model_params._fields_)


# ------------------------------------------------------------------ the C session applies the same rule

@pytest.fixture(scope="module")
def native(tmp_path_factory):
    why = native_build.missing_toolchain()
    if why:
        pytest.skip(f"native build unavailable: {why}")
    build = native_build.build(tmp_path_factory.mktemp("native_cpu"))
    L = ctypes.CDLL(str(build / "libcmdv.so"))
    L.cmdv_extra_bufts_decide.argtypes = [ctypes.c_int32, ctypes.c_char_p, ctypes.c_int32]
    L.cmdv_extra_bufts_decide.restype = ctypes.c_int32
    L.cmdv_cpu_has_amx.restype = ctypes.c_int32
    return build, L


def test_c_rule_equals_python_rule(native):
    _, L = native
    for amx, flags in ((1, SAPPHIRE_RAPIDS), (0, EPYC)):
        for value in (None, "", "auto", "1", "on", " YES ", "0", "off", "No", "maybe", "x" * 40):
            env = {} if value is None else {cpu.ENV_EXTRA_BUFTS: value}
            try:
                want = int(extra_buffers(_cpu(flags), env=env)[0])
            except CpuSettingError:
                want = -1
            got = L.cmdv_extra_bufts_decide(-1, None if value is None else value.encode(), amx)
            assert got == want, (amx, value)
        assert L.cmdv_extra_bufts_decide(1, b"0", amx) == 1 and L.cmdv_extra_bufts_decide(0, b"1", amx) == 0


def test_c_cpuid_agrees_with_cpuinfo(native):
    _, L = native
    assert bool(L.cmdv_cpu_has_amx()) == cpu.cpu_info().has_amx


def test_c_header_uses_the_same_variable_name():
    header = (native_build.NATIVE / "cmdv_session.h").read_text()
    assert f'#define CMDV_ENV_EXTRA_BUFTS "{cpu.ENV_EXTRA_BUFTS}"' in header


@pytest.mark.llama
def test_host_program_reports_its_choice(native, tiny_gguf):
    build, _ = native
    exe = str(build / "cmdv_host_test")
    for value, want in (("0", 0), ("1", 1), (None, int(extra_buffers(env={})[0]))):
        env = {k: v for k, v in os.environ.items() if k != cpu.ENV_EXTRA_BUFTS}
        if value is not None:
            env[cpu.ENV_EXTRA_BUFTS] = value
        p = subprocess.run([exe, "--model", str(tiny_gguf), "--ids", "1,2,3", "--n-gen", "2"], capture_output=True,
                           env=env, timeout=120)
        out = json.loads(p.stdout)
        assert out["extra_bufts"] == want, (value, out)
    env[cpu.ENV_EXTRA_BUFTS] = "maybe"
    p = subprocess.run([exe, "--model", str(tiny_gguf), "--ids", "1,2,3"], capture_output=True, env=env, timeout=120)
    assert p.returncode != 0 and b"not understood" in p.stdout
