"""Where does a transferred edit point? Compare it with the recipient's own directly trained adapter.

For one recipient, a transferred pack (e.g. Qwen0.5B → SmolLM2 refusal) and an adapter trained directly on the
recipient for the same behavior (folded as a self-pack, :func:`commandv.exporter.adapters.self_pack.adapter_pack`), on the same prompts
(refusal: harmful + harmless):

* **edits**: ``h`` = the recipient's block outputs at the last prompt token from a prompt pass *without* packs;
  per recipient layer ``δ_T(h)`` = the sum of the transferred entries at that layer (times strength) and
  ``δ_D(h)`` the direct adapter's. Per prompt: ``cos(δ_T, δ_D)`` and ``‖δ_T‖ / ‖δ_D‖``; over prompts: their
  mean / median, the cosine of the mean edits and of the *selective* parts (mean over prompts where the behavior
  is expected minus mean over the others), each edit's size relative to ``‖h‖``, and how each mean edit lines
  up with the recipient's own behavior direction ``r_R`` (mean ``h`` over expected minus over unexpected
  prompts; ``cos_*_selective_behavior_dir``: the edit's selective part against ``r_R``). Layers only one side touches get the comparison with the other side's nearest layer
  (``nearest_*``), and a last row ``layer = "sum"`` compares the edits summed over all layers (each evaluated
  on its own layer's ``h``). Every edit is evaluated on the unedited ``h`` (no compounding across layers).
* **mapped direction** (with a donor): the donor's behavior direction ``r_D`` at each donor layer the pack
  came from, mapped through the export's D→R translator (``C_D→R = pinv(X_D)·X_R`` refit on both models'
  profiles with the pack's prompt set, fit rows and ``rcond``), against the recipient's own ``r_R`` at the
  matched layer (``cos_mapped_dir``), the translator's R² on the diagnostic prompts themselves, and what the
  translator can carry at all: the share of the donor adapter's edit that survives the truncated ``pinv``
  (``donor_edit_kept``) and the share of the direct adapter's edit that lies in the translator's image
  (``direct_edit_in_image``), each against a random direction's (``random_kept``, ``random_in_image``).

``diagnose(...) -> list[dict]`` (one dict per layer, then the ``sum`` row); :func:`compare_edits` is the
numpy core, :func:`markdown_table` the short table.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from commandv.runtime.errors import CommandVError
from commandv.runtime.pack.model import BehaviorPack


class DiagnoseError(CommandVError, ValueError):
    """Inputs to the diagnostic that do not fit together."""


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of ``a``, ``b`` ``[n, d]`` (nan where a row is zero)."""
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(a * b, axis=-1) / (na * nb)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two vectors (nan if one is zero)."""
    return float(_cos_rows(np.asarray(a, np.float64)[None], np.asarray(b, np.float64)[None])[0])


def layer_edits(pack: BehaviorPack, strength: float, hidden: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """``{layer: Σ entries at layer (strength × entry.strength × delta(h_layer))}`` ``[n, d]`` float64 for
    ``hidden {layer: [n, d]}`` (the unedited states)."""
    out: dict[int, np.ndarray] = {}
    for e in pack.entries:
        h = np.asarray(hidden[e.layer], np.float64)
        d = float(strength) * float(e.strength) * e.delta(h)
        out[e.layer] = out[e.layer] + d if e.layer in out else d
    return out


def _nearest(layer: int, layers: Sequence[int]) -> int | None:
    return min(layers, key=lambda l: (abs(l - layer), l)) if layers else None


def _pair_stats(t: np.ndarray, d: np.ndarray, expect: np.ndarray, prefix: str = "") -> dict:
    """Figures comparing edits ``t`` and ``d`` ``[n, d]`` over prompts (``expect`` bool ``[n]``)."""
    cos = _cos_rows(t, d)
    nt, nd = np.linalg.norm(t, axis=1), np.linalg.norm(d, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = nt / nd
    out = {f"{prefix}cos_mean": float(np.nanmean(cos)) if np.isfinite(cos).any() else float("nan"),
           f"{prefix}cos_min": float(np.nanmin(cos)) if np.isfinite(cos).any() else float("nan"),
           f"{prefix}ratio_median": float(np.nanmedian(ratio)) if np.isfinite(ratio).any() else float("nan"),
           f"{prefix}cos_of_means": cosine(t.mean(0), d.mean(0))}
    if expect.any() and (~expect).any():
        out[f"{prefix}cos_expected"] = float(np.nanmean(cos[expect]))
        out[f"{prefix}cos_unexpected"] = float(np.nanmean(cos[~expect]))
        out[f"{prefix}cos_selective"] = cosine(t[expect].mean(0) - t[~expect].mean(0),
                                               d[expect].mean(0) - d[~expect].mean(0))
    return out


def behavior_direction(h: np.ndarray, expect: np.ndarray) -> np.ndarray | None:
    """Mean of ``h`` over expected rows minus over the others (None without both groups)."""
    if not expect.any() or not (~expect).any():
        return None
    h = np.asarray(h, np.float64)
    return h[expect].mean(0) - h[~expect].mean(0)


def compare_edits(hidden: dict[int, np.ndarray], transferred: BehaviorPack, direct: BehaviorPack,
                  expect: Sequence[bool], strength: float = 1.0, direct_strength: float = 1.0) -> list[dict]:
    """Per recipient layer, the transferred pack's edit vs the direct pack's on the rows of ``hidden``
    (``{layer: [n, d]}``, unedited states of n prompts); see the module docstring. Last row: ``layer = "sum"``."""
    expect = np.asarray(expect, bool)
    et, ed = layer_edits(transferred, strength, hidden), layer_edits(direct, direct_strength, hidden)
    rows = []
    for l in sorted(set(et) | set(ed)):
        h = np.asarray(hidden[l], np.float64)
        hn = np.linalg.norm(h, axis=1)
        r_dir = behavior_direction(h, expect)
        row: dict = {"layer": int(l), "in_transferred": l in et, "in_direct": l in ed}
        if r_dir is not None:  # how stable r_R is on these prompts: its two halves (alternate prompts) agree?
            half = np.arange(len(expect)) % 2 == 0
            a, b = behavior_direction(h[half], expect[half]), behavior_direction(h[~half], expect[~half])
            if a is not None and b is not None:
                row["behavior_dir_split_half_cos"] = cosine(a, b)
        for side, E in (("t", et), ("d", ed)):
            if l in E:
                row[f"rel_norm_{side}"] = float(np.median(np.linalg.norm(E[l], axis=1) / np.maximum(hn, 1e-30)))
                if r_dir is not None:
                    row[f"cos_{side}_behavior_dir"] = cosine(E[l].mean(0), r_dir)
                    row[f"cos_{side}_selective_behavior_dir"] = cosine(behavior_direction(E[l], expect), r_dir)
        if l in et and l in ed:
            row.update(_pair_stats(et[l], ed[l], expect))
        else:  # one side only: against the other side's nearest layer (its edit on its own layer's h)
            other, mine = (ed, et[l]) if l in et else (et, ed[l])
            near = _nearest(l, sorted(other))
            if near is not None:
                t_, d_ = (mine, other[near]) if l in et else (other[near], mine)
                row["nearest_layer"] = int(near)
                row.update(_pair_stats(t_, d_, expect, prefix="nearest_"))
        rows.append(row)
    if et and ed:
        st, sd = sum(et.values()), sum(ed.values())
        rows.append({"layer": "sum", "in_transferred": True, "in_direct": True, **_pair_stats(st, sd, expect)})
    return rows


# ------------------------------------------------------------------------------------------- mapped direction

class D2RTranslator:
    """The export's D→R translator ``v ↦ v · pinv(X_D) · X_R`` (never formed), fitted on ``fit_rows`` of one donor and
    one recipient profile layer with the export's cutoff ``rcond``. Call it on ``v [m, d_D]`` → ``[m, d_R]``.

    ``kept(v)``: the fraction of each donor vector's norm the truncated ``pinv`` keeps (``‖v·pinv(X_D)·X_D‖/‖v‖``;
    the rest is dropped before mapping). ``in_image(w)``: the fraction of each recipient vector's norm inside the
    translator's image (the row space of ``U_kᵀ·X_R``, ``U_k`` the kept left singular vectors of ``X_D``; directions
    with a gain below ``rcond`` × the largest are left out): no donor vector maps onto the rest. For a random
    direction they are about ``sqrt(rank / d_D)`` and ``sqrt(image_rank / d_R)``.
    """

    def __init__(self, donor_X: np.ndarray, recipient_X: np.ndarray, rcond: float | None,
                 fit_rows: np.ndarray | None = None):
        from commandv.exporter.transfer.translators import factorize

        self.XD = donor_X if fit_rows is None else donor_X[fit_rows]
        self.XR = np.asarray(recipient_X if fit_rows is None else recipient_X[fit_rows], np.float64)
        self.f = factorize(self.XD, rcond)
        self.rank = int(self.f.rank)
        self.rcond = rcond
        self._img = None

    def __call__(self, v: np.ndarray) -> np.ndarray:
        v = np.atleast_2d(np.asarray(v, np.float64))
        return self.f.times_pinv(v) @ self.XR

    def kept(self, v: np.ndarray) -> np.ndarray:
        v = np.atleast_2d(np.asarray(v, np.float64))
        proj = self.f.times_pinv(v) @ np.asarray(self.XD, np.float64)
        return np.linalg.norm(proj, axis=1) / np.maximum(np.linalg.norm(v, axis=1), 1e-300)

    def image_basis(self) -> np.ndarray:
        """Orthonormal rows ``[k, d_R]`` spanning the translator's image (gains ≥ rcond × the largest)."""
        if self._img is None:
            M = self.XR if self.f.U is None else self.f.U.T @ self.XR
            _, sv, Vt = np.linalg.svd(M, full_matrices=False)
            tol = (self.rcond if self.rcond is not None else 1e-7) * (sv[0] if sv.size else 0.0)
            self._img = Vt[sv > tol]
        return self._img

    @property
    def image_rank(self) -> int:
        return int(self.image_basis().shape[0])

    def in_image(self, w: np.ndarray) -> np.ndarray:
        w = np.atleast_2d(np.asarray(w, np.float64))
        B = self.image_basis()
        return np.linalg.norm(w @ B.T, axis=1) / np.maximum(np.linalg.norm(w, axis=1), 1e-300)


