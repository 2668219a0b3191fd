"""Training examples for a donor adapter: rendered prompt + response tokens, intervened at ``l1``.

An example's ``input_ids`` are the prompt rendered as one user turn with the
generation header (:func:`commandv.exporter.training.donor_gen.prompt_token_ids`, the
same tokens profiling and running use) followed by the response tokens (and
the end-of-turn token when the response is complete). ``labels`` are -100 on
the prompt. ``position`` is the prompt's last token, ``len(prompt_ids) - 1``,
where every intervention acts (pyreft's ``l1``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from commandv.exporter.training.behaviors import ExampleSpec
from commandv.exporter.training.donor_gen import Generation, prompt_token_ids
from commandv.runtime.errors import CommandVError

IGNORE = -100


class TrainDataError(CommandVError, ValueError):
    """No usable training examples, or inconsistent example inputs (one-line message)."""


@dataclass
class TrainExample:
    """``input_ids`` [T] = prompt + response, ``labels`` [T] (-100 on the prompt), ``position`` = last prompt index."""

    input_ids: list[int]
    labels: list[int]
    position: int
    source: str = ""
    label: str = ""


def select_specs(tokenizer, specs: Sequence[ExampleSpec], n: int, max_prompt_tokens: int, seed: int = 0,
                 balance: bool = False) -> list[tuple[ExampleSpec, list[int]]]:
    """Keep specs whose rendered prompt has ≤ ``max_prompt_tokens`` tokens, then pick ``n`` of them.

    ``balance``: the same number from every ``label`` group (``n // groups`` each). The pick is a
    ``random.Random(seed)`` sample; the result keeps the specs' original order.
    Returns ``[(spec, prompt_ids)]``.
    """
    if n < 1:
        raise TrainDataError(f"n_examples must be >= 1, got {n}")
    ids = prompt_token_ids(tokenizer, [s.prompt for s in specs])
    fit = [i for i, t in enumerate(ids) if 0 < len(t) <= max_prompt_tokens]
    if not fit:
        raise TrainDataError(f"no training prompt renders to at most {max_prompt_tokens} tokens")
    groups: dict[str, list[int]] = {}
    for i in fit:
        groups.setdefault(specs[i].label if balance else "", []).append(i)
    per = n // len(groups) if balance else n
    if per < 1:
        raise TrainDataError(f"n_examples={n} is smaller than the number of groups ({len(groups)})")
    rng = random.Random(seed)
    chosen: list[int] = []
    for name in sorted(groups):
        members = groups[name]
        if balance and len(members) < per:
            raise TrainDataError(f"group {name!r} has only {len(members)} prompts of ≤ {max_prompt_tokens} tokens; "
                                 f"need {per}")
        chosen += rng.sample(members, min(per, len(members)))
    return [(specs[i], ids[i]) for i in sorted(chosen)]


def response_ids(tokenizer, spec: ExampleSpec, answer: Generation | None, max_response_tokens: int) -> list[int]:
    """The response tokens: ``fixed`` text, or ``prefix`` + the donor's answer text, capped, then end-of-turn.

    The end-of-turn (eos) token closes fixed responses and donor answers that finished
    within the cap; a truncated answer gets none (it is a continuation, not an ending).
    """
    if spec.fixed is not None:
        text, complete = spec.fixed, True
    elif answer is not None:
        text, complete = spec.prefix + answer.text, answer.finished
        if not complete:  # cut mid-character, the decoded text ends in U+FFFD: do not teach that token
            text = text.rstrip("\ufffd")
    else:
        raise TrainDataError(f"example {spec.source or spec.prompt[:40]!r} needs the donor's answer but has none")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > max_response_tokens:
        ids, complete = ids[:max_response_tokens], False
    if complete and tokenizer.eos_token_id is not None:
        ids = ids + [int(tokenizer.eos_token_id)]
    if not ids:
        raise TrainDataError(f"example {spec.source or spec.prompt[:40]!r} has an empty response")
    return ids


def build_examples(tokenizer, chosen: Sequence[tuple[ExampleSpec, list[int]]],
                   answers: Sequence[Generation | None], max_response_tokens: int) -> list[TrainExample]:
    """Assemble :class:`TrainExample` s from ``select_specs`` output and the donor's answers (None for fixed)."""
    if len(chosen) != len(answers):
        raise TrainDataError(f"{len(chosen)} examples but {len(answers)} answers")
    out = []
    for (spec, p_ids), ans in zip(chosen, answers):
        r_ids = response_ids(tokenizer, spec, ans, max_response_tokens)
        out.append(TrainExample(list(p_ids) + r_ids, [IGNORE] * len(p_ids) + r_ids, len(p_ids) - 1,
                                spec.source, spec.label))
    return out


def reft_features(examples: Sequence[TrainExample], n_interventions: int) -> list[dict]:
    """pyreft's per-example dicts: ``input_ids``, ``labels``, ``intervention_locations`` [[pos]] × n_interventions."""
    return [{"input_ids": list(e.input_ids), "labels": list(e.labels),
             "intervention_locations": [[e.position]] * n_interventions} for e in examples]


def make_collator(tokenizer, model):
    """pyreft's ``ReftDataCollator`` over transformers' ``DataCollatorForSeq2Seq`` (right padding).

    Right padding keeps every example's tokens at their own indices, so the stored
    ``intervention_locations`` stay valid in the padded batch.
    """
    import pyreft
    from transformers import DataCollatorForSeq2Seq

    inner = DataCollatorForSeq2Seq(tokenizer=tokenizer, model=model, label_pad_token_id=IGNORE, padding="longest")
    collator = pyreft.ReftDataCollator(data_collator=inner)

    def collate(features: list[dict]):
        old = tokenizer.padding_side
        tokenizer.padding_side = "right"
        try:
            return collator([dict(f) for f in features])
        finally:
            tokenizer.padding_side = old

    return collate
