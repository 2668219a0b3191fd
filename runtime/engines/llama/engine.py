"""Behavior packs on a (quantized) GGUF recipient with llama.cpp — the device-side engine.

    r = Recipient("smollm2-135m-instruct")            # zoo key or .gguf path
    r.generate("Write a haiku.", packs=["style.pack.gguf"], strengths=[1.5])
    r.chat([{"role": "user", "content": "Hi"}], packs=[pack], stream=True)

Semantics are those of :mod:`commandv.runtime.engines.reference` (the reference):
the prompt is rendered with the model's chat template (generation header
included) by :func:`~commandv.runtime.models.chat_template.render_chat`; during the
prompt pass, after block ``entry.layer``, the targeted prompt rows get
``h += s · delta(h)`` (packs in list order, entries in file order,
``s = entry.strength × pack strength``); generated tokens are never edited
and see the edit through the KV cache. The prompt is decoded in chunks of at
most ``n_ubatch`` tokens, so every edited row is known per ``llama_decode``.
Packs change per request; the model and context are built once and the KV
memory is cleared between requests. Not thread-safe: one request at a time.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from commandv.runtime import crash
from commandv.runtime.engines.llama.editor import compile_entries, make_context, make_editor
from commandv.runtime.engines.llama.lowlevel import LlamaModel, _ll
from commandv.runtime.engines.request_checks import (  # noqa: F401 (re-exported)
    EmptyPromptError,
    PositionsError,
    PromptTooLongError,
    StaleStreamError,
    StrengthError,
    check_messages,
    check_user_prompt,
)
from commandv.runtime.engines.sampling import Sampler, check_stops, decode_tokens
from commandv.runtime.engines.text_engine import GenerationStats, TextEngine
from commandv.runtime.errors import EngineError  # noqa: F401 (re-exported)
from commandv.runtime.models.chat_template import render_chat, tokenize_chat, user_turn
from commandv.runtime.models.fingerprint import model_info_from_gguf
from commandv.runtime.models.ref import ModelError, resolve_model
from commandv.runtime.pack.model import PackError  # noqa: F401 (re-exported)
from commandv.runtime.pack.policy import PackPolicy

__all__ = ["Recipient", "GenerationStats", "EngineError", "EmptyPromptError", "PromptTooLongError",
           "PositionsError", "StrengthError", "StaleStreamError", "PackError"]


class Recipient(TextEngine):
    """A GGUF model in llama.cpp that applies behavior packs per request."""

    def __init__(self, model: str | os.PathLike, n_ctx: int = 4096, n_threads: int | None = None,
                 n_ubatch: int = 512, kv_type: str = "f16", force: bool = False,
                 flash_attn: bool | None = None, native: bool | None = None, policy: PackPolicy | None = None):
        """``model``: zoo key or GGUF path. ``kv_type``: ``'f16'`` or ``'f32'`` (exact).
        ``native``: None = C callback when it builds, else Python; True/False force one.
        ``policy``: signature policy / trusted keys / edit-size limit for pack files
        (default :meth:`PackPolicy.from_env`: signatures ``warn``, no size limit)."""
        if int(n_ctx) < 1 or int(n_ubatch) < 1:
            raise EngineError(f"n_ctx and n_ubatch must be >= 1, got {n_ctx} and {n_ubatch}")
        ref = resolve_model(model)
        if ref.kind != "gguf":
            raise ModelError(f"the llama.cpp engine needs a GGUF file; {model} is an HF folder")
        self.path: Path = ref.path
        self.info = model_info_from_gguf(ref.path)
        self.model = LlamaModel(ref.path)
        self.n_layer, self.d_model = self.model.n_layer, self.model.n_embd
        self.force = bool(force)
        self.policy = policy if policy is not None else PackPolicy.from_env()
        self._reference = None  # pack.policy.ReferenceStates, built on the first size-checked request
        self.n_ubatch = int(min(n_ubatch, n_ctx))
        self.editor = make_editor(self.d_model, self.n_layer, native)
        self.ctx = make_context(self.model, self.editor, n_ctx=int(n_ctx), n_batch=self.n_ubatch,
                                n_ubatch=self.n_ubatch, n_threads=n_threads, kv_type=kv_type, flash_attn=flash_attn)
        self.n_ctx = self.ctx.n_ctx
        self.n_ubatch = min(self.ctx.n_ubatch, self.ctx.n_batch)  # what llama.cpp actually uses
        self.last_stats: GenerationStats | None = None
        self._request = 0
        self._pieces: dict[int, bytes] = {}

    # ---------------------------------------------------------------- properties
    @property
    def native(self) -> bool:
        """True when the edit runs in the C callback."""
        return bool(self.editor.native)

    @property
    def chat_template(self) -> str | None:
        return self.model.chat_template

    # ------------------------------------------------------------------ prompts
    def _special_text(self, tok: int) -> str:
        return self.model.token_text(tok) if 0 <= tok < self.model.n_vocab else ""

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The conversation as text, with the GGUF's chat template."""
        return render_chat(self.model.chat_template, list(messages), add_generation_prompt,
                           self._special_text(self.model.bos), self._special_text(self.model.eos))

    def encode(self, prompt: str, template: bool = True) -> list[int]:
        """Token ids of one user prompt (templated: no extra special tokens, and special-token text typed in the
        prompt stays plain text (:func:`commandv.runtime.models.chat_template.tokenize_chat`); raw: the model's BOS rules, and special-token
        text is parsed, since the caller writes the whole prompt)."""
        check_user_prompt(prompt)
        if template:
            return tokenize_chat(self.render, user_turn(prompt), self._tokenize)
        return self.model.tokenize(prompt, add_special=True, parse_special=True)

    def encode_chat(self, messages: Sequence[dict]) -> list[int]:
        """Token ids of a conversation rendered with the chat template (generation header included); only the
        template's markup can be special tokens, never the messages' text."""
        check_messages(messages)
        return tokenize_chat(self.render, messages, self._tokenize)

    def _tokenize(self, text: str, parse_special: bool) -> list[int]:
        return self.model.tokenize(text, add_special=False, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of generated ids (control tokens dropped)."""
        return b"".join(self.token_bytes(t) for t in ids).decode("utf-8", "replace")

    def token_bytes(self, tok: int) -> bytes:
        """The bytes token id ``tok`` stands for in text (control tokens: empty), as llama.cpp renders them
        (cached per id). A multi-byte character may span two tokens, so join bytes before decoding."""
        hit = self._pieces.get(tok)
        if hit is None:
            L = _ll()
            buf = ctypes.create_string_buffer(64)
            n = L.llama_token_to_piece(self.model.vocab, int(tok), buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = L.llama_token_to_piece(self.model.vocab, int(tok), buf, -n, 0, False)
            hit = self._pieces[tok] = buf.raw[: max(n, 0)]
        return hit

    def is_eog(self, tok: int) -> bool:
        """True for end-of-generation tokens (EOS, EOT, ``<|im_end|>`` …)."""
        return bool(_ll().llama_vocab_is_eog(self.model.vocab, int(tok)))

    def eog_tokens(self) -> list[int]:
        """All end-of-generation token ids (scans the vocab)."""
        return [t for t in range(self.model.n_vocab) if self.is_eog(t)]

    # ------------------------------------------------------------------ packs
    @property
    def n_vocab(self) -> int:
        return self.model.n_vocab

    def _prepare(self, ids: Sequence[int], packs, strengths, force, rows=None):
        ids, loaded, s = self._checked_request(ids, packs, strengths, force)
        return ids, compile_entries(loaded, s, len(ids), rows)

    # ------------------------------------------------------------------ prompt pass
    def _prefill(self, ids: list[int], entries, record: np.ndarray | None, all_logits: bool) -> np.ndarray:
        """Clear memory, load the edits, decode the prompt in chunks of <= n_ubatch; logits [T or 1, V]."""
        with crash.operation(f"the prompt pass ({len(ids)} tokens, {len(entries)} edit entries) "
                             f"through {self.model.path.name}"):
            return self._prefill_chunks(ids, entries, record, all_logits)

    def _prefill_chunks(self, ids: list[int], entries, record: np.ndarray | None, all_logits: bool,
                        start: int = 0) -> np.ndarray:
        """``start`` > 0: the KV memory already holds ``ids[:start]`` (unedited rows, e.g. a served chat
        template prefix); only the rest is decoded (not with ``record`` / ``all_logits``)."""
        self._request += 1
        if start:
            self.ctx.keep_prefix(start)
        else:
            self.ctx.clear()
        self.editor.load(entries)
        self.editor.set_record(record)
        T, U = len(ids), self.n_ubatch
        every = all_logits or record is not None
        out = []
        try:
            for pos0 in range(start, T, U):
                chunk = ids[pos0:pos0 + U]
                n, last = len(chunk), pos0 + U >= T
                mode = "all" if every else ("last" if last else "none")
                out_pos = range(pos0, pos0 + n) if every else ([T - 1] if last else [])
                self.editor.begin(pos0, n, list(out_pos))
                try:
                    idx = self.ctx.decode([chunk], logits_for=mode)[0]
                finally:
                    self.editor.end()
                self.editor.check_error()
                if every:
                    out.extend(self.ctx.logits(i) for i in range(n))
                elif last:
                    out.append(self.ctx.logits(idx))
        finally:
            self.editor.set_record(None)
        return np.stack(out)

    def prompt_pass(self, ids: Sequence[int], packs=(), strengths=None, record_layers: bool = False,
                    all_logits: bool = False, rows: Sequence[int] | None = None, force: bool | None = None):
        """One edited prompt pass → ``(logits, hidden)``.

        ``logits``: ``[V]`` of the last prompt token, or ``[T, V]`` with ``all_logits``. ``hidden``:
        ``{layer: [T, d]}`` float32, every block's output after the edits (``record_layers``), else ``{}``.
        ``rows`` replaces every entry's positions with these absolute rows (tests).
        """
        ids, entries = self._prepare(ids, packs, strengths, force, rows)
        rec = np.zeros((self.n_layer, len(ids), self.d_model), np.float32) if record_layers else None
        logits = self._prefill(ids, entries, rec, all_logits)
        hidden = {i: rec[i] for i in range(self.n_layer)} if rec is not None else {}
        return (logits if all_logits else logits[-1]), hidden

    # ------------------------------------------------------------------ generation
    def _tokens(self, ids: list[int], entries, sampler: Sampler, max_tokens: int, start: tuple[float, float],
                stop_at_eog: bool = True) -> Iterator[int]:
        """Prefill now; return a generator of new token ids (EOG excluded). ``start``: when the request's
        preparation began (:meth:`GenerationStats.now`)."""
        if int(max_tokens) < 0:
            raise EngineError(f"max_tokens must be >= 0, got {max_tokens}")
        prefill = GenerationStats.now()
        logits = self._prefill(ids, entries, None, False)[-1]
        stats = GenerationStats.after_prompt(len(ids), start, prefill, native=self.native)
        self.last_stats = stats
        req = self._request

        def check() -> None:
            if req != self._request:
                raise StaleStreamError("a newer request reused the context; this stream cannot continue")

        def step(tok: int) -> np.ndarray:
            return self.ctx.logits(self.ctx.decode([[tok]], logits_for="last")[0])

        return decode_tokens(logits, sampler, max_tokens, stats, self.is_eog, step, len(ids), self.n_ctx,
                             stop_at_eog, check)

    def generate_ids(self, token_ids: Sequence[int], packs=(), strengths=None, max_tokens: int = 128,
                     temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                     force: bool | None = None, stop_at_eog: bool = True) -> list[int]:
        """New token ids after ``token_ids`` (stops at an end-of-generation token, not included, unless
        ``stop_at_eog`` is False: then exactly ``max_tokens`` unless the context fills up — benchmarks)."""
        start = GenerationStats.now()
        sampler = Sampler(temperature, top_p, seed)
        ids, entries = self._prepare(token_ids, packs, strengths, force)
        return list(self._tokens(ids, entries, sampler, max_tokens, start, stop_at_eog))

    def _text(self, ids, packs, strengths, max_tokens, temperature, top_p, seed, stop, stream, force):
        start = GenerationStats.now()
        sampler = Sampler(temperature, top_p, seed)
        stops = check_stops(stop)
        ids, entries = self._prepare(ids, packs, strengths, force)
        toks = self._tokens(ids, entries, sampler, max_tokens, start)
        return self._stream(toks, (self.token_bytes(t) for t in toks), stops, stream)

    def close(self) -> None:
        for obj in ("ctx", "editor", "model"):
            o = getattr(self, obj, None)
            if o is not None and hasattr(o, "free"):
                o.free()
