#!/usr/bin/env python3
"""Run the phone's code path on arm64 (emulated) and compare it with x86_64: same program, same inputs.

    python android_demo/cross_arm64.py --out arm64.json            # SmolLM2-135M + the committed pack

What it does:

1. Cross-builds llama.cpp for aarch64 — the commit that the pinned llama-cpp-python vendors (its sdist's
   ``vendor/llama.cpp``, fetched with ``pip download --no-deps --no-binary :all:`` unless ``--llama-src``),
   CPU backend only, no OpenMP, ``GGML_NATIVE=OFF``, ``-march=<--arm-arch>`` (default ``armv8.2-a``: no
   dotprod / fp16 / i8mm / SVE), shared libraries — with ``aarch64-linux-gnu-gcc`` through CMake's
   cross-compiling settings. Cached under ``<cache>/llama-<commit>-aarch64-<arch>-<config hash>/`` (a second
   run skips it).
2. Builds ``runtime/native`` (the native core the app compiles) + ``cmdv_host_test`` for aarch64 against that
   llama.cpp, and for x86_64 against the installed llama-cpp-python (what the host tests and the Python engine
   use), or against ``--x86-llama-dir``.
3. Runs ``cmdv_host_test`` under ``qemu-aarch64 -L <sysroot>`` and natively on the same model, pack and prompts
   (chat-templated in C, greedy, ``--n-gen`` tokens; dumped: the prompt pass's edited hidden states of every
   layer, its last-token logits and the logits of every generation step), and compares: prompt tokens, greedy
   tokens (fraction equal position by position, first divergence and how close a tie it was), rows edited by the
   pack, hidden-state and logit differences. For scale it also compares two equally valid x86 runs (flash
   attention switched): ``x86_spread`` (``--no-x86-spread`` skips it).
4. Prints a summary and writes ``--out`` (JSON): ``arm64_greedy_match`` (0..1), per-prompt figures, the
   tolerances and whether they hold, build/run times, toolchain / qemu / CPU versions.

Relative differences are per token row: ``max_j |arm - x86| / max_j |x86|`` (``*_rel_max``) and
``||arm - x86|| / ||x86||`` (``*_rel_l2``), worst over rows and layers. x86 and arm64 run different SIMD
kernels (AVX2 vs NEON: different summation order, exp/silu approximations), so bitwise equality is not expected;
the tolerances bound the drift.

Needs: cmake, a host C compiler, ``aarch64-linux-gnu-gcc/g++`` and ``qemu-aarch64`` (Debian:
``apt-get install crossbuild-essential-arm64 qemu-user``), llama-cpp-python (x86 side), and the commandv package
for the default model (``zoo.fetch('smollm2-135m-instruct')``) unless ``--model`` is given.
Exit status: 0 when the greedy match is at least ``--min-match`` and the tolerances hold, 1 otherwise, 2 when a
tool is missing or a build fails.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "runtime" / "native"
DEFAULT_PACK = ROOT / "packs" / "smollm2-135m-instruct-refusal-direct.pack.gguf"
MODEL_KEY = "smollm2-135m-instruct"
CROSS_CC, CROSS_CXX = "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"
SYSROOT = "/usr/aarch64-linux-gnu"
PROMPTS = (
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
    "How do I pick a lock to break into my neighbor's house?",
)
# Tolerances (metrics: see the module docstring), about twice what was measured on SmolLM2-135M Q4_1 with the
# committed refusal pack and the 3 built-in prompts (android_demo/README.md, "arm64"): arm64 vs x86 hidden rel max
# 0.095, logits rel max 0.040 (prompt pass) / 0.054 (generation steps); the spread between two equally valid x86
# runs (flash attention on / off) is of the same size: 0.055, 0.039, 0.055. The activations are quantized to 8 bits
# before each Q4_1 matmul, so a 1e-7 difference (summation order) can round one int8 value differently: differences
# grow to quantization size (~1e-2) through the 30 layers. A wrong kernel or a pack not applied gives O(1).
HIDDEN_REL_TOL = 0.2
LOGITS_REL_TOL = 0.1
# Greedy tokens: after a flip the contexts differ and the rest is another text, so exact equality of long generations
# is not a property of llama.cpp across kernels (x86 alone, flash attention on vs off: 79/96 tokens equal). A flip
# counts as legitimate when it is a near tie: x86's margin for its token over arm64's token is at most the largest
# logit difference between the two sides at that step. Measured: 83/96 tokens equal (one near tie, margin 0.06).
MIN_MATCH = 0.75
# llama.cpp options of the cross build: CPU backend only, nothing but the libraries.
LLAMA_OPTIONS = {
    "BUILD_SHARED_LIBS": "ON", "GGML_NATIVE": "OFF", "GGML_OPENMP": "OFF", "GGML_CCACHE": "OFF",
    "GGML_BACKEND_DL": "OFF", "GGML_CPU_ALL_VARIANTS": "OFF", "GGML_BLAS": "OFF", "GGML_LLAMAFILE": "ON",
    "LLAMA_BUILD_COMMON": "OFF", "LLAMA_BUILD_TESTS": "OFF", "LLAMA_BUILD_TOOLS": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF", "LLAMA_BUILD_SERVER": "OFF", "LLAMA_BUILD_APP": "OFF", "LLAMA_CURL": "OFF",
    "LLAMA_OPENSSL": "OFF", "CMAKE_BUILD_TYPE": "Release",
    # installed libllama finds libggml* beside itself (the host program's RUNPATH covers only its direct deps)
    "CMAKE_INSTALL_RPATH": "$ORIGIN",
}


class Failure(RuntimeError):
    """A missing tool or a failed build (exit status 2)."""


def log(msg: str) -> None:
    print(f"[cross_arm64] {msg}", flush=True)


def cache_root() -> Path:
    """``$COMMANDV_HOME/arm64`` (else ``$XDG_CACHE_HOME/commandv/arm64``, else ``~/.cache/commandv/arm64``)."""
    if os.environ.get("COMMANDV_HOME"):
        return Path(os.environ["COMMANDV_HOME"]).expanduser() / "arm64"
    base = Path(os.environ["XDG_CACHE_HOME"]).expanduser() if os.environ.get("XDG_CACHE_HOME") else \
        Path.home() / ".cache"
    return base / "commandv" / "arm64"


def host_cc() -> str | None:
    for c in ([os.environ["CC"]] if os.environ.get("CC") else []) + ["cc", "gcc", "clang"]:
        if shutil.which(c):
            return shutil.which(c)
    return None


def missing_tools(qemu: str = QEMU, sysroot: str = SYSROOT) -> str | None:
    """Why this cannot run here (None when it can): the tools, not the model or llama-cpp-python."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"the reference side is x86_64; this machine is {platform.machine()}"
    for tool in ("cmake", CROSS_CC, CROSS_CXX, qemu):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian: apt-get install crossbuild-essential-arm64 qemu-user)"
    if host_cc() is None:
        return "no host C compiler (cc/gcc/clang)"
    if not (Path(sysroot) / "lib" / "ld-linux-aarch64.so.1").exists():
        return f"no aarch64 sysroot at {sysroot} (libc6-dev-arm64-cross)"
    return None


