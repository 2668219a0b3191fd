"""Position specs in pyreft's spelling: ``l1`` (last token), ``f1+l1``, ``l3``, ``f2``.

``fK`` targets the first K prompt tokens, ``lK`` the last K; ``+`` joins them.
Positions always refer to the chat-templated prompt, generation header included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_PART = re.compile(r"^([fl])(\d{1,4})$")
MAX_SPAN = 1024


@dataclass(frozen=True)
class Positions:
    """Parsed spec: ``first`` tokens from the start and ``last`` tokens from the end."""

    first: int = 0
    last: int = 1

    @classmethod
    def parse(cls, spec: str) -> "Positions":
        """Parse ``spec`` (e.g. ``"f1+l1"``); raise ``ValueError`` naming the bad part."""
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError("empty positions spec (expected e.g. 'l1' or 'f1+l1')")
        first = last = 0
        for part in spec.strip().lower().split("+"):
            m = _PART.match(part.strip())
            if not m:
                raise ValueError(f"bad positions spec {spec!r}: part {part!r} is not fN or lN")
            n = int(m.group(2))
            if n < 1 or n > MAX_SPAN:
                raise ValueError(f"bad positions spec {spec!r}: count {n} outside 1..{MAX_SPAN}")
            if m.group(1) == "f":
                first = max(first, n)
            else:
                last = max(last, n)
        return cls(first=first, last=last)

    @property
    def spec(self) -> str:
        parts = ([f"f{self.first}"] if self.first else []) + ([f"l{self.last}"] if self.last else [])
        return "+".join(parts)

    def indices(self, n_tokens: int) -> list[int]:
        """Sorted token indices targeted in a prompt of ``n_tokens`` tokens.

        Raises ``ValueError`` when the spec reaches beyond the prompt.
        """
        need = max(self.first, self.last)
        if n_tokens < need:
            raise ValueError(
                f"positions {self.spec!r} need at least {need} prompt tokens, prompt has {n_tokens}"
            )
        idx = set(range(self.first)) | set(range(n_tokens - self.last, n_tokens))
        return sorted(idx)

    def rows_within(self, n_tokens: int) -> list[int]:
        """Like :meth:`indices`, but a spec reaching beyond the prompt is clipped to it instead of refused:
        ``Positions.parse("f2+l9").rows_within(4) == [0, 1, 2, 3]`` (the edit-size check's reference rows)."""
        n = max(int(n_tokens), 0)
        f, l = min(self.first, n), min(self.last, n)
        return sorted(set(range(f)) | set(range(n - l, n)))


@lru_cache(maxsize=512)
def _parse_cached(spec: str) -> Positions:
    return Positions.parse(spec)


def parse_positions(spec: str) -> Positions:
    """:meth:`Positions.parse`, remembered per spec string (a request parses each entry's spec once per process,
    not once per request); the same ``ValueError`` for a bad spec."""
    return _parse_cached(spec) if isinstance(spec, str) else Positions.parse(spec)
