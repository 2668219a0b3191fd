"""The one interface of the three engines that apply behavior packs: llama.cpp
(:class:`~commandv.runtime.engines.llama.engine.Recipient`), ONNX Runtime (:class:`~commandv.runtime.engines.onnx.engine.OnnxRecipient`)
and transformers (:class:`~commandv.runtime.engines.reference.TorchRecipient`).

Code that only encodes prompts, checks packs, runs one prompt pass or generates text takes an :class:`Engine` and
works with any of them::

    from commandv.runtime import Engine, Recipient

    def last_token_states(engine: Engine, prompt: str) -> dict:
        _, hidden = engine.prompt_pass(engine.encode(prompt), record_layers=True)
        return {layer: h[-1] for layer, h in hidden.items()}  # layer -> [d_model]

    with Recipient("smollm2-135m-instruct") as eng:
        states = last_token_states(eng, "Hello")

Each engine has more than this (sampling options, ``chat``, ``generate_ids``…); those differ between engines and
are documented on each class. ``tests/test_engine_protocol.py`` checks that every engine class has these methods
with these parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # annotations only: this module stays as light as the package's __init__
    from commandv.runtime.pack.model import BehaviorPack
    from commandv.runtime.pack.policy import PackPolicy, ReferenceStates

ENGINE_METHODS = ("encode", "load_packs", "prompt_pass", "generate", "reference_states", "close")
"""The methods every engine has (:class:`Engine`)."""

ENGINE_ATTRIBUTES = ("n_layer", "d_model", "fingerprint", "arch", "policy")
"""The attributes every engine has (:class:`Engine`)."""


@runtime_checkable
class Engine(Protocol):
    """A recipient model that applies behavior packs per request.

    Packs are :class:`~commandv.runtime.pack.model.BehaviorPack` objects or pack files (read under ``policy``);
    ``strengths``: None (1.0 each), one number for every pack, or one per pack. ``force``: use packs made for
    another file of the same shape (None: the engine's default).
    """

    n_layer: int
    """Decoder blocks; packs edit the outputs of blocks ``0 .. n_layer - 1``."""
    d_model: int
    """Width of the residual stream."""
    fingerprint: str | None
    """sha256 of the model file(s); a pack is made for one fingerprint."""
    arch: str
    """Architecture name (``llama``, ``qwen2``, …)."""
    policy: PackPolicy
    """Signature policy, trusted keys and edit-size limit for pack files."""

    def encode(self, prompt: str, template: bool = True) -> list[int]:
        """Token ids of one user prompt, rendered with the model's chat template (``template=False``: raw text)."""

    def load_packs(self, packs: Sequence[Any], *, force: bool | None = None) -> list[BehaviorPack]:
        """Read (files) and check ``packs`` against this model → pack objects; ``PackError`` when one does
        not fit."""

    def prompt_pass(self, ids: Sequence[int], packs: Sequence[Any] = (), strengths: Any = None,
                    record_layers: bool = False, all_logits: bool = False, *, force: bool | None = None
                    ) -> tuple[Any, dict[int, Any]]:
        """One prompt pass over token ``ids`` with the packs' edits → ``(logits, hidden)``: logits ``[V]`` of the
        last token (``[T, V]`` with ``all_logits``); hidden ``{layer: [T, d_model]}`` float32 block outputs
        after the edits when ``record_layers``, else ``{}``."""

    def generate(self, prompt: str, packs: Sequence[Any] = (), strengths: Any = None, max_tokens: int = 128, *,
                 force: bool | None = None) -> str:
        """Greedy continuation of one user prompt with the packs applied (text, at most ``max_tokens`` tokens;
        each engine documents its own default for ``max_tokens``)."""

    def reference_states(self) -> ReferenceStates:
        """Unedited block outputs on the reference prompts (the edit-size limit's yardstick; computed once)."""

    def close(self) -> None:
        """Free the model (the engine is unusable afterwards); engines are also context managers."""
