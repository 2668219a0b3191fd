"""What the llama.cpp and ONNX Runtime engines share: identity properties, pack loading and request
checks, ``generate``/``chat``, stop-string streaming and the reference states of the edit-size check.
Each engine supplies ``info``, ``n_layer``, ``d_model``, ``n_ctx``, ``n_vocab``, ``force``, ``policy``,
``_reference`` (None), ``encode``, ``encode_chat``, ``prompt_pass``, ``_text`` and ``close``.

Packs are checked once: :meth:`TextEngine.load_packs` validates a pack (shapes, the full finite / range scans
of every tensor) and checks it against the model, then marks the pack object (:func:`mark_loaded`). A request
given that same, unchanged pack object skips both (:func:`loaded_for`); a pack passed to a request directly,
not through ``load_packs``, or changed since (other entries, arrays, layer, activation, positions or strength)
is checked in full, with the same errors. Tensor values changed in place are not seen: a loaded pack's arrays
are treated as read-only (load it again after editing them)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from commandv.runtime.engines.request_checks import as_token_ids, check_packs, check_prompt, normalize_strengths
from commandv.runtime.engines.sampling import stream_text
from commandv.runtime.pack.model import BehaviorPack
from commandv.runtime.pack.policy import ReferenceStates, pack_list, reference_states

_MARK = "_cmdv_loaded"
"""Attribute of a pack object that :meth:`TextEngine.load_packs` checked: ``(content key, {model key, …})``."""


def _content_key(pack: BehaviorPack) -> tuple:
    """What :meth:`BehaviorPack.validate` read, without the tensor values: recipient metadata, and per entry its
    object, layer, activation, positions, strength and each tensor's object, address, shape and dtype. Costs
    O(entries), not O(values); a pack whose key changed since it was checked is checked again."""
    rec = pack.recipient if isinstance(pack.recipient, dict) else {}
    arrays = lambda e: tuple(None if t is None else (id(t), getattr(t, "shape", None), str(getattr(t, "dtype", "")),  # noqa: E731
                                                      getattr(t, "__array_interface__", {}).get("data"))
                             for t in (e.A, e.b, e.C, e.P, e.Q, e.e))
    return (id(pack.entries), len(pack.entries),
            tuple(repr(rec.get(k)) for k in ("fingerprint", "arch", "n_layer", "d_model")),
            tuple((id(e), repr(e.layer), repr(e.act), repr(e.positions), repr(e.strength), arrays(e))
                  for e in pack.entries))


def mark_loaded(pack: BehaviorPack, model: tuple) -> None:
    """Record that ``pack`` (as it is now) passed validation and the check against ``model`` (a model key
    with the ``force`` it was checked under)."""
    key = _content_key(pack)
    prev = pack.__dict__.get(_MARK)
    models = set(prev[1]) if prev is not None and prev[0] == key else set()
    pack.__dict__[_MARK] = (key, frozenset(models | {model}))


def loaded_for(pack, model: tuple, force: bool) -> bool:
    """True when ``pack`` is a pack object :meth:`TextEngine.load_packs` checked, unchanged since, against this
    ``model`` (without ``force``, or with it when ``force`` is asked now)."""
    mark = getattr(pack, "__dict__", {}).get(_MARK) if isinstance(pack, BehaviorPack) else None
    if mark is None or not ({model + (False,), model + (force,)} & mark[1]):
        return False
    return mark[0] == _content_key(pack)


@dataclass
class GenerationStats:
    """Timing of the last request: prompt tokens and seconds, generated tokens and decode seconds.

    The prompt phase is ``prepare_s`` (checking the packs and preparing their edits or feeds for this
    prompt) then ``prompt_s`` (the prompt pass); ``prompt_tps`` counts both, as the wait for the first token.
    """

    n_prompt: int
    prompt_s: float
    n_generated: int = 0
    n_decoded: int = 0  # tokens that went through llama_decode after the prompt
    decode_s: float = 0.0
    finish: str = ""  # 'eog' | 'stop' | 'length' | 'context'
    native: bool = False
    prompt_cpu_s: float = 0.0  # process CPU time (all threads) of the prompt pass
    decode_cpu_s: float = 0.0  # process CPU time of sampling + decoding
    prepare_s: float = 0.0  # wall seconds before the prompt pass: request and pack checks, edit preparation
    prepare_cpu_s: float = 0.0

    @staticmethod
    def now() -> tuple[float, float]:
        """``(wall, process CPU)`` seconds, for the phase clocks."""
        return time.perf_counter(), time.process_time()

    @classmethod
    def after_prompt(cls, n_prompt: int, start: tuple[float, float], prefill: tuple[float, float],
                     **kw) -> "GenerationStats":
        """Stats for a prompt pass that began at ``prefill`` (its preparation at ``start``) and ended now."""
        end = cls.now()
        return cls(n_prompt, end[0] - prefill[0], prompt_cpu_s=end[1] - prefill[1],
                   prepare_s=prefill[0] - start[0], prepare_cpu_s=prefill[1] - start[1], **kw)

    @property
    def prompt_tps(self) -> float:
        s = self.prepare_s + self.prompt_s
        return self.n_prompt / s if s > 0 else float("nan")

    @property
    def prompt_cpu_tps(self) -> float:
        """Prompt tokens per process-CPU second of the prompt phase (preparation included)."""
        s = self.prepare_cpu_s + self.prompt_cpu_s
        return self.n_prompt / s if s > 0 else float("nan")

    @property
    def decode_tps(self) -> float:
        return self.n_decoded / self.decode_s if self.decode_s > 0 else float("nan")


def model_key(engine) -> tuple:
    """What a pack is checked against: ``(fingerprint, arch, n_layer, d_model)`` of ``engine``'s model (the key
    :func:`mark_loaded` records, with the ``force`` the check ran under appended)."""
    return (engine.fingerprint, engine.arch, int(engine.n_layer), int(engine.d_model))


def read_checked_packs(engine, packs, force: bool, reuse: bool) -> list[BehaviorPack]:
    """``packs`` (objects or files) read and validated by ``engine.policy`` and checked against ``engine``'s
    model (``fingerprint``, ``arch``, ``n_layer``, ``d_model``), in order. With ``reuse``, pack objects that a
    ``load_packs`` of this model marked (:func:`mark_loaded`) and that did not change since are taken as they are:
    the one validate-once step of every engine."""
    items = pack_list(packs)
    known = [reuse and loaded_for(p, model_key(engine), force) for p in items]
    fresh = engine.policy.read_packs([p for p, k in zip(items, known) if not k])
    check_packs(fresh, engine.fingerprint, engine.arch, engine.n_layer, engine.d_model, force)
    it = iter(fresh)
    return [p if k else next(it) for p, k in zip(items, known)]


class TextEngine:
    """Base of :class:`~commandv.runtime.engines.llama.engine.Recipient` and
    :class:`~commandv.runtime.engines.onnx.engine.OnnxRecipient`."""

    last_stats = None

    @property
    def fingerprint(self) -> str:
        """sha256 of the recipient model file(s)."""
        return self.info.fingerprint

    @property
    def arch(self) -> str:
        return self.info.arch

    def load_packs(self, packs, force: bool | None = None) -> list[BehaviorPack]:
        """Packs (objects or files, :meth:`PackPolicy.read_packs`) checked against this model;
        :class:`PackError` if one does not fit. The returned pack objects are marked as checked, so requests
        given them skip the checks (see the module docstring)."""
        force = self.force if force is None else bool(force)
        out = self._read_packs(packs, force, reuse=False)
        for p in out:
            mark_loaded(p, model_key(self) + (force,))
        return out

    def _read_packs(self, packs, force: bool, reuse: bool) -> list[BehaviorPack]:
        """``packs`` read, validated and checked against this model (:func:`read_checked_packs`), then
        :meth:`_check_packs_fit`."""
        out = read_checked_packs(self, packs, force, reuse)
        self._check_packs_fit(out)
        return out

    def _check_packs_fit(self, packs: list[BehaviorPack]) -> None:
        """Engine-specific refusals of checked packs (e.g. an ONNX file without pack sites)."""

    def _checked_request(self, ids: Sequence[int], packs, strengths, force):
        """Token ids, packs, strengths of one request, all checked → ``(ids, packs, strengths)``. Packs that
        :meth:`load_packs` returned are not validated again (the rest are, in full)."""
        ids = as_token_ids(ids)
        loaded = self._read_packs(packs, self.force if force is None else bool(force), reuse=True)
        s = normalize_strengths(len(loaded), strengths)
        self.policy.check_size(loaded, s, self.reference_states)
        check_prompt(ids, self.n_ctx, self.n_vocab)
        return ids, loaded, s

    def reference_states(self) -> ReferenceStates:
        """This model's unedited block outputs on every token of the chat-rendered
        :data:`~commandv.runtime.pack.policy.REFERENCE_PROMPTS` (raw text for a model without a chat template; computed
        once and kept with the edit-size measurements of the pack combinations requests used)."""
        if self._reference is None:
            chat = self.chat_template is not None
            self._reference = reference_states(
                lambda p: self.prompt_pass(self.encode(p, template=chat), record_layers=True)[1], self.n_layer)
        return self._reference

    def _stream(self, toks: Iterator[int], token_bytes: Iterable[bytes], stops: Sequence[str], stream: bool):
        """Text from ``token_bytes`` (the bytes each token of ``toks`` adds), cut at the first stop string,
        which ends ``toks`` and marks ``last_stats.finish = 'stop'``."""

        def on_stop() -> None:
            toks.close()
            if self.last_stats is not None:
                self.last_stats.finish = "stop"

        pieces = stream_text(token_bytes, stops, on_stop)
        return pieces if stream else "".join(pieces)

    def generate(self, prompt: str, packs=(), strengths=None, max_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, stop: str | Sequence[str] = (),
                 stream: bool = False, template: bool = True, force: bool | None = None):
        """Continue one user prompt with ``packs`` applied → text (or an iterator of pieces if ``stream``).

        Greedy when ``temperature == 0``; else temperature / top-p sampling (``seed`` → reproducible).
        Generation ends at ``max_tokens``, an end-of-generation token, or a ``stop`` string (cut off).
        """
        ids = self.encode(prompt, template)
        return self._text(ids, packs, strengths, max_tokens, temperature, top_p, seed, stop, stream, force)

    def chat(self, messages: Sequence[dict], packs=(), strengths=None, max_tokens: int = 128,
             temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
             stop: str | Sequence[str] = (), stream: bool = False, force: bool | None = None):
        """The assistant's reply to ``messages`` (``[{'role', 'content'}]``), packs applied to the targeted
        rows of the whole rendered conversation."""
        ids = self.encode_chat(messages)
        return self._text(ids, packs, strengths, max_tokens, temperature, top_p, seed, stop, stream, force)

    def close(self) -> None:  # pragma: no cover - engines override
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