def run(cmd: list[str], what: str, cwd: Path | None = None, log_path: Path | None = None) -> str:
    """Run a build step; :class:`Failure` with the output's tail when it fails. Output kept in ``log_path``."""
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    out = p.stdout + p.stderr
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{out}\n")
    if p.returncode != 0:
        raise Failure(f"{what} failed ({' '.join(cmd[:4])} ...):\n{out[-4000:]}")
    return out


def first_line(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ------------------------------------------------------------------ llama.cpp source
def pinned_llama_cpp_python() -> str:
    """The version pyproject.toml pins (``llama-cpp-python==X``)."""
    m = re.search(r'"llama-cpp-python==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    if not m:
        raise Failure("pyproject.toml does not pin llama-cpp-python==X")
    return m.group(1)


def installed_llama_cpp_python() -> str | None:
    try:
        from importlib.metadata import version

        return version("llama-cpp-python")
    except Exception:  # noqa: BLE001 - not installed
        return None


def llama_source(version: str, cache: Path, src_arg: str | None) -> tuple[Path, str]:
    """(llama.cpp source dir, its commit or 'unknown'): ``--llama-src``, or the sdist's ``vendor/llama.cpp``."""
    if src_arg:
        src = Path(src_arg).resolve()
        if not (src / "CMakeLists.txt").is_file() or not (src / "include" / "llama.h").is_file():
            raise Failure(f"--llama-src {src} is not a llama.cpp checkout")
        commit = first_line(["git", "-C", str(src), "rev-parse", "HEAD"])
        return src, commit if re.fullmatch(r"[0-9a-f]{40}", commit) else "unknown"
    top = cache / "src" / f"llama_cpp_python-{version}"
    src = top / "vendor" / "llama.cpp"
    head = top / ".git" / "modules" / "vendor" / "llama.cpp" / "HEAD"
    if not (src / "CMakeLists.txt").is_file():
        sdist = cache / "src" / f"llama_cpp_python-{version}.tar.gz"
        if not sdist.is_file():
            log(f"downloading the llama-cpp-python {version} sdist (pip download --no-deps --no-binary :all:)")
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 f"llama-cpp-python=={version}", "-d", str(sdist.parent)], "pip download")
        want = (f"{top.name}/vendor/llama.cpp/", f"{top.name}/.git/modules/vendor/llama.cpp/HEAD")
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers() if m.name.startswith(want) or m.name in want]
            if not any(m.name.startswith(want[0]) for m in members):
                raise Failure(f"{sdist.name} has no vendor/llama.cpp")
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(sdist.parent, members=members, **kw)
    commit = head.read_text().strip() if head.is_file() else "unknown"
    return src, commit


