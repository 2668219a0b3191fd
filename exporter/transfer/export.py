"""Adapter + two profiles → behavior pack (with held-out fit diagnostics).

Call :func:`export_pack` with a donor adapter (:func:`~commandv.exporter.adapters.folder.load_adapter`) and two profiles made on the
same prompts (:func:`commandv.profiles.profile_model`: per layer ``[N, d_D]`` for the donor, ``[N, d_R]`` for
the recipient)::

    res = export_pack(load_adapter("adapters/qwen2.5-coder-0.5b-instruct/pirate"), donor_profile, recipient_profile)
    res.pack.save("pirate.gguf")  # res.diagnostics: one dict per layer pair; res.seconds: wall time

Steps: check the profiles share prompts; split rows into fit / held-out; map
donor layers to recipient layers; factor each profile layer once (cached);
fold every donor edit; measure held-out R², cycle error and delta energy.

Per process, the factors (per profile layer and fit rows) and each layer pair's
held-out rows with their R² and cycle error (which do not depend on the adapter)
are cached (:func:`clear_factor_cache` empties the cache), so exporting a second
adapter for the same pair only folds it and measures its energy. How long each
takes: ``benchmarks/export_speed.py`` and the README.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from commandv.exporter.adapters.folder import Adapter, adapter_name
from commandv.exporter.adapters.interventions import DonorEdit
from commandv.exporter.transfer.fold import FoldItem, fold_edits
from commandv.exporter.transfer.gated import Contrast, gated_entry
from commandv.exporter.transfer.layermap import DEFAULT_LAYER_RULE, build_layer_map
from commandv.exporter.transfer.score import (
    layer_figures,
    median_relative_edit,
    pack_score,
    pinv_to_donor,
    pinv_to_recipient,
)
from commandv.exporter.transfer.translators import GramFactor, compressed_pair, factorize, fit_diagnostics
from commandv.profiles.store import Profile, ProfileMeta
from commandv.runtime import __version__
from commandv.runtime.errors import CommandVError
from commandv.runtime.pack.model import BehaviorPack, PackEntry

METHODS = ("pinv", "pinv-cal", "pinv-tokens", "gated")
"""Fold methods of :func:`export_pack` (``--method``): the paper's pseudo-inverse translators; the same with
per-layer edit-norm calibration; the same fitted on profiles that also hold token-aligned rows
(:mod:`commandv.profiles.token_rows`; the caller appends them, the pack records the method); the donor edit's
difference between the behavior's prompts and ordinary ones behind a gate (:mod:`commandv.exporter.transfer.gated`;
needs a :class:`~commandv.exporter.transfer.gated.Contrast`). Whatever the
method, a layer pair with more fit rows than ``d_R + d_D`` is compressed exactly before it is factored
(:func:`compressed_pair`)."""
TOKEN_ROW_METHODS = ("pinv-tokens", "gated")
"""The methods whose fit also holds the token rows of the first ``token_prompts`` general prompts
(:func:`fit_profiles`)."""
DEFAULT_METHOD = "pinv"
"""What :func:`export_pack` uses unless told otherwise (the paper's translators)."""

AUTO_METHOD = "auto"
"""The CLI's default ``--method``: :func:`choose_method` picks one of :data:`METHODS` from the two profiles."""


def method_problem(method: str) -> str | None:
    """The one-line complaint about a method name, or None for :data:`AUTO_METHOD` and :data:`METHODS`."""
    if method == AUTO_METHOD or method in METHODS:
        return None
    return f"unknown method {method!r}; choose {AUTO_METHOD} or one of: {', '.join(METHODS)}"


def anchor_problem(method: str) -> str | None:
    """The one-line complaint about anchor texts with ``method`` (they join token rows, which pinv and pinv-cal
    do not fit), or None."""
    if method in ("pinv", "pinv-cal"):
        return f"anchor texts join the token rows, which {method} does not fit: use pinv-tokens or auto"
    return None


def choose_method(method: str, donor: ProfileMeta, recipient: ProfileMeta, contrast: bool = False,
                  anchored: bool = False) -> tuple[str, str]:
    """``(method, why)``: ``method`` itself when it is one of :data:`METHODS`; for :data:`AUTO_METHOD` the one
    the measurements support (``benchmarks/results/transfer/``, n >= 100 per group). ``contrast``: the profiles
    also hold the behavior's training prompts of both kinds (``cmdv export --behavior``, ``cmdv eval
    --profile-train-prompts`` for a behavior that depends on the prompt), so ``gated`` can be fitted.

    * ``gated`` across model families (different ``arch``) into a wider recipient, both GGUF, with ``contrast``.
      SmolLM2 → Qwen0.5B refusal: 0.64 of the direct adapter's gain, over-refusal +5, utility unchanged, where
      ``pinv-tokens`` gave 0.48 with utility −16.
    * ``pinv-tokens`` across families into a wider recipient, both GGUF, without ``contrast`` (0.48, +4, −16;
      last-token pinv gave 0.30 with +22).
    * ``pinv`` otherwise. Within Qwen, small → large refusal: pinv +22 points (over-refusal +3), gated +9 (+2),
      token rows +5 (+10); large → small: pinv 0.30, token rows 0.14, gated −0.07. Across families large → small nothing
      transfers and token rows cost 38 points of utility (Qwen0.5B → SmolLM2).

    One measured exception, to choose by hand: a style behavior within Qwen, small → large (Qwen0.5B → Qwen1.5B
    French 0 → 55 % with ``pinv-tokens``, 0-25 % with pinv).

    ``anchored``: token rows on the donor's behavior text will be added (:mod:`commandv.exporter.transfer.anchor`):
    auto picks ``pinv-tokens`` (GGUF on both sides), which is what those rows join; ``pinv`` / ``pinv-cal`` are
    refused. Measured: Qwen0.5B → SmolLM2 French, 0.54 [0.43, 0.65] of the donor's own rate (plain pinv 0.00). Raises :class:`ExportError` for any other name, and
    for ``gated`` unless both profiles are GGUF (its write map needs token rows; with last-token rows only it
    collapsed refusal on the SmolLM2 → Qwen0.5B tuning prompts).
    """
    if method_problem(method):
        raise ExportError(method_problem(method))
    gguf = donor.backend == recipient.backend == "gguf"  # token rows are captured with llama.cpp
    if method == "gated" and not gguf:
        raise ExportError(f"the gated fold's write map needs token rows, which need GGUF models on both sides "
                          f"(profiles: {donor.backend} → {recipient.backend}); profile both with --backend gguf")
    if anchored:
        if anchor_problem(method):
            raise ExportError(anchor_problem(method))
        if not gguf:
            raise ExportError(f"anchor texts need GGUF models on both sides (profiles: {donor.backend} → "
                              f"{recipient.backend})")
        if method == AUTO_METHOD:
            return "pinv-tokens", "auto: token rows on the donor's behavior text (anchor texts)"
    if method in METHODS:
        return method, "as asked"
    widths = f"d {donor.d_model} → {recipient.d_model}"
    if donor.arch == recipient.arch:
        return "pinv", f"auto: same model family ({donor.arch})"
    if recipient.d_model <= donor.d_model:
        return "pinv", f"auto: recipient not wider than the donor ({widths})"
    if not gguf:
        return "pinv", "auto: token rows need GGUF models on both sides"
    across = f"across families ({donor.arch} → {recipient.arch}) into a wider recipient ({widths})"
    if contrast:
        return "gated", f"auto: {across}, the behavior's prompts profiled"
    return "pinv-tokens", f"auto: {across}"


def fit_profiles(method: str, donor_model: str, recipient_model: str, donor: Profile, recipient: Profile,
                 token_prompts: int = 256, *, contrast: bool = False, anchor_texts: Sequence[str] = (),
                 progress: bool = True) -> tuple[str, str, Profile, Profile]:
    """``(method, why, donor, recipient)``: ``method`` resolved for these profiles (:func:`choose_method`) and the
    profiles :func:`export_pack` fits for it: for ``pinv-tokens`` with both models' aligned token rows on the
    first ``token_prompts`` general prompts appended (:func:`~commandv.profiles.token_rows.add_token_rows`; the
    models are run; also for ``gated``, whose write map fits them, unless ``token_prompts`` is 0), else as given.
    ``donor_model`` / ``recipient_model``: zoo keys or .gguf paths; ``contrast``: as in :func:`choose_method`;
    ``anchor_texts``: text whose token rows follow the general ones
    (:func:`~commandv.exporter.transfer.anchor.behavior_texts`)."""
    method, why = choose_method(method, donor.meta, recipient.meta, contrast, anchored=bool(anchor_texts))
    if method == "pinv-tokens" and token_prompts < 1 and not anchor_texts:
        raise ExportError("pinv-tokens fits token rows: give it at least 1 token prompt (or anchor texts)")
    if method in TOKEN_ROW_METHODS and (token_prompts > 0 or anchor_texts):  # gated with 0: last-token rows only
        from commandv.profiles.token_rows import add_token_rows

        donor, recipient = add_token_rows(donor_model, recipient_model, donor, recipient, token_prompts,
                                          texts=anchor_texts, progress=progress)
    return method, why, donor, recipient


class ExportError(CommandVError, ValueError):
    """Inputs to an export do not fit together."""


_FACTORS: "OrderedDict[tuple, GramFactor]" = OrderedDict()
_MAX_FACTORS = 256


def _sample_digest(X: np.ndarray) -> str:
    """Cheap digest of one cache line (16 floats) from each of ~16 rows of ``X``, plus its shape (guards the
    cache key against a different matrix under the same key: any re-profiled matrix differs everywhere).
    A warm lookup reads ~17 lines: the profiles are far out of cache by then (~1 µs, vs ~30 µs for 200)."""
    import hashlib

    n, d = X.shape
    c = max(0, d // 2 - 8)
    sample = np.ascontiguousarray(X[:: max(1, n // 16), c: c + 16])
    return hashlib.blake2b(sample.tobytes() + str(X.shape).encode(), digest_size=16).hexdigest()


def _rows_digest(rows: np.ndarray | None) -> str | None:
    import hashlib

    return None if rows is None else hashlib.blake2b(np.asarray(rows).tobytes(), digest_size=16).hexdigest()


def _factor_key(key: tuple, X: np.ndarray, rows: np.ndarray | None, rtol: float | None) -> tuple:
    """``key`` plus digests of a sample of ``X`` and of ``rows``: two different matrices under one key never
    collide."""
    return key + (_sample_digest(X), _rows_digest(rows), rtol)


def _lru(cache: OrderedDict, limit: int, key: tuple, make):
    """``cache[key]``, made by ``make()`` on a miss; the least recently used entries beyond ``limit`` go."""
    value = cache.get(key)
    if value is None:
        value = cache[key] = make()
        while len(cache) > limit:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return value


def _factor_for(key: tuple, X: np.ndarray, rtol: float | None, rows: np.ndarray | None) -> GramFactor:
    return _lru(_FACTORS, _MAX_FACTORS, key, lambda: factorize(X if rows is None else X[rows], rtol))


def cached_factor(key: tuple, X: np.ndarray, rtol: float | None = None,
                  rows: np.ndarray | None = None) -> GramFactor:
    """Factor ``X`` (or ``X[rows]``) once per ``key`` (profile fingerprint, prompts, backend, layer, …) per process.

    A digest of a sample of ``X`` (and of ``rows``) joins the key, so two different matrices under one key
    never collide. ``X[rows]`` is only formed on a cache miss (a warm export copies no profile rows).
    """
    return _factor_for(_factor_key(key, X, rows, rtol), X, rtol, rows)


@dataclass
class HeldOut:
    """One layer pair's held-out prompts and the figures that do not depend on the adapter (cached per
    pair of factors, so a warm export only measures the new edit's energy)."""

    XR: np.ndarray  # [M, d_R] float32: the recipient rows, in the pack entries' dtype
    XD: np.ndarray  # [M, d_D] float64: the donor rows, in the donor edit's dtype
    fit: dict  # fit_diagnostics: held-out R² both ways and cycle error
    norm_r: float  # mean row norm of XR
    norm_d: float  # … of XD


_HELD: "OrderedDict[tuple, HeldOut]" = OrderedDict()
_MAX_HELD = 64


def _held_for(key: tuple, XR: np.ndarray, XD: np.ndarray, held: np.ndarray, fR: GramFactor,
              fD: GramFactor) -> HeldOut:
    def make() -> HeldOut:
        hr, hd = np.asarray(XR[held], dtype=np.float32), XD[held].astype(np.float64)  # one copy each
        return HeldOut(hr, hd, fit_diagnostics(fR, fD, hr, hd),
                       float(np.linalg.norm(hr, axis=1).mean()), float(np.linalg.norm(hd, axis=1).mean()))

    return _lru(_HELD, _MAX_HELD, key, make)


def clear_factor_cache() -> None:
    """Forget every cached factorization and held-out set (the next export is cold)."""
    _FACTORS.clear()
    _HELD.clear()


def holdout_rows(n: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of ``range(n)`` into (fit, held-out) row indices."""
    if not (0.0 <= fraction < 0.9):
        raise ExportError(f"holdout fraction {fraction} outside [0, 0.9)")
    m = int(round(n * fraction))
    if fraction > 0 and m == 0:
        m = 1
    perm = np.random.default_rng(seed).permutation(n)
    held = np.sort(perm[:m])
    fit = np.sort(perm[m:])
    if len(fit) < 2:
        raise ExportError(f"only {len(fit)} prompts left to fit translators")
    return fit, held


@dataclass
class ExportResult:
    pack: BehaviorPack
    diagnostics: list[dict]
    seconds: float


def _profile_key(p: Profile) -> tuple:
    return (p.meta.model_fingerprint, p.meta.prompt_sha256, p.meta.backend)


def export_pack(adapter: Adapter, donor: Profile, recipient: Profile, *, layer_rule: str = DEFAULT_LAYER_RULE,
                holdout: float = 0.1, strength: float = 1.0, name: str = "pack", donor_name: str | None = None,
                positions: str | None = None, rcond: float | None = None, method: str = DEFAULT_METHOD,
                contrast: Contrast | None = None) -> ExportResult:
    """Fold ``adapter`` (trained on the donor) into a pack for the recipient.

    ``rcond``: drop singular directions of each profile below ``rcond × σ_max`` in the translators
    (truncated pseudo-inverse). None = machine precision, i.e. ``pinv`` as in the paper; when the
    number of fit prompts nears or exceeds d, the tiny directions fit noise and blow the folded edit
    up (watch ``delta_energy`` vs ``donor_delta_energy`` in the diagnostics): try 1e-2.

    ``method``: one of :data:`METHODS`: ``pinv`` folds through the paper's translators as they are;
    ``pinv-cal`` then scales each entry's write side so its median relative edit ``‖δ_R‖/‖h_R‖`` on the fit
    prompts equals the donor's ``‖δ_D‖/‖h_D‖`` (per-layer strength calibration); ``gated`` replaces each entry
    by the gated difference edit of :mod:`~commandv.exporter.transfer.gated` (``contrast``: which profile rows are
    the behavior's prompts and which ordinary ones; a layer whose gate cannot separate them gets no entry). The
    diagnostics' R² and cycle error are those of the paper's translators whatever the method, and a gated pack
    has no transferability score (its edit is zero on most profile prompts); ``gated`` adds ``ridge_read_r2``
    (held-out R² of its read), ``gate_expected_open`` / ``gate_baseline_open`` (the fractions of those rows the
    gate lets through) and ``dropped`` for a layer without an entry.
    """
    if method not in METHODS:
        raise ExportError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if method == "gated":
        problem = ("the gated method needs contrast rows (profile the behavior's training prompts too)"
                   if contrast is None else contrast.validate(donor.meta.n_prompts))
        if problem:
            raise ExportError(problem)
    t0 = time.perf_counter()
    dm, rm = donor.meta, recipient.meta
    if dm.prompt_sha256 != rm.prompt_sha256 or dm.n_prompts != rm.n_prompts:
        raise ExportError(f"profiles were made on different prompt sets ({dm.prompt_set} {dm.prompt_sha256[:12]} vs "
                          f"{rm.prompt_set} {rm.prompt_sha256[:12]}); profile both models on the same prompts")
    if adapter.d_model != dm.d_model:
        raise ExportError(f"adapter hidden size {adapter.d_model} does not match the donor profile's d={dm.d_model} "
                          f"({dm.model_name}): wrong donor model?")
    bad = [l for l in adapter.layers if not (0 <= l < dm.n_layer)]
    if bad:
        raise ExportError(f"adapter layers {bad} out of range for the donor's {dm.n_layer} layers")
    lmap = build_layer_map(adapter.layers, dm.n_layer, rm.n_layer, layer_rule)
    fit, held = holdout_rows(dm.n_prompts, holdout)
    held_key = _rows_digest(held)
    to_recipient = dict(lmap.pairs)
    items, helds = [], []
    for edit in sorted(adapter.edits, key=lambda e: e.layer):  # donor-layer order, whatever the list's order
        l_d, l_r = edit.layer, to_recipient[edit.layer]
        XD, XR = donor.layer(l_d), recipient.layer(l_r)
        kD = _factor_key(_profile_key(donor) + (l_d,), XD, fit, rcond)  # the fit rows join the key
        kR = _factor_key(_profile_key(recipient) + (l_r,), XR, fit, rcond)
        if len(fit) > XR.shape[1] + XD.shape[1]:  # tall profiles (e.g. with token rows): the compressed pair
            cR, cD = compressed_pair(XR[fit], XD[fit])  # the default cutoff stays that of the [N, d] float32 rows
            eps = float(np.finfo(np.float32).eps)
            fR = factorize(cR, rcond if rcond is not None else max(len(fit), XR.shape[1]) * eps)
            fD = factorize(cD, rcond if rcond is not None else max(len(fit), XD.shape[1]) * eps)
        else:
            fD, fR = _factor_for(kD, XD, rcond, fit), _factor_for(kR, XR, rcond, fit)
        items.append(FoldItem(edit, fR, fD, l_r, positions=positions or adapter.positions, strength=strength))
        helds.append(_held_for((kD, kR, held_key), XR, XD, held, fR, fD) if len(held) else None)
    if method == "gated":  # its own entries; the pinv factors above give its write map and the diagnostics
        n = contrast.last_token
        gated = [gated_entry(it.edit, recipient.layer(it.recipient_layer)[:n], donor.layer(it.edit.layer)[:n],
                             pinv_to_recipient(it.fR, it.fD), contrast, it.recipient_layer, it.positions, strength)
                 for it in items]
        entries, gate_figs = [g[0] for g in gated], [g[1] for g in gated]
    else:
        entries = fold_edits(items)  # every layer pair at once (one native call when the factors allow)
        gate_figs = [{}] * len(items)
    if method == "pinv-cal":
        entries = [calibrated(e, it.edit, recipient.layer(it.recipient_layer)[fit], donor.layer(it.edit.layer)[fit])
                   for e, it in zip(entries, items)]  # the states themselves (a compressed factor's X is not)
    diags = []
    for it, entry, h, g in zip(items, entries, helds, gate_figs):
        edit, fR, fD = it.edit, it.fR, it.fD
        d = {"donor_layer": edit.layer, "recipient_layer": it.recipient_layer, "rank_fit_R": fR.rank,
             "rank_fit_D": fD.rank}
        if method == "gated" and entry is None:
            d["dropped"] = "gate cannot separate the contrast rows"
        elif h is not None:
            d.update(h.fit)
            d["delta_energy"] = float(entry.delta_norms(h.XR).mean() / max(h.norm_r, 1e-30))
            d["donor_delta_energy"] = float(edit.delta_norms(h.XD).mean() / max(h.norm_d, 1e-30))
            d.update(layer_figures(edit, entry, pinv_to_donor(fR, fD), h.XR, h.XD))
        diags.append({**d, **g})
    # the score reads whole-edit folds; a gated edit is zero on most profile prompts, so it is not scored
    score = pack_score([d for d in diags if "edit_cos" in d], strength) if method != "gated" else float("nan")
    if not any(e is not None for e in entries):
        raise ExportError("gated: at no layer does the gate separate the behavior's prompts from ordinary ones")
    pack = BehaviorPack(
        entries=[e for e in entries if e is not None],
        name=name,
        recipient={"fingerprint": rm.model_fingerprint, "arch": rm.arch, "n_layer": rm.n_layer,
                   "d_model": rm.d_model, "name": rm.model_name},
        meta={
            "created_by": f"commandv {__version__}",
            "donor": donor_name or dm.model_name,
            "donor_fingerprint": dm.model_fingerprint,
            "donor_arch": dm.arch, "donor_n_layer": dm.n_layer, "donor_d_model": dm.d_model,
            "adapter_sha256": adapter.sha256, "adapter_kind": adapter.kind,
            "adapter_source": adapter_name(adapter.source),  # the folder's name: never the exporting machine's path
            "recipient_network_fingerprint": rm.network_fingerprint,
            "prompt_set": rm.prompt_set, "prompt_sha256": rm.prompt_sha256,
            "profile_backends": [dm.backend, rm.backend],
            "layer_rule": layer_rule, "rcond": rcond, "method": method, "holdout_fraction": holdout, "n_fit": int(len(fit)), "n_held": int(len(held)),
            **({"transfer_score": score} if np.isfinite(score) else {}),
        },
        diagnostics=diags,
    )
    pack.validate()
    return ExportResult(pack=pack, diagnostics=diags, seconds=time.perf_counter() - t0)


def calibrated(entry: PackEntry, edit: DonorEdit, XR: np.ndarray, XD: np.ndarray) -> PackEntry:
    """``entry`` with its write side (``C``, ``Q``, ``e``) scaled so that the median ``‖δ_R(h)‖/‖h‖`` over the
    recipient rows ``XR [N, d_R]`` equals the donor edit's median ``‖δ_D(h)‖/‖h‖`` over ``XD [N, d_D]``."""
    r_r = median_relative_edit(entry.delta_norms(np.asarray(XR, np.float32)), XR)
    r_d = median_relative_edit(edit.delta_norms(np.asarray(XD, np.float64)), XD)
    k = np.float32(r_d / r_r) if r_r > 0 else np.float32(1.0)
    scale = lambda M: None if M is None else (M * k).astype(np.float32)  # noqa: E731
    return dataclasses.replace(entry, C=scale(entry.C), Q=scale(entry.Q), e=scale(entry.e))


def diagnostics_table(diags: list[dict]):
    """A rich table of per-layer-pair diagnostics (a pack's, so from a file: cells are plain text, control
    characters shown as escapes)."""
    from rich.table import Table
    from rich.text import Text

    from commandv.runtime.terminal import safe_text

    t = Table(title="translator fit (held-out prompts)")
    keys = [("r2_r2d", "R² R→D"), ("r2_d2r", "R² D→R"), ("cycle_err", "cycle err")]
    if any("gate_expected_open" in d for d in diags):  # a gated pack: its own read and gate, not the whole-edit figures
        keys += [("ridge_read_r2", "read R²"), ("gate_expected_open", "gate open: behavior"),
                 ("gate_baseline_open", "gate open: general")]
    else:
        keys += [("delta_energy", "Δ energy (R)"), ("donor_delta_energy", "Δ energy (D)"), ("edit_cos", "edit cos"),
                 ("norm_ratio", "norm ratio")]
    for col in ["donor→recipient", *(name for _, name in keys)]:
        t.add_column(col, justify="right")
    fmt = lambda d, k: Text(safe_text(f"{d[k]:.3f}")) if k in d else "–"  # noqa: E731
    for d in diags:
        t.add_row(Text(safe_text(f"{d['donor_layer']}→{d['recipient_layer']}")), *(fmt(d, k) for k, _ in keys))
    return t


def score_line(pack: BehaviorPack) -> str:
    """One line on the pack's transferability score (:mod:`commandv.exporter.transfer.score`), or ``""`` without one."""
    score = pack.meta.get("transfer_score")
    if not isinstance(score, (int, float)):
        return ""
    return (f"transferability score {score:.2f} (0-1, from profiles and adapter only: edit cos × norm match, "
            "weighted by the donor's edit size; how it ranks measured gains: benchmarks/results/transfer_score.json)")
