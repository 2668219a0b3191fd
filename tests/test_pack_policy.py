"""Engines read pack files under a signature policy and an edit-size limit (runtime/pack/policy.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from commandv.runtime.pack.model import BehaviorPack, PackError
from commandv.runtime.pack.policy import DeltaNormError, PackPolicy, ReferenceStates, edit_sizes
from commandv.runtime.pack.signing import SignatureError, UnverifiedPackWarning, generate_keypair, sign_pack
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


def _silu_delta(e, h):
    """An entry's edit written out (silu, P/Q, offset), float64."""
    z = h @ e.A.astype(np.float64) + e.b
    z = z / (1.0 + np.exp(-z))
    return z @ e.C - (h @ e.P) @ e.Q + e.e


def _summed_ratio(entries, prompts, layer):
    """Independent reference of the summed edit at ``layer``: ``entries`` = [(entry, strength, rows_of(T))] in
    engine order, each applied to the output of those before it on its rows; max ``‖h' − h‖ / ‖h‖`` over rows."""
    best = 0.0
    for states in prompts:
        h0 = np.asarray(states[layer], np.float64)
        h = h0.copy()
        for e, s, rows_of in entries:
            for t in rows_of(len(h0)):
                h[t] = h[t] + s * _silu_delta(e, h[t][None])[0]
        for t in range(len(h0)):
            best = max(best, np.linalg.norm(h[t] - h0[t]) / np.linalg.norm(h0[t]))
    return best


def test_rows_within_clips_specs_to_short_prompts():
    from commandv.runtime.edit.positions import Positions

    for spec in ("l1", "f1", "f1+l1", "f2+l3", "l9", "f7+l2"):
        p = Positions.parse(spec)
        for T in range(1, 12):
            first = int(spec.split("f")[1].split("+")[0]) if "f" in spec else 0
            last = int(spec.split("l")[1]) if "l" in spec else 0
            want = sorted({t for t in range(T) if t < first or t >= T - last})
            assert p.rows_within(T) == want
            if T >= max(first, last):
                assert p.indices(T) == want


def test_edit_sizes_match_a_written_out_formula():
    """Two packs, entries sharing layer 1 with different positions, on two prompts of different lengths."""
    p1 = random_pack(layers=(1, 1, 3), seed=4, act="silu", pq=True, offset=True, strength=0.7, positions="l1")
    p2 = random_pack(layers=(1,), seed=5, act="silu", pq=True, offset=True, positions="f2+l1", name="two")
    rng = np.random.default_rng(0)
    prompts = [{i: rng.standard_normal((T, 64)) * (i + 1) for i in range(4)} for T in (5, 3)]
    got = edit_sizes([p1, p2], [2.0, -0.5], prompts)
    last = lambda T: [T - 1]  # noqa: E731
    first2_last = lambda T: sorted({0, 1, T - 1})  # noqa: E731
    e0, e1, e3 = p1.entries
    want1 = _summed_ratio([(e0, 1.4, last), (e1, 1.4, last), (p2.entries[0], -0.5, first2_last)], prompts, 1)
    want3 = _summed_ratio([(e3, 1.4, last)], prompts, 3)
    assert sorted(got) == [1, 3]
    assert got[1].ratio == pytest.approx(want1, rel=1e-9) and got[3].ratio == pytest.approx(want3, rel=1e-9)
    assert got[1].sources == "pack 'pack' at strength 2 + pack 'two' at strength -0.5"
    assert got[3].sources == "pack 'pack' at strength 2"
    # every row the spec selects (f2: rows 0 and 1 too), not only the last token
    two = edit_sizes([p2], [1.0], prompts)[1]
    assert two.ratio == pytest.approx(_summed_ratio([(p2.entries[0], 1.0, first2_last)], prompts, 1), rel=1e-9)
    assert (two.prompt, two.row) == (0, 1)
    assert two.ratio > _summed_ratio([(p2.entries[0], 1.0, last)], prompts, 1) + 1e-3
    # summed, not the largest single entry
    alone = max(edit_sizes([BehaviorPack([e], p1.recipient)], [2.0], prompts)[1].ratio for e in (e0, e1))
    assert abs(got[1].ratio - alone) > 1e-3
    with pytest.raises(PackError, match="no reference hidden states for layer 3"):
        edit_sizes([p1], [1.0], [{1: prompts[0][1]}])


