"""The hostile-file corpus: files built to hurt a reader, generated at run time into a folder.

Unlike ``tests/data/bad`` (committed bytes), these cases need things git cannot
hold or should not ship: FIFOs, symlinks to ``/dev/zero``, compressed bombs,
packs of megabytes. :func:`build` writes every case into a folder and returns
their descriptions; :func:`tests.bad_corpus.run_case` runs each with its reader
and checks the specific error (class and message substring). Classes covered
(docs/reliability.md, threat model): memory amplification in packs, special
files as inputs, compressed-storage bombs, outputs onto device nodes, summed /
hidden edits past ``--max-delta-norm``.

Add a case with the :func:`case` decorator: the function gets the folder to write
into and returns the case dict (``path`` relative to that folder, ``reader``,
``error``, ``match``, ``note``); ``name`` is filled in as ``hostile:<function name>``.
Run ``python tests/hostile_corpus.py OUT`` to build the corpus into ``OUT``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES: list[Callable[[Path], dict]] = []


def case(fn: Callable[[Path], dict]) -> Callable[[Path], dict]:
    """Register a case builder: ``fn(folder) -> {"path", "reader", "error", "match", "note", ...}``."""
    CASES.append(fn)
    return fn


def build(folder: Path) -> list[dict]:
    """Write every case into ``folder`` (created); returns the case dicts, each with ``name``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for fn in CASES:
        c = fn(folder)
        c["name"] = f"hostile:{fn.__name__}"
        out.append(c)
    return out


# ---------------------------------------------------------------- cases (one section per reader)


if __name__ == "__main__":
    for c in build(Path(sys.argv[1])):
        print(c["name"], c["reader"], c["path"])
