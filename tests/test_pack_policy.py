"""Engines read pack files under a signature policy and an edit-size limit (runtime/pack_policy.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from commandv.runtime.pack import PackError
from commandv.runtime.pack_policy import DeltaNormError, PackPolicy, delta_norm_ratios
from commandv.runtime.signing import SignatureError, UnverifiedPackWarning, generate_keypair, sign_pack
from tests.test_llama_parity import random_pack

PROMPT = "Tell me something nice about rivers."


def test_policy_values_and_env(monkeypatch):
    with pytest.raises(PackError, match="signature policy 'maybe' unknown"):
        PackPolicy("maybe")
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(PackError, match="max_delta_norm must be a positive number"):
            PackPolicy(max_delta_norm=bad)
    monkeypatch.setenv("COMMANDV_PACK_POLICY", "require")
    monkeypatch.setenv("COMMANDV_MAX_DELTA_NORM", "0.25")
    p = PackPolicy.from_env()
    assert (p.signatures, p.max_delta_norm) == ("require", 0.25)
    assert PackPolicy.from_env(signatures="off").signatures == "off"  # explicit beats env
    monkeypatch.setenv("COMMANDV_MAX_DELTA_NORM", "big")
    with pytest.raises(PackError, match="COMMANDV_MAX_DELTA_NORM='big' is not a number"):
        PackPolicy.from_env()
    monkeypatch.delenv("COMMANDV_PACK_POLICY")
    monkeypatch.delenv("COMMANDV_MAX_DELTA_NORM")
    assert PackPolicy.from_env() == PackPolicy("warn")


def test_read_packs_validates_objects_and_refuses_other_things(tmp_path):
    """What every engine's ``packs`` argument goes through: None, one pack, a file, a list."""
    pol = PackPolicy(signatures="off")
    good = random_pack(layers=(1,), seed=2)
    path = good.save(tmp_path / "p.gguf")
    assert pol.read_packs(None) == [] and pol.read_packs(good) == [good]
    assert [p.name for p in pol.read_packs([good, path])] == [good.name, good.name]
    bad = random_pack(layers=(1,), seed=2)
    bad.entries[0].A[0, 0] = np.inf
    with pytest.raises(PackError, match="tensor A has NaN or Inf"):
        pol.read_packs([bad])
    with pytest.raises(PackError, match="expected a BehaviorPack or a pack file, got dict"):
        pol.read_packs([{}])


def test_delta_norm_ratios_match_a_written_out_formula():
    pack = random_pack(layers=(1, 1, 3), seed=4, act="silu", pq=True, offset=True, strength=0.7)
    rng = np.random.default_rng(0)
    states = {i: rng.standard_normal((5, 64)) * (i + 1) for i in range(4)}
    got = delta_norm_ratios(pack, states, strength=2.0)
    for e, g in zip(pack.entries, got):
        h = states[e.layer]
        z = h @ e.A.astype(np.float64) + e.b
        z = z / (1.0 + np.exp(-z))  # silu
        d = z @ e.C - (h @ e.P) @ e.Q + e.e
        want = max(np.linalg.norm(1.4 * d[k]) / np.linalg.norm(h[k]) for k in range(5))
        assert g == pytest.approx(want, rel=1e-6)
    with pytest.raises(PackError, match="no reference hidden states for layer 3"):
        delta_norm_ratios(pack, {1: states[1]})


@pytest.fixture()
def signed(tmp_path, tiny_gguf):
    pytest.importorskip("llama_cpp")
    from commandv.runtime.llama_engine import Recipient

    with Recipient(tiny_gguf, n_ctx=256, n_threads=1, policy=PackPolicy("off")) as r:
        fp = r.fingerprint
    priv, pub, _ = generate_keypair(tmp_path / "keys", name="curator")
    pack = random_pack(layers=(1, 2), seed=3, scale=2.0, act="silu", fingerprint=fp, name="p1")
    path = pack.save(tmp_path / "p1.gguf")
    sign_pack(path, priv)
    unsigned = pack.save(tmp_path / "p2.gguf")
    return path, unsigned, pub


@pytest.mark.llama
def test_llama_recipient_signature_policy(tiny_gguf, signed, tmp_path):
    from commandv.runtime.llama_engine import Recipient

    path, unsigned, pub = signed
    with Recipient(tiny_gguf, n_ctx=256, n_threads=1, policy=PackPolicy("require", trusted=[pub])) as r:
        want = r.generate(PROMPT, packs=[path], max_tokens=6)
        with pytest.raises(SignatureError, match="unsigned"):
            r.generate(PROMPT, packs=[unsigned], max_tokens=6)
        tampered = tmp_path / "t.gguf"
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        tampered.write_bytes(bytes(data))
        (tmp_path / "t.gguf.sig").write_bytes((tmp_path / "p1.gguf.sig").read_bytes())
        with pytest.raises(SignatureError):
            r.generate(PROMPT, packs=[tampered], max_tokens=6)
    with Recipient(tiny_gguf, n_ctx=256, n_threads=1, policy=PackPolicy("warn", trusted=[pub])) as r:
        with pytest.warns(UnverifiedPackWarning, match="unsigned"):
            got = r.generate(PROMPT, packs=[unsigned], max_tokens=6)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert r.generate(PROMPT, packs=[path], max_tokens=6) == want
    assert got == want  # same pack content, signed or not


