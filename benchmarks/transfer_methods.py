"""Which translator method carries a behavior from donor to recipient? A proxy sweep (issue 20).

For one (donor, recipient, behavior, adapter) this folds the donor adapter with several translator methods,
each into a pack for the recipient, and scores every pack with the fast proxy (:mod:`commandv.exporter.evaluation.proxy`,
one teacher-forced pass per prompt, 64 held-out tuning prompts: refusal = HarmBench val + harmless validation
probes) at a few strengths. Methods (explicit float64 translators, the fold written out as in
:mod:`commandv.exporter.transfer.fold`):

* ``pinv-N<k>``: the paper's ``C_R→D = pinv(X_R) X_D``, ``C_D→R = pinv(X_D) X_R`` on the first k general prompts;
* ``pinv-anchored``: the same on general[:256] + 256 of the behavior's training prompts (both labels);
* ``ridge``: centered, standardized ridge maps (λ by held-out R² per layer), only the linear part carries edits;
* ``readridge`` / ``readridge-anchored``: the adapter's read values predicted from ``h_R`` by a centered ridge map
  (the gated fold's read, without its gate), written with ``C_D→R`` on the same rows (general, or general plus
  the behavior's training prompts);
* ``roundtrip``: read with ``C_R→D``, write with ``pinv(C_R→D)`` (the smallest recipient edit whose
  translation is the donor's edit);
* ``<m>+cal``: method m with each entry's write side scaled so the median ‖δ_R‖/‖h_R‖ on the profile equals the
  donor's ‖δ_D‖/‖h_D‖;
* ``random``: the best method's entries with the write directions replaced by random ones of the same norms
  (the control: a non-behavioral edit of the same size).

The output ``benchmarks/results/transfer_methods-<pair>-<behavior>.json`` holds, per method and strength, the
proxy on expected / unexpected prompts (mean log-prob of the behavior's answer) and the selectivity::

    python benchmarks/transfer_methods.py --donor smollm2-135m-instruct --recipient qwen2.5-coder-0.5b-instruct \\
        --adapter adapters/smollm2-135m-instruct/refusal-broad --behavior refusal
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_results  # noqa: E402

from commandv.exporter.adapters.folder import load_adapter  # noqa: E402
from commandv.exporter.evaluation.evaluate import run_config, utility_questions  # noqa: E402
from commandv.exporter.evaluation.pair import pair_key, profiling_set  # noqa: E402
from commandv.exporter.evaluation.proxy import default_prompts, proxy_score  # noqa: E402
from commandv.exporter.training.behaviors import get_behavior  # noqa: E402
from commandv.exporter.transfer.export import calibrated, export_pack  # noqa: E402
from commandv.exporter.transfer.gated import read_ridge, reads  # noqa: E402
from commandv.exporter.transfer.layermap import build_layer_map  # noqa: E402
from commandv.exporter.transfer.score import layer_figures, pack_score  # noqa: E402
from commandv.profiles.profiler import profile_model  # noqa: E402
from commandv.runtime.pack.model import PackEntry  # noqa: E402


def pinv_maps(XR, XD):
    """``(read, write)``: ``read(h) = h @ Crd + crd`` (recipient → donor), ``write(δ) = δ @ Cdr``."""
    Crd = np.linalg.pinv(XR) @ XD
    Cdr = np.linalg.pinv(XD) @ XR
    return Crd, np.zeros(XD.shape[1]), Cdr


def robust_pinv(M: np.ndarray) -> np.ndarray:
    """``pinv(M)``, through LAPACK's gesvd when the default SVD driver does not converge."""
    try:
        return np.linalg.pinv(M)
    except np.linalg.LinAlgError:  # through the eigendecomposition of MᵀM: pinv(M) = V diag(1/λ) Vᵀ Mᵀ
        lam, V = np.linalg.eigh(M.T @ M)
        keep = lam > lam.max() * (max(M.shape) * np.finfo(np.float64).eps) ** 2
        return (V[:, keep] / lam[keep]) @ V[:, keep].T @ M.T


def _ridge(Xs, Ys, lam):
    d = Xs.shape[1]
    G = Xs.T @ Xs
    return np.linalg.solve(G + lam * np.trace(G) / d * np.eye(d), Xs.T @ Ys)


