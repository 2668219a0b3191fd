"""Thin, explicit wrapper over llama-cpp-python 0.3.36's low-level (ctypes) API.

``LlamaModel`` loads a GGUF (vocab, sizes, chat template, tokenizer);
``LlamaContext`` decodes several sequences in one ``llama_batch`` and can
carry a ggml eval callback (``fn(tensor_ptr: int, ask: bool) -> bool``) whose
ctypes object it keeps alive for its whole lifetime.

llama_cpp is imported lazily (``_ll()``), so importing this module is cheap and
``LlamaError`` is usable without llama-cpp-python installed. llama.cpp's log
output is silenced by default; the last warnings/errors are kept and appended
to error messages. Set ``COMMANDV_LLAMA_VERBOSE=1`` to print them. Models load without llama.cpp's
extra (repacked-weight) buffer types on CPUs with AMX (:func:`.cpu.extra_buffers`).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from commandv.runtime import crash
from commandv.runtime.cpu import CpuSettingError, extra_buffers
from commandv.runtime.errors import CommandVError

EvalCallback = Callable[[int, bool], bool]
_LOG_TAIL: collections.deque[str] = collections.deque(maxlen=8)
_KV_TYPES = {"f32": 0, "f16": 1}
_KEEP_ALIVE: list = []  # ctypes callbacks that C holds for the process lifetime


class LlamaError(CommandVError, RuntimeError):
    """llama.cpp refused or failed an operation (load, context, decode, template)."""


class ModelLoadError(LlamaError):
    """A GGUF file is missing, unreadable or not loadable by llama.cpp."""


class ContextOverflowError(LlamaError):
    """Tokens do not fit the context window or the batch."""


class NoChatTemplateError(LlamaError):
    """The model has no chat template; use raw prompts (template=False / None)."""


def _log_tail() -> str:
    lines = [s.strip() for s in _LOG_TAIL if s.strip()]
    return (" | llama.cpp: " + " / ".join(lines[-3:])) if lines else ""


@functools.lru_cache(maxsize=1)
def _ll():
    """Import llama_cpp.llama_cpp, init the backend once, install the quiet log callback."""
    try:
        import llama_cpp.llama_cpp as L
    except ImportError as e:  # pragma: no cover - depends on environment
        raise LlamaError(f"llama-cpp-python is not importable ({e}); pip install llama-cpp-python==0.3.36") from e
    verbose = os.environ.get("COMMANDV_LLAMA_VERBOSE", "") not in ("", "0")

    state = {"keep": False}

    def _log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        s = text.decode("utf-8", "replace") if text else ""
        if level != 5:  # ggml_log_level: 3 WARN, 4 ERROR, 5 CONT (continues the previous line)
            state["keep"] = level in (3, 4)
            if state["keep"]:
                _LOG_TAIL.append(s)
        elif state["keep"] and _LOG_TAIL:
            _LOG_TAIL[-1] += s
        if verbose:
            sys.stderr.write(s)

    cb = L.llama_log_callback(_log)
    _KEEP_ALIVE.append(cb)
    L.llama_log_set(cb, ctypes.c_void_p(0))
    L.llama_backend_init()
    return L


class _Handle:
    """Owns one llama.cpp pointer (``_ptr``) released by ``llama_cpp.<_release>``; usable as a context manager."""

    _release = ""

    def free(self) -> None:
        if getattr(self, "_ptr", None) is not None:
            getattr(_ll(), self._release)(self._ptr)
            self._ptr = None

    close = free

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.free()

    def __del__(self) -> None:
        try:
            self.free()
        except Exception:
            pass


class LlamaModel(_Handle):
    """A GGUF model loaded by llama.cpp. ``n_gpu_layers=0`` keeps everything on CPU."""

    _release = "llama_model_free"

    def __init__(self, path: str | os.PathLike, n_gpu_layers: int = 0, vocab_only: bool = False):
        L = _ll()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"GGUF file not found: {self.path}")
        with open(self.path, "rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":
            raise ModelLoadError(f"not a GGUF file (magic {magic!r}): {self.path}")
        params = L.llama_model_default_params()
        params.n_gpu_layers = int(n_gpu_layers)
        params.vocab_only = bool(vocab_only)
        try:
            self.extra_buffers, self.extra_buffers_reason = extra_buffers()
        except CpuSettingError as exc:
            raise ModelLoadError(str(exc)) from None
        params.use_extra_bufts = self.extra_buffers  # off on AMX CPUs: llama.cpp's AMX matmul crashes (runtime.cpu)
        _LOG_TAIL.clear()
        with crash.operation(f"loading {self.path.name} (extra buffer types {self.extra_buffers_reason})"):
            ptr = L.llama_model_load_from_file(str(self.path).encode("utf-8"), params)
        if not ptr:
            raise ModelLoadError(f"llama.cpp could not load {self.path}{_log_tail()}")
        self._ptr = ptr
        self.vocab = L.llama_model_get_vocab(ptr)
        self.n_layer = int(L.llama_model_n_layer(ptr))
        self.n_embd = int(L.llama_model_n_embd(ptr))
        self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(L.llama_model_n_ctx_train(ptr))
        tmpl = L.llama_model_chat_template(ptr, None)
        self.chat_template: str | None = tmpl.decode("utf-8") if tmpl else None
        self.arch = self.meta("general.architecture")

    @property
    def ptr(self):
        if self._ptr is None:
            raise LlamaError("model is freed")
        return self._ptr

    def meta(self, key: str) -> str | None:
        """GGUF metadata value rendered as a string by llama.cpp, or None if absent."""
        L = _ll()
        buf = ctypes.create_string_buffer(4096)
        n = L.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            L.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def token_text(self, token: int) -> str:
        """The vocab entry's text (as stored), e.g. ``'<|im_end|>'``; ``''`` for an id outside the vocab (e.g. no BOS = -1)."""
        if not 0 <= int(token) < self.n_vocab:
            return ""
        t = _ll().llama_vocab_get_text(self.vocab, int(token))
        return t.decode("utf-8", "replace") if t else ""

    @property
    def bos(self) -> int:
        return int(_ll().llama_vocab_bos(self.vocab))

    @property
    def eos(self) -> int:
        return int(_ll().llama_vocab_eos(self.vocab))

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``. ``add_special`` adds BOS/EOS as the model asks; ``parse_special`` maps ``<|im_start|>`` etc."""
        L = _ll()
        raw = text.encode("utf-8")
        n_max = len(raw) + 8
        buf = (L.llama_token * n_max)()
        n = L.llama_tokenize(self.vocab, raw, len(raw), buf, n_max, add_special, parse_special)
        if n < 0:
            n_max = -n
            buf = (L.llama_token * n_max)()
            n = L.llama_tokenize(self.vocab, raw, len(raw), buf, n_max, add_special, parse_special)
        if n < 0:
            raise LlamaError(f"tokenization failed for a text of {len(raw)} bytes{_log_tail()}")
        return list(buf[:n])

    def detokenize(self, tokens: Sequence[int], remove_special: bool = False, unparse_special: bool = True) -> str:
        """Text of ``tokens`` (inverse of :meth:`tokenize`)."""
        L = _ll()
        arr = (L.llama_token * max(1, len(tokens)))(*tokens)
        size = 16 * len(tokens) + 16
        buf = ctypes.create_string_buffer(size)
        n = L.llama_detokenize(self.vocab, arr, len(tokens), buf, size, remove_special, unparse_special)
        if n < 0:
            size = -n + 1
            buf = ctypes.create_string_buffer(size)
            n = L.llama_detokenize(self.vocab, arr, len(tokens), buf, size, remove_special, unparse_special)
        return buf.raw[: max(n, 0)].decode("utf-8", "replace")

    def apply_chat_template(
        self,
        messages: Sequence[dict],
        add_generation_prompt: bool = True,
        template: str | None = None,
        engine: str = "auto",
    ) -> str:
        """Render ``messages`` ([{'role', 'content'}]) with the GGUF chat template (or ``template``).

        ``engine``: ``'jinja'`` renders the template itself like transformers'
        ``apply_chat_template`` (exact for any template); ``'llama'`` uses
        ``llama_chat_apply_template`` (llama.cpp's built-in template families
        only); ``'auto'`` = jinja when jinja2 is importable, else llama.
        Raises :class:`NoChatTemplateError` when there is no template at all.
        """
        tmpl = template if template is not None else self.chat_template
        if not tmpl:
            raise NoChatTemplateError(
                f"{self.path.name} has no chat template (tokenizer.chat_template); pass raw prompts (template=False)"
            )
        if engine not in ("auto", "jinja", "llama"):
            raise LlamaError(f"unknown template engine {engine!r} (auto|jinja|llama)")
        if engine in ("auto", "jinja"):
            try:
                import jinja2  # noqa: F401

                engine = "jinja"
            except ImportError:
                if engine == "jinja":
                    raise LlamaError("engine='jinja' needs jinja2 (pip install jinja2)") from None
                engine = "llama"
        if engine == "jinja":
            return _render_jinja(tmpl, messages, add_generation_prompt, self.token_text(self.bos), self.token_text(self.eos))
        return _render_llama(tmpl, messages, add_generation_prompt)



def _render_jinja(tmpl: str, messages, add_generation_prompt: bool, bos: str, eos: str) -> str:
    """Render with the project's one Jinja renderer (the same text every backend sees)."""
    from commandv.runtime.models.chat_template import ChatTemplateError, render_chat

    try:
        return render_chat(tmpl, list(messages), add_generation_prompt, bos, eos)
    except ChatTemplateError as e:
        raise LlamaError(str(e)) from e


