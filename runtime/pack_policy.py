"""What an engine demands of a pack file before it edits a model with it.

A :class:`PackPolicy` bundles the two checks an engine makes on untrusted packs:

* **signatures** (``require`` | ``warn`` | ``off``, see :mod:`.signing`): with
  ``require`` an unsigned or tampered pack is refused before any byte of it is
  parsed; ``warn`` loads it with an :class:`~.signing.UnverifiedPackWarning`.
* **edit size** (``max_delta_norm``): the pack is run on the recipient's own
  hidden states (reference prompts, see :data:`REFERENCE_PROMPTS`) and refused
  when any entry's edit ``‖s·delta(h)‖ / ‖h‖`` (per token row, the largest over
  the reference rows) exceeds the limit. A pack whose deltas dwarf the residual
  stream is either broken or built to take the model over.

Defaults come from the environment: ``COMMANDV_PACK_POLICY`` (default ``warn``),
``COMMANDV_MAX_DELTA_NORM`` (default: no limit). Packs passed as
:class:`~.pack.BehaviorPack` objects were built or loaded in-process and are not
re-checked for signatures (they are validated, and the size check still applies).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .pack import BehaviorPack, PackError
from .signing import POLICIES, TrustedKey, default_trusted_keys, load_pack_checked, load_trusted

REFERENCE_PROMPTS = (
    "What is the capital of France?",
    "Write a short poem about autumn leaves.",
    "Explain how a bicycle gear works in two sentences.",
    "Give me three tips for learning a new language.",
    "What is 17 times 23?",
    "Write a Python function that reverses a string.",
    "How do I make a cup of green tea?",
    "Tell me a fun fact about octopuses.",
)
"""Prompts (written for this project) on which a pack's edit size is measured."""

ENV_POLICY = "COMMANDV_PACK_POLICY"
ENV_MAX_DELTA = "COMMANDV_MAX_DELTA_NORM"


class DeltaNormError(PackError):
    """A pack's edit is larger, relative to the recipient's hidden states, than the policy allows."""


@dataclass
class PackPolicy:
    """Signature policy, trusted keys and edit-size limit for pack files.

    ``trusted``: key files, folders of ``*.pub``, bytes or key objects; empty →
    the default trusted-keys folder. ``max_delta_norm``: largest allowed
    ``‖s·delta(h)‖ / ‖h‖`` on reference rows (None = no limit).
    """

    signatures: str = "warn"
    trusted: Sequence[TrustedKey] = field(default_factory=tuple)
    max_delta_norm: float | None = None

    def __post_init__(self) -> None:
        if self.signatures not in POLICIES:
            raise PackError(f"signature policy {self.signatures!r} unknown; choose one of {', '.join(POLICIES)}")
        if self.max_delta_norm is not None:
            v = float(self.max_delta_norm)
            if not np.isfinite(v) or v <= 0:
                raise PackError(f"max_delta_norm must be a positive number, got {self.max_delta_norm!r}")
            self.max_delta_norm = v
        self._keys: list | None = None

    @classmethod
    def from_env(cls, **overrides) -> "PackPolicy":
        """Policy from ``COMMANDV_PACK_POLICY`` / ``COMMANDV_MAX_DELTA_NORM``; ``overrides`` that are not None win."""
        kw: dict = {"signatures": os.environ.get(ENV_POLICY, "warn").strip().lower() or "warn"}
        raw = os.environ.get(ENV_MAX_DELTA, "").strip()
        if raw:
            try:
                kw["max_delta_norm"] = float(raw)
            except ValueError:
                raise PackError(f"{ENV_MAX_DELTA}={raw!r} is not a number") from None
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def keys(self) -> list:
        """The trusted public keys (loaded once)."""
        if self._keys is None:
            self._keys = load_trusted(self.trusted) if self.trusted else default_trusted_keys()
        return self._keys

    def load(self, path: str | os.PathLike) -> BehaviorPack:
        """Read ``path`` under the signature policy and validate it (:class:`PackError` / ``SignatureError``)."""
        if self.signatures == "off":
            return load_pack_checked(path, "off")
        return load_pack_checked(Path(path), self.signatures, self.keys())

    def read_packs(self, packs) -> list[BehaviorPack]:
        """An engine's ``packs`` argument (None, one pack or file, or a list of them) → validated packs.

        Files go through :meth:`load`; in-memory packs are validated, since their shapes and values reach
        the engine just the same; anything else is a :class:`PackError`."""
        if packs is None:
            return []
        if isinstance(packs, (BehaviorPack, str, os.PathLike)):
            packs = [packs]
        out = []
        for p in packs:
            if isinstance(p, BehaviorPack):
                p.validate()
                out.append(p)
            elif isinstance(p, (str, os.PathLike)):
                out.append(self.load(p))
            else:
                raise PackError(f"expected a BehaviorPack or a pack file, got {type(p).__name__}")
        return out

    def check_size(self, packs: Sequence[BehaviorPack], strengths: Sequence[float],
                   reference: Callable[[], dict[int, np.ndarray]]) -> None:
        """Refuse packs whose edit exceeds ``max_delta_norm``; ``reference()`` gives ``{layer: [N, d]}`` rows
        of the recipient's own unedited hidden states (only called when a limit is set)."""
        if self.max_delta_norm is None or not packs:
            return
        states = reference()
        for pack, s in zip(packs, strengths):
            ratios = delta_norm_ratios(pack, states, s)
            for i, r in enumerate(ratios):
                if r > self.max_delta_norm:
                    e = pack.entries[i]
                    raise DeltaNormError(
                        f"pack {pack.name!r} entry {i} (layer {e.layer}): its edit is {r:.3g}× the norm of the "
                        f"recipient's hidden state on the reference prompts, above the limit {self.max_delta_norm:g} "
                        "(max_delta_norm)")


def delta_norm_ratios(pack: BehaviorPack, states: dict[int, np.ndarray], strength: float = 1.0) -> list[float]:
    """Per entry, ``max_rows ‖strength·entry.strength·delta(h)‖ / ‖h‖`` over ``states[layer]`` ``[N, d]``.

    States are the recipient's unedited block outputs, so entries that share a
    layer are each measured on the same rows (not on each other's output).
    """
    out = []
    for e in pack.entries:
        if e.layer not in states:
            raise PackError(f"no reference hidden states for layer {e.layer}")
        h = np.asarray(states[e.layer], dtype=np.float64)
        d = float(strength) * float(e.strength) * e.delta(h)
        hn = np.linalg.norm(h, axis=-1)
        dn = np.linalg.norm(d, axis=-1)
        out.append(float(np.max(dn / np.maximum(hn, 1e-12))))
    return out


def reference_states(hidden_of: Callable[[str], dict[int, np.ndarray]], n_layer: int) -> dict[int, np.ndarray]:
    """``{layer: [N, d]}``: a model's unedited block outputs at the last token of each chat-rendered
    :data:`REFERENCE_PROMPTS`; ``hidden_of(prompt)`` gives that prompt's ``{layer: [T, d]}`` (no packs)."""
    rows = [hidden_of(p) for p in REFERENCE_PROMPTS]
    return {i: np.stack([r[i][-1] for r in rows]) for i in range(n_layer)}
