"""Long fuzzing run of the pack reader and the adapter importer, plus the bad-input corpus.

Same targets and mutations as tests/test_fuzz_pack.py (tests/fuzz_targets.py),
drawn by a seeded random loop for a given time or number of iterations. An
iteration is a finding when the target raises anything but its own error
class, breaks a property, runs out of memory (the address space is capped a
few GiB above the start) or takes longer than ``--hang-s``. Each distinct
finding is saved as a reproducer under ``results/fuzz_findings/``.

Writes ``results/reliability.json`` with figures ``bad_inputs`` (corpus
cases), ``bad_inputs_clear_error`` (cases that gave the specific expected
error), ``fuzz_iterations`` and ``fuzz_crashes_open`` (distinct findings of this run).

    python benchmarks/fuzz_long.py [--seconds 300] [--iterations N] [--seed 0] [--adapter-share 0.3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import resource
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from _common import RESULTS, write_results  # noqa: E402

from tests.bad_corpus import load_manifest, run_case, summarize  # noqa: E402
from tests.fuzz_targets import OPS, adapter_seeds, adapter_target, mutate, mutate_adapter, pack_seeds, pack_target  # noqa: E402


def _cap_memory(extra_gib: float) -> str:
    """Cap the address space at (current + extra) so a runaway allocation is a MemoryError, not swapping."""
    try:
        vm = next(int(ln.split()[1]) * 1024 for ln in Path("/proc/self/status").read_text().splitlines()
                  if ln.startswith("VmSize:"))
    except (OSError, StopIteration):
        return "not capped (no /proc)"
    cap = vm + int(extra_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return f"{cap / 2**30:.1f} GiB address space"


def _signature(target: str, exc: BaseException) -> str:
    """Group findings: target, exception type, innermost frame, message with numbers blanked."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
    msg = re.sub(r"\d+", "N", str(exc).splitlines()[0] if str(exc) else "")[:120]
    return f"{target} {type(exc).__name__} at {where}: {msg}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--iterations", type=int, default=0, help="stop after this many (0: time only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adapter-share", type=float, default=0.3, help="fraction of iterations on the adapter importer")
    ap.add_argument("--hang-s", type=float, default=5.0, help="an iteration slower than this is a finding")
    ap.add_argument("--memory-gib", type=float, default=3.0, help="address space allowed above the start")
    args = ap.parse_args()

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    outcomes = [run_case(c) for c in load_manifest()]
    corpus = summarize(outcomes)
    packs, adapters = pack_seeds(), adapter_seeds()
    cap = _cap_memory(args.memory_gib)
    rng = random.Random(args.seed)
    stats: dict[str, Counter] = {"pack": Counter(), "adapter": Counter()}
    findings: dict[str, dict] = {}
    slowest = (0.0, "")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cmdv-fuzz-") as tmp, Progress(
            TextColumn("fuzz {task.fields[n]} it, {task.fields[bad]} findings"), BarColumn(), TimeElapsedColumn()) as prog:
        task = prog.add_task("fuzz", total=args.seconds, n=0, bad=0)
        it = 0
        while True:
            elapsed = time.perf_counter() - t_start
            if (args.iterations and it >= args.iterations) or (not args.iterations and elapsed >= args.seconds):
                break
            it += 1
            target = "adapter" if rng.random() < args.adapter_share else "pack"
            ops = [(rng.choice(OPS), rng.getrandbits(64), rng.getrandbits(64)) for _ in range(rng.randint(1, 4))]
            seed_i, which = rng.randrange(len(packs if target == "pack" else adapters)), rng.randrange(4)
            t0 = time.perf_counter()
            try:
                if target == "pack":
                    result = pack_target(mutate(packs[seed_i], ops))
                else:
                    folder = Path(tmp) / f"a{it}"
                    folder.mkdir()
                    result = adapter_target(mutate_adapter(adapters[seed_i], which, ops), folder)
                    for p in folder.iterdir():
                        p.unlink()
                    folder.rmdir()
                dt = time.perf_counter() - t0
                if dt > args.hang_s:
                    raise TimeoutError(f"iteration took {dt:.1f} s (limit {args.hang_s} s)")
            except KeyboardInterrupt:
                break
            except BaseException as exc:  # noqa: BLE001 - every other outcome is a finding
                result = "finding"
                sig = _signature(target, exc)
                if sig not in findings:
                    findings[sig] = dict(signature=sig, target=target, seed=seed_i, which=which,
                                         ops=[[o, str(a), str(b)] for o, a, b in ops], iteration=it,
                                         error=f"{type(exc).__name__}: {str(exc)[:300]}")
            dt = time.perf_counter() - t0
            if dt > slowest[0]:
                slowest = (dt, f"{target} seed {seed_i} ops {ops}")
            stats[target][result] += 1
            if it % 25 == 0:
                prog.update(task, completed=min(elapsed, args.seconds), n=it, bad=len(findings))
    seconds = time.perf_counter() - t_start

    if findings:
        out = RESULTS / "fuzz_findings"
        out.mkdir(parents=True, exist_ok=True)
        for f in findings.values():
            name = hashlib.sha256(f["signature"].encode()).hexdigest()[:12]
            (out / f"{name}.json").write_text(json.dumps(f, indent=1) + "\n")
    total = sum(sum(c.values()) for c in stats.values())
    n_regress = sum(o.case["name"].split(":")[1].startswith("fuzz_") for o in outcomes)
    figures = {
        "bad_inputs": (corpus["all"][0], "cases"),
        "bad_inputs_clear_error": (corpus["all"][1], "cases"),
        "fuzz_iterations": (total, "iterations"),
        "fuzz_crashes_open": (len(findings), "distinct findings"),
        "fuzz_seconds": (round(seconds, 1), "s"),
        "fuzz_iterations_per_s": (round(total / max(seconds, 1e-9), 1), "iterations/s"),
    }
    extra = {
        "corpus_per_reader": {r: {"cases": n, "specific_errors": k} for r, (n, k) in corpus.items()},
        "corpus_failures": [f"{o.case['name']}: {o.status}: {o.detail[:200]}" for o in outcomes if not o.ok],
        "corpus_regression_cases_from_fuzzing": n_regress,
        "fuzz_outcomes": {t: dict(c) for t, c in stats.items()},
        "fuzz_seed": args.seed,
        "fuzz_hang_limit_s": args.hang_s,
        "fuzz_memory_cap": cap,
        "fuzz_slowest_iteration_s": round(slowest[0], 3),
        "findings": list(findings.values()),
    }
    # keep the figures other scripts add to reliability.json (benchmarks/hostile.py: hostile_cases, RSS, ...)
    previous = RESULTS / "reliability.json"
    if previous.is_file():
        old = json.loads(previous.read_text(encoding="utf-8"))
        for k, v in old.get("figures", {}).items():
            figures.setdefault(k, (v["value"], v["unit"]))
        for k, v in old.get("details", {}).items():
            extra.setdefault(k, v)
    path = write_results("reliability", figures, extra)
    print(f"corpus {corpus['all'][1]}/{corpus['all'][0]} specific errors; fuzz {total} iterations in {seconds:.0f} s "
          f"({dict(stats['pack'])} pack, {dict(stats['adapter'])} adapter); {len(findings)} findings → {path}")
    for f in findings.values():
        print("  finding:", f["signature"])
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
