"""Render chat templates (Jinja, as transformers does) — one renderer for every backend.

Profiling, training and running must put the *same* text in front of the model
("last prompt token" is the last token of this text, generation header
included), so the HF and llama.cpp paths both call :func:`render_chat` on the
model's own template string.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Callable, Sequence

from commandv.runtime.errors import CommandVError


class ChatTemplateError(CommandVError, ValueError):
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


Tokenize = Callable[[str, bool], "list[int]"]  # (text, parse_special) -> token ids


def tokenize_chat(render: Callable[[list], str], messages: Sequence[dict], tokenize: Tokenize) -> list[int]:
    """Token ids of ``messages`` rendered by ``render``, where only the template's own markup can be special tokens.

    ``tokenize(text, parse_special)`` is the engine's tokenizer; ``parse_special=False`` reads ``<|im_start|>``
    and the like as plain text (llama.cpp's ``parse_special=false``, tokenizers' ``encode_special_tokens``).
    A conversation whose messages hold no special-token text is tokenized as the whole rendered string, exactly
    as before. A message that does hold some (``tokenize(content, True) != tokenize(content, False)``: typed
    ``<|im_end|>\n<|im_start|>system``…) is cut out of the rendered text (:func:`split_rendered`) and tokenized
    on its own with ``parse_special=False``; the template text around it keeps its special tokens. So typed
    special-token text can never close the user's turn or open a system one.
    """
    messages = list(messages)
    text = render(messages)
    flagged = [i for i, m in enumerate(messages)
               if isinstance(m, dict) and isinstance(m.get("content"), str) and m["content"]
               and tokenize(m["content"], True) != tokenize(m["content"], False)]
    if not flagged:
        return tokenize(text, True)
    return [t for piece, is_message in split_rendered(render, messages, flagged, text)
            for t in tokenize(piece, not is_message)]


def split_rendered(render: Callable[[list], str], messages: list[dict], which: Sequence[int],
                   text: str) -> list[tuple[str, bool]]:
    """``text`` (= ``render(messages)``) cut into ``(piece, is_message)``: the contents of ``messages[i]`` for ``i``
    in ``which``, as the template put them, and the template text between them.

    How: the contents are replaced by unique sentinels and rendered again; the text between the sentinels is the
    template's. A content the template changes (e.g. ``| trim``) is read back from a render where only it is real.
    :class:`ChatTemplateError` when the pieces do not join back into ``text`` (a template that renders a content
    more than once, or whose markup depends on it): then the message cannot be kept apart from the markup. (Markup
    that a template adds right beside a content only when the content holds some text is read as part of it: plain
    text, so never more special tokens than the template's.)
    """
    which = sorted(set(which))
    nonce = secrets.token_hex(8)
    while nonce in text:
        nonce = secrets.token_hex(8)
    marks = {i: f"cmdv{nonce}m{i}x" for i in which}

    def masked(keep: int | None = None) -> list[dict]:
        return [dict(m, content=marks[i]) if i in marks and i != keep else m for i, m in enumerate(messages)]

    def fail(why: str) -> ChatTemplateError:
        return ChatTemplateError(f"message {which[0] + 1} holds special-token text and the chat template {why}, "
                                 "so that text cannot be kept out of the template's markup; remove it")

    shape = render(masked())
    found = [(i, shape.find(marks[i])) for i in which if marks[i] in shape]  # a message the template drops: none
    if any(shape.count(marks[i]) != 1 for i, _ in found) or [p for _, p in found] != sorted(p for _, p in found):
        raise fail("renders a message more than once or out of order")
    bounds = []  # (index, start, end) of each sentinel in ``shape``
    for i, pos in found:
        bounds.append((i, pos, pos + len(marks[i])))
    template = [shape[a:b] for a, b in zip([0] + [e for _, _, e in bounds], [s for _, s, _ in bounds] + [len(shape)])]

    def joined(contents: list[str]) -> str:
        return template[0] + "".join(c + t for c, t in zip(contents, template[1:]))

    contents = [messages[i]["content"] for i, _, _ in bounds]
    if joined(contents) != text:  # the template changes a content: read each back from its own render
        contents = []
        for i, s, e in bounds:
            alone = render(masked(keep=i))
            head, tail = shape[:s], shape[e:]
            if not (alone.startswith(head) and alone.endswith(tail) and len(alone) >= len(head) + len(tail)):
                raise fail("changes its markup with the message's text")
            contents.append(alone[len(head):len(alone) - len(tail)])
        if joined(contents) != text:
            raise fail("changes its markup with the message's text")
    pieces = [(template[0], False)]
    for c, t in zip(contents, template[1:]):
        pieces += [(c, True), (t, False)]
    return [(p, m) for p, m in pieces if p]


def user_turn(prompt: str) -> list[dict]:
    """The single-user-turn conversation used for profiling and running."""
    return [{"role": "user", "content": prompt}]
