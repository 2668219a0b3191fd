"""Request validation shared by the engines: prompts, messages, token ids, strengths, targeted rows, packs
against the model."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from commandv.runtime.edit.positions import parse_positions
from commandv.runtime.errors import EngineError
from commandv.runtime.pack.model import BehaviorPack, PackError


class EmptyPromptError(EngineError):
    """The prompt (or message list / token list) is empty."""


class PromptTooLongError(EngineError):
    """The prompt has more tokens than the context holds."""


class StaleStreamError(EngineError):
    """A streamed generation was continued after a newer request reused the context."""


def as_token_ids(ids) -> list[int]:
    """``ids`` as a list of ints (:class:`EngineError` for text or non-integers)."""
    if isinstance(ids, (str, bytes)):
        raise EngineError("token_ids must be a sequence of integers (use generate() for text)")
    try:
        return [int(t) for t in ids]
    except (TypeError, ValueError):
        raise EngineError("token_ids must be a sequence of integers") from None


class InvalidTextError(EngineError):
    """A prompt or message holds text that is not valid UTF-8 (undecodable bytes from argv or stdin)."""


def check_utf8(text: str, what: str = "prompt") -> None:
    """Refuse text that has no UTF-8 encoding, naming the first bad byte and its offset.

    Python holds bytes of argv / stdin that are not UTF-8 as lone surrogates (``surrogateescape``: byte ``0xff``
    is ``'\\udcff'``); tokenizers cannot encode them. They are refused rather than replaced, so the model never
    sees text other than what was typed. The offset counts bytes of the original input, from 0.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        offset = len(text[:exc.start].encode("utf-8"))  # all before the first bad character encodes
        bad = f"byte 0x{code - 0xdc00:02x}" if 0xdc80 <= code <= 0xdcff else f"lone surrogate U+{code:04X}"
        raise InvalidTextError(f"{what} is not valid UTF-8: {bad} at byte offset {offset}") from None


def check_user_prompt(prompt) -> None:
    """Refuse a user prompt that is not a string, is blank, or is not valid UTF-8."""
    if not isinstance(prompt, str):
        raise EngineError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise EmptyPromptError("prompt is empty")
    check_utf8(prompt)


def check_messages(messages) -> None:
    """Refuse a conversation that is not a non-empty list of ``{'role': str, 'content': str}`` dicts."""
    if isinstance(messages, (str, bytes)) or not messages:
        raise EmptyPromptError("messages must be a non-empty list of {'role', 'content'} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise EngineError(f"message {i} must be a dict with string 'role' and 'content'")
        check_utf8(m["role"], f"message {i} role")
        check_utf8(m["content"], f"message {i} content")


def check_prompt(ids: list[int], n_ctx: int, n_vocab: int) -> None:
    """Refuse an empty prompt, one longer than the context, or ids outside the vocabulary."""
    if not ids:
        raise EmptyPromptError("prompt has no tokens")
    if len(ids) > n_ctx:
        raise PromptTooLongError(f"prompt has {len(ids)} tokens, longer than the context of {n_ctx} tokens")
    bad = [t for t in ids if not 0 <= t < n_vocab]
    if bad:
        raise EngineError(f"token ids outside the vocabulary [0, {n_vocab}): {bad[:5]}")


class StrengthError(EngineError):
    """A pack strength is not a finite number, or the strengths do not match the packs."""


class PositionsError(EngineError):
    """A pack targets prompt positions beyond the prompt."""


def normalize_strengths(n_packs: int, strengths: float | Sequence[float] | None) -> list[float]:
    """One finite strength per pack (None → 1.0 each; a number → that for every pack)."""
    if strengths is None:
        out = [1.0] * n_packs
    elif isinstance(strengths, (int, float, np.floating, np.integer)):
        out = [float(strengths)] * n_packs
    else:
        out = [float(s) for s in strengths]
        if len(out) != n_packs:
            raise StrengthError(f"{n_packs} packs but {len(out)} strengths")
    for i, s in enumerate(out):
        if not math.isfinite(s):
            raise StrengthError(f"strength {s} for pack {i} is not a finite number")
    return out


def target_rows(positions: str, n: int, rows: Sequence[int] | None, where: str) -> list[int]:
    """Absolute prompt rows targeted by ``positions`` in a prompt of ``n`` tokens (``rows`` overrides; tests).

    The one positions → rows step of every engine that edits by row (llama.cpp, ONNX); raises
    :class:`PositionsError` (``where: …`` naming the pack / entry) when the spec reaches beyond the prompt."""
    if rows is not None:
        idx = sorted({int(r) for r in rows})
        if idx and (idx[0] < 0 or idx[-1] >= n):
            raise PositionsError(f"rows {idx[:4]}… outside the prompt of {n} tokens")
        return idx
    try:
        return parse_positions(positions).indices(n)
    except ValueError as exc:
        raise PositionsError(f"{where}: {exc}") from None


def check_packs(packs: Sequence[BehaviorPack], fingerprint: str | None, arch: str, n_layer: int, d_model: int,
                force: bool) -> None:
    """Refuse packs made for another model (``force`` skips arch/fingerprint, never d/n_layer)."""
    for p in packs:
        if not isinstance(p, BehaviorPack):
            raise PackError(f"expected a BehaviorPack or a pack file, got {type(p).__name__}")
        p.check_model(fingerprint, arch, n_layer, d_model, force=force)
