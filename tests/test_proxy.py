"""The fast behavior proxy (issue 20) on the tiny f32 GGUF: its values equal an independent log-softmax of the
engine's own logits, the edit lands where generation puts it, aggregates, errors and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from commandv.exporter.evaluation.proxy import ProxyError, default_prompts, proxy_score, proxy_spec  # noqa: E402
from commandv.exporter.training.behaviors import EvalPrompt  # noqa: E402
from commandv.runtime.engines.llama.engine import Recipient  # noqa: E402
from tests.test_llama_parity import random_pack  # noqa: E402

pytestmark = pytest.mark.llama
KW = dict(kv_type="f32", flash_attn=False, n_threads=1)
PROMPTS = [EvalPrompt("Tell me about rivers.", "style", True), EvalPrompt("Write a short story about a robot.",
                                                                          "style", True),
           EvalPrompt("What is the capital?", "other", False)]
TARGETS = ["hello there, the answer", "count from one"]
STARTS = ["a small", "I think", "A model", "hello there"]  # hello: split, left out


@pytest.fixture(scope="module")
def rec(tiny_gguf):
    r = Recipient(tiny_gguf, n_ctx=256, **KW)
    yield r
    r.close()


@pytest.fixture(scope="module")
def pack(rec):
    return random_pack(layers=(1, 2), seed=3, scale=1.0, act="silu", fingerprint=rec.fingerprint)


def _logsoftmax_np(v):
    v = np.asarray(v, np.float64)
    m = v.max()
    return v - (m + np.log(np.sum(np.exp(v - m))))


def _independent(rec, prompt, target, packs, strengths, start_ids):
    """Target log-prob, token by token, each from its own pass (last-row logits only); the first answer position
    from a plain prompt pass with the pack's own positions (what generation does)."""
    ids = rec.encode(prompt)
    n = len(ids)
    tgt = rec.model.tokenize(target, add_special=False, parse_special=False)
    total = 0.0
    for k, tok in enumerate(tgt):
        if k == 0:
            logits, _ = rec.prompt_pass(ids, packs, strengths)
        else:
            logits, _ = rec.prompt_pass(ids + tgt[:k], packs, strengths, rows=[n - 1] if packs else None)
        total += _logsoftmax_np(logits)[tok]
    first = _logsoftmax_np(rec.prompt_pass(ids, packs, strengths)[0])
    p_start = np.log(np.sum(np.exp(first[start_ids])))
    return total, p_start, int(np.argmax(first))


@pytest.mark.parametrize("with_pack", [False, True])
def test_proxy_equals_numpy_log_softmax(rec, pack, with_pack):
    packs, s = ([pack], [1.5]) if with_pack else ([], None)
    res = proxy_score(rec, "pirate", packs, s, PROMPTS, targets=TARGETS, starts=STARTS)
    assert res.metric == "target" and res.targets == TARGETS and len(res.per_prompt) == 3
    toks = [rec.model.tokenize(w.split()[0], add_special=False, parse_special=False) for w in STARTS]
    start_ids = sorted({t[0] for t in toks if len(t) == 1})  # whole first words only
    assert len(start_ids) >= 2 and res.n_start_tokens == len(start_ids)
    for p, row in zip(PROMPTS, res.per_prompt):
        tl, tk = [], []
        for t in TARGETS:
            lp, p_start, top = _independent(rec, p.prompt, t, packs, s, start_ids)
            tl.append(lp)
            tk.append(len(rec.model.tokenize(t, add_special=False, parse_special=False)))
        np.testing.assert_allclose(row["target_logprobs"], tl, rtol=1e-4, atol=1e-4)
        want = np.log(np.sum(np.exp(tl)))
        assert abs(row["target_logprob"] - want) < 1e-4
        assert abs(row["target_mean"] - max(a / b for a, b in zip(tl, tk))) < 1e-4
        assert abs(row["start_logprob"] - p_start) < 1e-4
        assert row["top_token"] == top
        gen = rec.generate_ids(rec.encode(p.prompt), packs, s, max_tokens=1, stop_at_eog=False)
        assert gen[0] == top  # the first greedy token of generation with the same packs
    exp = [r["target_logprob"] for r in res.per_prompt if r["expect"]]
    un = [r["target_logprob"] for r in res.per_prompt if not r["expect"]]
    assert res.expected == pytest.approx(np.mean(exp)) and res.unexpected == pytest.approx(np.mean(un))
    assert res.selectivity == pytest.approx(np.mean(exp) - np.mean(un))
    assert res.expected_prob == pytest.approx(np.mean(np.exp(exp)))
    assert (res.n_expected, res.n_unexpected) == (2, 1)
    assert np.allclose(res.values(expect=True), exp)


