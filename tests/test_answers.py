"""An adapter folder's own training answers (exporter/training/answers.py), rebuilt from its answer cache."""

import hashlib
import json
from types import SimpleNamespace

import pytest

from commandv.exporter.training import answers
from commandv.exporter.training.answers import training_answers
from commandv.exporter.training.behaviors import PIRATE_PREFIX, get_behavior

META = {"behavior": "pirate", "donor_model_id": "donor-x", "max_response_tokens": 24}


def _key(prompt: str, model_id: str = "donor-x", max_new: int = 24) -> str:
    """The cache key as the training run writes it, spelled out here (sha256 of [model id, budget, prompt])."""
    return hashlib.sha256(json.dumps([model_id, max_new, prompt]).encode("utf-8")).hexdigest()[:24]


def _folder(tmp_path, lines, meta=META):
    (tmp_path / "donor_answers.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return SimpleNamespace(meta=meta, source=str(tmp_path))


def test_pirate_answers_are_prefix_plus_the_cached_answer(tmp_path):
    specs = get_behavior("pirate").train_specs()
    lines = [{"key": _key(s.teacher_prompt), "text": f"answer {i}", "ids": [1], "finished": True}
             for i, s in enumerate(specs[:5]) if i != 2]  # the third prompt was never answered
    got = training_answers(_folder(tmp_path, lines), n=3)
    assert got == [(specs[0].prompt, PIRATE_PREFIX + "answer 0"), (specs[1].prompt, PIRATE_PREFIX + "answer 1"),
                   (specs[3].prompt, PIRATE_PREFIX + "answer 3")]


def test_answers_of_another_model_or_budget_are_not_used(tmp_path):
    specs = get_behavior("pirate").train_specs()
    lines = [{"key": _key(specs[0].teacher_prompt, "other"), "text": "a", "ids": [1], "finished": True},
             {"key": _key(specs[1].teacher_prompt, max_new=8), "text": "b", "ids": [1], "finished": True}]
    assert training_answers(_folder(tmp_path, lines)) == []


def test_french_pairs_the_plain_prompt_with_the_answer_to_the_asked_one(tmp_path):
    spec = get_behavior("french").train_specs()[0]
    lines = [{"key": _key(spec.teacher_prompt), "text": "Bonjour.", "ids": [1], "finished": True}]
    got = training_answers(_folder(tmp_path, lines, {**META, "behavior": "french"}))
    assert got == [(spec.prompt, "Bonjour.")] and spec.teacher_prompt != spec.prompt


def test_refusal_uses_the_fixed_answer_of_harmful_prompts_only(tmp_path):
    b = get_behavior("refusal")
    try:
        specs = b.train_specs()
    except Exception as e:  # the shared evaluation data is not on this machine
        pytest.skip(str(e))
    got = training_answers(_folder(tmp_path, [], {**META, "behavior": "refusal"}), n=500)
    harmful = [s for s in specs if s.label != "harmless"]
    assert got == [(s.prompt, s.fixed) for s in harmful[:500]] and all(s.fixed for s in harmful[:500])


@pytest.mark.parametrize("meta", [{}, {**META, "behavior": "no-such-behavior"}, {**META, "donor_model_id": 3},
                                  {**META, "max_response_tokens": "24"}])
def test_a_folder_that_does_not_say_what_it_learned_gives_nothing(tmp_path, meta):
    assert training_answers(_folder(tmp_path, [], meta)) == []


def test_malformed_or_huge_caches_are_refused(tmp_path, monkeypatch):
    from commandv.exporter.training.behaviors import BehaviorError
    from commandv.exporter.training.donor_gen import GenerationError

    (tmp_path / "donor_answers.jsonl").write_text("{not json\n", encoding="utf-8")
    with pytest.raises(GenerationError, match="malformed answer cache line 1"):
        training_answers(SimpleNamespace(meta=META, source=str(tmp_path)))
    monkeypatch.setattr(answers, "MAX_ANSWERS_BYTES", 4)
    with pytest.raises(BehaviorError, match="answer cache, more than"):
        training_answers(SimpleNamespace(meta=META, source=str(tmp_path)))


def test_excluded_prompts_are_skipped(tmp_path):
    specs = get_behavior("pirate").train_specs()
    lines = [{"key": _key(s.teacher_prompt), "text": f"answer {i}", "ids": [1], "finished": True}
             for i, s in enumerate(specs[:4])]
    got = training_answers(_folder(tmp_path, lines), n=2, exclude={specs[0].prompt, specs[2].prompt})
    assert got == [(specs[1].prompt, PIRATE_PREFIX + "answer 1"), (specs[3].prompt, PIRATE_PREFIX + "answer 3")]
