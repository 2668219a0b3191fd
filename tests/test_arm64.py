"""arm64 (the phone's CPU) vs x86_64: ``android_demo/cross_arm64.py``.

* Always: the comparison arithmetic of the script (greedy match, first divergence, relative differences) on
  synthetic runs, and its ``--help``.
* When ``aarch64-linux-gnu-gcc`` / ``g++``, ``qemu-aarch64`` and the aarch64 sysroot are installed (Debian:
  ``apt-get install crossbuild-essential-arm64 qemu-user``), slow: the script cross-builds llama.cpp (the
  pinned llama-cpp-python's vendored commit; cached under ``$COMMANDV_HOME/arm64`` or
  ``~/.cache/commandv/arm64``) and the native core, runs ``cmdv_host_test`` under qemu and natively on
  SmolLM2-135M Q4_1 with the committed refusal pack: same prompt tokens and rows edited, greedy tokens equal
  to x86_64's except after near ties (at least 0.75 of them), hidden states / logits within the script's
  tolerances. Measured on 2 busy cores: cold, the sdist download takes
  about 1 minute and the llama.cpp cross-build 3-6 minutes; with the cache warm the test takes about 2.5 minutes
  (qemu ~50 s per prompt). See android_demo/README.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "android_demo" / "cross_arm64.py"


def _script():
    spec = importlib.util.spec_from_file_location("cross_arm64", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(tokens, hidden, logits, steps=None, ids=(1, 2, 3), edited=4) -> dict:
    logits = np.asarray(logits, np.float32)
    steps = np.tile(logits, (len(tokens), 1)) if steps is None else np.asarray(steps, np.float32)
    return {"tokens": list(tokens), "prompt_ids": list(ids), "hidden": np.asarray(hidden, np.float32),
            "logits": logits, "steps": steps, "text": "", "n_edited": edited, "wall_s": 0.0, "cpu_s": 0.0}


def test_compare_arithmetic():
    m = _script()
    rng = np.random.default_rng(0)
    h = rng.normal(size=(2, 3, 8)).astype(np.float32)
    lg = rng.normal(size=50).astype(np.float32)
    same = m.compare(_run([5, 6, 7, 8], h, lg), _run([5, 6, 7, 8], h, lg))
    assert same["match"] == 1.0 and same["first_divergence"] is None
    assert same["hidden_rel_max"] == same["logits_rel_max"] == same["step_logits_rel_max"] == 0.0
    assert same["logits_argmax_equal"] and same["divergence"] is None and same["steps_compared"] == 4
    h2 = h.copy()
    h2[1, 2, 3] += 0.01 * np.abs(h[1, 2]).max()
    st = np.tile(lg, (4, 1))
    st[2, 7], st[2, 9] = 10.0, 9.5  # x86 picks 7 by 0.5 logits
    st2 = st.copy()
    st2[2, 9] = 10.25  # arm64 picks 9 by 0.25
    st2[3] += 1.0  # after the divergence: other contexts, not compared
    diff = m.compare(_run([5, 6, 7, 8], h, lg, st), _run([5, 6, 9, 8], h2, lg, st2))
    assert diff["n_equal"] == 3 and diff["match"] == 0.75 and diff["first_divergence"] == 2
    assert diff["steps_compared"] == 3 and diff["step_logits_max_abs"] == pytest.approx(0.75)
    dv = diff["divergence"]
    assert dv["x86_gap"] == pytest.approx(0.5) and dv["arm64_gap"] == pytest.approx(0.25) and dv["near_tie"]
    assert diff["hidden_rel_max"] == pytest.approx(0.01, rel=1e-3)
    assert diff["hidden_rel_max_per_layer"][0] == 0.0 and diff["hidden_rel_max_per_layer"][1] > 0
    short = m.compare(_run([5, 6, 7, 8], h, lg), _run([5, 6], h, lg))  # arm stopped early (EOS)
    assert short["n_tokens"] == 4 and short["n_equal"] == 2 and short["first_divergence"] == 2


def test_help():
    p = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "--out" in p.stdout and "qemu" in p.stdout


@pytest.mark.slow
@pytest.mark.llama
def test_arm64_matches_x86_on_smollm2(tmp_path):
    pytest.importorskip("llama_cpp")
    why = _script().missing_tools()
    if why:
        pytest.skip(f"arm64 cross toolchain / emulator unavailable: {why}")
    out = tmp_path / "arm64.json"
    # cold: downloads the sdist and cross-builds llama.cpp (~4-7 min on 2 cores), then cached
    p = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--n-gen", "24"], capture_output=True,
                       text=True, timeout=3600, env=dict(os.environ))
    assert out.is_file(), (p.stdout + p.stderr)[-4000:]
    r = json.loads(out.read_text())
    print(p.stdout[-3000:])
    for q in r["per_prompt"]:
        assert q["prompt_ids_equal"] and q["n_edited_x86"] == q["n_edited_arm64"] > 0, q
        # a greedy flip must be a near tie (x86's margin within the two sides' logit difference at that step)
        assert q["divergence"] is None or q["divergence"]["near_tie"], q["divergence"]
    # exact equality of whole generations is not a property of llama.cpp across kernels: x86 alone, flash attention
    # on vs off, keeps 79/96 tokens; arm64 vs x86 measured 83/96 at 32 tokens, 66/72 at 24 (one near tie, margin
    # 0.06 logits, prompt 3 token 17). See android_demo/cross_arm64.py MIN_MATCH.
    assert r["arm64_greedy_match"] >= 0.75, [(q["x86_text"], q["arm64_text"]) for q in r["per_prompt"]]
    assert r["within_tolerance"], (r["observed"], r["tolerance"])
    assert p.returncode == 0, p.stdout[-3000:]
