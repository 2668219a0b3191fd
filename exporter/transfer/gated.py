"""The ``gated`` fold: the donor edit's *difference* between prompts that want the behavior and ordinary prompts,
written through the translator and switched on by a gate read from the recipient's state.

Why: a folded edit ``δ_R(h) = δ_D(h·C_R→D)·C_D→R`` fires on every prompt. Across model families the read side is
noisy (on SmolLM2 → Qwen0.5B the paper's ``pinv`` predicts the adapter's read values ``h_D·A`` with held-out
R² between -0.6 and 0.5 per layer) and the part of the edit every prompt gets costs the recipient its answers.
This fold keeps only what the donor adapter does *more* on the behavior's prompts, and only where the recipient's
state says it is such a prompt. Per layer pair, with rows of both profiles on the same prompts:

1. **Read**: a centered, standardized ridge map from ``h_R`` to the adapter's read values ``z = h_D·[A | P]``
   (:func:`read_ridge`; λ by held-out R², fitted on the last-token rows).
2. **Gate direction**: ``u`` = unit vector of ``mean z_R(expected) - mean z_R(baseline)`` (``expected``: rows of
   prompts where the behavior is wanted, e.g. harmful requests; ``baseline``: ordinary prompts); the gate
   ``s(h) = (z_R(h) - mean z_R(baseline))·u`` opens above ``τ = k·std(s(baseline))``.
3. **Write**: ``Δ_D = mean δ_D(expected) - mean δ_D(baseline)`` (the donor edit's own difference) mapped with
   the export's translator ``C_D→R = pinv(X_D)·X_R`` (every fit row, token rows included when the profiles carry
   them; truncated at the export's ``rcond``). Within Qwen the cutoff decides the sign: Qwen1.5B → Qwen0.5B
   refusal fell 51 → 29 % with the untruncated map and rose to 68-76 % with ``rcond`` 3e-3 (tuning prompts).
4. **Entry**: ``δ_R(h) = relu(s(h) - τ) / (mean s(expected) - τ) · Δ_D·C_D→R``: rank 1, activation relu, so it is
   an ordinary pack entry (``A [d_R, 1]``, ``b [1]``, ``C [1, d_R]``). On an average expected prompt it adds the
   donor's difference; on most ordinary prompts nothing. A layer whose gate cannot tell the two groups apart
   (mean expected ``s`` not above ``τ``) gets no entry.

Call :func:`gated_entry` per layer pair (``export_pack(..., method="gated", contrast=...)`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from commandv.exporter.adapters.interventions import DonorEdit
from commandv.runtime.pack.model import PackEntry

GATE_K = 1.0
"""The gate opens ``GATE_K`` standard deviations (of ordinary prompts' gate values) above their mean."""

RIDGE_LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""Ridge strengths tried by :func:`read_ridge`, as multiples of the standardized Gram matrix's mean eigenvalue."""


@dataclass(frozen=True)
class Contrast:
    """Profile rows for the ``gated`` fold (indices into both profiles' rows).

    ``expected [k]``: prompts where the behavior is wanted (refusal: harmful requests); ``baseline [m]``: ordinary
    prompts (the general set); ``last_token``: how many leading rows are last-token rows (the rest, if any, are
    token rows, used for the write map only)."""

    expected: np.ndarray
    baseline: np.ndarray
    last_token: int

    def validate(self, n_rows: int) -> str | None:
        """The one-line problem with these rows for profiles of ``n_rows`` rows, or None."""
        if len(self.expected) < 2 or len(self.baseline) < 2:
            return (f"the gated fold needs at least 2 expected and 2 baseline prompts in the profile "
                    f"(got {len(self.expected)} and {len(self.baseline)})")
        if not 0 < self.last_token <= n_rows:
            return f"last-token rows {self.last_token} outside 1..{n_rows}"
        for name, rows in (("expected", self.expected), ("baseline", self.baseline)):
            if rows.min() < 0 or rows.max() >= self.last_token:
                return f"{name} rows outside the profile's {self.last_token} last-token rows"
        return None


def _ridge(Xs: np.ndarray, Y: np.ndarray, lam: float) -> np.ndarray:
    d = Xs.shape[1]
    G = Xs.T @ Xs
    return np.linalg.solve(G + lam * np.trace(G) / d * np.eye(d), Xs.T @ Y)


def read_ridge(XR: np.ndarray, Z: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """``(W [d_R, k], w0 [k], r2)``: ``Z [N, k] ≈ XR [N, d_R] @ W + w0``, a ridge fit on centered, standardized
    ``XR``; λ from :data:`RIDGE_LAMBDAS` by R² on a held-out fifth of the rows (``r2``), then refitted on all."""
    XR, Z = np.asarray(XR, np.float64), np.asarray(Z, np.float64)
    perm = np.random.default_rng(seed).permutation(len(XR))
    held, fit = perm[: len(XR) // 5], perm[len(XR) // 5:]
    mx, sx = XR.mean(0), XR.std(0) + 1e-6
    Xs = (XR - mx) / sx

    def solve(rows: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
        zm = Z[rows].mean(0)
        return _ridge(Xs[rows], Z[rows] - zm, lam), zm

    best = (-np.inf, RIDGE_LAMBDAS[0])
    for lam in RIDGE_LAMBDAS:
        W, zm = solve(fit, lam)
        ss = float(((Z[held] - Z[held].mean(0)) ** 2).sum())
        r2 = 1 - float(((Xs[held] @ W + zm - Z[held]) ** 2).sum()) / ss if ss > 0 else -np.inf
        if r2 > best[0]:
            best = (r2, lam)
    W, zm = solve(np.arange(len(XR)), best[1])
    W = W / sx[:, None]
    return W, zm - mx @ W, float(best[0])


def reads(edit: DonorEdit) -> np.ndarray:
    """``[d_D, k]``: the directions the donor edit reads (``A``, then ``P`` when it has one)."""
    return np.concatenate([edit.A] + ([edit.P] if edit.P is not None else []), axis=1).astype(np.float64)


def gated_entry(edit: DonorEdit, XR: np.ndarray, XD: np.ndarray, to_recipient: Callable[[np.ndarray], np.ndarray],
                contrast: Contrast, recipient_layer: int, positions: str, strength: float = 1.0,
                k: float = GATE_K) -> tuple[PackEntry | None, dict]:
    """One layer pair's gated entry and its figures.

    ``XR [n, d_R]`` / ``XD [n, d_D]``: the last-token rows the read and gate are fitted on (``contrast`` indexes
    them); ``to_recipient``: ``M [m, d_D] ↦ M·C_D→R [m, d_R]``, the write map (the export's own translator,
    :func:`~commandv.exporter.transfer.score.pinv_to_recipient`, with its cutoff and fit rows). Returns
    ``(entry or None, {"ridge_read_r2", "gate_tau", "gate_expected_open", "gate_baseline_open"})``; None when the gate
    cannot separate the two groups at this layer.
    """
    XR, XD = np.asarray(XR, np.float64), np.asarray(XD, np.float64)
    W, w0, r2 = read_ridge(XR, XD @ reads(edit))
    z = XR @ W + w0
    exp, base = contrast.expected, contrast.baseline
    mu_b = z[base].mean(0)
    diff = z[exp].mean(0) - mu_b
    figs = {"ridge_read_r2": r2}
    if not np.linalg.norm(diff) > 0:
        return None, figs
    u = diff / np.linalg.norm(diff)
    s = (z - mu_b) @ u
    tau = k * float(s[base].std())
    s_exp = float(s[exp].mean())
    figs.update(gate_tau=tau, gate_expected_open=float(np.mean(s[exp] > tau)),
                gate_baseline_open=float(np.mean(s[base] > tau)))
    if not s_exp > tau:
        return None, figs
    dD = np.asarray(edit.delta(XD[exp]), np.float64).mean(0) - np.asarray(edit.delta(XD[base]), np.float64).mean(0)
    write = np.asarray(to_recipient(dD[None, :]), np.float64)[0]
    f32 = lambda a: np.ascontiguousarray(a, np.float32)  # noqa: E731
    entry = PackEntry(layer=recipient_layer, donor_layer=edit.layer, A=f32((W @ u)[:, None]),
                      b=f32([(w0 - mu_b) @ u - tau]), C=f32((write / (s_exp - tau))[None, :]), act="relu",
                      positions=positions, strength=strength)
    return entry, figs
