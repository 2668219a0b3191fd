"""Fingerprints of model files, and model metadata read from GGUF headers.

* :func:`file_fingerprint`: sha256 of a file's bytes (hex). Cached in
  ``cache_home()/fingerprints.json`` keyed by (absolute path, size, mtime_ns),
  so a big file is hashed once.
* :func:`network_fingerprint`: sha256 (hex) of what identifies the *network*
  independently of quantization: architecture, layer count, hidden size, the
  token list, and every tensor's name and logical shape (not dtypes, not
  data). A Q4 and an F16 GGUF of the same model share it.

Only GGUF metadata is read (``gguf.GGUFReader`` memory-maps the file).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from commandv.runtime.atomic import write_text_atomic
from commandv.runtime.errors import ModelError
from commandv.runtime.paths import cache_home
from commandv.runtime.safe_io import not_regular_reason

CHUNK = 1 << 20
MAX_CACHE_ENTRIES = 512


@dataclass(frozen=True)
class ModelInfo:
    """What a GGUF header says about its network. ``d_model`` = residual width."""

    arch: str
    n_layer: int
    d_model: int
    n_vocab: int
    name: str
    chat_template: str | None
    fingerprint: str
    network_fingerprint: str


def _cache_file() -> Path:
    return cache_home() / "fingerprints.json"


def _cache_key(kind: str, path: Path) -> str:
    st = path.stat()
    return f"{kind}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _load_cache() -> dict[str, str]:
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _cached(kind: str, path: Path) -> str | None:
    value = _load_cache().get(_cache_key(kind, path))
    return value if isinstance(value, str) else None


def _store(kind: str, path: Path, value: str) -> None:
    cache = _load_cache()
    cache[_cache_key(kind, path)] = value
    if len(cache) > MAX_CACHE_ENTRIES:  # keep the newest entries (dicts keep insertion order)
        cache = dict(list(cache.items())[-MAX_CACHE_ENTRIES:])
    try:
        write_text_atomic(_cache_file(), json.dumps(cache, indent=0))
    except OSError:
        pass  # a read-only cache only costs re-hashing


def _existing(path: str | os.PathLike) -> Path:
    """``Path(path)`` when it is a regular file (through symlinks); else :class:`ModelError`: not found, or what
    it is instead (a FIFO or device would block or never end when hashed)."""
    p = Path(path)
    if not p.is_file():
        why = not_regular_reason(p)
        if why is None or why == "not found":
            raise ModelError(f"model file not found: {p}")
        raise ModelError(f"model file {p} is {why}, not a regular file" if why.startswith("a ")
                         else f"model file {p} cannot be read: {why}")
    return p


def remember_fingerprint(path: str | os.PathLike, sha256: str) -> None:
    """Record that ``path`` (as it is now) hashes to ``sha256`` (caller verified it)."""
    _store("sha256", _existing(path), sha256)


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 (hex) of the file's bytes; cached by (abs path, size, mtime_ns)."""
    p = _existing(path)
    hit = _cached("sha256", p)
    if hit:
        return hit
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    _store("sha256", p, digest)
    return digest


def _reader(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(path, "r")
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise ModelError(f"not a valid GGUF file: {path}: {exc or type(exc).__name__}") from None


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None or not f.types:
        return default
    try:
        return f.contents()
    except Exception:  # noqa: BLE001
        return default


def _tokens_digest(reader) -> tuple[str, int]:
    """(sha256 of the token list, token count); each token length-prefixed."""
    h = hashlib.sha256()
    f = reader.fields.get("tokenizer.ggml.tokens")
    if f is None:
        return h.hexdigest(), 0
    for idx in f.data:
        b = f.parts[idx].tobytes()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest(), len(f.data)


def _header(reader, path: Path) -> dict[str, Any]:
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelError(f"not a valid GGUF file: {path}: no general.architecture")
    n_layer = _field(reader, f"{arch}.block_count", 0)
    d_model = _field(reader, f"{arch}.embedding_length", 0)
    vocab_hash, n_tokens = _tokens_digest(reader)
    n_vocab = n_tokens or int(_field(reader, f"{arch}.vocab_size", 0) or 0)
    tensors = sorted([t.name, [int(x) for x in t.shape]] for t in reader.tensors)
    return {"arch": arch, "n_layer": int(n_layer), "d_model": int(d_model), "n_vocab": n_vocab,
            "vocab": vocab_hash, "tensors": tensors}


def _net_digest(header: dict[str, Any]) -> str:
    blob = json.dumps({k: header[k] for k in ("arch", "n_layer", "d_model", "vocab", "tensors")},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def network_fingerprint(gguf_path: str | os.PathLike) -> str:
    """sha256 (hex) of arch, n_layer, d_model, token list and tensor names + logical shapes."""
    p = _existing(gguf_path)
    hit = _cached("network", p)
    if hit:
        return hit
    digest = _net_digest(_header(_reader(p), p))
    _store("network", p, digest)
    return digest


def model_info_from_gguf(path: str | os.PathLike) -> ModelInfo:
    """Read a GGUF header into a :class:`ModelInfo` (metadata only; no weights loaded).

    Parsing a big vocabulary takes seconds, so the result is cached like
    :func:`file_fingerprint`.
    """
    p = _existing(path)
    hit = _cached("info", p)
    if hit:
        try:
            return ModelInfo(**json.loads(hit))
        except (TypeError, ValueError):
            pass
    reader = _reader(p)
    header = _header(reader, p)
    net = _net_digest(header)
    _store("network", p, net)
    template = _field(reader, "tokenizer.chat_template")
    name = _field(reader, "general.name")
    info = ModelInfo(
        arch=header["arch"], n_layer=header["n_layer"], d_model=header["d_model"],
        n_vocab=header["n_vocab"], name=name if isinstance(name, str) and name else p.stem,
        chat_template=template if isinstance(template, str) and template else None,
        fingerprint=file_fingerprint(p), network_fingerprint=net,
    )
    _store("info", p, json.dumps(asdict(info)))
    return info
