"""Resolve a user's model spec to something loadable.

A spec is one of (checked in this order):

1. a zoo key (``smollm2-135m-instruct``): the fetched GGUF (fetched and
   verified on demand when ``auto_fetch``, else it must be fetched already);
2. an existing path: a GGUF file (checked by its magic bytes, any extension),
   an HF folder (has ``config.json``), or a folder holding exactly one
   ``.gguf`` file;
3. a hub id ``org/name`` that is not an existing path: downloaded with
   ``huggingface_hub.snapshot_download`` (HF's own cache; a short timeout, and
   a clear :class:`ModelError` when the hub cannot be reached).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from commandv.runtime.errors import ModelError
from commandv.runtime.safe_io import not_regular_reason

GGUF_MAGIC = b"GGUF"
HUB_TIMEOUT_S = 5
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]

Kind = Literal["gguf", "hf", "hub"]


@dataclass(frozen=True)
class ModelRef:
    """A resolved model.

    ``path``: the GGUF *file* for kind ``gguf``; the HF *folder* for ``hf`` and
    ``hub`` (for ``hub``, the local snapshot). ``gguf_file`` is the GGUF file's
    name (``path.name``) for kind ``gguf``, else None. ``zoo_key`` is set when
    the spec was a zoo key.
    """

    spec: str
    kind: Kind
    path: Path | None
    gguf_file: str | None = None
    zoo_key: str | None = None

    @property
    def folder(self) -> Path:
        """The folder to hand to ``from_pretrained`` (the GGUF's parent for kind ``gguf``)."""
        if self.path is None:
            raise ModelError(f"model {self.spec} has no local path")
        return self.path.parent if self.kind == "gguf" else self.path


def is_gguf_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a regular file starting with the GGUF magic bytes."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as fh:
        return fh.read(4) == GGUF_MAGIC


def _gguf_ref(spec: str, path: Path, zoo_key: str | None = None) -> ModelRef:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"not a GGUF file: {path} (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    path = path.resolve()
    return ModelRef(spec=spec, kind="gguf", path=path, gguf_file=path.name, zoo_key=zoo_key)


def _folder_ref(spec: str, path: Path) -> ModelRef:
    if (path / "config.json").is_file():
        return ModelRef(spec=spec, kind="hf", path=path.resolve())
    ggufs = sorted(p for p in path.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return _gguf_ref(spec, ggufs[0])
    if len(ggufs) > 1:
        names = ", ".join(p.name for p in ggufs)
        raise ModelError(f"folder {path} holds several GGUF files ({names}); pass one of them")
    raise ModelError(f"folder {path} is not a model: no config.json and no .gguf file")


def _hub_ref(spec: str) -> ModelRef:
    from commandv.runtime.models.zoo import ZOO

    hint = (
        f"cannot reach the Hugging Face hub to download {spec} (offline?); pass a local "
        f".gguf file or HF folder, or a zoo key: {', '.join(ZOO)}"
    )
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import RepositoryNotFoundError
    except ImportError as exc:  # device installs have no huggingface_hub
        raise ModelError(f"{hint} [huggingface_hub is not installed: {exc}]") from None
    # Already in HF's local cache: no network needed.
    try:
        folder = snapshot_download(spec, local_files_only=True, allow_patterns=_HUB_PATTERNS)
        return ModelRef(spec=spec, kind="hub", path=Path(folder))
    except Exception:  # noqa: BLE001 - not cached (any reason): try the network
        pass
    try:
        folder = snapshot_download(spec, allow_patterns=_HUB_PATTERNS, etag_timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise ModelError(f"model {spec} not found on the Hugging Face hub") from None
    except Exception as exc:  # noqa: BLE001 - offline, DNS, timeout, proxy...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise ModelError(f"{hint} [{reason}]") from None
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelError(f"hub repo {spec} has no config.json; not a transformers model")
    return ModelRef(spec=spec, kind="hub", path=folder)


def resolve_model(spec: str | os.PathLike, auto_fetch: bool = True) -> ModelRef:
    """Turn ``spec`` (zoo key, GGUF path, HF folder, or hub id) into a :class:`ModelRef`.

    Raises :class:`ModelError` (or its subclass ``ZooError``) with a one-line
    reason when the spec cannot be used.
    """
    from commandv.runtime.models import zoo

    spec_s = str(spec)
    if not spec_s.strip():
        raise ModelError("empty model spec; pass a zoo key, a .gguf file, an HF folder or a hub id")
    if spec_s in zoo.ZOO:
        # fetch() returns at once for a present, stamped file (and re-checks an unstamped one)
        path = zoo.fetch(spec_s) if auto_fetch else zoo.path(spec_s)
        return _gguf_ref(spec_s, path, zoo_key=spec_s)
    path = Path(spec_s).expanduser()
    if path.is_file():
        return _gguf_ref(spec_s, path)
    if path.is_dir():
        return _folder_ref(spec_s, path)
    if path.exists():  # a FIFO, a device, a socket: never handed to a parser (it would block or read forever)
        raise ModelError(f"model path {spec_s} is {not_regular_reason(path)}, neither a file nor a folder")
    if _HUB_ID.match(spec_s) and not spec_s.endswith(".gguf"):
        return _hub_ref(spec_s)
    raise ModelError(f"model not found: {spec_s} (not a zoo key, file or folder)")