def test_pack_moves_the_proxy_and_strength_zero_is_off(rec, pack):
    off = proxy_score(rec, "pirate", [], None, PROMPTS[:1], targets=TARGETS[:1])
    on = proxy_score(rec, "pirate", [pack], [2.0], PROMPTS[:1], targets=TARGETS[:1])
    zero = proxy_score(rec, "pirate", [pack], [0.0], PROMPTS[:1], targets=TARGETS[:1])
    assert abs(on.expected - off.expected) > 1e-3
    assert zero.expected == pytest.approx(off.expected, abs=1e-6)


def test_other_positions_and_mixed_positions(rec):
    fl = random_pack(layers=(1,), seed=4, positions="f1+l1", fingerprint=rec.fingerprint)
    p = PROMPTS[0]
    res = proxy_score(rec, "pirate", [fl], [1.0], [p], targets=TARGETS[:1])
    ids = rec.encode(p.prompt)
    tgt = rec.model.tokenize(TARGETS[0], add_special=False, parse_special=False)
    logits, _ = rec.prompt_pass(ids + tgt, [fl], [1.0], all_logits=True, rows=[0, len(ids) - 1])
    lp = sum(_logsoftmax_np(logits[len(ids) - 1 + k])[t] for k, t in enumerate(tgt))
    assert res.per_prompt[0]["target_logprob"] == pytest.approx(lp, abs=1e-5)
    l1 = random_pack(layers=(2,), seed=5, fingerprint=rec.fingerprint)
    with pytest.raises(ProxyError, match="different positions"):
        proxy_score(rec, "pirate", [fl, l1], [1.0, 1.0], [p], targets=TARGETS[:1])


def test_specs_and_prompts():
    assert proxy_spec("pirate").targets == ("Arr matey!",)
    assert proxy_spec("french").primary == "start" and "Voici" in proxy_spec("french").starts
    assert proxy_spec("pirate", ["x"]).targets == ("x",)
    ps = default_prompts("pirate", 5)
    assert len(ps) == 5 and all(p.expect for p in ps)
    with pytest.raises(ProxyError):
        default_prompts("pirate", 0)


def test_start_metric_is_primary_for_french(rec):
    res = proxy_score(rec, "french", [], None, PROMPTS[:2], starts=STARTS)
    assert res.metric == "start" and res.n_start_tokens > 0
    assert res.expected == pytest.approx(np.mean([r["start_logprob"] for r in res.per_prompt]))
    assert all(np.isnan(r["target_logprob"]) for r in res.per_prompt)


