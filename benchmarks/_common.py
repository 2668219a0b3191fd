"""Helpers shared by the benchmarks: machine description and the results file format."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def this_command() -> str:
    """The command line that is running, as ``python benchmarks/<script>.py ARGS``."""
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def write_results(name: str, figures: dict[str, tuple[float, str]], extra: dict | None = None,
                  command: str | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json`` in the project's format (``command``: what produced the
    figures, default the running command)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "command": command or this_command(),
        "figures": {k: {"value": v, "unit": u} for k, (v, u) in figures.items()},
    }
    if extra:
        doc["details"] = extra
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path
