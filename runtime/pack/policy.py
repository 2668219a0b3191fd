"""What an engine demands of a pack file before it edits a model with it.

A :class:`PackPolicy` bundles the two checks an engine makes on untrusted packs:

* **signatures** (``require`` | ``warn`` | ``off``, see :mod:`commandv.runtime.pack.signing`): with
  ``require`` an unsigned or tampered pack is refused before any byte of it is
  parsed; ``warn`` loads it with an :class:`~commandv.runtime.pack.signing.UnverifiedPackWarning`.
* **edit size** (``max_delta_norm``): the packs of one request, at that request's
  strengths, are run on the recipient's own hidden states (every token row of the
  reference prompts, see :data:`REFERENCE_PROMPTS`) and refused when, at any layer,
  the *summed* edit ``‖h' − h‖ / ‖h‖`` exceeds the limit. ``h`` is the unedited
  block output of a row, ``h'`` that row after every entry of every pack on the
  layer whose positions spec targets it, applied in engine order (packs in request
  order, entries in file order, each on the previous one's output) with strength
  ``pack strength × entry strength``. So many small entries on one layer are
  measured together, and an entry that fires only on the first tokens is measured
  there. A pack whose deltas dwarf the residual stream is either broken or built
  to take the model over. Not covered: the states a layer sees after an earlier
  layer's edit (each layer is measured on unedited states), and a gate that only
  content absent from the reference prompts opens.

Defaults come from the environment: ``COMMANDV_PACK_POLICY`` (default ``warn``),
``COMMANDV_MAX_DELTA_NORM`` (default: no limit). Packs passed as
:class:`~commandv.runtime.pack.model.BehaviorPack` objects were built or loaded in-process and are not
re-checked for signatures (they are validated, and the size check still applies).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from commandv.runtime.edit.positions import parse_positions
from commandv.runtime.pack.model import BehaviorPack, PackError
from commandv.runtime.pack.signing import POLICIES, TrustedKey, default_trusted_keys, load_pack_checked, load_trusted
from commandv.runtime.terminal import safe_text

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
        out = []
        for p in pack_list(packs):
            if isinstance(p, BehaviorPack):
                p.validate()
                out.append(p)
            elif isinstance(p, (str, os.PathLike)):
                out.append(self.load(p))
            else:
                raise PackError(f"expected a BehaviorPack or a pack file, got {type(p).__name__}")
        return out

    def check_size(self, packs: Sequence[BehaviorPack], strengths: Sequence[float],
                   reference: Callable[[], "ReferenceStates"]) -> None:
        """Refuse the combination ``packs`` × ``strengths`` (one request's packs, one strength per pack) when
        its summed edit at any layer exceeds ``max_delta_norm`` (:func:`edit_sizes`).

        ``reference()`` gives the recipient's unedited hidden states: a :class:`ReferenceStates` (engines
        keep one per loaded model; it also caches each combination's measurement), a list of per-prompt
        ``{layer: [T, d]}`` or one such dict; it is only called when a limit is set and packs are given.
        Raises :class:`DeltaNormError` naming the layer, the measured ratio and the limit."""
        if self.max_delta_norm is None or not packs:
            return
        if len(strengths) != len(packs):
            raise PackError(f"{len(packs)} packs but {len(strengths)} strengths")
        sizes = as_reference(reference()).measure(packs, strengths)
        over = [z for z in sizes.values() if not z.ratio <= self.max_delta_norm]  # NaN counts as over
        if over:
            z = max(over, key=lambda z: z.ratio)
            raise DeltaNormError(
                f"layer {z.layer}: the summed edit of {z.sources} is {z.ratio:.3g}× the norm of the recipient's "
                f"hidden state (reference prompt {z.prompt}, token {z.row}), above the limit "
                f"{self.max_delta_norm:g} (max_delta_norm)")


def pack_list(packs) -> list:
    """An engine's ``packs`` argument (None, one pack or file, or a list of them) as a list."""
    if packs is None:
        return []
    if isinstance(packs, (BehaviorPack, str, os.PathLike)):
        return [packs]
    return list(packs)


@dataclass(frozen=True)
class EditSize:
    """The largest summed edit of a pack combination at one layer: ``ratio`` = ``‖h' − h‖ / ‖h‖`` at token
    ``row`` of reference prompt ``prompt``; ``sources`` names the packs (and strengths) with entries there."""

    layer: int
    ratio: float
    prompt: int
    row: int
    sources: str


def _label(packs: Sequence[BehaviorPack], strengths: Sequence[float], used: set[int]) -> str:
    names = [f"pack {safe_text(packs[i].name)[:60]!r} at strength {float(strengths[i]):g}" for i in sorted(used)]
    return " + ".join(names[:4]) + (f" + {len(names) - 4} more" if len(names) > 4 else "")


def edit_sizes(packs: Sequence[BehaviorPack], strengths: Sequence[float],
               prompts: Sequence[dict[int, np.ndarray]]) -> dict[int, EditSize]:
    """``{layer: EditSize}`` for every layer ``packs`` edit, applied together at ``strengths`` (one per pack).

    ``prompts[k]`` is reference prompt k's unedited block outputs ``{layer: [T_k, d]}`` (all its token
    rows). On each prompt and layer the entries of all packs on that layer are applied as the engines apply
    them: packs in list order, entries in file order, each to the rows its positions spec selects in a
    prompt of ``T_k`` tokens (clipped to the prompt, :meth:`Positions.rows_within`) and to the output of the
    entries before it, with strength ``strengths[i] × entry.strength``. The ratio is
    ``‖h' − h‖ / ‖h‖`` per edited row (float64), the largest over rows and prompts; a non-finite edit
    gives ``inf``. Raises :class:`PackError` when a prompt lacks an edited layer.
    """
    by_layer: dict[int, list] = {}
    for i, (pack, s) in enumerate(zip(packs, strengths)):
        for e in pack.entries:
            eff = float(s) * float(e.strength)
            if eff == 0.0:  # the engines skip these
                continue
            try:
                pos = parse_positions(e.positions)
            except ValueError as exc:
                raise PackError(f"pack {safe_text(pack.name)[:60]!r}: {exc}") from None
            by_layer.setdefault(int(e.layer), []).append((i, e, eff, pos))
    out: dict[int, EditSize] = {}
    with np.errstate(all="ignore"):
        for layer in sorted(by_layer):
            items = by_layer[layer]
            best = (0.0, -1, -1)
            for k, states in enumerate(prompts):
                if layer not in states:
                    raise PackError(f"no reference hidden states for layer {layer}")
                h0 = np.asarray(states[layer], dtype=np.float64)
                h = h0.copy()
                edited = np.zeros(h0.shape[0], dtype=bool)
                for _, e, eff, pos in items:
                    idx = pos.rows_within(h0.shape[0])
                    if idx:
                        h[idx] = h[idx] + eff * e.delta(h[idx])
                        edited[idx] = True
                rows = np.flatnonzero(edited)
                if not rows.size:
                    continue
                dn = np.linalg.norm(h[rows] - h0[rows], axis=-1)
                r = dn / np.maximum(np.linalg.norm(h0[rows], axis=-1), 1e-12)
                r = np.where(np.isfinite(r), r, np.inf)
                j = int(np.argmax(r))
                if r[j] > best[0] or best[1] < 0:
                    best = (float(r[j]), k, int(rows[j]))
            out[layer] = EditSize(layer, *best, _label(packs, strengths, {i for i, *_ in items}))
    return out


def pack_key(pack: BehaviorPack) -> str:
    """sha256 of everything about ``pack`` that the edit-size check reads (name, layers, activations,
    positions, strengths, tensors with dtype and shape): the cache key of one pack."""
    h = hashlib.sha256(json.dumps(str(pack.name)).encode())
    for e in pack.entries:
        h.update(json.dumps([int(e.layer), str(e.act), str(e.positions), float(e.strength)]).encode())
        for t in (e.A, e.b, e.C, e.P, e.Q, e.e):
            if t is None:
                h.update(b"-")
            else:
                a = np.ascontiguousarray(t)
                h.update(f"{a.dtype.str}{a.shape}".encode() + a.tobytes())
    return h.hexdigest()


class ReferenceStates:
    """A recipient's unedited block outputs on the reference prompts, every token row, and the measured
    edit sizes of the pack combinations checked against them.

    ``ReferenceStates(prompts)``: ``prompts[k]`` = ``{layer: [T_k, d]}`` for reference prompt k (kept as
    float32: about ``4 × n_layer × d × Σ T_k`` bytes). Engines build one per loaded model with
    :func:`reference_states` and keep it; :meth:`measure` caches its result per (pack contents, strengths).
    """

    MAX_CACHED = 256

    def __init__(self, prompts: Sequence[dict[int, np.ndarray]]):
        self.prompts = [{int(l): np.asarray(h, dtype=np.float32) for l, h in p.items()} for p in prompts]
        if not self.prompts:
            raise PackError("no reference hidden states")
        for p in self.prompts:
            for l, h in p.items():
                if h.ndim != 2 or h.shape[0] < 1:
                    raise PackError(f"reference hidden states of layer {l} must be [T >= 1, d], got {list(h.shape)}")
        self._measured: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, k: int) -> dict[int, np.ndarray]:
        return self.prompts[k]

    def measure(self, packs: Sequence[BehaviorPack], strengths: Sequence[float]) -> dict[int, EditSize]:
        """:func:`edit_sizes` of ``packs`` at ``strengths`` on these states, cached by
        ``(pack_key of each pack, strengths)`` (the last :attr:`MAX_CACHED` combinations)."""
        key = (tuple(pack_key(p) for p in packs), tuple(float(s) for s in strengths))
        hit = self._measured.get(key)
        if hit is None:
            hit = self._measured[key] = edit_sizes(packs, strengths, self.prompts)
            while len(self._measured) > self.MAX_CACHED:
                self._measured.popitem(last=False)
        else:
            self._measured.move_to_end(key)
        return hit


def as_reference(states) -> ReferenceStates:
    """``states`` as :class:`ReferenceStates`: one already, a list of per-prompt ``{layer: [T, d]}``, or one
    such dict (a single prompt)."""
    if isinstance(states, ReferenceStates):
        return states
    if isinstance(states, dict):
        return ReferenceStates([states])
    return ReferenceStates(list(states))


def reference_states(hidden_of: Callable[[str], dict[int, np.ndarray]], n_layer: int) -> ReferenceStates:
    """A model's unedited block outputs on every token row of each :data:`REFERENCE_PROMPTS` (all rows, so
    that every position spec finds its rows); ``hidden_of(prompt)`` gives that prompt's ``{layer: [T, d]}``
    (no packs; engines render it with the chat template when the model has one)."""
    rows = [hidden_of(p) for p in REFERENCE_PROMPTS]
    return ReferenceStates([{i: r[i] for i in range(n_layer)} for r in rows])