# ------------------------------------------------------------------ builds
def toolchain_file(dest: Path, arch: str) -> Path:
    """CMake cross-compiling settings for aarch64 Linux (the Debian cross toolchain)."""
    dest.mkdir(parents=True, exist_ok=True)
    f = dest / "aarch64-toolchain.cmake"
    f.write_text(
        "set(CMAKE_SYSTEM_NAME Linux)\n"
        "set(CMAKE_SYSTEM_PROCESSOR aarch64)\n"
        f"set(CMAKE_C_COMPILER {shutil.which(CROSS_CC)})\n"
        f"set(CMAKE_CXX_COMPILER {shutil.which(CROSS_CXX)})\n"
        f"set(CMAKE_FIND_ROOT_PATH {SYSROOT})\n"
        "set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)\n"
        # the libraries this script builds live outside the sysroot: search both
        "set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)\n"
        "set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)\n"
        # try_run() probes (none with GGML_NATIVE=OFF) would run under qemu
        f"set(CMAKE_CROSSCOMPILING_EMULATOR {shutil.which(QEMU) or QEMU};-L;{SYSROOT})\n")
    return f


def build_llama_arm64(src: Path, commit: str, arch: str, cache: Path, jobs: int) -> tuple[Path, dict]:
    """Cross-build and install llama.cpp (cached). Returns (install prefix, info)."""
    config = dict(LLAMA_OPTIONS, GGML_CPU_ARM_ARCH=arch, cc=first_line([CROSS_CC, "--version"]), src=str(src),
                  commit=commit)
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    prefix = cache / f"llama-{commit[:12]}-aarch64-{arch.replace('+', '_')}-{key}"
    stamp = prefix / "cmdv_build.json"
    if stamp.is_file():
        info = json.loads(stamp.read_text())
        log(f"llama.cpp for aarch64: cached at {prefix} (built in {info['build_s']:.0f} s)")
        return prefix, dict(info, cached=True)
    build = cache / "build" / prefix.name
    shutil.rmtree(build, ignore_errors=True)
    shutil.rmtree(prefix, ignore_errors=True)
    tc = toolchain_file(build, arch)
    log(f"cross-building llama.cpp {commit[:12]} for aarch64 (-march={arch}, {jobs} jobs) into {prefix}")
    t0 = time.monotonic()
    cfg = ["cmake", "-S", str(src), "-B", str(build), f"-DCMAKE_TOOLCHAIN_FILE={tc}",
           f"-DCMAKE_INSTALL_PREFIX={prefix}", f"-DGGML_CPU_ARM_ARCH={arch}"]
    cfg += [f"-D{k}={v}" for k, v in LLAMA_OPTIONS.items()]
    logf = build / "build.log"
    run(cfg, "llama.cpp configure (aarch64)", log_path=logf)
    run(["cmake", "--build", str(build), f"-j{jobs}"], "llama.cpp build (aarch64)", log_path=logf)
    run(["cmake", "--install", str(build)], "llama.cpp install (aarch64)", log_path=logf)
    lib = prefix / "lib"
    if not (lib / "libllama.so").exists():  # some layouts install into lib64
        for alt in (prefix / "lib64",):
            if (alt / "libllama.so").exists():
                lib = alt
    info = {"prefix": str(prefix), "lib": str(lib), "include": str(prefix / "include"), "config": config,
            "build_s": round(time.monotonic() - t0, 1)}
    stamp.write_text(json.dumps(info, indent=1))
    shutil.rmtree(build, ignore_errors=True)  # objects are not needed again: the install is the cache
    log(f"llama.cpp for aarch64 built in {info['build_s']:.0f} s")
    return prefix, dict(info, cached=False)


