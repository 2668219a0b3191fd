"""Prompt sets for profiling and evaluation: load, hash, slice and split.

A prompt set is an ordered list of user prompts with stable ids. Its
``sha256`` covers only the prompt strings (canonical JSON of the list), so the
same prompts give the same hash whatever the file's formatting, and profiles
can record exactly which prompts they were fitted on.

Specs accepted by :func:`load_prompt_set`: a built-in name from
:data:`BUILTIN_SETS` (packaged in ``commandv.profiles/data``), a ``.jsonl`` path
(one object per line with a non-empty string ``"prompt"`` and optional
``"id"``) or a ``.txt`` path (one prompt per non-blank line).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from commandv.runtime.errors import CommandVError
from commandv.runtime.safe_io import json_problem, read_regular

PACKAGE = "commandv.profiles"
BUILTIN_SETS: dict[str, str] = {
    "general": "data/general_v1.jsonl",
    "general_v1": "data/general_v1.jsonl",
}
_CANONICAL_BUILTIN = {"general": "general_v1"}
MAX_PROMPT_FILE_BYTES = 256 << 20
"""Largest prompt file read (the built-in set of ~1000 prompts is ~100 kB)."""


class PromptSetError(CommandVError, ValueError):
    """A prompt file or spec is missing, malformed or empty (one-line message)."""


@dataclass
class PromptSet:
    """An ordered prompt list. ``prompts[i]`` has id ``ids[i]``; ``sha256`` = :func:`prompt_hash` (prompts)."""

    name: str
    prompts: list[str]
    ids: list[str]
    sha256: str
    source: str

    def __len__(self) -> int:
        return len(self.prompts)


def prompt_hash(prompts: list[str]) -> str:
    """Hex SHA-256 of ``json.dumps(prompts, ensure_ascii=False, separators=(',', ':'))`` in UTF-8."""
    canon = json.dumps(list(prompts), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _make(name: str, prompts: list[str], ids: list[str], source: str) -> PromptSet:
    return PromptSet(name=name, prompts=list(prompts), ids=list(ids), sha256=prompt_hash(prompts), source=source)


def _parse_jsonl(text: str, where: str, field: str, default_prefix: str) -> list[dict]:
    """Parse JSONL text into records; each gets ``"id"`` (str; ``PREFIX-LINENO`` when absent)."""
    records: list[dict] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:  # syntax, nesting depth, ints over the digit limit
            raise PromptSetError(f"{where}: malformed JSON on line {lineno}: {json_problem(exc)}") from None
        if not isinstance(obj, dict):
            raise PromptSetError(f"{where}: line {lineno} is not a JSON object")
        value = obj.get(field)
        if not isinstance(value, str) or not value.strip():
            raise PromptSetError(f"{where}: line {lineno} has no non-empty string {field!r} field")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise PromptSetError(f"{where}: line {lineno}: {field!r} is not valid Unicode (a lone surrogate "
                                 "escape such as \\ud800)") from None
        rid = obj.get("id", f"{default_prefix}-{lineno:05d}")
        if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
            raise PromptSetError(f"{where}: line {lineno} has an invalid 'id' (want a non-empty string or integer)")
        rid = str(rid)
        if rid in first_line:
            raise PromptSetError(f"{where}: duplicate id {rid!r} on lines {first_line[rid]} and {lineno}")
        first_line[rid] = lineno
        records.append({**obj, "id": rid})
    if not records:
        raise PromptSetError(f"{where}: empty file (no prompts)")
    return records


def _lines(text: str) -> list[str]:
    """Lines split at ``\n`` only (``\r\n`` too): ``str.splitlines`` would also split inside a prompt at
    U+2028, U+0085, form feeds and other characters JSON strings may hold raw."""
    return [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]


def _read_text(path: Path) -> str:
    """The UTF-8 text of the prompt file ``path``: a regular file (not a FIFO or device) of at most
    :data:`MAX_PROMPT_FILE_BYTES`; raises :class:`PromptSetError` naming what is wrong."""
    raw = read_regular(path, MAX_PROMPT_FILE_BYTES, "prompt file", PromptSetError)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptSetError(f"{path}: not valid UTF-8 text (byte {exc.start})") from None


def load_jsonl_prompts(path: str | os.PathLike, field: str = "prompt") -> list[dict]:
    """Read a JSONL file of objects; every record has a non-empty string ``field`` and a unique str ``"id"``.

    Other keys are kept as they are (e.g. evaluation labels). Raises :class:`PromptSetError`.
    """
    p = Path(path)
    return _parse_jsonl(_read_text(p), str(p), field, p.stem)


def _load_builtin(name: str) -> tuple[str, list[str], list[str], str]:
    resource = BUILTIN_SETS[name]
    try:
        text = resources.files(PACKAGE).joinpath(resource).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise PromptSetError(f"built-in prompt set {name!r} is missing from the package ({resource}): {exc}") from None
    canon = _CANONICAL_BUILTIN.get(name, name)
    recs = _parse_jsonl(text, f"builtin:{canon}", "prompt", canon)
    return canon, [r["prompt"] for r in recs], [r["id"] for r in recs], f"builtin:{canon}"


def _load_txt(p: Path) -> tuple[list[str], list[str]]:
    prompts, ids = [], []
    for lineno, line in enumerate(_lines(_read_text(p)), 1):
        if line.strip():
            prompts.append(line.strip())
            ids.append(f"{p.stem}-{lineno:05d}")
    if not prompts:
        raise PromptSetError(f"{p}: empty file (no prompts)")
    return prompts, ids


def load_prompt_set(spec: str | os.PathLike, limit: int | None = None, offset: int = 0) -> PromptSet:
    """Load a built-in set (``general`` / ``general_v1``) or a ``.jsonl`` / ``.txt`` file.

    ``offset`` skips that many prompts, then ``limit`` keeps the first N (``None`` = all);
    ``sha256`` is the hash of the prompts actually returned. Raises :class:`PromptSetError`.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise PromptSetError(f"limit must be a positive integer or None, got {limit!r}")
    if not isinstance(offset, int) or offset < 0:
        raise PromptSetError(f"offset must be a non-negative integer, got {offset!r}")
    spec_s = os.fspath(spec)
    if spec_s in BUILTIN_SETS:
        name, prompts, ids, source = _load_builtin(spec_s)
    else:
        p = Path(spec_s).expanduser()
        suffix = p.suffix.lower()
        if suffix not in (".jsonl", ".txt"):
            if p.exists() or os.sep in spec_s or suffix:
                raise PromptSetError(f"unsupported prompt file type {suffix or '(none)'!r} for {spec_s} (want .jsonl or .txt)")
            raise PromptSetError(f"unknown built-in prompt set {spec_s!r} (known: {', '.join(sorted(BUILTIN_SETS))})")
        if suffix == ".jsonl":
            recs = load_jsonl_prompts(p)
            prompts, ids = [r["prompt"] for r in recs], [r["id"] for r in recs]
        else:
            prompts, ids = _load_txt(p)
        name, source = p.stem, str(p.resolve())
    total = len(prompts)
    end = total if limit is None else offset + limit
    prompts, ids = prompts[offset:end], ids[offset:end]
    if not prompts:
        raise PromptSetError(f"{source}: offset {offset} leaves no prompts (set has {total})")
    return _make(name, prompts, ids, source)


