"""Honest statistics for behavior rates: Wilson intervals, paired bootstrap intervals, rank correlation.

Every rate the evaluation reports is a count of judged prompts out of ``n``; every difference between two
configurations is paired (the same prompts under both). Call as::

    lo, hi = wilson(k=45, n=159)                          # 95 % interval of a rate, in [0, 1]
    d, lo, hi = paired_bootstrap(a_hits, b_hits)          # mean(b - a) and its 95 % percentile interval
    g, lo, hi = paired_bootstrap_ratio(off, tr, direct)   # recovered gain (tr - off) / (direct - off)
    rho = spearman(x, y)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054
"""The standard normal quantile for a two-sided 95 % interval."""


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval ``(lo, hi)`` of the rate ``k / n`` (``nan, nan`` when ``n`` is 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)  # exact at the edges (no rounding off 0 / 1)


def _as_matrix(*columns: Sequence[float]) -> np.ndarray:
    lens = {len(c) for c in columns}
    if len(lens) != 1:
        raise ValueError(f"paired samples must have the same length, got {sorted(lens)}")
    m = np.asarray(columns, dtype=np.float64)
    if m.shape[1] == 0:
        raise ValueError("paired samples are empty")
    return m


def _resample_means(m: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, k]``: the column means of ``m`` (``[k, n]``) over ``n_boot`` resamples of its n items."""
    rng = np.random.default_rng(seed)
    n = m.shape[1]
    idx = rng.integers(0, n, size=(n_boot, n))
    return m[:, idx].mean(axis=2).T


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = 10000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """``(mean(b) - mean(a), lo, hi)``: the paired difference and its percentile bootstrap interval.

    ``a``, ``b``: per-prompt outcomes (0/1 or scores) of two configurations on the same prompts, in the same order.
    """
    m = _as_matrix(a, b)
    means = _resample_means(m, n_boot, seed)
    diffs = means[:, 1] - means[:, 0]
    q = (1 - level) / 2
    return float(m[1].mean() - m[0].mean()), float(np.quantile(diffs, q)), float(np.quantile(diffs, 1 - q))


def paired_bootstrap_ratio(off: Sequence[float], transferred: Sequence[float], direct: Sequence[float],
                           n_boot: int = 10000, seed: int = 0, level: float = 0.95,
                           base: Sequence[float] | None = None) -> tuple[float, float, float]:
    """Recovered gain ``(mean(tr) - mean(off)) / (mean(direct) - mean(base))`` and its paired bootstrap interval.

    ``base`` defaults to ``off`` (the recipient's own gain from a directly trained adapter); pass another
    configuration for a gain measured elsewhere (e.g. the donor's: ``direct`` = donor + adapter, ``base`` = donor).
    All on the same prompts. Resamples where the denominator is 0 are dropped; ``nan`` when the observed one is 0.
    """
    m = _as_matrix(off, transferred, direct, off if base is None else base)
    gain = m[2].mean() - m[3].mean()
    if gain == 0:
        return float("nan"), float("nan"), float("nan")
    means = _resample_means(m, n_boot, seed)
    den = means[:, 2] - means[:, 3]
    ok = den != 0
    ratios = (means[ok, 1] - means[ok, 0]) / den[ok]
    q = (1 - level) / 2
    return float((m[1].mean() - m[0].mean()) / gain), float(np.quantile(ratios, q)), float(np.quantile(ratios, 1 - q))


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks of ``values`` (``[n]``), ties sharing their average rank (as Spearman and Mann-Whitney use)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="mergesort")
    r = np.empty(len(v))
    sv = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        r[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); ``nan`` for fewer than 2 pairs or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return float("nan")

    rx, ry = average_ranks(x), average_ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])
