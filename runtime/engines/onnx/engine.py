"""Behavior packs on an ONNX recipient with ONNX Runtime — numpy + onnxruntime + tokenizers, no torch.

    r = OnnxRecipient("smollm2-135m-instruct")        # cached `cmdv onnx export`, an export folder or .onnx
    r.generate("Write a haiku.", packs=["style.pack.gguf"], strengths=[1.5])

The API and semantics mirror :class:`commandv.runtime.engines.llama.engine.Recipient`
(the torch engine is the reference): the prompt is rendered with the model's
chat template (stored in the export) by
:func:`~commandv.runtime.models.chat_template.render_chat` and tokenized with the
``tokenizer.json`` saved next to the ONNX file; the prompt pass feeds each
pack site's mask (pack strength on the targeted prompt rows, 0 elsewhere) and,
for a pack-inputs export, the pack tensors (see
:mod:`commandv.runtime.engines.onnx.surgery`); decode steps feed neither, so the
edits are skipped and generated tokens see them only through the KV cache
(``present.*`` fed back as ``past_key_values.*``, ORT values never copied to numpy).
Not thread-safe: one request at a time.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from commandv.runtime.engines.onnx.feeds import pack_feeds
from commandv.runtime.engines.onnx.files import (
    MODEL_FILE,
    TOKENIZER_FILE,
    check_io,
    find_onnx_model,
    onnx_export_dir,
    open_session,
)
from commandv.runtime.engines.onnx.surgery import OnnxMeta, OnnxModelError
from commandv.runtime.engines.request_checks import check_messages, check_user_prompt
from commandv.runtime.engines.sampling import Sampler, check_stops, decode_tokens
from commandv.runtime.engines.text_engine import GenerationStats, TextEngine
from commandv.runtime.errors import EngineError
from commandv.runtime.models.chat_template import render_chat, tokenize_chat, user_turn
from commandv.runtime.pack.model import BehaviorPack, PackError
from commandv.runtime.pack.policy import PackPolicy

__all__ = ["OnnxRecipient", "OnnxModelError", "onnx_export_dir", "find_onnx_model", "MODEL_FILE", "TOKENIZER_FILE"]


class OnnxRecipient(TextEngine):
    """An ONNX decoder in ONNX Runtime that applies behavior packs per request."""

    def __init__(self, model: str | os.PathLike, n_ctx: int | None = None, n_threads: int | None = None,
                 force: bool = False, quant: str = "fp32", optimization: str = "all",
                 policy: PackPolicy | None = None, n_ubatch: int = 512):
        """``model``: ``.onnx`` file, export folder, or a zoo key / GGUF exported before (``quant`` picks the
        variant). ``n_ubatch``: the prompt runs in chunks of at most this many tokens (bounds the ``[T, vocab]``
        logits). ``optimization``: ONNX Runtime graph optimization level (none, basic, extended, all).
        ``policy``: signature policy / edit-size limit for pack files (default :meth:`PackPolicy.from_env`)."""
        import onnxruntime as ort

        self.path = find_onnx_model(model, quant)
        self.session = open_session(self.path, n_threads, optimization)
        self.info: OnnxMeta = OnnxMeta.from_props(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        self.n_layer, self.d_model = int(self.info.n_layer), int(self.info.d_model)
        self._inputs, self._outputs = check_io(self.session, self.info, self.path)
        self._kv = [(f"past_key_values.{i}.{k}", f"present.{i}.{k}") for i in range(self.n_layer)
                    for k in ("key", "value")]
        tok_path = self.path.parent / TOKENIZER_FILE
        if not tok_path.is_file():
            raise OnnxModelError(f"no {TOKENIZER_FILE} next to {self.path}")
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise OnnxModelError(f"{tok_path}: not a usable tokenizer ({str(exc)[:200]})") from None
        self.n_ctx = int(min(4096 if n_ctx is None else n_ctx, self.info.n_ctx_train))
        if self.n_ctx < 1 or int(n_ubatch) < 1:
            raise EngineError(f"n_ctx and n_ubatch must be >= 1, got {n_ctx} and {n_ubatch}")
        self.n_ubatch = int(n_ubatch)
        self.force = bool(force)
        self.policy = policy if policy is not None else PackPolicy.from_env()
        self._reference = None  # pack.policy.ReferenceStates, built on the first size-checked request
        self.eog = set(int(t) for t in self.info.eog_ids)
        self.last_stats: GenerationStats | None = None
        self._ort = ort

    # ---------------------------------------------------------------- properties
    native = False  # API parity with Recipient (no eval callback here)

    @property
    def chat_template(self) -> str | None:
        return self.info.chat_template

    # ------------------------------------------------------------------ prompts
    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        return render_chat(self.info.chat_template, list(messages), add_generation_prompt,
                           self.info.bos_token, self.info.eos_token)

    def encode(self, prompt: str, template: bool = True) -> list[int]:
        """Token ids of one user prompt (templated: no extra special tokens, and special-token text typed in the
        prompt stays plain text (:func:`commandv.runtime.models.chat_template.tokenize_chat`); raw: the tokenizer's own rules)."""
        check_user_prompt(prompt)
        if template:
            return tokenize_chat(self.render, user_turn(prompt), self._tokenize)
        return list(self.tokenizer.encode(prompt, add_special_tokens=True).ids)

    def encode_chat(self, messages: Sequence[dict]) -> list[int]:
        """Token ids of a rendered conversation; only the template's markup can be special tokens."""
        check_messages(messages)
        return tokenize_chat(self.render, messages, self._tokenize)

    def _tokenize(self, text: str, parse_special: bool) -> list[int]:
        """``parse_special=False``: special tokens' text is split like any text (``encode_special_tokens``)."""
        tok = self.tokenizer
        if parse_special:
            return list(tok.encode(text, add_special_tokens=False).ids)
        tok.encode_special_tokens = True
        try:
            return list(tok.encode(text, add_special_tokens=False).ids)
        finally:
            tok.encode_special_tokens = False

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(t) for t in ids], skip_special_tokens=True)

    def is_eog(self, tok: int) -> bool:
        return int(tok) in self.eog

    def eog_tokens(self) -> list[int]:
        return sorted(self.eog)

    # ------------------------------------------------------------------ packs
    def _check_packs_fit(self, packs: list[BehaviorPack]) -> None:
        """Part of :meth:`TextEngine.load_packs` (and every request): this ONNX file must have pack sites."""
        if packs and self.info.pack_mode == "none":
            raise PackError(f"ONNX file {self.path} has no pack sites; export it with pack inputs (the default of "
                            "cmdv onnx export) or bake the pack in (cmdv onnx export --pack)")

    def pack_feeds(self, packs: Sequence[BehaviorPack], strengths: Sequence[float], n: int,
                   rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """The extra prompt-pass inputs that apply ``packs`` (checked) to a prompt of ``n`` tokens."""
        return pack_feeds(self.info, packs, strengths, n, rows, str(self.path))

    # ------------------------------------------------------------------ forward
    def _ov(self, a: np.ndarray):
        return self._ort.OrtValue.ortvalue_from_numpy(np.array(a, copy=not a.flags.c_contiguous))  # keeps 0-d

    def _forward(self, ids: list[int], past: list, extra: dict, want: list[str]) -> list:
        n_past = 0 if past is None else past[0].shape()[2]
        if past is None:
            empty = np.zeros((1, self.info.n_kv_head, 0, self.info.head_dim), np.float32)
            past = [self._ov(empty)] * len(self._kv)
        T = n_past + len(ids)
        feeds = {"input_ids": self._ov(np.asarray([ids], np.int64)),
                 "attention_mask": self._ov(np.ones((1, T), np.int64)),
                 "position_ids": self._ov(np.arange(n_past, T, dtype=np.int64)[None])}
        feeds.update({a: v for (a, _), v in zip(self._kv, past)})
        feeds.update({k: self._ov(v) for k, v in extra.items()})
        return self.session.run_with_ort_values(want, feeds)

    def _prefill(self, ids: list[int], feeds: dict, hid: list[str], all_logits: bool):
        """The prompt in chunks of ≤ ``n_ubatch`` tokens (masks sliced per chunk) → (logits ``[T or 1, V]``,
        hidden ``{i: [T, d]}``, present ORT values)."""
        want = ["logits", *(b for _, b in self._kv), *hid]
        past, logits, hidden, n_kv = None, [], [[] for _ in hid], len(self._kv)
        for pos0 in range(0, len(ids), self.n_ubatch):
            chunk = ids[pos0:pos0 + self.n_ubatch]
            extra = {k: (v[:, pos0:pos0 + len(chunk)] if k.startswith("cmdv_mask") else v) for k, v in feeds.items()}
            out = self._forward(chunk, past, extra, want)
            lg = out[0].numpy()[0]
            logits.append(lg if all_logits else lg[-1:])
            past = out[1:1 + n_kv]
            for i, h in enumerate(out[1 + n_kv:]):
                hidden[i].append(h.numpy()[0])
        logits = np.concatenate(logits) if all_logits else logits[-1]
        return logits, {i: np.concatenate(h) for i, h in enumerate(hidden)}, past

    @property
    def n_vocab(self) -> int:
        return int(self.info.n_vocab)

    def _prepare(self, ids, packs, strengths, force):
        return self._checked_request(ids, packs, strengths, force)

    def prompt_pass(self, ids: Sequence[int], packs=(), strengths=None, record_layers: bool = False,
                    all_logits: bool = False, rows: Sequence[int] | None = None, force: bool | None = None):
        """One edited prompt pass → ``(logits [V] or [T, V], {layer: [T, d]} after the edits or {})``."""
        ids, loaded, s = self._prepare(ids, packs, strengths, force)
        hid = [f"hidden.{i}" for i in range(self.n_layer)] if record_layers else []
        for name in hid:
            if name not in self._outputs:
                raise OnnxModelError(f"ONNX file {self.path} has no output {name!r} (block output)")
        logits, hidden, _ = self._prefill(ids, self.pack_feeds(loaded, s, len(ids), rows), hid, all_logits)
        return (logits if all_logits else logits[-1]), hidden

    # ------------------------------------------------------------------ generation
    def _tokens(self, ids: list[int], feeds: dict, sampler: Sampler, max_tokens: int, start: tuple[float, float],
                stop_at_eog: bool = True) -> Iterator[int]:
        """Prefill now; return a generator of new token ids. ``start``: when the request's preparation (pack
        checks, feeds) began."""
        if int(max_tokens) < 0:
            raise EngineError(f"max_tokens must be >= 0, got {max_tokens}")
        want = ["logits", *(b for _, b in self._kv)]
        prefill = GenerationStats.now()
        logits, _, past = self._prefill(ids, feeds, [], False)
        logits = logits[-1]
        stats = GenerationStats.after_prompt(len(ids), start, prefill)
        self.last_stats = stats

        state = {"past": past}

        def step(tok: int) -> np.ndarray:
            o = self._forward([tok], state["past"], {}, want)
            state["past"] = o[1:]
            return o[0].numpy()[0, -1]

        return decode_tokens(logits, sampler, max_tokens, stats, self.is_eog, step, len(ids), self.n_ctx,
                             stop_at_eog)

    def generate_ids(self, token_ids: Sequence[int], packs=(), strengths=None, max_tokens: int = 128,
                     temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                     force: bool | None = None, stop_at_eog: bool = True) -> list[int]:
        """New token ids after ``token_ids`` (EOG ends it, not included, unless ``stop_at_eog`` is False)."""
        start = GenerationStats.now()
        sampler = Sampler(temperature, top_p, seed)
        ids, loaded, s = self._prepare(token_ids, packs, strengths, force)
        return list(self._tokens(ids, self.pack_feeds(loaded, s, len(ids)), sampler, max_tokens, start,
                                 stop_at_eog))

    def _text(self, ids, packs, strengths, max_tokens, temperature, top_p, seed, stop, stream, force):
        start = GenerationStats.now()
        sampler = Sampler(temperature, top_p, seed)
        stops = check_stops(stop)
        ids, loaded, s = self._prepare(ids, packs, strengths, force)
        toks = self._tokens(ids, self.pack_feeds(loaded, s, len(ids)), sampler, max_tokens, start)

        def token_bytes() -> Iterator[bytes]:
            """The text each token adds (tokenizers decode whole sequences), held while a character is incomplete."""
            new, shown = [], ""
            for tok in toks:
                new.append(tok)
                text = self.detokenize(new)
                if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the next token
                    continue
                yield text[len(shown):].encode("utf-8")
                shown = text
            yield self.detokenize(new)[len(shown):].encode("utf-8")

        return self._stream(toks, token_bytes(), stops, stream)

    def close(self) -> None:
        self.session = None