def combine_prompt_sets(name: str, parts: list[tuple[list[str], list[str], str]]) -> PromptSet:
    """One set from ``[(prompts, ids, source)]`` parts, in order; a prompt seen earlier is dropped.

    The result's ``sha256`` covers the combined prompt list, so the profile store keys it
    like any other set. Raises :class:`PromptSetError` when nothing is left.
    """
    seen: set[str] = set()
    prompts: list[str] = []
    ids: list[str] = []
    sources = []
    for ps, ids_part, source in parts:
        if len(ps) != len(ids_part):
            raise PromptSetError(f"{name}: {len(ps)} prompts but {len(ids_part)} ids in part {source!r}")
        for p, i in zip(ps, ids_part):
            if p not in seen:
                seen.add(p)
                prompts.append(p)
                ids.append(i)
        sources.append(source)
    if not prompts:
        raise PromptSetError(f"{name}: no prompts")
    return _make(name, prompts, ids, " + ".join(sources))


def split_holdout(ps: PromptSet, holdout_fraction: float = 0.1, seed: int = 0) -> tuple[PromptSet, PromptSet]:
    """Split into (fit, held) disjoint sets; same inputs give the same split, both keep the original order.

    ``held`` has ``max(1, round(len(ps) * holdout_fraction))`` prompts chosen by ``random.Random(seed)``.
    """
    if not 0.0 < float(holdout_fraction) < 1.0:
        raise PromptSetError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
    n = len(ps.prompts)
    n_held = max(1, round(n * holdout_fraction))
    if n - n_held < 1:
        raise PromptSetError(f"prompt set {ps.name!r} has {n} prompts, too few to hold out {holdout_fraction:.0%}")
    held_idx = set(random.Random(seed).sample(range(n), n_held))
    fit = [i for i in range(n) if i not in held_idx]
    held = sorted(held_idx)

    def sub(idx: list[int], tag: str) -> PromptSet:
        return _make(f"{ps.name}:{tag}", [ps.prompts[i] for i in idx], [ps.ids[i] for i in idx], ps.source)

    return sub(fit, "fit"), sub(held, "holdout")