def _render_llama(tmpl: str, messages, add_generation_prompt: bool) -> str:
    L = _ll()
    keep = [(m["role"].encode("utf-8"), m["content"].encode("utf-8")) for m in messages]
    arr = (L.llama_chat_message * max(1, len(keep)))()
    for i, (r, c) in enumerate(keep):
        arr[i].role, arr[i].content = r, c
    size = 2 * sum(len(r) + len(c) for r, c in keep) + 256
    buf = ctypes.create_string_buffer(size)
    n = L.llama_chat_apply_template(tmpl.encode("utf-8"), arr, len(keep), add_generation_prompt, buf, size)
    if n > size:
        buf = ctypes.create_string_buffer(n + 1)
        n = L.llama_chat_apply_template(tmpl.encode("utf-8"), arr, len(keep), add_generation_prompt, buf, n + 1)
    if n < 0:
        raise LlamaError("llama_chat_apply_template does not know this template family; use engine='jinja'")
    return buf.raw[:n].decode("utf-8", "replace")


MAX_THREADS = 512  # ggml's GGML_MAX_N_THREADS
_C_INT_RANGES = {"n_ctx": (1, 2**31 - 1), "n_batch": (1, 2**31 - 1), "n_ubatch": (1, 2**31 - 1),
                 "n_seq_max": (1, 2**31 - 1), "n_threads": (1, MAX_THREADS)}


