"""Behavior packs → the extra ONNX Runtime inputs of one prompt pass (numpy only).

For a **baked** export (:func:`~commandv.runtime.engines.onnx.surgery.bake_packs`) a
request's pack must be one of the baked packs (same :func:`pack_digest`); its
masks get the pack strength on the targeted rows (the entry strengths are
baked as ``s``). For a **pack-inputs** export
(:func:`~commandv.runtime.engines.onnx.surgery.add_pack_slots`) the entries take the
slots of their layer in order (packs in list order, entries in file order —
the order every engine applies them in), zero padded to the slot ranks, with
``s`` = entry strength × pack strength and mask 1 on the targeted rows. Entries
whose effective strength is 0 take no slot. Inputs that are not fed keep their
zero defaults, which means "no edit".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from commandv.runtime.edit.lowrank import canonical_activation
from commandv.runtime.engines.onnx.surgery import _ACT_ALIAS, SLOT_ACTS, OnnxMeta, pack_digest
from commandv.runtime.engines.request_checks import PositionsError, target_rows  # noqa: F401  (the one positions → rows step)
from commandv.runtime.pack.model import BehaviorPack, PackError


def _baked(meta: OnnxMeta, packs, strengths, n, rows, where, mask) -> None:
    """Masks for baked packs. The graph applies each baked pack once, in bake order, so a request that
    repeats a pack, or orders two packs that edit a common layer differently, is refused (other engines
    apply packs in list order, each time they are listed)."""
    digests = [b["digest"] for b in meta.baked]
    order = []
    for pack in packs:
        dg = pack_digest(pack)
        if dg not in digests:
            names = ", ".join(b["name"] for b in meta.baked)
            raise PackError(f"pack {pack.name!r} is not baked into {where} (it holds: {names}); use a "
                            "pack-inputs export (the default of cmdv onnx export) to run any pack")
        k = digests.index(dg)
        if k in order:
            raise PackError(f"pack {pack.name!r} is given twice, but {where} has it baked in once; use a "
                            "pack-inputs export to apply a pack more than once")
        order.append(k)
    for i, a in enumerate(packs):
        for j in range(i + 1, len(packs)):
            common = sorted(set(a.layers) & set(packs[j].layers))
            if order[i] > order[j] and common:
                raise PackError(f"packs {a.name!r} and {packs[j].name!r} both edit layer {common[0]} and {where} "
                                f"applies them in the order they were baked ({packs[j].name!r} first); give them "
                                "in that order or use a pack-inputs export")
    for pack, s, k in zip(packs, strengths, order):
        if s == 0.0:
            continue
        for site in (x for x in meta.sites if x["pack"] == k):
            mask(site["mask"], target_rows(site["positions"], n, rows, f"pack {pack.name!r}"), s)


def _slot_tensors(e, d: int, R: int, Q: int) -> dict[str, np.ndarray]:
    t = {"A": np.zeros((d, R), np.float32), "b": np.zeros(R, np.float32), "C": np.zeros((R, d), np.float32),
         "e": np.zeros(d, np.float32), "act": np.zeros(len(SLOT_ACTS), np.float32)}
    r = e.rank
    t["A"][:, :r], t["b"][:r], t["C"][:r] = e.A, e.b, e.C
    if e.e is not None:
        t["e"][:] = e.e
    act = canonical_activation(e.act)
    t["act"][SLOT_ACTS.index(_ACT_ALIAS.get(act, act))] = 1.0
    if Q:
        t["P"], t["Q"] = np.zeros((d, Q), np.float32), np.zeros((Q, d), np.float32)
        if e.P is not None:
            q = e.P.shape[1]
            t["P"][:, :q], t["Q"][:q] = e.P, e.Q
    return t


def pack_feeds(meta: OnnxMeta, packs: Sequence[BehaviorPack], strengths: Sequence[float], n: int,
               rows: Sequence[int] | None = None, where: str = "this ONNX file") -> dict[str, np.ndarray]:
    """Inputs (name → float32 array, masks ``[1, n]``) applying ``packs`` × ``strengths`` to an ``n``-token prompt.

    Raises :class:`PackError` when the file cannot run a pack (not baked in; no free slot at a layer; rank
    above the slot rank) and :class:`PositionsError` when positions reach beyond the prompt."""
    feeds: dict[str, np.ndarray] = {}

    def mask(name: str, idx: list[int], value: float) -> None:
        feeds.setdefault(name, np.zeros((1, n), np.float32))[0, idx] = value

    if not packs:
        return feeds
    if meta.pack_mode == "baked":
        _baked(meta, packs, strengths, n, rows, where, mask)
        return feeds
    if meta.pack_mode != "inputs":
        raise PackError(f"{where} has no pack sites; export it with pack inputs (the default of cmdv onnx export) "
                        "or bake the pack in (cmdv onnx export --pack)")
    slots = {(x["layer"], x["slot"]): x for x in meta.sites}
    per_layer = max(k[1] for k in slots) + 1
    used: dict[int, int] = {}
    R, Q = int(meta.max_rank), int(meta.max_pq_rank)
    for pack, s in zip(packs, strengths):
        for ei, e in enumerate(pack.entries):
            at = f"pack {pack.name!r} entry {ei}"
            eff = float(e.strength) * float(s)
            idx = target_rows(e.positions, n, rows, at)
            if eff == 0.0 or not idx:
                continue
            j = used[e.layer] = used.get(e.layer, -1) + 1
            site = slots.get((e.layer, j))
            if site is None:
                raise PackError(f"{at}: no free pack slot at layer {e.layer} in {where} (slots at layers "
                                f"{sorted({k[0] for k in slots})}, {per_layer} per layer); re-export with "
                                "--slots-per-layer / --layers to fit it")
            q = 0 if e.P is None else e.P.shape[1]
            if e.rank > R or q > Q:
                raise PackError(f"{at}: rank {e.rank} / P·Q rank {q} exceed this file's slots (rank {R}, P·Q rank "
                                f"{Q}); re-export with a larger --max-rank / --max-pq-rank")
            feeds.update({f"{site['prefix']}.{k}": v for k, v in _slot_tensors(e, meta.d_model, R, Q).items()})
            feeds[f"{site['prefix']}.s"] = np.asarray(eff, np.float32)
            mask(site["mask"], idx, 1.0)
    return feeds
