"""Greedy generation on the workstation, with or without a live pyreft adapter, plus an answer cache.

Prompts arrive already rendered and tokenized (see :func:`prompt_token_ids`),
so generation, training and profiling all see the same tokens. Batches are
left-padded, so column ``L-1`` is every prompt's last token: that is where a
pyreft adapter intervenes (position ``l1``), on the prompt pass only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from commandv.profiles.capture_hf import left_pad_batch, render_prompts
from commandv.runtime.atomic import atomic_path
from commandv.runtime.errors import CommandVError
from commandv.runtime.progress import progress_bar

_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>", "</s>")


class GenerationError(CommandVError, ValueError):
    """Bad generation inputs (empty prompt, bad sizes) or an unreadable cache (one-line message)."""


@dataclass
class Generation:
    """One greedy continuation: ``ids`` the new tokens (stop token excluded), ``finished`` when a stop
    token ended it before ``max_new_tokens``; ``text`` decoded without special tokens."""

    text: str
    ids: list[int]
    finished: bool


def prompt_token_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt rendered as one user turn + generation header (the project's renderer), no extra specials."""
    return render_prompts(tokenizer, list(prompts), template=True)[1]


def stop_token_ids(tokenizer) -> list[int]:
    """The tokenizer's eos id plus any end-of-turn tokens it knows."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in _STOP_TOKENS if t in vocab]
    return sorted(set(ids))


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(stop_token_ids(tokenizer)[0]) if stop_token_ids(tokenizer) else 0


def greedy_generate(model, tokenizer, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int = 24,
                    batch_size: int = 8, reft_model=None, progress: bool = True,
                    label: str = "generating") -> list[Generation]:
    """Greedy continuations of ``prompt_ids`` (token lists), in input order.

    With ``reft_model`` (a pyreft/pyvene model wrapping ``model``) every intervention acts on the
    last prompt token during the prompt pass, as pyreft's own generation does.
    """
    import torch
    from transformers import GenerationConfig

    if max_new_tokens < 1 or batch_size < 1:
        raise GenerationError(f"max_new_tokens and batch_size must be >= 1 (got {max_new_tokens}, {batch_size})")
    if any(len(p) == 0 for p in prompt_ids):
        raise GenerationError("a prompt has no tokens")
    stops = stop_token_ids(tokenizer)
    pad = _pad_id(tokenizer)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops or None,
                           pad_token_id=pad)
    n_iv = len(reft_model.interventions) if reft_model is not None else 0
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    out: list[Generation | None] = [None] * len(prompt_ids)
    with progress_bar(label, len(order), enabled=progress) as advance, torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            ids, mask = left_pad_batch([prompt_ids[i] for i in idx], pad)
            L = ids.shape[1]
            base = {"input_ids": ids, "attention_mask": mask}
            if reft_model is None:
                seqs = model.generate(**base, generation_config=cfg)
            else:
                locs = {"sources->base": (None, [[[L - 1]] * len(idx)] * n_iv)}
                _, seqs = reft_model.generate(base, unit_locations=locs, intervene_on_prompt=True,
                                              generation_config=cfg)
            for row, i in enumerate(idx):
                new = seqs[row, L:].tolist()
                cut = next((k for k, t in enumerate(new) if t in stops), None)
                kept = new if cut is None else new[:cut]
                out[i] = Generation(tokenizer.decode(kept, skip_special_tokens=True), kept, cut is not None)
            advance(len(idx))
    return out  # type: ignore[return-value]


def answer_key(prompt: str, model_id: str, max_new_tokens: int) -> str:
    """The answer cache's key of ``prompt`` answered by ``model_id`` in at most ``max_new_tokens`` tokens."""
    return hashlib.sha256(json.dumps([model_id, max_new_tokens, prompt]).encode("utf-8")).hexdigest()[:24]


def read_answer_cache(cache: Path) -> dict[str, Generation]:
    """``{key: Generation}`` of an answer cache file (JSONL, see :func:`cached_answers`); ``{}`` when it is
    missing. A malformed line: :class:`GenerationError`."""
    have: dict[str, Generation] = {}
    if not cache.is_file():
        return have
    for lineno, line in enumerate(cache.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            have[obj["key"]] = Generation(str(obj["text"]), [int(t) for t in obj["ids"]], bool(obj["finished"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise GenerationError(f"{cache}: malformed answer cache line {lineno}; delete the file") from None
    return have


def cached_answers(model, tokenizer, prompts: Sequence[str], cache: Path | None, model_id: str,
                   max_new_tokens: int = 24, batch_size: int = 8, progress: bool = True,
                   save_every: int = 64) -> list[Generation]:
    """The donor's own greedy answers to ``prompts``, reusing ``cache`` (JSONL) where it has them.

    Cache lines are ``{"key", "text", "ids", "finished"}``; ``key`` hashes the model id,
    ``max_new_tokens`` and the prompt, so no prompt text is stored. Missing answers are
    generated shortest prompt first, in the same batches as one :func:`greedy_generate` call,
    and the cache is rewritten atomically after every ``save_every`` prompts (rounded to whole
    batches), so an interrupted run keeps what it finished.
    """
    have = read_answer_cache(cache) if cache is not None else {}
    keys = [answer_key(p, model_id, max_new_tokens) for p in prompts]
    todo = sorted({k: i for i, k in enumerate(keys) if k not in have}.values())
    if todo:
        ids = prompt_token_ids(tokenizer, [prompts[i] for i in todo])
        by_len = sorted(range(len(todo)), key=lambda j: len(ids[j]))  # greedy_generate's own (stable) order
        step = max(1, save_every // batch_size) * batch_size
        for s in range(0, len(by_len), step):
            part = by_len[s:s + step]
            gens = greedy_generate(model, tokenizer, [ids[j] for j in part], max_new_tokens, batch_size,
                                   progress=progress, label=f"donor answers {s + len(part)}/{len(todo)}")
            for j, g in zip(part, gens):
                have[keys[todo[j]]] = g
            if cache is not None:
                with atomic_path(cache) as tmp:
                    tmp.write_text("".join(json.dumps({"key": k, **asdict(g)}, ensure_ascii=False) + "\n"
                                           for k, g in sorted(have.items())), encoding="utf-8")
    return [have[k] for k in keys]
