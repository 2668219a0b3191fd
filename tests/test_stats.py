"""exporter.stats against independent definitions: Wilson bounds solve the score equation, bootstrap
intervals cover the truth about 95 % of the time, Spearman equals Pearson of hand-computed ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from commandv.exporter.evaluation.stats import Z95, paired_bootstrap, paired_bootstrap_ratio, spearman, wilson


def _score_root(k: int, n: int, lo: float, hi: float) -> float:
    """The p in [lo, hi] where the score statistic (k/n - p) / sqrt(p(1-p)/n) crosses ±z (bisection)."""
    f = lambda p: abs(k / n - p) - Z95 * math.sqrt(p * (1 - p) / n)  # noqa: E731
    a, b = lo, hi
    for _ in range(200):
        m = (a + b) / 2
        if (f(a) > 0) == (f(m) > 0):
            a = m
        else:
            b = m
    return (a + b) / 2


@pytest.mark.parametrize("k, n", [(1, 10), (5, 10), (45, 159), (80, 100), (99, 100), (3, 159)])
def test_wilson_bounds_solve_the_score_equation(k, n):
    lo, hi = wilson(k, n)
    p = k / n
    assert lo < p < hi
    assert lo == pytest.approx(_score_root(k, n, 1e-12, p), abs=1e-9)
    assert hi == pytest.approx(_score_root(k, n, p, 1 - 1e-12), abs=1e-9)


def test_wilson_edges():
    assert wilson(0, 10)[0] == 0 and wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)  # textbook value
    assert wilson(10, 10)[1] == 1 and wilson(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    assert all(math.isnan(v) for v in wilson(0, 0))
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_paired_bootstrap_covers_the_true_difference():
    rng = np.random.default_rng(1)
    n, hits, sims = 120, 0, 200
    for s in range(sims):
        a = rng.random(n) < 0.30
        b = np.where(rng.random(n) < 0.7, a, rng.random(n) < 0.45)  # paired: mostly the same outcome
        truth = 0.3 * (0.45 - 0.30)  # b differs from a on 30 % of prompts, where it is a fresh 45 % draw
        d, lo, hi = paired_bootstrap(a, b, n_boot=1000, seed=s)
        assert d == pytest.approx(b.mean() - a.mean())
        hits += lo <= truth <= hi
    assert 0.88 <= hits / sims <= 0.99, hits / sims


def test_paired_interval_is_narrower_than_unpaired_for_correlated_outcomes():
    rng = np.random.default_rng(2)
    a = rng.random(150) < 0.4
    b = a.copy()
    b[:12] = True  # +8 points on the same prompts
    d, lo, hi = paired_bootstrap(a, b, n_boot=4000)
    assert lo > 0  # paired: the difference is clearly positive
    la, ha = wilson(int(a.sum()), 150)
    lb, hb = wilson(int(b.sum()), 150)
    assert lb < ha  # the two rates' own intervals overlap: only the paired view resolves it


def test_recovered_gain_ratio():
    off = np.array([0] * 100)
    direct = np.array([1] * 80 + [0] * 20)
    tr = np.array([1] * 40 + [0] * 60)
    g, lo, hi = paired_bootstrap_ratio(off, tr, direct, n_boot=2000)
    assert g == pytest.approx(0.5) and lo < 0.5 < hi and lo > 0.3 and hi < 0.7
    assert all(math.isnan(v) for v in paired_bootstrap_ratio(off, tr, off))
    with pytest.raises(ValueError):
        paired_bootstrap(off, tr[:10])


def _ranks(v):
    s = sorted(v)
    return [(2 * s.index(x) + s.count(x) + 1) / 2 for x in v]  # average rank, 1-based


@pytest.mark.parametrize("seed", range(5))
def test_spearman_is_pearson_of_ranks(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 12).tolist()
    y = (np.array(x) + rng.integers(-3, 4, 12)).tolist()
    want = float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])
    assert spearman(x, y) == pytest.approx(want)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
