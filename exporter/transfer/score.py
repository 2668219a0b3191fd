"""Transferability score: how much of the donor's edit a pack can carry, from profiles and adapter only.

No generation. For each layer pair of an export, on the profile's held-out prompts (rows the translators were
not fitted on), with ``h_R`` / ``h_D`` the two models' states on the same prompt:

* ``edit_cos``: mean cosine between the donor's own edit ``δ_D(h_D)`` and the transferred edit seen from donor
  space, ``δ_R(h_R) @ C_R→D`` (1 = the pack moves the recipient the way the donor adapter moves the donor, as far
  as the translators can tell; it falls when the read side sees the wrong features or the write side loses
  the direction);
* ``read_r2``: held-out R² of the features the adapter reads, ``(h_R @ C_R→D) @ A`` against ``h_D @ A``;
* ``norm_ratio``: median ``‖δ_R‖/‖h_R‖`` over median ``‖δ_D‖/‖h_D‖`` (1 = the same relative edit size).

The pack's score is the donor-edit-energy-weighted mean over layer pairs of
``max(edit_cos, 0) · min(norm_ratio, 1/norm_ratio)``, in [0, 1]. How well it ranks measured gains is in
``benchmarks/results/transfer_score.json``; call :func:`layer_figures` per pair and :func:`pack_score` on
the list (``export_pack`` does both and stores them in the pack's diagnostics and metadata).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from commandv.exporter.adapters.interventions import DonorEdit
from commandv.exporter.transfer.translators import GramFactor


def _row_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-30)


def _r2(pred: np.ndarray, true: np.ndarray) -> float:
    ss_tot = float(np.sum((true - true.mean(axis=0)) ** 2))
    return 1.0 - float(np.sum((true - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")


def pinv_to_donor(fR: GramFactor, fD: GramFactor) -> Callable[[np.ndarray], np.ndarray]:
    """``M ↦ M @ C_R→D`` (``[m, d_R] → [m, d_D]``) with ``C_R→D = pinv(X_R) X_D`` from the two factors."""
    return lambda M: fD.times_x(fR.times_pinv(M))


def pinv_to_recipient(fR: GramFactor, fD: GramFactor) -> Callable[[np.ndarray], np.ndarray]:
    """``M ↦ M @ C_D→R`` (``[m, d_D] → [m, d_R]``) with ``C_D→R = pinv(X_D) X_R`` from the two factors."""
    return lambda M: fR.times_x(fD.times_pinv(M))


def median_relative_edit(edit_norms: np.ndarray, X: np.ndarray) -> float:
    """Median over rows of ``‖δ(h)‖ / ‖h‖``: ``edit_norms [M]`` the edit's row norms on the states ``X [M, d]``."""
    return float(np.median(edit_norms / np.maximum(np.linalg.norm(X, axis=1), 1e-30)))


def layer_figures(edit: DonorEdit, entry, to_donor: Callable[[np.ndarray], np.ndarray], XR_held: np.ndarray,
                  XD_held: np.ndarray) -> dict[str, float]:
    """``{"edit_cos", "read_r2", "norm_ratio", "donor_edit_energy"}`` for one layer pair.

    ``edit``: the donor edit; ``entry``: its folded :class:`~commandv.runtime.pack.model.PackEntry` (strength 1);
    ``to_donor``: the recipient → donor translator's linear part (:func:`pinv_to_donor` for the paper's);
    ``XR_held [M, d_R]`` / ``XD_held [M, d_D]``: held-out states of the same prompts.
    """
    XR = np.asarray(XR_held, dtype=np.float64)
    XD = np.asarray(XD_held, dtype=np.float64)
    dD = edit.delta(XD)  # [M, d_D]
    dR = entry.delta(XR.astype(np.float32)).astype(np.float64)  # [M, d_R]
    cos = float(np.mean(_row_cos(to_donor(dR), dD)))
    read = _r2(to_donor(XR) @ edit.A, XD @ edit.A)
    rel_r = median_relative_edit(np.linalg.norm(dR, axis=1), XR)
    rel_d = median_relative_edit(np.linalg.norm(dD, axis=1), XD)
    return {"edit_cos": cos, "read_r2": read, "norm_ratio": float(rel_r / max(rel_d, 1e-30)),
            "donor_edit_energy": float(rel_d)}


def pair_score(fig: dict[str, float]) -> float:
    """One layer pair's term: ``max(edit_cos, 0) · min(norm_ratio, 1/norm_ratio)`` in [0, 1]."""
    r = fig["norm_ratio"]
    if not np.isfinite(r) or r <= 0 or not np.isfinite(fig["edit_cos"]):
        return 0.0
    return max(fig["edit_cos"], 0.0) * min(r, 1.0 / r)


def pack_score(figs: list[dict[str, float]], strength: float = 1.0) -> float:
    """The pack's score at ``strength`` (which scales every ``norm_ratio``): :func:`pair_score` averaged with
    weights ``donor_edit_energy`` (nan without pairs)."""
    w = np.array([max(f["donor_edit_energy"], 0.0) for f in figs], np.float64)
    if not len(w) or w.sum() <= 0:
        return float("nan")
    scaled = [{**f, "norm_ratio": f["norm_ratio"] * strength} for f in figs]
    return float(np.dot(w, [pair_score(f) for f in scaled]) / w.sum())