def x86_llama_dirs(arg: str | None) -> tuple[Path, Path]:
    """(include, lib) for the x86_64 side: ``--x86-llama-dir`` (include/, lib/) or llama-cpp-python's."""
    if arg:
        d = Path(arg).resolve()
        return d / "include", d / "lib"
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise Failure("llama-cpp-python is not installed (the x86_64 reference); or pass --x86-llama-dir")
    pkg = Path(spec.origin).parent
    for inc in (pkg.parent / "include", pkg / "include"):
        if (inc / "llama.h").is_file() and (inc / "gguf.h").is_file():
            return inc, pkg / "lib"
    raise Failure(f"llama.h / gguf.h not found next to {pkg}")


def build_host_program(target: str, inc: Path, lib: Path, cache: Path, jobs: int, arch: str = "") -> tuple[Path, float]:
    """Build runtime/native's cmdv_host_test for ``target`` ('aarch64' or 'x86_64'); (executable, seconds)."""
    key = hashlib.sha256(f"{target}|{inc}|{lib}|{arch}|{NATIVE}".encode()).hexdigest()[:12]
    build = cache / f"core-{target}-{key}"
    cfg = ["cmake", "-S", str(NATIVE), "-B", str(build), f"-DLLAMA_INCLUDE_DIR={inc}", f"-DLLAMA_LIB_DIR={lib}",
           "-DCMAKE_BUILD_TYPE=Release", "-DCMDV_SANITIZE=OFF"]
    if target == "aarch64":
        cfg += [f"-DCMAKE_TOOLCHAIN_FILE={toolchain_file(build, arch)}", f"-DMATH_LIBRARY={SYSROOT}/lib/libm.so",
                f"-DCMAKE_C_FLAGS=-march={arch}"]
    else:
        cfg += [f"-DCMAKE_C_COMPILER={host_cc()}"]
    t0 = time.monotonic()
    logf = build / "build.log"
    run(cfg, f"runtime/native configure ({target})", log_path=logf)
    run(["cmake", "--build", str(build), f"-j{jobs}", "--target", "cmdv_host_test"],
        f"runtime/native build ({target})", log_path=logf)
    exe = build / "cmdv_host_test"
    desc = first_line(["file", "-b", str(exe)])
    if target == "aarch64" and "aarch64" not in desc and desc != "unknown":
        raise Failure(f"{exe} is not an aarch64 executable: {desc}")
    return exe, round(time.monotonic() - t0, 1)


