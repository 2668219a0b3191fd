"""Request validation shared by the llama.cpp and ONNX Runtime engines: prompts, messages, token ids."""

from __future__ import annotations

from .errors import EngineError


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