@pytest.fixture()
def signed(tmp_path, tiny_gguf):
    pytest.importorskip("llama_cpp")
    from commandv.runtime.engines.llama.engine import Recipient

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
    from commandv.runtime.engines.llama.engine import Recipient

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
    from commandv.runtime.engines.llama.engine import Recipient

    path, _, _ = signed
    with Recipient(tiny_gguf, n_ctx=256, n_threads=1, policy=PackPolicy("off")) as r:
        pack = r.load_packs(path)[0]
        sizes = edit_sizes([pack], [1.0], r.reference_states().prompts)
    prompts = _hf_reference_states(tiny_hf)
    want = edit_sizes([pack], [1.0], prompts)
    assert [sizes[k].ratio for k in (1, 2)] == pytest.approx([want[k].ratio for k in (1, 2)], rel=1e-3)
    top = max(z.ratio for z in sizes.values())
    with Recipient(tiny_gguf, n_ctx=256, n_threads=1, policy=PackPolicy("off", max_delta_norm=top * 1.01)) as r:
        r.generate(PROMPT, packs=[path], max_tokens=2)
        with pytest.raises(DeltaNormError, match=r"^layer \d: the summed edit of pack 'p1' at strength 1.1 is "
                                                 r"[0-9.]+× .*above the limit [0-9.]+ \(max_delta_norm\)$"):
            r.generate(PROMPT, packs=[path], strengths=[1.1], max_tokens=2)


def _hf_reference_states(tiny_hf) -> list[dict]:
    """Independent reference states: the reference prompts through transformers' own forward (hidden_states[i + 1]
    is block i's output, every token), tokenized by the HF tokenizer with the chat template."""
    from commandv.runtime.pack.policy import REFERENCE_PROMPTS

    torch = pytest.importorskip("torch")
    model, tok = tiny_hf
    out = []
    for p in REFERENCE_PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        with torch.no_grad():
            hs = model(torch.tensor([list(ids)]), output_hidden_states=True).hidden_states
        out.append({i: h[0].double().numpy() for i, h in enumerate(hs[1:])})
    return out


@pytest.mark.llama
def test_cli_run_policy_options(tiny_gguf, signed, monkeypatch):
    from tests.test_cli_run import run_chat_app

    app = run_chat_app()
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
    from commandv.runtime.engines.reference import TorchRecipient

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
    from commandv.runtime.engines.llama.engine import Recipient
    from commandv.runtime.pack.policy import REFERENCE_PROMPTS

    with Recipient(tiny_gguf_no_template, n_ctx=256, n_threads=1, policy=PackPolicy("off", max_delta_norm=1e6)) as r:
        assert r.chat_template is None
        pack = random_pack(layers=(1,), seed=3, act="silu", fingerprint=r.fingerprint, name="p")
        states = r.reference_states()
        _, hid = r.prompt_pass(r.encode(REFERENCE_PROMPTS[1], template=False), record_layers=True)
        assert len(states) == len(REFERENCE_PROMPTS) and np.array_equal(states[1][2], hid[2])  # every row
        assert r.generate("rivers and seas", packs=[pack], template=False, max_tokens=2) is not None
        r.policy = PackPolicy("off", max_delta_norm=1e-6)
        with pytest.raises(DeltaNormError, match="above the limit"):
            r.generate("rivers and seas", packs=[pack], template=False, max_tokens=2)


# ---------------------------------------------------------------- the summed edit per layer (issue #19)
LIMIT = 1.0