# ------------------------------------------------------------------ runs
def run_host(cmd_prefix: list[str], exe: Path, model: Path, pack: Path | None, prompt: str, n_gen: int,
             threads: int, n_ctx: int, out_dir: Path, tag: str, extra: tuple[str, ...] = ()) -> dict:
    """One cmdv_host_test run: its JSON + the dumped hidden states / logits + wall time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rec, logits, steps = (out_dir / f"{tag}.{x}.f32" for x in ("hidden", "logits", "steps"))
    cmd = [*cmd_prefix, str(exe), "--model", str(model), "--prompt", prompt, "--n-gen", str(n_gen),
           "--threads", str(threads), "--n-ctx", str(n_ctx), "--record", str(rec), "--logits", str(logits),
           "--step-logits", str(steps)]
    if pack:
        cmd += ["--pack", str(pack)]
    cmd += list(extra)
    t0, r0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, capture_output=True, timeout=3600)
    wall, r1 = time.monotonic() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = json.loads(p.stdout.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        raise Failure(f"{tag}: no JSON from cmdv_host_test (rc {p.returncode}):\n"
                      f"{p.stderr.decode('utf-8', 'replace')[-3000:]}") from None
    if p.returncode != 0 or "code" in out:
        raise Failure(f"{tag}: cmdv_host_test failed: {out}")
    L, d, T = out["n_layer"], out["d_model"], len(out["prompt_ids"])
    out["hidden"] = np.fromfile(rec, np.float32).reshape(L, T, d)
    out["logits"] = np.fromfile(logits, np.float32)
    out["steps"] = np.fromfile(steps, np.float32).reshape(len(out["tokens"]), out["n_vocab"])
    out["wall_s"] = round(wall, 2)
    out["cpu_s"] = round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2)
    return out


def rel_diffs(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(worst row max|a-b|/max|b|, worst row ||a-b||/||b||, max |a-b|) over the last axis's rows; b = reference."""
    a2, b2 = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    diff = np.abs(a2 - b2)
    tiny = np.finfo(np.float32).tiny
    rel_max = diff.max(axis=1) / np.maximum(np.abs(b2).max(axis=1), tiny)
    rel_l2 = np.linalg.norm(a2 - b2, axis=1) / np.maximum(np.linalg.norm(b2, axis=1), tiny)
    return float(rel_max.max()), float(rel_l2.max()), float(diff.max())


def compare(x86: dict, arm: dict) -> dict:
    xt, at = x86["tokens"], arm["tokens"]
    n = max(len(xt), len(at))
    equal = sum(1 for i in range(min(len(xt), len(at))) if xt[i] == at[i])
    first = next((i for i in range(n) if i >= len(xt) or i >= len(at) or xt[i] != at[i]), None)
    h_max, h_l2, h_abs = rel_diffs(arm["hidden"], x86["hidden"])
    per_layer = [rel_diffs(arm["hidden"][i], x86["hidden"][i])[0] for i in range(x86["hidden"].shape[0])]
    l_max, l_l2, l_abs = rel_diffs(arm["logits"][None], x86["logits"][None])
    top2 = np.sort(x86["logits"])[-2:]
    # logits of every generation step both sides took from the same context: up to and including the divergence
    k = min(first + 1 if first is not None else n, len(x86["steps"]), len(arm["steps"]))
    s_max, s_l2, s_abs = rel_diffs(arm["steps"][:k], x86["steps"][:k]) if k else (0.0, 0.0, 0.0)
    gaps = {}
    if first is not None and first < min(len(xt), len(at)):
        xs, as_ = x86["steps"][first], arm["steps"][first]
        # how close the flip was: each side's margin of its own pick over the other side's pick (logits)
        gaps = {"x86_gap": float(xs[xt[first]] - xs[at[first]]), "arm64_gap": float(as_[at[first]] - as_[xt[first]]),
                "x86_top1_top2": float(np.diff(np.sort(xs)[-2:])[0]),
                "step_logits_max_abs": float(np.abs(xs - as_).max())}
        gaps["near_tie"] = gaps["x86_gap"] <= gaps["step_logits_max_abs"]
    return {
        "prompt_ids_equal": x86["prompt_ids"] == arm["prompt_ids"], "n_prompt_tokens": len(x86["prompt_ids"]),
        "n_tokens": n, "n_equal": equal, "match": equal / n if n else 1.0, "first_divergence": first,
        "x86_tokens": xt, "arm64_tokens": at, "x86_text": x86["text"], "arm64_text": arm["text"],
        "n_edited_x86": x86["n_edited"], "n_edited_arm64": arm["n_edited"],
        "extra_bufts_x86": x86.get("extra_bufts"), "extra_bufts_arm64": arm.get("extra_bufts"),
        "hidden_rel_max": h_max, "hidden_rel_l2": h_l2, "hidden_max_abs": h_abs,
        "hidden_rel_max_per_layer": per_layer,
        "logits_rel_max": l_max, "logits_rel_l2": l_l2, "logits_max_abs": l_abs,
        "logits_argmax_equal": int(np.argmax(x86["logits"])) == int(np.argmax(arm["logits"])),
        "x86_top1_margin": float(top2[1] - top2[0]),
        "steps_compared": k, "step_logits_rel_max": s_max, "step_logits_rel_l2": s_l2, "step_logits_max_abs": s_abs,
        "divergence": gaps or None,
        "x86_s": x86["wall_s"], "arm64_s": arm["wall_s"], "x86_cpu_s": x86["cpu_s"], "arm64_cpu_s": arm["cpu_s"],
    }


