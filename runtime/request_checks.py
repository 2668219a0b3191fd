"""Request validation shared by the llama.cpp and ONNX Runtime engines: prompts, messages, token ids."""

from __future__ import annotations

from .llama_edit import EngineError


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


def check_user_prompt(prompt) -> None:
    """Refuse a user prompt that is not a string or is blank."""
    if not isinstance(prompt, str):
        raise EngineError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise EmptyPromptError("prompt is empty")


def check_messages(messages) -> None:
    """Refuse a conversation that is not a non-empty list of ``{'role': str, 'content': str}`` dicts."""
    if isinstance(messages, (str, bytes)) or not messages:
        raise EmptyPromptError("messages must be a non-empty list of {'role', 'content'} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise EngineError(f"message {i} must be a dict with string 'role' and 'content'")


def check_prompt(ids: list[int], n_ctx: int, n_vocab: int) -> None:
    """Refuse an empty prompt, one longer than the context, or ids outside the vocabulary."""
    if not ids:
        raise EmptyPromptError("prompt has no tokens")
    if len(ids) > n_ctx:
        raise PromptTooLongError(f"prompt has {len(ids)} tokens, longer than the context of {n_ctx} tokens")
    bad = [t for t in ids if not 0 <= t < n_vocab]
    if bad:
        raise EngineError(f"token ids outside the vocabulary [0, {n_vocab}): {bad[:5]}")
