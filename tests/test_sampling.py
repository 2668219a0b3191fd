"""Sampling logits that an absurd edit strength broke (runtime/engines/sampling.py, issue #19): NaN or all -inf
logits give a one-line SamplingError instead of numpy's traceback; +inf logits share the probability."""

from __future__ import annotations

import numpy as np
import pytest

from commandv.runtime.engines.sampling import Sampler, SamplingError
from tests.test_llama_parity import random_pack

PROMPT = "Tell me something nice about rivers."
ABSURD = 1e300  # finite, so the request is accepted; the edited hidden states overflow to inf and then NaN


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_nan_or_all_minus_inf_logits_are_a_one_line_error(temperature):
    s = Sampler(temperature=temperature, top_p=0.9, seed=0)
    logits = np.array([0.5, np.nan, 2.0, np.nan])
    with pytest.raises(SamplingError, match=r"^cannot pick a token: the model's logits 2 of 4 are NaN \(") as err:
        s(logits)
    assert "\n" not in str(err.value) and "strength" in str(err.value)
    with pytest.raises(SamplingError, match="logits all are -inf"):
        s(np.full(3, -np.inf))


def test_plus_inf_logits_share_the_probability():
    logits = np.array([1.0, np.inf, 50.0, np.inf, -np.inf])
    assert Sampler(0.0)(logits) == 1  # greedy: the first of the largest
    s = Sampler(temperature=0.7, seed=0)
    draws = np.array([s(logits) for _ in range(2000)])
    assert set(draws.tolist()) == {1, 3}
    assert abs((draws == 1).mean() - 0.5) < 0.05  # the softmax limit: uniform over the +inf entries
    top = Sampler(temperature=1.0, top_p=0.3, seed=1)
    assert {top(logits) for _ in range(50)} == {1}  # top-p keeps the first of the two equal ones
    # ordinary logits are unchanged: the same draws as numpy's own softmax sampling with that seed
    z = np.array([0.0, np.log(3.0), -2.0])
    p = np.exp(z) / np.exp(z).sum()
    order = np.argsort(-p, kind="stable")
    rng = np.random.default_rng(5)
    want = [int(order[rng.choice(3, p=p[order] / p[order].sum())]) for _ in range(50)]
    s = Sampler(temperature=1.0, seed=5)
    assert [s(z) for _ in range(50)] == want


@pytest.mark.llama
@pytest.mark.parametrize("native", [True, False])
def test_llama_engine_absurd_strength_is_a_one_line_error(tiny_gguf, native):
    pytest.importorskip("llama_cpp")
    from commandv.runtime.engines.llama.engine import Recipient
    from commandv.runtime.pack.policy import PackPolicy

    with Recipient(tiny_gguf, n_ctx=128, n_threads=1, native=native, policy=PackPolicy("off")) as r:
        pack = random_pack(layers=(1,), seed=1, scale=1.0, act="silu", fingerprint=r.fingerprint)
        logits, _ = r.prompt_pass(r.encode(PROMPT), [pack], [ABSURD])
        assert np.isnan(logits).any()  # the case this is about
        for temperature in (1.0, 0.0):
            with pytest.raises(SamplingError, match=r"^cannot pick a token: the model's logits \d+ of \d+ are NaN"):
                r.generate(PROMPT, packs=[pack], strengths=[ABSURD], temperature=temperature, seed=0,
                           max_tokens=3)
        want = r.generate(PROMPT, max_tokens=3)  # the model keeps working
        assert isinstance(want, str) and r.generate(PROMPT, max_tokens=3) == want


def test_torch_engine_absurd_strength_is_a_one_line_error(tiny_hf):
    from commandv.runtime.engines.reference import TorchRecipient
    from commandv.runtime.pack.policy import PackPolicy

    eng = TorchRecipient(*tiny_hf, policy=PackPolicy("off"), arch="llama")
    pack = random_pack(layers=(1,), seed=1, scale=1.0, act="silu")
    with pytest.raises(SamplingError, match=r"^cannot pick a token: the model's logits \d+ of \d+ are NaN"):
        eng.generate(PROMPT, packs=[pack], strengths=[ABSURD], max_new_tokens=2, force=True)
    assert isinstance(eng.generate(PROMPT, max_new_tokens=2), str)
