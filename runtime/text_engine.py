"""What the llama.cpp and ONNX Runtime engines share: identity properties, pack loading and request
checks, ``generate``/``chat``, stop-string streaming and the reference states of the edit-size check.
Each engine supplies ``info``, ``n_layer``, ``d_model``, ``n_ctx``, ``n_vocab``, ``force``, ``policy``,
``_reference`` (None), ``encode``, ``encode_chat``, ``prompt_pass``, ``_text`` and ``close``."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

from .llama_edit import check_packs, normalize_strengths
from .llama_sampling import stream_text
from .pack import BehaviorPack
from .pack_policy import ReferenceStates, reference_states
from .request_checks import as_token_ids, check_prompt


class TextEngine:
    """Base of :class:`~commandv.runtime.llama_engine.Recipient` and
    :class:`~commandv.runtime.onnx_engine.OnnxRecipient`."""

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
        :class:`PackError` if one does not fit."""
        out = self.policy.read_packs(packs)
        check_packs(out, self.fingerprint, self.arch, self.n_layer, self.d_model,
                    self.force if force is None else bool(force))
        return out

    def _checked_request(self, ids: Sequence[int], packs, strengths, force):
        """Token ids, packs, strengths of one request, all checked → ``(ids, packs, strengths)``."""
        ids = as_token_ids(ids)
        loaded = self.load_packs(packs, force)
        s = normalize_strengths(len(loaded), strengths)
        self.policy.check_size(loaded, s, self.reference_states)
        check_prompt(ids, self.n_ctx, self.n_vocab)
        return ids, loaded, s

    def reference_states(self) -> ReferenceStates:
        """This model's unedited block outputs on every token of the chat-rendered
        :data:`~.pack_policy.REFERENCE_PROMPTS` (raw text for a model without a chat template; computed
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