@pytest.mark.llama
def test_llama_recipient_delta_norm_limit(tiny_gguf, tiny_hf, signed):
    from commandv.runtime.llama_engine import Recipient
    from commandv.runtime.pack_policy import REFERENCE_PROMPTS

    path, _, _ = signed
    with Recipient(tiny_gguf, n_ctx=256, n_threads=1, policy=PackPolicy("off")) as r:
        pack = r.load_packs(path)[0]
        ratios = delta_norm_ratios(pack, r.reference_states(), 1.0)
    # independent reference states: the same prompts through transformers' own forward (hidden_states[i + 1]
    # is block i's output), tokenized by the HF tokenizer with the chat template
    torch = pytest.importorskip("torch")
    model, tok = tiny_hf
    rows = []
    for p in REFERENCE_PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        with torch.no_grad():
            hs = model(torch.tensor([list(ids)]), output_hidden_states=True).hidden_states
        rows.append([h[0, -1].double().numpy() for h in hs[1:]])
    states = {i: np.stack([r_[i] for r_ in rows]) for i in range(len(rows[0]))}
    assert ratios == pytest.approx(delta_norm_ratios(pack, states, 1.0), rel=1e-3)
    top = max(ratios)
    with Recipient(tiny_gguf, n_ctx=256, n_threads=1, policy=PackPolicy("off", max_delta_norm=top * 1.01)) as r:
        r.generate(PROMPT, packs=[path], max_tokens=2)
        with pytest.raises(DeltaNormError, match=r"entry \d \(layer \d\).*above the limit"):
            r.generate(PROMPT, packs=[path], strengths=[1.1], max_tokens=2)


@pytest.mark.llama
def test_cli_run_policy_options(tiny_gguf, signed, monkeypatch):
    from tests.test_cli_run import _user_errors  # one-line error wrapper
    import typer

    from commandv.runtime.cli_run import register

    app = typer.Typer()
    register(app, _user_errors)
    path, unsigned, pub = signed
    base = ["run", str(tiny_gguf), PROMPT, "-n", "4", "--ctx", "256", "--threads", "1"]
    res = CliRunner().invoke(app, base + ["--pack", str(unsigned), "--signatures", "require", "--trusted", str(pub)])
    assert res.exit_code == 2 and "unsigned" in res.stderr
    res = CliRunner().invoke(app, base + ["--pack", str(path), "--signatures", "require", "--trusted", str(pub)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, base + ["--pack", str(unsigned), "--trusted", str(pub)])
    assert res.exit_code == 0 and "warning:" in res.stderr and "unsigned" in res.stderr
    monkeypatch.setenv("COMMANDV_PACK_POLICY", "require")
    res = CliRunner().invoke(app, base + ["--pack", str(unsigned), "--trusted", str(pub)])
    assert res.exit_code == 2 and "unsigned" in res.stderr
    res = CliRunner().invoke(app, base + ["--pack", str(path), "--signatures", "off", "--max-delta-norm", "1e-6"])
    assert res.exit_code == 2 and "max_delta_norm" in res.stderr


def test_torch_recipient_policy(tiny_hf, signed):
    from commandv.runtime.torch_engine import TorchRecipient

    path, unsigned, pub = signed
    model, tok = tiny_hf
    eng = TorchRecipient(model, tok, policy=PackPolicy("require", trusted=[pub]), arch="llama")
    assert eng.load_packs([path], force=True)[0].name == "p1"
    with pytest.raises(SignatureError, match="unsigned"):
        eng.load_packs([unsigned], force=True)
    eng = TorchRecipient(model, tok, policy=PackPolicy("off", max_delta_norm=1e-6), arch="llama")
    with pytest.raises(DeltaNormError):
        eng.generate(PROMPT, packs=[path], max_new_tokens=2, force=True)


@pytest.mark.llama
def test_soak_alternating_packs_match_fresh_runs(tiny_gguf, tmp_path):
    """A short version of benchmarks/soak.py: 120 requests, 6 pack variants, one loaded model."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from soak import run_soak

    res = run_soak(tiny_gguf, requests=120, tokens=6, workdir=tmp_path, n_ctx=256, threads=1, warmup=30,
                   progress=False)
    assert res["distinct_outputs"] >= 4  # the packs really change the output
    assert res["mismatches"] == []
    assert res["rss_growth_mb"] < 8.0, res


@pytest.mark.llama
def test_delta_norm_limit_on_a_model_without_chat_template(tiny_gguf_no_template):
    """The edit-size check's reference prompts go in as raw text when the model has no chat template (they
    cannot be chat-rendered, and the user's raw prompts are allowed)."""
    pytest.importorskip("llama_cpp")
    from commandv.runtime.llama_engine import Recipient
    from commandv.runtime.pack_policy import REFERENCE_PROMPTS

    with Recipient(tiny_gguf_no_template, n_ctx=256, n_threads=1, policy=PackPolicy("off", max_delta_norm=1e6)) as r:
        assert r.chat_template is None
        pack = random_pack(layers=(1,), seed=3, act="silu", fingerprint=r.fingerprint, name="p")
        states = r.reference_states()
        _, hid = r.prompt_pass(r.encode(REFERENCE_PROMPTS[1], template=False), record_layers=True)
        assert np.array_equal(states[2][1], hid[2][-1])
        assert r.generate("rivers and seas", packs=[pack], template=False, max_tokens=2) is not None
        r.policy = PackPolicy("off", max_delta_norm=1e-6)
        with pytest.raises(DeltaNormError, match="above the limit"):
            r.generate("rivers and seas", packs=[pack], template=False, max_tokens=2)
