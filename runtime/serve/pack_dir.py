"""The served pack folder: every pack file in it, checked once under the pack policy, picked up as it appears.

A file ``NAME.pack.gguf`` (or ``NAME.gguf``) is served as pack ``NAME``; names are matched exactly and must
be :data:`PACK_NAME` (letters, digits, ``.``, ``_``, ``-``; no path separators), so a request only ever picks a
pack by a name the folder listed, never a path. Hidden files (partial downloads) and ``.sig`` files are not
packs. Each file is loaded once per version, keyed by its and its ``.sig``'s (size, mtime, inode): the
loader given to :class:`PackDir` applies the signature policy, the recipient check and the edit-size limit at
strength 1, and a refusal is kept as that pack's error (requests naming it get it as a 400). New, changed
and removed files are seen at the next :meth:`PackDir.scan` (the server scans before each request, at most
every ``min_interval`` seconds).

Call as::

    pd = PackDir(folder, load=lambda path: engine.load_packs([path])[0])
    pd.scan()
    record = pd.get("pirate")          # UnknownPackError when no file has that name
"""

from __future__ import annotations

import os
import re
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from commandv.runtime.pack.model import BehaviorPack, PackError
from commandv.runtime.pack.signing import SIG_SUFFIX, signature_path
from commandv.runtime.terminal import safe_text

PACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""What a served pack name may be (also the pack store's names)."""

SUFFIXES = (".pack.gguf", ".gguf")


class UnknownPackError(PackError):
    """No file in the pack folder has the requested name."""


def pack_name_of(filename: str) -> str | None:
    """The pack name a file in the pack folder is served under (``pirate.pack.gguf`` → ``pirate``), or None
    when the file is not a pack file (hidden, a ``.sig``, another suffix) or its name is not :data:`PACK_NAME`."""
    if filename.startswith(".") or filename.endswith(SIG_SUFFIX):
        return None
    for suffix in SUFFIXES:
        if filename.endswith(suffix):
            name = filename[: -len(suffix)]
            return name if PACK_NAME.match(name) else None
    return None


def _stat_key(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass
class PackRecord:
    """One pack file as the server sees it: ``pack`` when it loaded, else ``error`` (one line);
    ``warnings``: what loading it said (e.g. unsigned under policy ``warn``)."""

    name: str
    path: Path
    key: tuple
    pack: BehaviorPack | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.pack is not None


class PackDir:
    """The packs of one folder, each loaded once per file version with ``load(path) -> BehaviorPack``.

    ``load`` raises :class:`PackError` (or another ``ValueError``) to refuse a file. ``on_change(record)`` is
    called for every newly loaded or refused file version (the server logs it). Thread-safe."""

    def __init__(self, folder: str | os.PathLike, load: Callable[[Path], BehaviorPack],
                 min_interval: float = 0.5, on_change: Callable[[PackRecord], None] | None = None):
        self.folder = Path(folder)
        self._load = load
        self.min_interval = float(min_interval)
        self._on_change = on_change
        self._records: dict[str, PackRecord] = {}
        self._lock = threading.Lock()
        self._last = float("-inf")

    def scan(self, force: bool = False) -> dict[str, PackRecord]:
        """Bring the records up to date with the folder (unless scanned less than ``min_interval`` seconds
        ago and not ``force``); returns ``{name: PackRecord}``. A missing folder holds no packs."""
        with self._lock:
            now = time.monotonic()
            if force or now - self._last >= self.min_interval:
                self._records = self._rescan()
                self._last = time.monotonic()
            return dict(self._records)

    def _rescan(self) -> dict[str, PackRecord]:
        found: dict[str, list[Path]] = {}
        try:
            entries = sorted(os.scandir(self.folder), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        for entry in entries:
            name = pack_name_of(entry.name)
            if name is not None:
                found.setdefault(name, []).append(Path(entry.path))
        out: dict[str, PackRecord] = {}
        for name, paths in found.items():
            if len(paths) > 1:
                files = ", ".join(p.name for p in paths)
                out[name] = PackRecord(name, paths[0], ("dup", files), error=f"pack name {name!r} is given by "
                                       f"several files ({safe_text(files)}); rename one")
                continue
            path = paths[0]
            key = (_stat_key(path), _stat_key(signature_path(path)))
            old = self._records.get(name)
            out[name] = old if old is not None and old.key == key and old.path == path else self._read(name, path, key)
        return out

    def _read(self, name: str, path: Path, key: tuple) -> PackRecord:
        rec = PackRecord(name, path, key)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rec.pack = self._load(path)
            except (ValueError, OSError) as exc:  # PackError, SignatureError, DeltaNormError …
                rec.error = safe_text(exc)
        rec.warnings = [safe_text(w.message) for w in caught]
        if self._on_change is not None:
            self._on_change(rec)
        return rec

    def get(self, name: str) -> PackRecord:
        """The record of pack ``name`` (exact match, after a :meth:`scan`), loaded or refused;
        :class:`UnknownPackError` when the folder has no such pack."""
        rec = self.scan().get(name) if isinstance(name, str) else None
        if rec is None:
            raise UnknownPackError(f"pack {safe_text(name)[:80]!r} is not in the pack folder")
        return rec

    def loaded(self) -> list[PackRecord]:
        """The packs that loaded, by name."""
        return [r for _, r in sorted(self.scan().items()) if r.ok]