@pytest.fixture(scope="module")
def tiny_states(tiny_gguf) -> list[dict]:
    """The tiny GGUF's unedited block outputs on 8 fixed token sequences (numpy forward, tests/tiny_models.py)."""
    from tests.hostile_corpus import policy_reference

    return policy_reference(tiny_gguf)


def _offset_pack(states, layer, frac, seed, name, positions="l1"):
    """One entry adding a constant offset of ``frac`` × the smallest last-token norm at ``layer``, along one fixed
    direction (the same for every seed) → its ratio is exactly ``frac`` on the last tokens."""
    from tests.hostile_corpus import many_small_entries_pack

    pack = many_small_entries_pack(states, layer, n=1, each=frac, seed=0, name=name)
    pack.entries[0].positions = positions
    pack.entries[0].A = np.random.default_rng(seed).standard_normal(pack.entries[0].A.shape).astype(np.float32)
    return pack


def _last_rows(states, layer):
    return np.stack([np.asarray(p[layer][-1], np.float64) for p in states])


def test_many_small_entries_on_one_layer_are_refused_together(tiny_states):
    from tests.hostile_corpus import many_small_entries_pack

    pack = many_small_entries_pack(tiny_states, layer=2, n=91, each=0.99)
    h = _last_rows(tiny_states, 2)
    hn = np.linalg.norm(h, axis=1)
    offsets = np.stack([e.e.astype(np.float64) for e in pack.entries])
    alone = [np.max(np.linalg.norm(o) / hn) for o in offsets]  # what the old per-entry check measured
    assert max(alone) < LIMIT
    want = np.max(np.linalg.norm(offsets.sum(0)) / hn)  # the edit the engines apply: all 91 on the same rows
    assert want == pytest.approx(90.09, rel=1e-3)
    sizes = ReferenceStates(tiny_states).measure([pack], [1.0])
    assert list(sizes) == [2] and sizes[2].ratio == pytest.approx(want, rel=1e-6)
    with pytest.raises(DeltaNormError) as err:
        PackPolicy("off", max_delta_norm=LIMIT).check_size([pack], [1.0], lambda: tiny_states)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"layer 2: the summed edit of pack 'many-small' at strength 1 is {want:.3g}× ")
    assert msg.endswith("above the limit 1 (max_delta_norm)")
    # a legitimate pack: three such entries, 0.3 each → 0.9 together, passes
    ok = many_small_entries_pack(tiny_states, layer=2, n=3, each=0.3, name="ok")
    PackPolicy("off", max_delta_norm=LIMIT).check_size([ok], [1.0], lambda: tiny_states)
    assert ReferenceStates(tiny_states).measure([ok], [1.0])[2].ratio == pytest.approx(0.9, rel=1e-6)


def _relu_edit(e, h):
    return np.maximum(h @ e.A.astype(np.float64) + e.b, 0.0) @ e.C.astype(np.float64)


@pytest.mark.parametrize("positions", ["f1+l1", "f1"])
def test_a_gate_open_only_on_the_first_token_is_measured_there(tiny_states, positions):
    from tests.hostile_corpus import first_token_gate_pack

    pack = first_token_gate_pack(tiny_states, layer=1, ratio=480.0, positions=positions)
    e = pack.entries[0]
    last = _last_rows(tiny_states, 1)
    assert np.abs(_relu_edit(e, last)).max() == 0.0  # what the old check saw: nothing
    first = np.stack([np.asarray(p[1][0], np.float64) for p in tiny_states])
    want = np.max(np.linalg.norm(_relu_edit(e, first), axis=1) / np.linalg.norm(first, axis=1))
    assert want == pytest.approx(480.0, rel=1e-3)
    assert ReferenceStates(tiny_states).measure([pack], [1.0])[1].ratio == pytest.approx(want, rel=1e-6)
    with pytest.raises(DeltaNormError, match=r"^layer 1: .* is 480× .*token 0\), above the limit 1 "):
        PackPolicy("off", max_delta_norm=LIMIT).check_size([pack], [1.0], lambda: tiny_states)


