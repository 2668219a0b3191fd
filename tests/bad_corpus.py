"""Run the readers on the bad-input corpus (``tests/data/bad/manifest.json``, made by make_bad_corpus.py).

Each case names a reader and the specific error it must raise: the exception
class and a substring of its message. :func:`run_case` classifies what really
happened; a reader that crashes, raises another exception type, or accepts
the input fails the case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "data" / "bad"
READERS = ("pack", "pack_recipient", "pack_signed", "adapter", "profile", "pack_policy", "prompts", "output",
           "export_out")


@dataclass
class Outcome:
    """``status``: ``specific`` (expected class and message), ``wrong_message``, ``wrong_exception``, ``accepted``."""

    case: dict
    status: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "specific"


def load_manifest(root: Path = ROOT) -> list[dict]:
    return json.loads((root / "manifest.json").read_text(encoding="utf-8"))["cases"]


def _error_classes() -> dict:
    from commandv.runtime.pack.model import PackError
    from commandv.runtime.pack.policy import DeltaNormError
    from commandv.runtime.pack.signing import SignatureError

    classes = {"PackError": PackError, "SignatureError": SignatureError, "DeltaNormError": DeltaNormError}
    try:  # the readers of prompt files and of output targets (hostile corpus)
        from commandv.exporter.transfer.export import ExportError
        from commandv.profiles.prompts import PromptSetError
        from commandv.runtime.atomic import AtomicTargetError

        classes.update(PromptSetError=PromptSetError, AtomicTargetError=AtomicTargetError, ExportError=ExportError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from commandv.profiles.store import ProfileError

        classes["ProfileError"] = ProfileError
    except ImportError:  # pragma: no cover
        pass
    try:
        from commandv.exporter.adapters.interventions import AdapterError

        classes["AdapterError"] = AdapterError
    except ImportError:  # pragma: no cover
        pass
    return classes


def read(case: dict, root: Path = ROOT):
    """Run the case's reader on its file (what a user would call)."""
    path = root / case["path"].split("#")[0]
    reader = case["reader"]
    if reader == "pack":
        from commandv.runtime.pack.model import BehaviorPack

        return BehaviorPack.load(path)
    if reader == "pack_recipient":
        from commandv.runtime.pack.model import BehaviorPack

        pack = BehaviorPack.load(path)
        pack.check_model(**case["model"])
        return pack
    if reader == "pack_signed":  # trusting case["trusted"] (relative to root), default keys/trusted.pub
        from commandv.runtime.pack.signing import load_pack_checked

        return load_pack_checked(path, "require", [root / case.get("trusted", "keys/trusted.pub")])
    if reader == "adapter":
        from commandv.exporter.adapters.folder import load_adapter

        return load_adapter(path)
    if reader == "profile":
        from commandv.profiles.store import Profile

        return Profile.load(path)
    if reader == "pack_policy":  # the edit-size check at case["limit"] on case["recipient"] (a tiny GGUF)
        from tests.hostile_corpus import policy_check

        return policy_check(path, root / case["recipient"], case["limit"])
    if reader == "prompts":  # a prompt file (.jsonl / .txt) as `cmdv profile -p FILE` reads it
        from commandv.profiles.prompts import load_prompt_set

        return load_prompt_set(path)
    if reader == "output":  # every writer goes through atomic_path: write a small file onto the path
        from commandv.runtime.atomic import write_text_atomic

        return write_text_atomic(path, "hostile corpus\n")
    if reader == "export_out":  # `cmdv export -o PATH` with one adapter: its up-front check of the target
        from commandv.exporter.cli.main import _export_targets

        return _export_targets([root / "adapter"], path, None)
    raise ValueError(f"unknown reader {reader!r}")


def run_case(case: dict, root: Path = ROOT) -> Outcome:
    """Run one case; never raises for reader failures (a SystemExit from unpickled code counts as a crash)."""
    expected = _error_classes()[case["error"]]
    try:
        read(case, root)
    except expected as exc:
        msg = str(exc)
        if case["match"] in msg:
            return Outcome(case, "specific", msg)
        return Outcome(case, "wrong_message", f"{type(exc).__name__}: {msg}")
    except BaseException as exc:  # noqa: BLE001 - classifying is the point
        if isinstance(exc, KeyboardInterrupt):
            raise
        return Outcome(case, "wrong_exception", f"{type(exc).__name__}: {str(exc)[:300]}")
    return Outcome(case, "accepted", "the reader accepted the input")


def summarize(outcomes: list[Outcome]) -> dict[str, tuple[int, int]]:
    """``{reader: (cases, specific errors)}`` plus ``"all"``."""
    out = {}
    for r in READERS:
        mine = [o for o in outcomes if o.case["reader"] == r]
        if mine:
            out[r] = (len(mine), sum(o.ok for o in mine))
    out["all"] = (len(outcomes), sum(o.ok for o in outcomes))
    return out


def table(summary: dict[str, tuple[int, int]]) -> str:
    lines = ["bad-input corpus: reader           cases  specific errors"]
    for r, (n, k) in summary.items():
        lines.append(f"                   {r:<16} {n:>5}  {k:>5}")
    return "\n".join(lines)