def _check_c_ints(**values) -> None:
    """Refuse context parameters that ctypes would wrap around (uint32 / int32 fields) or ggml refuses (threads);
    ``None`` passes, and so does 0 for ``n_batch`` / ``n_ubatch`` / ``n_threads`` (both mean: the default)."""
    for name, v in values.items():
        if v is None or (name in ("n_batch", "n_ubatch", "n_threads") and type(v) is int and v == 0):
            continue
        lo, hi = _C_INT_RANGES[name]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
            raise LlamaError(f"{name} must be an integer from {lo} to {hi}, got {v!r}")


@dataclass(frozen=True)
class BatchLayout:
    """Placement of sequences in one batch: pad tokens before each, each one's last index, total tokens."""

    pads: list[int]
    last: list[int]
    n_tokens: int


class LlamaContext(_Handle):
    """A llama.cpp context: KV memory, batches of several sequences, logits, optional eval callback.

    The KV cache is unified across sequences (``kv_unified``), so a batch of
    sequences is split in batch order and ``n_ctx`` bounds their total length.
    ``kv_type`` is the K/V cache type (``'f16'`` llama.cpp's default, ``'f32'`` exact).
    """

    _release = "llama_free"

    def __init__(
        self,
        model: LlamaModel,
        n_ctx: int = 2048,
        n_batch: int | None = None,
        n_ubatch: int | None = None,
        n_seq_max: int = 1,
        n_threads: int | None = None,
        eval_callback: EvalCallback | None = None,
        kv_type: str = "f16",
        flash_attn: bool | None = None,
        c_callback: tuple[int, int] | None = None,
    ):
        """``eval_callback``: a Python ``fn(tensor_ptr, ask) -> bool``; ``c_callback``: instead, a C
        ``ggml_backend_sched_eval_callback`` as ``(function address, user_data address)``."""
        L = _ll()
        if eval_callback is not None and c_callback is not None:
            raise LlamaError("pass either eval_callback or c_callback, not both")
        if kv_type not in _KV_TYPES:
            raise LlamaError(f"kv_type {kv_type!r} not in {sorted(_KV_TYPES)}")
        self.model = model  # keep the model alive while the context exists
        _check_c_ints(n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch, n_seq_max=n_seq_max, n_threads=n_threads)
        p = L.llama_context_default_params()
        p.n_ctx = int(n_ctx)
        p.n_batch = int(n_batch or n_ctx)
        p.n_ubatch = int(min(n_ubatch or p.n_batch, p.n_batch))
        p.n_seq_max = int(n_seq_max)
        threads = int(n_threads or min(os.cpu_count() or 1, MAX_THREADS))
        p.n_threads = p.n_threads_batch = threads
        p.kv_unified = True
        p.type_k = p.type_v = _KV_TYPES[kv_type]
        if flash_attn is not None:
            p.flash_attn_type = 1 if flash_attn else 0
        self._callback_error: BaseException | None = None
        self._user_cb = eval_callback
        self._c_eval = None
        if eval_callback is not None:
            self._c_eval = L.ggml_backend_sched_eval_callback(self._eval_trampoline)
            p.cb_eval = self._c_eval
            p.cb_eval_user_data = None
        elif c_callback is not None:
            self._c_eval = L.ggml_backend_sched_eval_callback(int(c_callback[0]))  # kept for the context's life
            p.cb_eval = self._c_eval
            p.cb_eval_user_data = ctypes.c_void_p(int(c_callback[1]))
        _LOG_TAIL.clear()
        ptr = L.llama_init_from_model(model.ptr, p)
        if not ptr:
            raise LlamaError(f"llama.cpp could not create a context (n_ctx={n_ctx}, n_batch={p.n_batch}){_log_tail()}")
        self._ptr = ptr
        self.n_ctx = int(L.llama_n_ctx(ptr))
        self.n_batch = int(L.llama_n_batch(ptr))
        self.n_ubatch = int(L.llama_n_ubatch(ptr))
        self.n_seq_max = int(n_seq_max)
        self._n_past: dict[int, int] = {}
        self._cells = 0  # KV cells used since the last clear (cells fill contiguously from 0)

    def _eval_trampoline(self, t, ask, _user) -> bool:
        try:
            return bool(self._user_cb(int(t or 0), bool(ask)))
        except BaseException as e:  # never let an exception cross into C
            if self._callback_error is None:
                self._callback_error = e
            return not ask  # ask: don't need it; after compute: keep going

    @property
    def ptr(self):
        if self._ptr is None:
            raise LlamaError("context is freed")
        return self._ptr

    def n_past(self, seq_id: int = 0) -> int:
        """Tokens already in memory for ``seq_id``."""
        return self._n_past.get(seq_id, 0)

    def layout(self, seq_lens: Sequence[int], align: int = 0) -> BatchLayout:
        """Where the next :meth:`decode` puts each sequence: pad tokens before it and its last batch index.

        With ``align`` > 0 each sequence starts at a KV cell index that is a
        multiple of ``align``: then its attention sums run in the same SIMD
        lanes as when it is decoded alone, so batched results are bit-identical
        to one-at-a-time ones (without it, quantized models differ by ~1%).
        """
        off, pads, last, n = self._cells, [], [], 0
        for ln in seq_lens:
            pad = (-off) % align if align else 0
            pads.append(pad)
            off += pad + ln
            n += pad + ln
            last.append(n - 1)
        return BatchLayout(pads=pads, last=last, n_tokens=n)

    def decode(
        self,
        tokens_per_seq: Sequence[Sequence[int]],
        logits_for: str = "last",
        seq_ids: Sequence[int] | None = None,
        align: int = 0,
    ) -> list[int]:
        """Decode one batch holding each sequence's tokens, in order, continuing at its cached position.

        ``logits_for``: ``'last'`` (each sequence's last token), ``'all'`` or ``'none'``.
        ``align``: see :meth:`layout`; pad tokens go to sequence ``n_seq_max - 1``,
        which then must not be one of ``seq_ids``.
        Returns each sequence's last-token index in the batch (pass to :meth:`logits`).
        Raises :class:`ContextOverflowError` before decoding if tokens exceed the batch or context.
        """
        L = _ll()
        if logits_for not in ("last", "all", "none"):
            raise LlamaError(f"logits_for must be 'last', 'all' or 'none', got {logits_for!r}")
        seqs = [list(map(int, s)) for s in tokens_per_seq]
        ids = list(range(len(seqs))) if seq_ids is None else [int(s) for s in seq_ids]
        if len(ids) != len(seqs) or len(set(ids)) != len(ids):
            raise LlamaError(f"need one distinct seq id per sequence, got {ids} for {len(seqs)} sequences")
        if any(len(s) == 0 for s in seqs):
            raise LlamaError("empty token sequence in batch")
        if any(i < 0 or i >= self.n_seq_max for i in ids):
            raise LlamaError(f"seq ids {ids} outside [0, n_seq_max={self.n_seq_max})")
        pad_id = self.n_seq_max - 1
        if align and pad_id in ids:
            raise LlamaError(f"align needs seq id {pad_id} (n_seq_max - 1) free for pad tokens")
        bad = [t for s in seqs for t in s if not 0 <= t < self.model.n_vocab]
        if bad:
            raise LlamaError(f"token ids out of vocab range [0, {self.model.n_vocab}): {bad[:5]}")
        lay = self.layout([len(s) for s in seqs], align)
        n = lay.n_tokens
        if n > self.n_batch:
            raise ContextOverflowError(f"batch of {n} tokens exceeds n_batch={self.n_batch}")
        if self._cells + n > self.n_ctx:
            longest = max(len(s) for s in seqs)
            raise ContextOverflowError(
                f"{n} new tokens (longest sequence {longest}) + {self._cells} cached exceed the context of {self.n_ctx} tokens"
            )
        tok, pos, sid = [], [], []
        past = dict(self._n_past)
        for i, s, pad in zip(ids, seqs, lay.pads):
            if pad:
                p0 = past.get(pad_id, 0)
                tok.append(np.zeros(pad, np.int32))
                pos.append(np.arange(p0, p0 + pad, dtype=np.int32))
                sid.append(np.full(pad, pad_id, np.int32))
                past[pad_id] = p0 + pad
            p0 = past.get(i, 0)
            tok.append(np.asarray(s, np.int32))
            pos.append(np.arange(p0, p0 + len(s), dtype=np.int32))
            sid.append(np.full(len(s), i, np.int32))
            past[i] = p0 + len(s)
        tok_a, pos_a, sid_a = (np.ascontiguousarray(np.concatenate(x)) for x in (tok, pos, sid))
        n_sid = np.ones(n, dtype=np.int32)
        sid_ptrs = (sid_a.ctypes.data + 4 * np.arange(n, dtype=np.uint64)).astype(np.uint64)
        out = np.zeros(n, dtype=np.int8)
        if logits_for == "all":
            out[:] = 1
            if align:
                out[sid_a == pad_id] = 0
        elif logits_for == "last":
            out[lay.last] = 1
        batch = L.llama_batch()
        batch.n_tokens = n
        batch.token = tok_a.ctypes.data_as(ctypes.POINTER(L.llama_token))
        batch.embd = None
        batch.pos = pos_a.ctypes.data_as(ctypes.POINTER(L.llama_pos))
        batch.n_seq_id = n_sid.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        batch.seq_id = sid_ptrs.ctypes.data_as(ctypes.POINTER(ctypes.POINTER(L.llama_seq_id)))
        batch.logits = out.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self._callback_error = None
        _LOG_TAIL.clear()
        rc = L.llama_decode(self.ptr, batch)
        err, self._callback_error = self._callback_error, None
        if err is not None:
            raise err
        if rc != 0:
            raise LlamaError(f"llama_decode failed with code {rc} for a batch of {n} tokens{_log_tail()}")
        self._n_past = past
        self._cells += n
        return list(lay.last)

    def logits(self, i: int) -> np.ndarray:
        """Logits ``[n_vocab]`` float32 (copy) of batch position ``i`` from the last decode."""
        L = _ll()
        p = L.llama_get_logits_ith(self.ptr, int(i))
        if not p:
            raise LlamaError(f"no logits for batch position {i} (was it marked for output?){_log_tail()}")
        return np.ctypeslib.as_array(p, shape=(self.model.n_vocab,)).copy()

    def keep_prefix(self, n_keep: int) -> None:
        """Drop sequence 0's cached tokens from position ``n_keep`` on (its first ``n_keep`` stay reusable).

        Only for a context holding sequence 0 alone (cells then stay contiguous from 0).
        """
        L = _ll()
        if set(self._n_past) - {0}:
            raise LlamaError("keep_prefix needs a context holding sequence 0 only")
        n_keep = int(n_keep)
        if not 0 <= n_keep <= self.n_past(0):
            raise LlamaError(f"cannot keep {n_keep} tokens: sequence 0 holds {self.n_past(0)}")
        if not L.llama_memory_seq_rm(L.llama_get_memory(self.ptr), 0, n_keep, -1):
            raise LlamaError("llama.cpp refused to remove the cached tail of sequence 0")
        self._n_past[0] = n_keep
        self._cells = n_keep

    def clear(self) -> None:
        """Drop all sequences from the KV memory."""
        L = _ll()
        L.llama_memory_clear(L.llama_get_memory(self.ptr), True)
        self._n_past.clear()
        self._cells = 0



def greedy_generate(ctx: LlamaContext, prompt_tokens: Sequence[int], max_new_tokens: int, stop: Sequence[int] = ()) -> list[int]:
    """Greedy continuation of ``prompt_tokens`` in sequence 0 (clears the context first). Returns new token ids."""
    ctx.clear()
    idx = ctx.decode([prompt_tokens])[0]
    out: list[int] = []
    for k in range(max_new_tokens):
        t = int(np.argmax(ctx.logits(idx)))
        out.append(t)
        if t in stop or k == max_new_tokens - 1:
            break
        idx = ctx.decode([[t]])[0]
    return out