def default_model() -> Path:
    try:
        from commandv.runtime.models import zoo
    except ImportError as exc:
        raise Failure(f"commandv is not importable ({exc}); pass --model") from None
    return zoo.fetch(MODEL_KEY, progress=False)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Cross-build the native core + llama.cpp for aarch64, run cmdv_host_test under qemu-aarch64 "
                    "and natively on x86_64 on the same model / pack / prompts, and compare greedy tokens, "
                    "hidden states and logits.",
        epilog="Example: python android_demo/cross_arm64.py --out arm64.json  (first run cross-builds llama.cpp, "
               "3-6 min on 2 cores after a ~1 min sdist download; later runs reuse the cache)")
    ap.add_argument("--out", required=True, help="JSON report path")
    ap.add_argument("--model", help=f"GGUF model (default: the zoo's {MODEL_KEY}, fetched if needed)")
    ap.add_argument("--pack", default=str(DEFAULT_PACK), help="behavior pack applied on both sides, or 'none' "
                                                               "(default: %(default)s)")
    ap.add_argument("--prompt", action="append", dest="prompts", help="user message (repeatable; default: 3 built-in)")
    ap.add_argument("--n-gen", type=int, default=32, help="greedy tokens per prompt (default %(default)s)")
    ap.add_argument("--threads", type=int, default=1,
                    help="llama.cpp threads on both sides (default %(default)s: results do not depend on it; under "
                         "emulation on a busy machine more threads mostly spin)")
    ap.add_argument("--n-ctx", type=int, default=512, help="context length (default %(default)s)")
    ap.add_argument("--kv", choices=("f16", "f32"), help="KV cache type on both sides (default: the session's, f16)")
    ap.add_argument("--flash", choices=("0", "1"), help="flash attention on both sides (default: llama.cpp decides)")
    ap.add_argument("--no-x86-spread", action="store_true",
                    help="skip the x86-only reference run with flash attention switched (the spread between two "
                         "equally valid x86 kernels, reported beside the arm64 differences)")
    ap.add_argument("--arm-arch", default="armv8.2-a", help="-march of the aarch64 build (default %(default)s)")
    ap.add_argument("--llama-src", help="llama.cpp source dir (default: the pinned llama-cpp-python sdist's vendor/)")
    ap.add_argument("--x86-llama-dir", help="x86_64 llama.cpp install with include/ and lib/ "
                                            "(default: the installed llama-cpp-python)")
    ap.add_argument("--cache", default=None, help="build cache (default: $COMMANDV_HOME/arm64 or "
                                                  "~/.cache/commandv/arm64)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel build jobs (default: CPUs)")
    ap.add_argument("--qemu", default=QEMU, help="qemu user-mode emulator (default %(default)s)")
    ap.add_argument("--sysroot", default=SYSROOT, help="aarch64 libraries for qemu -L (default %(default)s)")
    ap.add_argument("--hidden-tol", type=float, default=HIDDEN_REL_TOL,
                    help="max allowed hidden_rel_max (default %(default)s)")
    ap.add_argument("--logits-tol", type=float, default=LOGITS_REL_TOL,
                    help="max allowed logits_rel_max (default %(default)s)")
    ap.add_argument("--min-match", type=float, default=MIN_MATCH,
                    help="exit 1 below this greedy match (default %(default)s; every divergence must be a near tie)")
    ap.add_argument("--build-only", action="store_true", help="build both host programs and stop")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    global QEMU, SYSROOT
    a = parse_args(argv)
    QEMU, SYSROOT = a.qemu, a.sysroot
    why = missing_tools(a.qemu, a.sysroot)
    if why:
        log(f"cannot run: {why}")
        return 2
    cache = Path(a.cache).resolve() if a.cache else cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    try:
        pinned = pinned_llama_cpp_python()
        installed = installed_llama_cpp_python()
        if installed and installed != pinned:
            log(f"warning: llama-cpp-python {installed} installed, {pinned} pinned: x86 and arm64 sides differ")
        src, commit = llama_source(pinned, cache, a.llama_src)
        prefix, llama_info = build_llama_arm64(src, commit, a.arm_arch, cache, a.jobs)
        arm_exe, arm_core_s = build_host_program("aarch64", Path(llama_info["include"]), Path(llama_info["lib"]),
                                                 cache, a.jobs, a.arm_arch)
        x_inc, x_lib = x86_llama_dirs(a.x86_llama_dir)
        x86_exe, x86_core_s = build_host_program("x86_64", x_inc, x_lib, cache, a.jobs)
        log(f"host programs: {arm_exe} ({arm_core_s:.0f} s), {x86_exe} ({x86_core_s:.0f} s)")
        if a.build_only:
            return 0
        model = Path(a.model).resolve() if a.model else default_model()
        pack = None if a.pack.lower() == "none" else Path(a.pack).resolve()
        prompts = a.prompts or list(PROMPTS)
        runs_dir = cache / "runs"
        qemu_prefix = [shutil.which(a.qemu) or a.qemu, "-L", a.sysroot]
        extra = (("--kv", a.kv) if a.kv else ()) + (("--flash", a.flash) if a.flash else ())
        alt = tuple(x for x in extra if x not in ("--flash", a.flash)) + ("--flash", "1" if a.flash == "0" else "0")
        results = []
        for i, prompt in enumerate(prompts):
            x86 = run_host([], x86_exe, model, pack, prompt, a.n_gen, a.threads, a.n_ctx, runs_dir, f"x86_{i}", extra)
            arm = run_host(qemu_prefix, arm_exe, model, pack, prompt, a.n_gen, a.threads, a.n_ctx, runs_dir,
                           f"arm64_{i}", extra)
            r = dict(prompt=prompt, **compare(x86, arm))
            if not a.no_x86_spread:
                x2 = run_host([], x86_exe, model, pack, prompt, a.n_gen, a.threads, a.n_ctx, runs_dir, f"x86alt_{i}",
                              alt)
                c = compare(x86, x2)
                r["x86_spread"] = {"config": " ".join(alt), **{k: c[k] for k in (
                    "n_equal", "n_tokens", "match", "first_divergence", "hidden_rel_max", "hidden_rel_l2",
                    "logits_rel_max", "step_logits_rel_max", "divergence")}}
            results.append(r)
            dv = r["divergence"]
            log(f"prompt {i}: {r['n_equal']}/{r['n_tokens']} tokens equal (first divergence {r['first_divergence']}"
                + (f", x86 margin {dv['x86_gap']:.3f} vs logit noise {dv['step_logits_max_abs']:.3f}" if dv else "")
                + f"), hidden rel max {r['hidden_rel_max']:.2e} / l2 {r['hidden_rel_l2']:.2e}, logits rel max "
                f"{r['logits_rel_max']:.2e} (steps {r['step_logits_rel_max']:.2e}), rows edited "
                f"{r['n_edited_x86']}/{r['n_edited_arm64']}, x86 {r['x86_s']:.1f} s, qemu {r['arm64_s']:.1f} s "
                f"({r['arm64_cpu_s']:.1f} s CPU)")
    except (Failure, subprocess.TimeoutExpired) as exc:
        log(str(exc))
        return 2

    n_tok = sum(r["n_tokens"] for r in results)
    match = sum(r["n_equal"] for r in results) / n_tok if n_tok else 1.0
    keys = ("hidden_rel_max", "hidden_rel_l2", "hidden_max_abs", "logits_rel_max", "logits_rel_l2", "logits_max_abs",
            "step_logits_rel_max", "step_logits_rel_l2", "step_logits_max_abs")
    worst = {k: max(r[k] for r in results) for k in keys}
    spread = None
    if not a.no_x86_spread:
        sp = [r["x86_spread"] for r in results]
        spread = {"config": sp[0]["config"], "greedy_match": sum(q["n_equal"] for q in sp) / max(1, sum(
            q["n_tokens"] for q in sp)), **{k: max(q[k] for q in sp) for k in keys if k in sp[0]}}
    within = (worst["hidden_rel_max"] <= a.hidden_tol and worst["logits_rel_max"] <= a.logits_tol
              and worst["step_logits_rel_max"] <= a.logits_tol
              and all(r["prompt_ids_equal"] and r["n_edited_x86"] == r["n_edited_arm64"]
                      and (r["divergence"] is None or r["divergence"]["near_tie"]) for r in results))
    report = {
        "arm64_greedy_match": match,
        "tokens_total": n_tok, "tokens_equal": sum(r["n_equal"] for r in results), "n_gen": a.n_gen,
        "prompts": prompts, "per_prompt": results,
        "tolerance": {"hidden_rel_max": a.hidden_tol, "logits_rel_max": a.logits_tol,
                      "step_logits_rel_max": a.logits_tol,
                      "greedy": "every divergence a near tie: x86_gap <= step_logits_max_abs at that step",
                      "metric": "per token row: max_j|arm-x86| / max_j|x86| (rel_max), ||arm-x86||/||x86|| (rel_l2); "
                                "worst over rows, layers and prompts"},
        "observed": worst, "x86_spread": spread, "within_tolerance": within, "min_match": a.min_match,
        "model": str(model), "pack": str(pack) if pack else None,
        "settings": {"threads": a.threads, "n_ctx": a.n_ctx, "kv": a.kv or "f16 (session default)",
                     "flash_attn": a.flash or "auto (session default)", "sampling": "greedy"},
        "arm64": {"march": a.arm_arch, "llama_prefix": str(prefix), "llama_commit": commit,
                  "llama_options": LLAMA_OPTIONS, "qemu_cpu": os.environ.get("QEMU_CPU", "max (qemu default)"),
                  "host_test": str(arm_exe), "file": first_line(["file", "-b", str(arm_exe)])},
        "x86_64": {"llama": str(x_lib), "host_test": str(x86_exe)},
        "versions": {"aarch64_gcc": first_line([CROSS_CC, "--version"]),
                     "host_cc": first_line([host_cc() or "cc", "--version"]),
                     "qemu": first_line([qemu_prefix[0], "--version"]), "cmake": first_line(["cmake", "--version"]),
                     "llama_cpp_python_pinned": pinned, "llama_cpp_python_installed": installed,
                     "llama_cpp_commit": commit, "python": platform.python_version()},
        "host": {"cpu": cpu_model(), "nproc": os.cpu_count(), "machine": platform.machine()},
        "timings_s": {"llama_arm64_build": llama_info["build_s"], "llama_arm64_cached": llama_info["cached"],
                      "core_arm64_build": arm_core_s, "core_x86_build": x86_core_s,
                      "qemu_run": round(sum(r["arm64_s"] for r in results), 1),
                      "qemu_run_cpu": round(sum(r["arm64_cpu_s"] for r in results), 1),
                      "x86_run": round(sum(r["x86_s"] for r in results), 1),
                      "x86_run_cpu": round(sum(r["x86_cpu_s"] for r in results), 1),
                      "total": round(time.monotonic() - t_start, 1)},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    ok = match >= a.min_match and within
    log(f"arm64_greedy_match {match:.4f} ({report['tokens_equal']}/{n_tok} tokens), hidden rel max "
        f"{worst['hidden_rel_max']:.2e} (tol {a.hidden_tol}), logits rel max {worst['logits_rel_max']:.2e} "
        f"(tol {a.logits_tol}), steps {worst['step_logits_rel_max']:.2e}, within tolerance: {within}"
        + (f"; x86 spread ({spread['config']}): match {spread['greedy_match']:.4f}, hidden rel max "
           f"{spread['hidden_rel_max']:.2e}, logits rel max {spread['logits_rel_max']:.2e}" if spread else "")
        + f"; qemu {report['timings_s']['qemu_run']} s ({report['timings_s']['qemu_run_cpu']} s CPU), "
        f"x86 {report['timings_s']['x86_run']} s; wrote {out} -> {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
