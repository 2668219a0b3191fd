"""Render chat templates (Jinja, as transformers does) — one renderer for every backend.

Profiling, training and running must put the *same* text in front of the model
("last prompt token" is the last token of this text, generation header
included), so the HF and llama.cpp paths both call :func:`render_chat` on the
model's own template string.
"""

from __future__ import annotations

import json
from datetime import datetime


class ChatTemplateError(ValueError):
    """The template is missing or fails to render."""


def render_chat(template: str | None, messages: list[dict], add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "") -> str:
    """Render ``messages`` (``[{"role", "content"}]``) with a Jinja chat ``template``."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if not template:
        raise ChatTemplateError("the model has no chat template; pass a template or use raw prompts")

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):  # transformers' signature
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:  # tools / documents are None, as transformers passes them without tools or RAG documents
        return env.from_string(template).render(
            messages=list(messages), tools=None, documents=None, add_generation_prompt=add_generation_prompt,
            bos_token=bos_token, eos_token=eos_token)
    except (TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError,
            ZeroDivisionError, RecursionError) as exc:  # a template is a program: any failure is the template's
        detail = str(exc) if isinstance(exc, TemplateError) else f"{type(exc).__name__}: {exc}"
        raise ChatTemplateError(f"chat template failed to render: {detail}") from None


def user_turn(prompt: str) -> list[dict]:
    """The single-user-turn conversation used for profiling and running."""
    return [{"role": "user", "content": prompt}]