def d2r_mapper(donor_X: np.ndarray, recipient_X: np.ndarray, rcond: float | None,
               fit_rows: np.ndarray | None = None) -> D2RTranslator:
    """:class:`D2RTranslator` of one layer pair."""
    return D2RTranslator(donor_X, recipient_X, rcond, fit_rows)


def _r2(pred: np.ndarray, true: np.ndarray) -> float:
    ss_res = float(np.sum((true - pred) ** 2))
    ss_tot = float(np.sum((true - true.mean(axis=0)) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def mapped_directions(donor_hidden: dict[int, np.ndarray], recipient_hidden: dict[int, np.ndarray],
                      expect: Sequence[bool], layer_pairs: Sequence[tuple[int, int]], mappers: dict) -> list[dict]:
    """Per ``(donor layer, recipient layer)``: ``cos(map(r_D), r_R)`` and the mapper's R² on these prompts
    (``mappers[(l_D, l_R)]``: :func:`d2r_mapper`). Also ``cos_mapped_means``: the mapped expected-group mean
    against the recipient's (direction of the group centroid itself, not of the difference)."""
    expect = np.asarray(expect, bool)
    out = []
    for l_d, l_r in layer_pairs:
        hd, hr = np.asarray(donor_hidden[l_d], np.float64), np.asarray(recipient_hidden[l_r], np.float64)
        f = mappers[(l_d, l_r)]
        mapped = f(hd)
        rd, rr = behavior_direction(hd, expect), behavior_direction(hr, expect)
        row = {"donor_layer": int(l_d), "layer": int(l_r), "r2_d2r_prompts": _r2(mapped, hr)}
        if rd is not None:
            md = behavior_direction(mapped, expect)  # = map(r_D): the map is linear
            row["cos_mapped_dir"] = cosine(md, rr)
            row["mapped_dir_norm_ratio"] = float(np.linalg.norm(md) / max(np.linalg.norm(rr), 1e-30))
            row["donor_dir_rel_norm"] = float(np.linalg.norm(rd) / max(np.linalg.norm(hd, axis=1).mean(), 1e-30))
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------- engine wrapper

def last_token_states(engine, prompts: Sequence[str]) -> dict[int, np.ndarray]:
    """``{layer: [n, d]}``: each prompt's block outputs at its last (chat-templated) token, no packs."""
    rows = []
    for p in prompts:
        _, hid = engine.prompt_pass(engine.encode(p), record_layers=True)
        rows.append(np.stack([hid[l][-1] for l in range(engine.n_layer)]))
    arr = np.stack(rows, axis=1)  # [n_layer, n, d]
    return {l: arr[l] for l in range(arr.shape[0])}


def diagnose(recipient, pack: BehaviorPack, direct: BehaviorPack, prompts, strength: float = 1.0,
             donor=None, donor_profile=None, recipient_profile=None, rcond: float | None = None,
             holdout: float | None = None, donor_adapter=None) -> list[dict]:
    """Per recipient layer: transferred vs direct edits on ``prompts`` (:class:`EvalPrompt` list) and, with a
    ``donor`` engine and both profiles, the mapped donor behavior direction and what the translator can carry
    (``donor_edit_kept`` with ``donor_adapter``, the :class:`~commandv.exporter.adapters.folder.Adapter` the pack was folded from;
    ``direct_edit_in_image``; see :class:`D2RTranslator`) (see the module docstring).
    ``recipient``/``donor``: llama.cpp :class:`~commandv.runtime.engines.llama.engine.Recipient` engines. ``rcond`` and
    ``holdout`` default to the pack's own (``meta``)."""
    texts = [p.prompt for p in prompts]
    expect = [bool(p.expect) for p in prompts]
    for pk, what in ((pack, "pack"), (direct, "direct adapter")):
        if pk.d_model != recipient.d_model or pk.n_layer != recipient.n_layer:
            raise DiagnoseError(f"the {what} is for d={pk.d_model}, {pk.n_layer} layers; the recipient has "
                                f"d={recipient.d_model}, {recipient.n_layer} layers")
    hr = last_token_states(recipient, texts)
    rows = compare_edits(hr, pack, direct, expect, strength)
    if donor is None:
        return rows
    if donor_profile is None or recipient_profile is None:
        raise DiagnoseError("the mapped direction needs both models' profiles (the translators' fit)")
    if donor_profile.meta.prompt_sha256 != recipient_profile.meta.prompt_sha256:
        raise DiagnoseError("donor and recipient profiles were made on different prompts")
    if pack.meta.get("donor_d_model") not in (None, donor.d_model):
        raise DiagnoseError(f"the pack was made from a donor with d={pack.meta.get('donor_d_model')}, "
                            f"the donor given has d={donor.d_model}")
    from commandv.exporter.transfer.export import holdout_rows

    rc = rcond if rcond is not None else pack.meta.get("rcond")
    ho = holdout if holdout is not None else float(pack.meta.get("holdout_fraction", 0.1))
    fit, _ = holdout_rows(donor_profile.meta.n_prompts, ho) if ho > 0 else (None, None)
    pairs = sorted({(int(e.donor_layer), int(e.layer)) for e in pack.entries if e.donor_layer >= 0})
    mappers = {(ld, lr): d2r_mapper(donor_profile.layer(ld), recipient_profile.layer(lr), rc, fit) for ld, lr in pairs}
    hd = last_token_states(donor, texts)
    mapped = mapped_directions(hd, hr, expect, pairs, mappers)
    ex = np.asarray(expect, bool)
    d_edits = layer_edits(direct, 1.0, hr)
    donor_edits = {e.layer: e for e in donor_adapter.edits} if donor_adapter is not None else {}
    for m in mapped:  # how much of each edit the translator can carry at all
        tr = mappers[(m["donor_layer"], m["layer"])]
        m["translator_rank"], m["image_rank"] = tr.rank, tr.image_rank
        m["random_kept"] = math.sqrt(tr.rank / tr.XD.shape[1])
        m["random_in_image"] = math.sqrt(tr.image_rank / tr.XR.shape[1])
        rd = behavior_direction(np.asarray(hd[m["donor_layer"]], np.float64), ex)
        if rd is not None:
            m["donor_dir_kept"] = float(tr.kept(rd)[0])
            m["recipient_dir_in_image"] = float(tr.in_image(behavior_direction(np.asarray(hr[m["layer"]]), ex))[0])
        near = _nearest(m["layer"], sorted(d_edits))
        if near is not None:
            m["direct_edit_layer"] = int(near)
            m["direct_edit_in_image"] = float(np.median(tr.in_image(d_edits[near])))
        de = donor_edits.get(m["donor_layer"])
        if de is not None:
            m["donor_edit_kept"] = float(np.median(tr.kept(de.delta(np.asarray(hd[m["donor_layer"]], np.float64)))))
    by_layer = {r["layer"]: r for r in rows}
    for m in mapped:
        row = by_layer.get(m["layer"])
        if row is None:
            continue
        ms = row.setdefault("mapped", [])
        ms.append({k: v for k, v in m.items() if k != "layer"})
        if len(ms) == 1:
            for k in ("cos_mapped_dir", "r2_d2r_prompts", "donor_edit_kept", "direct_edit_in_image",
                      "random_kept", "random_in_image"):
                if k in m:
                    row[k] = m[k]
    same = pack.meta.get("prompt_sha256") == recipient_profile.meta.prompt_sha256
    rows.append({"layer": "translator", "profile_prompt_set": recipient_profile.meta.prompt_set,
                 "profile_prompts": recipient_profile.meta.n_prompts, "same_prompts_as_pack": bool(same),
                 "rcond": rc, "holdout": ho})
    return rows


def summary(rows: list[dict]) -> dict:
    """A few numbers over the layers both sides touch (and the ``sum`` row)."""
    both = [r for r in rows if isinstance(r["layer"], int) and r.get("in_transferred") and r.get("in_direct")]
    pick = lambda k, rs: [r[k] for r in rs if k in r and r[k] == r[k]]  # noqa: E731
    out = {"layers_both": [r["layer"] for r in both]}
    for k in ("cos_mean", "cos_of_means", "cos_selective", "ratio_median"):
        v = pick(k, both)
        if v:
            out[f"{k}_over_shared_layers"] = float(np.mean(v))
    t_only = [r for r in rows if isinstance(r["layer"], int) and r.get("in_transferred") and not r.get("in_direct")]
    v = pick("nearest_cos_mean", t_only)
    if v:
        out["nearest_cos_mean_transferred_only_layers"] = float(np.mean(v))
    s = next((r for r in rows if r["layer"] == "sum"), None)
    if s:
        out.update({f"sum_{k}": s[k] for k in ("cos_mean", "cos_of_means", "cos_selective", "ratio_median") if k in s})
    for side in ("t", "d"):
        for k in (f"cos_{side}_behavior_dir", f"cos_{side}_selective_behavior_dir"):
            v = pick(k, [r for r in rows if isinstance(r["layer"], int)])
            if v:
                out[f"{k}_mean"] = float(np.mean(v))
    v = pick("behavior_dir_split_half_cos", [r for r in rows if isinstance(r["layer"], int)])
    if v:
        out["behavior_dir_split_half_cos_mean"] = float(np.mean(v))
    for k in ("donor_edit_kept", "direct_edit_in_image", "random_kept", "random_in_image"):
        v = pick(k, rows)
        if v:
            out[f"{k}_mean"] = float(np.mean(v))
    v = pick("cos_mapped_dir", rows)
    if v:
        out["cos_mapped_dir_mean"] = float(np.mean(v))
        out["cos_mapped_dir_min"] = float(np.min(v))
        out["cos_mapped_dir_max"] = float(np.max(v))
    return out


def markdown_table(rows: list[dict], title: str = "") -> str:
    """A short Markdown table of the per-layer rows."""
    f = lambda r, k: "–" if k not in r or r[k] is None or (isinstance(r[k], float) and math.isnan(r[k])) \
        else f"{r[k]:.3f}"  # noqa: E731
    lines = [f"### {title}", ""] if title else []
    lines += ["| layer | T / D | cos(δT, δD) mean | cos of mean edits | cos selective | ‖δT‖/‖δD‖ median | "
              "‖δT‖/‖h‖ | ‖δD‖/‖h‖ | cos(δT, r_R) | cos(δD, r_R) | cos(map r_D, r_R) | donor edit kept (random) | "
              "δD in image (random) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["layer"] == "translator":
            continue
        who = ("T" if r.get("in_transferred") else "") + ("D" if r.get("in_direct") else "")
        pre = "" if (r.get("in_transferred") and r.get("in_direct")) else "nearest_"
        near = f" (vs {r['nearest_layer']})" if pre and "nearest_layer" in r else ""
        lines.append(f"| {r['layer']} | {who}{near} | {f(r, pre + 'cos_mean')} | {f(r, pre + 'cos_of_means')} | "
                     f"{f(r, pre + 'cos_selective')} | {f(r, pre + 'ratio_median')} | {f(r, 'rel_norm_t')} | "
                     f"{f(r, 'rel_norm_d')} | {f(r, 'cos_t_behavior_dir')} | {f(r, 'cos_d_behavior_dir')} | "
                     f"{f(r, 'cos_mapped_dir')} | {f(r, 'donor_edit_kept')} ({f(r, 'random_kept')}) | "
                     f"{f(r, 'direct_edit_in_image')} ({f(r, 'random_in_image')}) |")
    return "\n".join(lines) + "\n"
