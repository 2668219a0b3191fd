"""Behavior packs: the folded Command-V transfer as a small GGUF file.

A pack holds, per entry, a recipient layer and the low-rank edit
``delta(h) = act(h@A + b)@C - (h@P)@Q + e`` (shapes ``A [d, r]``, ``b [r]``,
``C [r, d]``, ``P [d, q]``, ``Q [q, d]``, ``e [d]``; d = recipient hidden size).
Engines add ``strength * delta(h)`` to the residual stream after the block
``layer`` on the targeted prompt positions, entries in file order.

The file is GGUF (architecture ``commandv-pack``), encoded and decoded by
:mod:`commandv.runtime.pack.gguf_io`; see README "Behavior pack format". Packs are untrusted input:
:func:`BehaviorPack.load` (or :func:`parse_pack` on bytes already read) checks
every value it reads and raises :class:`PackError` naming what is wrong.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from commandv.runtime.atomic import atomic_path
from commandv.runtime.edit.lowrank import LowRankEdit, canonical_activation
from commandv.runtime.edit.positions import parse_positions
from commandv.runtime.errors import PackError
from commandv.runtime.pack.gguf_io import MAX_ENTRIES, decode_pack, read_pack_bytes, write_pack

MAX_RANK = 4096
MAX_DIM = 1 << 17
MAX_ABS_VALUE = 1e6

_OPTIONAL = ("P", "Q", "e")


@dataclass
class PackEntry(LowRankEdit):
    """One folded edit at one recipient layer: a :class:`~commandv.runtime.edit.lowrank.LowRankEdit`
    (``A [d, r]``, ``b [r]``, ``C [r, d]``; optional ``P [d, q]``, ``Q [q, d]``, ``e [d]``) with the prompt
    ``positions`` it targets, its ``strength`` and the ``donor_layer`` it came from (-1 if unknown).
    """

    positions: str = "l1"
    strength: float = 1.0
    donor_layer: int = -1

    def validate(self, d: int, n_layer: int, where: str = "entry") -> None:
        """Raise :class:`PackError` unless shapes agree with ``d``, the layer is in range
        and every value is finite."""
        if not (0 <= int(self.layer) < n_layer):
            raise PackError(f"{where}: layer {self.layer} out of range 0..{n_layer - 1}")
        try:
            self.act = canonical_activation(self.act)
            parse_positions(self.positions)
        except ValueError as exc:
            raise PackError(f"{where}: {exc}") from None
        if not math.isfinite(float(self.strength)):
            raise PackError(f"{where}: strength {self.strength} is not finite")
        if abs(float(self.strength)) > MAX_ABS_VALUE:
            raise PackError(f"{where}: strength {float(self.strength):g} beyond ±{MAX_ABS_VALUE:g}")
        for name in ("A", "b", "C"):
            if getattr(self, name) is None:
                raise PackError(f"{where}: tensor {name} missing")
        A, b, C = self.A, self.b, self.C
        if A.ndim != 2 or A.shape[0] != d:
            raise PackError(f"{where}: A has shape {list(A.shape)}, expected [d={d}, r]")
        r = A.shape[1]
        if r < 1 or r > MAX_RANK:
            raise PackError(f"{where}: rank {r} outside 1..{MAX_RANK}")
        if b.shape != (r,):
            raise PackError(f"{where}: b has shape {list(b.shape)}, expected [r={r}]")
        if C.shape != (r, d):
            raise PackError(f"{where}: C has shape {list(C.shape)}, expected [r={r}, d={d}]")
        if (self.P is None) != (self.Q is None):
            raise PackError(f"{where}: P and Q must be given together")
        if self.P is not None:
            if self.P.ndim != 2 or self.P.shape[0] != d:
                raise PackError(f"{where}: P has shape {list(self.P.shape)}, expected [d={d}, q]")
            q = self.P.shape[1]
            if self.Q.shape != (q, d):
                raise PackError(f"{where}: Q has shape {list(self.Q.shape)}, expected [q={q}, d={d}]")
        if self.e is not None and self.e.shape != (d,):
            raise PackError(f"{where}: e has shape {list(self.e.shape)}, expected [d={d}]")
        for name in ("A", "b", "C", *_OPTIONAL):
            t = getattr(self, name)
            if t is None:
                continue
            lo, hi = (float(np.min(t)), float(np.max(t))) if t.size else (0.0, 0.0)  # NaN propagates; no temporaries
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise PackError(f"{where}: tensor {name} has NaN or Inf values")
            if max(-lo, hi) > MAX_ABS_VALUE:
                raise PackError(f"{where}: tensor {name} has values beyond ±{MAX_ABS_VALUE:g}")


@dataclass
class BehaviorPack:
    """A set of folded edits for one recipient model, plus provenance metadata.

    ``recipient`` holds ``fingerprint``, ``arch``, ``n_layer``, ``d_model`` (and
    optionally ``name``); ``meta`` holds free provenance (donor name, adapter
    hash, profile hashes, layer rule, created-by); ``diagnostics`` holds per
    layer-pair fit figures.
    """

    entries: list[PackEntry]
    recipient: dict
    meta: dict = field(default_factory=dict)
    diagnostics: list[dict] = field(default_factory=list)
    name: str = "pack"

    @property
    def d_model(self) -> int:
        return int(self.recipient["d_model"])

    @property
    def n_layer(self) -> int:
        return int(self.recipient["n_layer"])

    @property
    def layers(self) -> list[int]:
        return [e.layer for e in self.entries]

    def validate(self) -> None:
        """Raise :class:`PackError` on any inconsistency."""
        for key in ("fingerprint", "arch", "n_layer", "d_model"):
            if key not in self.recipient:
                raise PackError(f"recipient metadata lacks {key!r}")
        d, n = self.d_model, self.n_layer
        if not (1 <= d <= MAX_DIM):
            raise PackError(f"recipient d_model {d} outside 1..{MAX_DIM}")
        if not (1 <= n <= 4096):
            raise PackError(f"recipient n_layer {n} outside 1..4096")
        if not self.entries:
            raise PackError("pack has no entries")
        if len(self.entries) > MAX_ENTRIES:
            raise PackError(f"pack has {len(self.entries)} entries, more than {MAX_ENTRIES}")
        for i, e in enumerate(self.entries):
            e.validate(d, n, where=f"entry {i}")

    def check_model(self, fingerprint: str | None, arch: str, n_layer: int, d_model: int,
                    force: bool = False) -> None:
        """Refuse a model that the pack was not made for (unless ``force``, which still
        requires matching shapes)."""
        if int(d_model) != self.d_model or int(n_layer) != self.n_layer:
            raise PackError(
                f"pack {self.name!r} is for a model with d={self.d_model}, n_layer={self.n_layer}; "
                f"this model has d={d_model}, n_layer={n_layer}"
            )
        if force:
            return
        if str(arch) != str(self.recipient["arch"]):
            raise PackError(
                f"pack {self.name!r} is for arch {self.recipient['arch']!r}, model is {arch!r} "
                "(use force to override)"
            )
        if fingerprint is not None and fingerprint != self.recipient["fingerprint"]:
            raise PackError(
                f"pack {self.name!r} was made for model {self.recipient['fingerprint'][:16]}…, "
                f"this model is {fingerprint[:16]}… (use force to override)"
            )

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike, dtype: str = "f32") -> Path:
        """Validate and write the pack atomically as GGUF; ``dtype`` is ``f32`` or ``f16``.

        The written file is read back with the loader's checks before it replaces ``path``, so a
        pack that :meth:`load` would refuse (e.g. values beyond the f16 range, malformed
        diagnostics) raises :class:`PackError` and leaves ``path`` untouched.
        """
        self.validate()
        path = Path(path)
        with atomic_path(path) as tmp:
            write_pack(self, tmp, dtype=dtype)
            try:
                read_pack(tmp).validate()
            except PackError as exc:
                raise PackError(f"refusing to write {path}: the written pack would not load: "
                                f"{str(exc).replace(str(tmp), str(path))}") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BehaviorPack":
        """Read and fully validate a pack; raise :class:`PackError` naming the problem."""
        pack = read_pack(Path(path))
        pack.validate()
        return pack

    def summary(self) -> str:
        """Human-readable one-paragraph description."""
        ranks = sorted({e.rank for e in self.entries})
        return (
            f"{self.name}: {len(self.entries)} entries at recipient layers {self.layers}, "
            f"rank {ranks}, d={self.d_model}, for {self.recipient.get('name') or self.recipient['arch']} "
            f"({self.recipient['fingerprint'][:16]}…)"
        )


def read_pack(path: Path) -> BehaviorPack:
    """Read and parse a pack file; shape/value checks are done by ``BehaviorPack.validate``."""
    return parse_pack(read_pack_bytes(path), path)


def parse_pack(data: bytes, path: Path | str) -> BehaviorPack:
    """Parse pack bytes into a :class:`BehaviorPack` (``path`` only names the source in messages); data only.

    Call as ``parse_pack(read_pack_bytes(path), path)``. The bytes are decoded and checked by
    :func:`~commandv.runtime.pack.gguf_io.decode_pack` (memory stays bounded by the input); raises :class:`PackError`.
    Shape/value checks are done by ``BehaviorPack.validate``.
    """
    fields = decode_pack(data, path)
    entries = [PackEntry(**e) for e in fields.pop("entries")]
    return BehaviorPack(entries=entries, **fields)
