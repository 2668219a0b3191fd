"""Donor → recipient layer mapping by relative depth.

Two rules, for donor layer ``l_D`` of ``n_D`` and a recipient of ``n_R`` layers:

* ``floor`` (the paper): ``l_R = floor(l_D · n_R / n_D)``.
* ``nearest`` (the authors' code; **default**): ``l_R = round(l_D · n_R / n_D)`` with
  ties going to the lower layer, clipped to ``n_R − 1``.

Several donor layers may land on one recipient layer; the pack then applies
them at that layer in donor-layer order.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from commandv.runtime.errors import CommandVError

LAYER_RULES = ("nearest", "floor")
DEFAULT_LAYER_RULE = "nearest"


class LayerMapError(CommandVError, ValueError):
    """A layer is out of range or the rule is unknown."""


@dataclass(frozen=True)
class LayerMap:
    """``pairs[i] = (donor_layer, recipient_layer)`` in donor-layer order."""

    rule: str
    n_donor: int
    n_recipient: int
    pairs: tuple[tuple[int, int], ...]

    def recipient_of(self, donor_layer: int) -> int:
        for d, r in self.pairs:
            if d == donor_layer:
                return r
        raise KeyError(donor_layer)


def map_layer(l_d: int, n_d: int, n_r: int, rule: str = DEFAULT_LAYER_RULE) -> int:
    """Recipient layer for donor layer ``l_d`` (exact rational arithmetic, no float ties)."""
    if rule not in LAYER_RULES:
        raise LayerMapError(f"unknown layer rule {rule!r}; choose one of {LAYER_RULES}")
    if n_d < 1 or n_r < 1:
        raise LayerMapError(f"layer counts must be positive (donor {n_d}, recipient {n_r})")
    if not (0 <= l_d < n_d):
        raise LayerMapError(f"donor layer {l_d} out of range 0..{n_d - 1}")
    x = Fraction(l_d * n_r, n_d)
    if rule == "floor":
        out = x.numerator // x.denominator
    else:
        lo = x.numerator // x.denominator
        out = lo if x - lo <= Fraction(1, 2) else lo + 1
    return min(out, n_r - 1)


def build_layer_map(donor_layers: list[int], n_d: int, n_r: int, rule: str = DEFAULT_LAYER_RULE) -> LayerMap:
    """Map every donor layer; pairs sorted by donor layer."""
    pairs = tuple((l, map_layer(l, n_d, n_r, rule)) for l in sorted(donor_layers))
    return LayerMap(rule=rule, n_donor=n_d, n_recipient=n_r, pairs=pairs)
