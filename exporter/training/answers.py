"""What an adapter folder written by ``cmdv train-demo`` was trained on, rebuilt without generating anything.

The folder keeps the donor's answers it trained on (``donor_answers.jsonl``, keyed by
:func:`~commandv.exporter.training.donor_gen.answer_key`) and its settings (``training_metadata.json``: the
behavior, the donor's model id, ``max_response_tokens``). :func:`training_answers` pairs the behavior's
training prompts with those answers::

    pairs = training_answers(load_adapter("adapters/qwen2.5-coder-0.5b-instruct/french"), n=32)
    pairs[0]        # ("How long can a dolphin live?", "Un dauphin peut vivre ...")

Only examples where the behavior shows are returned (every label but ``harmless``): a refusal adapter's
harmful prompts with its fixed refusal, a style adapter's prompts with the donor's styled answer. A folder
without training metadata (a pyreft adapter from elsewhere) gives ``[]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection

from commandv.exporter.training.behaviors import BehaviorError, get_behavior
from commandv.exporter.training.donor_gen import answer_key, read_answer_cache

ANSWERS_FILE = "donor_answers.jsonl"
MAX_ANSWERS_BYTES = 64 << 20
"""A larger answer cache is not read (adapter folders are untrusted input)."""


def training_answers(adapter, n: int = 32, exclude: Collection[str] = ()) -> list[tuple[str, str]]:
    """Up to ``n`` ``(prompt, answer text)`` pairs that ``adapter`` (a loaded
    :class:`~commandv.exporter.adapters.folder.Adapter`) was trained on where its behavior shows, in the
    behavior's own order: fixed answers as they are, the others ``prefix`` + the donor's cached answer (examples
    whose answer is not in the cache are skipped), never a prompt in ``exclude`` (e.g. the prompts a pack's
    translators were fitted on, :func:`~commandv.exporter.evaluation.pair.fit_prompt_texts`). ``[]`` when the
    folder does not say which behavior and donor it was trained with, or names a behavior this version does not
    know."""
    meta = adapter.meta or {}
    model_id, behavior = meta.get("donor_model_id"), meta.get("behavior")
    max_resp = meta.get("max_response_tokens", 24)
    if not isinstance(model_id, str) or not isinstance(behavior, str) or not isinstance(max_resp, int):
        return []
    try:
        specs = get_behavior(behavior).train_specs()
    except BehaviorError:
        return []
    cache = Path(adapter.source) / ANSWERS_FILE
    if cache.is_file() and cache.stat().st_size > MAX_ANSWERS_BYTES:
        raise BehaviorError(f"{cache}: {cache.stat().st_size / 1e6:.0f} MB answer cache, more than "
                            f"{MAX_ANSWERS_BYTES / 1e6:.0f} MB; not read")
    have = read_answer_cache(cache)
    out = []
    for spec in specs:
        if len(out) >= n:
            break
        if spec.label == "harmless" or spec.prompt in exclude:
            continue
        if spec.fixed is not None:
            out.append((spec.prompt, spec.fixed))
            continue
        ans = have.get(answer_key(spec.teacher_prompt, model_id, max_resp))
        if ans is not None and (spec.prefix + ans.text).strip():
            out.append((spec.prompt, spec.prefix + ans.text.rstrip("\ufffd")))
    return out