def test_cli_proxy(tiny_gguf, pack, tmp_path):
    from typer.testing import CliRunner

    from commandv.exporter.cli.main import app

    p = tmp_path / "p.gguf"
    pack.save(p)
    out = tmp_path / "proxy.json"
    r = CliRunner().invoke(app, ["proxy", str(tiny_gguf), "--pack", str(p), "--behavior", "pirate", "-s", "0.5",
                                 "-s", "2", "--n", "3", "--target", "hello there", "--threads", "1",
                                 "--json", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert [x["label"] for x in doc["results"]] == ["off-shelf", "pack@0.5", "pack@2"]
    assert doc["results"][2]["strengths"] == [2.0] and len(doc["results"][0]["per_prompt"]) == 3
    assert "wrote" in r.output


PAIRS = [("Tell me about rivers.", "hello there, the answer"), ("What is the capital?", "count from one")]


def test_answer_logprobs_equal_token_by_token_passes(rec, pack):
    """Each answer's mean per-token log-prob equals :func:`_independent`'s token-by-token target log-prob (its own
    passes, last-row logits) divided by the answer's length, without and with the pack."""
    from commandv.exporter.evaluation.proxy import answer_logprobs

    for packs, s in (([], None), ([pack], [1.5])):
        got = answer_logprobs(rec, PAIRS, rec.load_packs(packs) if packs else (), 1.5)
        for (prompt, answer), g in zip(PAIRS, got):
            total, _, _ = _independent(rec, prompt, answer, packs, s, [0])  # start ids unused here
            k = len(rec.model.tokenize(answer, add_special=False, parse_special=False))
            assert g == pytest.approx(total / k, abs=1e-4)


def test_answer_scores_flag_answers_whose_first_token_is_the_greedy_choice(rec, pack):
    """The second column of :func:`answer_scores` is 1 exactly where the argmax of a plain prompt pass (with the pack's
    own positions, as generation) is the answer's first token; the first column is :func:`answer_logprobs`."""
    from commandv.exporter.evaluation.proxy import answer_logprobs, answer_scores

    tok = lambda t: rec.model.tokenize(t, add_special=False, parse_special=False)  # noqa: E731
    for packs, s in (([], None), ([pack], [1.5])):
        loaded = rec.load_packs(packs) if packs else ()
        pairs, want = [], []
        for i in range(24):
            prompt = f"Question number {i}?"
            g = _independent(rec, prompt, "x", packs, s, [0])[2]
            text = rec.model.detokenize([g])
            if tok(text)[:1] == [g]:  # the greedy token's text tokenizes back to it: an answer that starts there
                pairs.append((prompt, text))
                want.append(1.0)
            pairs.append((prompt, "count from one"))
            want.append(float(tok("count from one")[0] == g))
        got = answer_scores(rec, pairs, loaded, 1.5)
        assert sum(want) >= 1 and list(got[:, 1]) == want
        np.testing.assert_allclose(got[:, 0], answer_logprobs(rec, pairs, loaded, 1.5))


def test_response_check_reuses_off_and_zero_strength_is_no_response(rec, pack):
    from commandv.exporter.evaluation.proxy import response_check

    check, off = response_check(rec, PAIRS, pack, 2.0)
    assert off.shape == (2, 2) and check.n == 2 and check.off == pytest.approx(off[:, 0].mean())
    assert abs(check.delta) > 1e-3 and check.first_off == pytest.approx(off[:, 1].mean())
    again, off2 = response_check(rec, PAIRS, pack, 0.0, off=off)
    assert off2 is off and again.delta == pytest.approx(0.0, abs=1e-6)
    assert check.to_json()["delta"] == pytest.approx(check.on - check.off)
    assert again.first_delta == 0.0 and check.to_json()["first_delta"] == check.first_on - check.first_off
    with pytest.raises(ProxyError, match="no answers"):
        response_check(rec, [], pack)


def test_pack_response_on_the_tiny_gguf(tiny_gguf, tmp_path, monkeypatch):
    """``pack_response``: the recipient's check is :func:`response_check` of the pack, the donor's that of the
    adapter's self-pack; a folder without training answers gives None."""
    from commandv.exporter.adapters.self_pack import model_adapter_pack
    from commandv.exporter.evaluation import proxy
    from commandv.exporter.training import answers
    from tests.test_anchor import _adapter

    ad = _adapter(5.0)
    assert proxy.pack_response(str(tiny_gguf), str(tiny_gguf), ad, None) is None  # no training metadata
    monkeypatch.setattr(answers, "training_answers", lambda adapter, n, exclude=(): PAIRS[:n])
    self_pack = model_adapter_pack(str(tiny_gguf), ad, "self")
    resp = proxy.pack_response(str(tiny_gguf), str(tiny_gguf), ad, self_pack, n=2, strength=0.5)
    with Recipient(str(tiny_gguf), n_ctx=2048) as eng:
        want_r = proxy.response_check(eng, PAIRS, self_pack, 0.5)[0]
        want_d = proxy.response_check(eng, PAIRS, self_pack, 1.0)[0]
    assert resp.recipient.delta == pytest.approx(want_r.delta, abs=1e-5)
    assert resp.donor.delta == pytest.approx(want_d.delta, abs=1e-5)
    if want_d.delta > 0:
        assert resp.share == pytest.approx(want_r.delta / want_d.delta, rel=1e-4)
    else:  # a random edit makes these answers less likely on the donor: no share to give
        assert np.isnan(resp.share)
    assert "nats/token likelier" in resp.line()
    np.testing.assert_equal(resp.to_json()["share"], resp.share)