def ridge_maps(XR, XD, seed: int = 0):
    """Centered standardized ridge both ways; λ (× mean eigenvalue) chosen per direction by held-out R²."""
    rng = np.random.default_rng(seed)
    n = len(XR)
    perm = rng.permutation(n)
    held, fit = perm[: n // 5], perm[n // 5:]

    def one(X, Y):
        mx, sx = X.mean(0), X.std(0) + 1e-6
        my, sy = Y.mean(0), Y.std(0) + 1e-6
        Xs, Ys = (X - mx) / sx, (Y - my) / sy
        best = None
        for lam in (1e-3, 1e-2, 1e-1, 1.0):
            W = _ridge(Xs[fit], Ys[fit], lam)
            r2 = 1 - ((Xs[held] @ W - Ys[held]) ** 2).sum() / ((Ys[held] - Ys[held].mean(0)) ** 2).sum()
            if best is None or r2 > best[0]:
                best = (r2, lam)
        W = _ridge(Xs, Ys, best[1])
        C = (W / sx[:, None]) * sy[None, :]  # raw → raw linear part
        c = my - mx @ C
        return C, c, best

    Crd, crd, _ = one(XR, XD)
    Cdr, _, _ = one(XD, XR)
    return Crd, crd, Cdr


def fold_read(edit, XR, XD, Cdr, layer, positions):
    """The donor edit with its read values ``x_D @ A`` (and ``x_D @ P``) predicted from ``h_R`` by
    :func:`read_ridge`, written back through ``Cdr``: ``act(h@A' + b')@(C@Cdr) - (h@P')@(Q@Cdr) + e'``."""
    f32 = lambda a: None if a is None else np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    W, w0, r2 = read_ridge(XR, XD @ reads(edit))  # the gated fold's read (exporter/transfer/gated.py)
    r = edit.A.shape[1]
    A, b = W[:, :r], edit.b + w0[:r]
    C = edit.C @ Cdr
    e = None if edit.e is None else edit.e @ Cdr
    P = Q = None
    if edit.P is not None:
        P, Q = W[:, r:], edit.Q @ Cdr
        e = -(w0[r:] @ Q) if e is None else e - w0[r:] @ Q
    return PackEntry(layer=layer, donor_layer=edit.layer, A=f32(A), b=f32(b), C=f32(C), P=f32(P), Q=f32(Q),
                     e=f32(e), act=edit.act, positions=positions, strength=1.0), r2


def fold(edit, Crd, crd, Cdr, layer, positions):
    """The donor edit read through ``h @ Crd + crd`` and written back through ``Cdr`` as a pack entry."""
    f32 = lambda a: None if a is None else np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    A = Crd @ edit.A
    b = edit.b + crd @ edit.A
    C = edit.C @ Cdr
    P = Q = None
    e = None if edit.e is None else edit.e @ Cdr
    if edit.P is not None:
        P = Crd @ edit.P
        Q = edit.Q @ Cdr
        const = -(crd @ edit.P) @ Q
        e = const if e is None else e + const
    return PackEntry(layer=layer, donor_layer=edit.layer, A=f32(A), b=f32(b), C=f32(C), P=f32(P), Q=f32(Q),
                     e=f32(e), act=edit.act, positions=positions, strength=1.0)


def randomize(entry: PackEntry, rng) -> PackEntry:
    """The same entry with each write row (C, Q, e) replaced by a random direction of the same norm."""
    def rand_rows(M):
        if M is None:
            return None
        R = rng.standard_normal(M.shape).astype(np.float32)
        norms = np.linalg.norm(M, axis=-1, keepdims=True) / np.maximum(np.linalg.norm(R, axis=-1, keepdims=True), 1e-12)
        return R * norms
    return dataclasses.replace(entry, C=rand_rows(entry.C), Q=rand_rows(entry.Q), e=rand_rows(entry.e))


def summary(r) -> dict:
    """Primary metric on expected / unexpected prompts and both selectivities (primary and first-token)."""
    start = lambda e: float(np.mean(r.values("start", e)))  # noqa: E731
    return {"expected": r.expected, "unexpected": r.unexpected, "selectivity": r.selectivity,
            "start_expected": start(True), "start_selectivity": start(True) - start(False)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--donor", required=True)
    ap.add_argument("--recipient", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--behavior", default="refusal")
    ap.add_argument("--strengths", default="0.5,1,2")
    ap.add_argument("--n", type=int, default=65)
    ap.add_argument("--judge", default="generation", help="generation (greedy, judged rates) or proxy")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--resume", action="store_true",
                    help="keep the measured methods of the results file (refolded, not re-run) and add the others")
    ap.add_argument("--target", action="append", default=None,
                    help="teacher-forced answer text (repeatable; default: the behavior's)")
    ap.add_argument("--methods", default="pinv-N128,pinv-N256,pinv-N512,pinv-N1024,pinv-anchored,ridge,roundtrip,"
                                        "pinv-N256+cal,ridge+cal,random")
    args = ap.parse_args()
    from commandv.runtime.engines.llama.engine import Recipient

    strengths = [float(s) for s in args.strengths.split(",")]
    adapter = load_adapter(args.adapter)
    pset = profiling_set(args.behavior, 1024, 256)
    n_gen = len(profiling_set(args.behavior, 1024, 0))  # the general part comes first
    dprof, _, _ = profile_model(args.donor, pset, "gguf")
    rprof, _, _ = profile_model(args.recipient, pset, "gguf")
    n_total = dprof.meta.n_prompts
    lmap = dict(build_layer_map(adapter.layers, dprof.meta.n_layer, rprof.meta.n_layer, "nearest").pairs)
    base = export_pack(adapter, dprof, rprof, name=f"{args.behavior}-methods").pack
    positions = base.entries[0].positions
    held = np.arange(n_gen - 64, n_gen)  # general prompts no method fits on: the transferability score's rows
    rows_for = {f"pinv-N{k}": np.arange(min(k, n_gen - 64)) for k in (128, 256, 512, 1024)}
    rows_for["pinv-anchored"] = np.concatenate([np.arange(256), np.arange(n_gen, n_total)])
    rows_for["ridge"] = rows_for["roundtrip"] = np.arange(min(512, n_gen - 64))
    rows_for["readridge"] = np.arange(n_gen - 64)
    rows_for["readridge-anchored"] = np.concatenate([np.arange(n_gen - 64), np.arange(n_gen, n_total)])
    engine = Recipient(args.recipient, n_ctx=2048)
    prompts = default_prompts(args.behavior, args.n)
    results, packs, maps = {}, {}, {}
    t0 = time.time()
    beh, util = get_behavior(args.behavior), utility_questions()[:20]

    def score(packs, strengths) -> dict:
        if args.judge == "proxy":
            return summary(proxy_score(engine, args.behavior, packs, strengths, prompts, args.target))
        c = run_config(engine, "x", beh, prompts, util, packs[0] if packs else None,
                       strengths[0] if packs else 1.0, args.max_tokens)
        return {"expected": c.expected_rate, "unexpected": c.unexpected_rate, "utility": c.utility,
                "selectivity": c.expected_rate - c.unexpected_rate}

    key = f"{pair_key(args.donor, args.recipient)}-{args.behavior}"
    if args.resume and (RESULTS / f"transfer_methods-{key}.json").is_file():
        results.update(json.loads((RESULTS / f"transfer_methods-{key}.json").read_text())["details"]["results"])
    off = results["off-shelf"]["1"] if "off-shelf" in results else score([], None)
    results["off-shelf"] = {"1": off}
    print(f"off-shelf: {off}", flush=True)
    rng = np.random.default_rng(0)
    best, best_gain = None, float("nan")
    for method in args.methods.split(","):
        name, _, mod = method.partition("+")
        figs = []
        if name == "random":
            if best is None:
                continue
            entries = [randomize(e, rng) for e in packs[best].entries]
            for edit, ent, (Crd, _) in zip(sorted(adapter.edits, key=lambda e: e.layer), entries, maps[best]):
                figs.append(layer_figures(edit, ent, lambda M, C=Crd: M @ C, rprof.layer(ent.layer)[held],
                                          dprof.layer(edit.layer)[held]))
        else:
            rows = rows_for[name]
            entries = []
            maps[method] = []
            for edit in sorted(adapter.edits, key=lambda e: e.layer):
                l_r = lmap[edit.layer]
                XD = dprof.layer(edit.layer)[rows].astype(np.float64)
                XR = rprof.layer(l_r)[rows].astype(np.float64)
                if name == "ridge":
                    Crd, crd, Cdr = ridge_maps(XR, XD)
                else:
                    Crd, crd, Cdr = pinv_maps(XR, XD)
                if name == "roundtrip":
                    Cdr = robust_pinv(Crd)
                if name.startswith("readridge"):
                    ent, r2 = fold_read(edit, XR, XD, Cdr, l_r, positions)
                    print(f"  {method} {edit.layer}->{l_r}: read R² {r2:.3f}", flush=True)
                else:
                    ent = fold(edit, Crd, crd, Cdr, l_r, positions)
                if mod == "cal":
                    ent = calibrated(ent, edit, XR, XD)
                entries.append(ent)
                maps[method].append((Crd, Cdr))
                figs.append(layer_figures(edit, ent, lambda M, C=Crd: M @ C, rprof.layer(l_r)[held],
                                          dprof.layer(edit.layer)[held]))
        pack = dataclasses.replace(base, entries=entries, name=method)
        packs[method] = pack
        done = results.get(method, {})
        results[method] = done
        for s in [x for x in strengths if f"{x:g}" not in done]:
            results[method][f"{s:g}"] = v = score([pack], [s])
            v["transfer_score"] = pack_score(figs, s)
            print(f"{method} @{s:g}: " + " ".join(f"{k} {x:.3f}" for k, x in v.items())
                  + f" ({time.time() - t0:.0f}s)", flush=True)
        if name != "random":
            gain = max(v["selectivity"] for v in results[method].values()) - off["selectivity"]
            if best is None or gain > best_gain:
                best, best_gain = method, gain
        save(args, results, best, best_gain, len(prompts))  # after every method: a crash keeps what was measured
    engine.close()
    print(f"best: {best} (selectivity gain {best_gain:.3f})")


def save(args, results: dict, best: str | None, best_gain: float, n_prompts: int) -> None:
    """Write ``benchmarks/results/transfer_methods-<pair>-<behavior>.json`` with what is measured so far."""
    key = f"{pair_key(args.donor, args.recipient)}-{args.behavior}"
    unit = "logprob" if args.judge == "proxy" else "rate"
    figures = {f"{m}@{s}.{k}": (v[k], unit)
               for m, by_s in results.items() for s, v in by_s.items() for k in ("expected", "selectivity")}
    figures["best_method_gain"] = (best_gain, unit)
    write_results(f"transfer_methods-{key}", figures, extra={"best_method": best, "adapter": args.adapter,
                                                               "n_prompts": n_prompts, "results": results})


if __name__ == "__main__":
    main()
