"""Behavior-anchored token rows: the donor's own text with its adapter (llama.cpp on the tiny GGUF)."""

import numpy as np
import pytest

from commandv.exporter.adapters.folder import Adapter
from commandv.exporter.adapters.interventions import DonorEdit

PROMPTS = ["Please write a short story about a robot.", "count from one to ten", "What is the capital of France?"]


def _adapter(scale: float, d: int = 64) -> Adapter:
    """A NodiReFT-form adapter on layers 1 and 2 of the tiny GGUF whose edit is ``scale`` times a fixed one."""
    rng = np.random.default_rng(3)
    edits = [DonorEdit(layer, rng.standard_normal((d, 4)) * 0.1, rng.standard_normal(4) * scale,
                       rng.standard_normal((4, d)) * scale, e=rng.standard_normal(d) * scale, kind="NodiReFT")
             for layer in (1, 2)]
    return Adapter(edits=edits, kind="NodiReFT", positions="l1", component="block_output", sha256="a" * 64,
                   source="test")


@pytest.mark.llama
def test_behavior_texts_are_the_donor_answers_with_its_adapter(tiny_gguf):
    """A zero edit gives exactly the donor's plain greedy answers (no pack at all: an independent path); a strong
    edit changes them; every text is non-blank and at most the token budget."""
    pytest.importorskip("llama_cpp")
    from commandv.exporter.transfer.anchor import behavior_texts
    from commandv.runtime.engines.llama.engine import Recipient

    with Recipient(str(tiny_gguf), n_ctx=512) as eng:
        plain = [eng.generate(p, max_tokens=8) for p in PROMPTS]
    zero = behavior_texts(str(tiny_gguf), _adapter(0.0), PROMPTS, max_tokens=8, progress=False)
    assert zero == [t for t in plain if t.strip()]
    strong = behavior_texts(str(tiny_gguf), _adapter(50.0), PROMPTS, max_tokens=8, progress=False)
    assert strong != zero and all(t.strip() for t in strong)


@pytest.mark.llama
def test_anchor_texts_rows_follow_the_general_rows(tiny_gguf, tmp_home):
    """``add_token_rows(..., texts=T)`` = the general prompts' aligned rows, then T's, each captured on its own."""
    pytest.importorskip("llama_cpp")
    from commandv.profiles.prompts import load_prompt_set
    from commandv.profiles.token_rows import add_token_rows, aligned_rows, capture_token_rows
    from tests.test_store import make_profile

    m = str(tiny_gguf)
    base = make_profile(n=5, d=64, L=4)
    texts = ["Bonjour, je suis un robot.", "Arr matey! Land ho."]
    dprof, rprof = add_token_rows(m, m, base, base, 3, texts=texts, progress=False)
    parts = [aligned_rows(capture_token_rows(m, ps, progress=False), capture_token_rows(m, ps, progress=False))
             for ps in (load_prompt_set("general", limit=3).prompts, texts)]
    for layer in range(4):
        want = np.concatenate([base.layers[layer]] + [XD[layer] for XD, _ in parts])
        np.testing.assert_array_equal(dprof.layers[layer], want)
        assert rprof.layers[layer].shape == want.shape


def test_eval_settings_anchor_texts():
    from commandv.exporter.evaluation.pair import EvalSettingsError, PairEvalSettings

    for kw, words in (({"anchor_texts": -1}, "anchor_texts must be >= 0"),
                      ({"anchor_texts": 8, "method": "pinv"}, "which pinv does not fit")):
        with pytest.raises(EvalSettingsError, match=words):
            PairEvalSettings(**kw).validate()
    PairEvalSettings(anchor_texts=8).validate()
    PairEvalSettings(anchor_texts=8, method="pinv-tokens").validate()


def test_training_prompts_are_balanced_and_never_reported():
    """The anchor prompts: equal numbers per label of the training pool, none of the reported prompts."""
    from commandv.exporter.evaluation.pair import report_prompts, training_prompts
    from commandv.exporter.training.behaviors import eval_data_dir, get_behavior

    have_refusal = (eval_data_dir() / "harmbench_standard_test.jsonl").is_file()
    for behavior in ("french", "refusal") if have_refusal else ("french",):
        prompts, sources = training_prompts(behavior, 40)
        label = {sp.prompt: sp.label for sp in get_behavior(behavior).train_specs()}
        counts = {}
        for p in prompts:
            counts[label[p]] = counts.get(label[p], 0) + 1
        assert len(prompts) == len(sources) == 40 and len(set(counts.values())) == 1, counts
        assert not {p.prompt for p in report_prompts(behavior)} & set(prompts)
        assert training_prompts(behavior, 40) == (prompts, sources)  # one fixed pick
