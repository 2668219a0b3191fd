"""The hostile-file corpus end to end, and the peak memory of ``cmdv inspect`` on every pack file (issue #19).

1. Builds ``tests/hostile_corpus.py`` (every registered case, whatever the reader) into a temporary folder and
   runs each case with ``tests.bad_corpus.run_case`` under a watchdog (a reader blocked on a FIFO counts as a
   failure, not a hang of this script).
2. Runs ``cmdv inspect FILE`` in a fresh child process for every pack file of ``tests/data/bad`` and of the
   hostile corpus (cases whose reader starts with ``pack``), and reads that child's peak resident set size
   exactly: a small Python wrapper runs the command and prints ``getrusage(RUSAGE_CHILDREN).ru_maxrss``.
   Also checks each run ends with a one-line message and no traceback.

Merges into ``results/reliability.json`` (every figure and detail already there is kept) the figures
``hostile_cases``, ``hostile_cases_clear_error``, ``max_rss_mb_worst_pack``, ``largest_pack_file_mb``,
``amx_safe`` (1 when tests/test_cpu.py, the AMX decision of every model loader, passes with nothing skipped) and,
with ``--arm64 JSON`` (from ``android_demo/cross_arm64.py --out``), ``arm64_greedy_match``; details under ``hostile``. The issue's requirement: peak RSS <= 4 x the largest pack file + 200 MB.

    python benchmarks/hostile.py [--timeout 60] [--arm64 arm64.json]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from _common import RESULTS, machine, this_command, write_results  # noqa: E402

from tests import hostile_corpus  # noqa: E402
from tests.bad_corpus import ROOT as BAD_ROOT  # noqa: E402
from tests.bad_corpus import Outcome, load_manifest, run_case  # noqa: E402

_RSS = ("import resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[2:], capture_output=True, text=True, timeout=float(sys.argv[1]))\n"
        "print(repr((p.returncode, p.stdout[-2000:], p.stderr[-2000:], "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)))\n")


def cmdv_command() -> list[str]:
    """How to run ``cmdv``: the entry point beside this Python (``[project.scripts] cmdv``), else the module."""
    beside = Path(sys.executable).parent / "cmdv"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("cmdv")
    return [found] if found else [sys.executable, "-m", "commandv.exporter.cli.main"]


def inspect_rss(path: Path, timeout: float) -> dict:
    """``cmdv inspect path`` in a fresh child: exit code, last output line, traceback seen, peak RSS in MB."""
    cmd = [sys.executable, "-c", _RSS, str(timeout), *cmdv_command(), "inspect", str(path)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30)
        rc, out, err, kb = ast.literal_eval(p.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"rc": None, "line": f"timed out after {timeout} s", "traceback": False, "one_line": False,
                "rss_mb": None}
    except (IndexError, SyntaxError, ValueError):
        return {"rc": None, "line": f"wrapper failed: {p.stderr[-300:]}", "traceback": False, "one_line": False,
                "rss_mb": None}
    text = (out + err).strip()
    return {"rc": rc, "line": text.splitlines()[-1][:300] if text else "", "traceback": "Traceback" in text,
            "one_line": rc == 0 or len(text.splitlines()) == 1, "rss_mb": round(kb / 1024, 1)}


def _run_with_watchdog(case: dict, root: Path, seconds: int) -> Outcome:
    def fire(signum, frame):
        raise TimeoutError(f"reader still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        return run_case(case, root)
    except TimeoutError as exc:  # raised outside the reader (run_case classifies the reader's own exceptions)
        return Outcome(case, "hung", str(exc))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def build_cases(folder: Path) -> tuple[list[dict], list[str]]:
    """Every registered hostile case built into ``folder``; a builder that fails is reported, not fatal."""
    cases, broken = [], []
    for fn in hostile_corpus.CASES:
        try:
            c = fn(folder)
        except Exception as exc:  # noqa: BLE001 - reported in the results
            broken.append(f"hostile:{fn.__name__}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        c["name"] = f"hostile:{fn.__name__}"
        cases.append(c)
    return cases, broken


def pack_files(cases: list[dict], root: Path) -> list[Path]:
    """The distinct files of the cases whose reader reads a pack (``pack``, ``pack_signed`` ...)."""
    seen = []
    for c in cases:
        p = root / c["path"].split("#")[0]
        if c["reader"].startswith("pack") and p not in seen:
            seen.append(p)
    return seen


def _size_mb(p: Path) -> float:
    try:
        st = os.stat(p)
    except OSError:
        return 0.0
    return st.st_size / 2**20 if stat.S_ISREG(st.st_mode) else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case / per cmdv inspect run")
    ap.add_argument("--arm64", type=Path, default=None,
                    help="JSON written by android_demo/cross_arm64.py --out: adds arm64_greedy_match")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="cmdv-hostile-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        cases, broken = build_cases(folder)
        outcomes = [_run_with_watchdog(c, folder, int(args.timeout)) for c in cases]
        cases_s = time.perf_counter() - t0
        per_reader: dict[str, list[int]] = {}
        for o in outcomes:
            n = per_reader.setdefault(o.case["reader"], [0, 0])
            n[0] += 1
            n[1] += o.ok
        n_cases = len(cases) + len(broken)
        n_clear = sum(o.ok for o in outcomes)

        files = [("bad", p) for p in pack_files(load_manifest(), BAD_ROOT)]
        files += [("hostile", p) for p in pack_files(cases, folder)]
        runs = []
        for where, p in files:
            r = inspect_rss(p, args.timeout)
            r.update(corpus=where, file=p.relative_to(BAD_ROOT if where == "bad" else folder).as_posix(),
                     size_mb=round(_size_mb(p), 3))
            runs.append(r)
            print(f"  {r['rss_mb']!s:>6} MB  rc={r['rc']}  {where}:{r['file']}", flush=True)

    measured = [r for r in runs if r["rss_mb"] is not None]
    worst = max(measured, key=lambda r: r["rss_mb"])
    largest = max(r["size_mb"] for r in runs)
    limit = 4 * largest + 200
    bad_output = [f"{r['corpus']}:{r['file']}: rc={r['rc']} {r['line'][:200]}" for r in runs
                  if r["rc"] not in (0, 2) or r["traceback"] or not r["one_line"]]
    figures = {
        "hostile_cases": (n_cases, "cases"),
        "hostile_cases_clear_error": (n_clear, "cases"),
        "max_rss_mb_worst_pack": (worst["rss_mb"], "MB"),
        "largest_pack_file_mb": (round(largest, 3), "MB"),
    }
    hostile = {
        "command": this_command(),
        "machine": machine(),
        "cases_per_reader": {r: {"cases": n, "specific_errors": k} for r, (n, k) in sorted(per_reader.items())},
        "case_failures": [f"{o.case['name']}: {o.status}: {o.detail[:200]}" for o in outcomes if not o.ok] + broken,
        "cases_seconds": round(cases_s, 1),
        "inspect_runs": len(runs),
        "inspect_exit_codes": dict(Counter(str(r["rc"]) for r in runs)),
        "inspect_not_one_clean_line": bad_output,
        "worst_pack": f"{worst['corpus']}:{worst['file']} ({worst['size_mb']} MB file)",
        "rss_limit_mb": round(limit, 1),
        "rss_requirement_met": worst["rss_mb"] <= limit and len(measured) == len(runs),
        "rss_median_mb": sorted(r["rss_mb"] for r in measured)[len(measured) // 2],
        "rss_method": "getrusage(RUSAGE_CHILDREN).ru_maxrss of a fresh wrapper process per cmdv inspect run",
    }

    # amx_safe: the model loaders' AMX decision is covered by tests that pass here (simulated CPU flags, the C rule)
    amx = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                          str(REPO / "tests" / "test_cpu.py")], capture_output=True, text=True, cwd=REPO)
    amx_line = (amx.stdout.strip().splitlines() or [""])[-1]
    figures["amx_safe"] = (int(amx.returncode == 0 and "skipped" not in amx_line), "flag")
    hostile["amx_tests"] = amx_line
    if args.arm64 is not None:
        arm = json.loads(args.arm64.read_text(encoding="utf-8"))
        figures["arm64_greedy_match"] = (round(float(arm["arm64_greedy_match"]), 4), "fraction")
        hostile["arm64"] = {k: v for k, v in arm.items() if not isinstance(v, (list, dict)) and k not in ("model", "pack")}
        hostile["arm64"]["pack"] = Path(str(arm.get("pack", ""))).name

    # merge: keep every figure and detail already in reliability.json
    path = RESULTS / "reliability.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    merged = {k: (v["value"], v["unit"]) for k, v in old.get("figures", {}).items() if k not in figures}
    merged.update(figures)
    details = dict(old.get("details", {}))
    details["hostile"] = hostile
    if old.get("command") and not str(old["command"]).startswith("python benchmarks/hostile.py"):
        # the top-level date / machine become this run's: keep when and where the other figures were made
        details.setdefault("earlier_figures_from", {k: old.get(k) for k in ("command", "date", "machine")})
    commands = [c.strip() for c in str(old.get("command", "")).split(";") if c.strip()]
    commands = [c for c in commands if not c.startswith("python benchmarks/hostile.py")] + [this_command()]
    out = write_results("reliability", merged, details, command="; ".join(commands))

    print(f"hostile corpus: {n_clear}/{n_cases} cases with their specific error ({per_reader}); "
          f"cmdv inspect on {len(runs)} pack files: worst peak RSS {worst['rss_mb']} MB ({hostile['worst_pack']}), "
          f"largest file {largest:.2f} MB, limit {limit:.0f} MB -> "
          f"{'met' if hostile['rss_requirement_met'] else 'NOT met'}"
          f"\n→ {out}")
    for line in hostile["case_failures"] + bad_output:
        print("  problem:", line)
    return 0 if (n_clear == n_cases and hostile["rss_requirement_met"] and not bad_output) else 1


if __name__ == "__main__":
    sys.exit(main())