def test_packs_of_one_request_are_summed_and_strengths_scale(tiny_states):
    p1 = _offset_pack(tiny_states, 2, 0.6, seed=1, name="a")
    p2 = _offset_pack(tiny_states, 2, 0.6, seed=2, name="b")
    p3 = _offset_pack(tiny_states, 3, 0.6, seed=3, name="c")
    pol = PackPolicy("off", max_delta_norm=LIMIT)
    ref = ReferenceStates(tiny_states)
    h = _last_rows(tiny_states, 2)

    def want(s1, s2):  # the two offsets at their strengths, on the same rows
        v = s1 * p1.entries[0].e.astype(np.float64) + s2 * p2.entries[0].e.astype(np.float64)
        return np.max(np.linalg.norm(v) / np.linalg.norm(h, axis=1))

    for packs, s in (([p1], [1.0]), ([p2], [1.0]), ([p1, p3], [1.0, 1.0]), ([p1, p2], [0.5, 0.5])):
        pol.check_size(packs, s, lambda: ref)  # each under the limit; different layers do not add up
    assert ref.measure([p1, p2], [0.5, 0.5])[2].ratio == pytest.approx(want(0.5, 0.5), rel=1e-6)
    assert ref.measure([p1, p2], [1.0, 1.0])[2].ratio == pytest.approx(want(1, 1), rel=1e-6) == 1.2
    with pytest.raises(DeltaNormError, match=r"^layer 2: the summed edit of pack 'a' at strength 1 \+ pack 'b' at "
                                             r"strength 1 is 1\.2× .*above the limit 1 \(max_delta_norm\)$"):
        pol.check_size([p1, p2], [1.0, 1.0], lambda: ref)
    with pytest.raises(DeltaNormError, match=r"pack 'a' at strength 2 is 1\.2×"):
        pol.check_size([p1], [2.0], lambda: ref)
    assert ref.measure([p1, p2], [1.5, -0.5])[2].ratio == pytest.approx(want(1.5, -0.5), rel=1e-6)
    with pytest.raises(DeltaNormError, match=r"strength 3 is 1\.8×"):
        pol.check_size([p1, p2], [3.0, 0.0], lambda: ref)  # strength 0 drops p2 from the sum


def test_measurements_are_cached_per_pack_contents_and_strengths(tiny_states, monkeypatch):
    p1 = _offset_pack(tiny_states, 2, 0.6, seed=1, name="a")
    ref = ReferenceStates(tiny_states)
    first = ref.measure([p1], [1.0])
    assert ref.measure([p1], [1.0]) is first
    assert ref.measure([p1], [2.0])[2].ratio == pytest.approx(1.2, rel=1e-6)
    p1.entries[0].e = p1.entries[0].e * 3  # same object, new contents: measured again, not served stale
    assert ref.measure([p1], [1.0])[2].ratio == pytest.approx(1.8, rel=1e-6)
    monkeypatch.setattr(ReferenceStates, "MAX_CACHED", 2)
    for s in (1.0, 2.0, 3.0):
        ref.measure([p1], [s])
    assert len(ref._measured) == 2
    with pytest.raises(PackError, match=r"1 packs but 2 strengths"):
        PackPolicy("off", max_delta_norm=LIMIT).check_size([p1], [1.0, 1.0], lambda: ref)


def test_torch_recipient_refuses_both_bypasses(tiny_hf):
    """On the torch reference engine: the gate pack is built from transformers' own hidden states (independent
    of the engine's hooks); the engine measures the same ratio, refuses it, and the real edit is that size."""
    from commandv.runtime.engines.reference import TorchRecipient, pack_edits
    from tests.hostile_corpus import first_token_gate_pack, many_small_entries_pack

    hf_states = _hf_reference_states(tiny_hf)
    gate = first_token_gate_pack(hf_states, layer=1, ratio=480.0)
    many = many_small_entries_pack(hf_states, layer=2, n=91, each=0.99)
    e = gate.entries[0]
    assert np.abs(_relu_edit(e, _last_rows(hf_states, 1))).max() == 0.0
    first = np.stack([p[1][0] for p in hf_states])
    want = np.max(np.linalg.norm(_relu_edit(e, first), axis=1) / np.linalg.norm(first, axis=1))
    eng = TorchRecipient(*tiny_hf, policy=PackPolicy("off", max_delta_norm=LIMIT), arch="llama")
    assert eng.reference_states().measure([gate], [1.0])[1].ratio == pytest.approx(want, rel=1e-3)
    for pack, layer in ((gate, 1), (many, 2)):
        with pytest.raises(DeltaNormError, match=rf"^layer {layer}: .*above the limit 1 \(max_delta_norm\)$"):
            eng.generate(PROMPT, packs=[pack], max_new_tokens=1, force=True)
    ids = eng.encode(PROMPT)  # the real edit on a user prompt: the gate opens on its first token
    _, base = eng.prompt_forward(ids, [], record_hidden=True)
    _, edited = eng.prompt_forward(ids, pack_edits([gate]), record_hidden=True)
    real = np.linalg.norm(edited[1][0] - base[1][0]) / np.linalg.norm(base[1][0])
    assert real == pytest.approx(480.0, rel=1e-2)
    ok = many_small_entries_pack(hf_states, layer=2, n=3, each=0.3, name="ok")
    assert isinstance(eng.generate(PROMPT, packs=[ok], max_new_tokens=1, force=True), str)


@pytest.mark.llama
def test_llama_recipient_checks_the_request_combination_before_the_prompt_pass(tiny_gguf):
    pytest.importorskip("llama_cpp")
    from commandv.runtime.engines.llama.engine import Recipient
    from commandv.runtime.pack.policy import REFERENCE_PROMPTS
    from tests.hostile_corpus import first_token_gate_pack

    with Recipient(tiny_gguf, n_ctx=256, n_threads=1, policy=PackPolicy("off", max_delta_norm=LIMIT)) as r:
        ref = r.reference_states()
        assert [len(p[0]) for p in ref] == [len(r.encode(q)) for q in REFERENCE_PROMPTS]  # every row
        p1 = _offset_pack(ref.prompts, 2, 0.6, seed=1, name="a")
        p2 = _offset_pack(ref.prompts, 2, 0.6, seed=2, name="b")
        for p in (p1, p2):
            p.recipient["fingerprint"] = r.fingerprint
        r.generate(PROMPT, packs=[p1], max_tokens=1)
        r.generate(PROMPT, packs=[p2], max_tokens=1)
        r.generate(PROMPT, packs=[p1, p2], strengths=[0.5, 0.5], max_tokens=1)
        before = r._request
        with pytest.raises(DeltaNormError, match=r"^layer 2: the summed edit of pack 'a' at strength 1 \+ pack 'b' "
                                                 r"at strength 1 is 1\.2× .*above the limit 1 \(max_delta_norm\)$"):
            r.generate(PROMPT, packs=[p1, p2], max_tokens=1)
        with pytest.raises(DeltaNormError, match=r"strength 2 is 1\.2×"):
            r.generate(PROMPT, packs=[p1], strengths=[2.0], max_tokens=1)
        assert r._request == before  # refused before any prompt pass
        gate = first_token_gate_pack(ref.prompts, layer=1, ratio=480.0, fingerprint=r.fingerprint)
        with pytest.raises(DeltaNormError, match=r"^layer 1: .* is 480× "):
            r.prompt_pass(r.encode(PROMPT), packs=[gate])
        assert len(ref._measured) == 6  # one measurement per (packs, strengths) combination
