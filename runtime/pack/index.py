"""Pack distribution: an index of pack files, pulling a pack from one into the local pack store, listing and
removing stored packs (``cmdv packs index|pull|list|rm``).

The index is JSON written by :func:`build_index`::

    {"format": "commandv-pack-index", "version": 1, "packs": [
      {"name": "pirate", "url": "pirate.pack.gguf", "size": 123456, "sha256": "<64 hex>",
       "recipient": {"fingerprint": "<64 hex>", "arch": "llama", "name": "SmolLM2 135M Instruct"},
       "signer": "<key id or null>", "created_by": "commandv 0.1.0",
       "signature": {"url": "pirate.pack.gguf.sig", "size": 412, "sha256": "<64 hex>"} or null}]}

URLs are relative to the index (resolved like links in a web page; an absolute one must keep the index's
scheme). :func:`pull` downloads into ``<store>/.partial/<sha256>.part`` (an interrupted download resumes
there with an HTTP ``Range`` request, or starts over when the server ignores it), checks the size and sha256
the index gives, then the signature under the pack policy, parses and validates the pack and checks that it
is for the recipient the index names; only then is it installed, atomically, as ``<store>/<name>.pack.gguf``
(its ``.sig`` beside it). A download that is too long, truncated or swapped never reaches the store.

The store is ``$COMMANDV_HOME/packs`` (:func:`default_store`); ``cmdv serve`` serves it by default.

Call as::

    build_index("packs/", "packs/index.json")
    path = pull("https://example.org/packs/index.json", "pirate", policy=PackPolicy(signatures="require"))
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from commandv.runtime.atomic import atomic_path, write_text_atomic
from commandv.runtime.errors import PackError
from commandv.runtime.pack.gguf_io import MAX_PACK_BYTES, read_pack_bytes
from commandv.runtime.pack.model import parse_pack
from commandv.runtime.pack.policy import PackPolicy
from commandv.runtime.pack.signing import (
    MAX_SIG_BYTES,
    SignatureError,
    UnverifiedPackWarning,
    parse_signature,
    signature_path,
    verify_bytes,
)
from commandv.runtime.paths import cache_home
from commandv.runtime.safe_io import check_output_target, json_problem, read_regular
from commandv.runtime.serve.pack_dir import PACK_NAME, pack_name_of
from commandv.runtime.terminal import safe_text

INDEX_FORMAT = "commandv-pack-index"
INDEX_VERSION = 1
MAX_INDEX_BYTES = 16 << 20
TIMEOUT_S = 60.0
CHUNK = 1 << 16
STORE_SUFFIX = ".pack.gguf"
_SHA = re.compile(r"^[0-9a-f]{64}$")


class PullError(PackError):
    """An index is malformed, a pack is not in it, or a download does not match what the index says."""


def default_store() -> Path:
    """The local pack store: ``cache_home()/packs``."""
    return cache_home() / "packs"


# ---------------------------------------------------------------- index
def _signer(pack_path: Path, data: bytes) -> tuple[str | None, dict | None]:
    """The key id a pack's ``.sig`` names and the signature file's index entry; (None, None) when unsigned.
    A ``.sig`` that is not for these bytes is refused (re-sign the pack)."""
    sp = signature_path(pack_path)
    if not sp.exists():
        return None, None
    text = read_regular(sp, MAX_SIG_BYTES, what="signature file", error=PullError)
    sig = parse_signature(text, str(sp))
    if sig.sha256 != hashlib.sha256(data).hexdigest():
        raise PullError(f"{sp} is not a signature of {pack_path.name} as it is now (re-sign it)")
    return sig.key_id, {"size": len(text), "sha256": hashlib.sha256(text).hexdigest()}


def _rel_url(path: Path, base: Path) -> str:
    return urllib.parse.quote(Path(os.path.relpath(path.resolve(), base.resolve())).as_posix())


def build_index(folder: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Index every pack file of ``folder`` (``NAME.pack.gguf`` / ``NAME.gguf``, as ``cmdv serve`` names them)
    into the JSON file ``out`` (written atomically); returns the index. URLs are relative to ``out``'s folder.
    Each pack is parsed and validated first; a malformed one, or a ``.sig`` that does not match its pack,
    raises :class:`PackError` and nothing is written."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise PullError(f"pack folder {folder} is not a folder")
    check_output_target(out, "index", PullError)
    entries = []
    for path in sorted(folder.iterdir()):
        name = pack_name_of(path.name)
        if name is None or not path.is_file():
            continue
        data = read_pack_bytes(path)
        pack = parse_pack(data, path)
        pack.validate()
        signer, sig = _signer(path, data)
        if sig is not None:
            sig["url"] = _rel_url(signature_path(path), out.parent)
        entries.append({
            "name": name, "url": _rel_url(path, out.parent), "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "recipient": {k: str(pack.recipient.get(k) or "") for k in ("fingerprint", "arch", "name")},
            "signer": signer, "created_by": str(pack.meta.get("created_by") or ""), "signature": sig})
    names = [e["name"] for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PullError(f"pack names {', '.join(twice)} are given by several files in {folder}")
    doc = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "packs": entries}
    write_text_atomic(out, json.dumps(doc, indent=1) + "\n")
    return doc


def as_url(source: str | os.PathLike) -> str:
    """An index location as a URL: ``http(s)://`` and ``file://`` stay, a plain path becomes ``file://``."""
    s = str(source)
    scheme = urllib.parse.urlsplit(s).scheme.lower()
    if scheme in ("http", "https", "file"):
        return s
    if len(scheme) > 1:
        raise PullError(f"index {safe_text(s)[:120]}: only http://, https:// and file:// URLs (or a file path)")
    return Path(s).expanduser().resolve().as_uri()


def _check_hex(value, what: str) -> str:
    if not isinstance(value, str) or not _SHA.match(value):
        raise PullError(f"index: {what} is not 64 lowercase hex digits")
    return value


def _check_size(value, what: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        raise PullError(f"index: {what} must be a byte count from 1 to {limit}")
    return value


def _check_entry(e, i: int) -> dict:
    if not isinstance(e, dict):
        raise PullError(f"index: packs[{i}] is not an object")
    name = e.get("name")
    if not isinstance(name, str) or not PACK_NAME.match(name):
        raise PullError(f"index: packs[{i}] name {safe_text(name)[:80]!r} is not a pack name (letters, digits, "
                        "'.', '_', '-')")
    where = f"pack {name!r}"
    if not isinstance(e.get("url"), str) or not e["url"]:
        raise PullError(f"index: {where} has no url")
    _check_size(e.get("size"), f"{where} size", MAX_PACK_BYTES)
    _check_hex(e.get("sha256"), f"{where} sha256")
    rec = e.get("recipient")
    if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("fingerprint", "arch")):
        raise PullError(f"index: {where} recipient must hold fingerprint and arch strings")
    sig = e.get("signature")
    if sig is not None:
        if not isinstance(sig, dict) or not isinstance(sig.get("url"), str):
            raise PullError(f"index: {where} signature must be null or an object with a url")
        _check_size(sig.get("size"), f"{where} signature size", MAX_SIG_BYTES)
        _check_hex(sig.get("sha256"), f"{where} signature sha256")
    return e


@dataclass
class PackIndex:
    """A loaded index: where it came from (``url``) and its checked ``entries``."""

    url: str
    entries: list[dict]

    def find(self, name: str) -> dict:
        """The entry named exactly ``name``; :class:`PullError` when there is none."""
        for e in self.entries:
            if e["name"] == name:
                return e
        known = ", ".join(e["name"] for e in self.entries[:10]) or "none"
        raise PullError(f"no pack named {safe_text(name)[:80]!r} in the index {safe_text(self.url)} (it has: {known})")

    def resolve(self, url: str) -> str:
        """``url`` (relative to the index, or absolute with the index's scheme) as an absolute URL."""
        full = urllib.parse.urljoin(self.url, url)
        a, b = urllib.parse.urlsplit(self.url).scheme, urllib.parse.urlsplit(full).scheme
        if a != b and {a, b} != {"http", "https"}:
            raise PullError(f"index {safe_text(self.url)} points at {safe_text(full)[:120]}: another URL scheme")
        return full


def _read_url(url: str, limit: int, what: str) -> bytes:
    """All bytes at ``url`` (file or http(s)), at most ``limit``; :class:`PullError` otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return read_regular(urllib.request.url2pathname(parts.path), limit, what=what, error=PullError)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            data = resp.read(limit + 1)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise PullError(f"{what} {safe_text(url)}: {safe_text(getattr(exc, 'reason', exc))}") from None
    if len(data) > limit:
        raise PullError(f"{what} {safe_text(url)} is larger than {limit} bytes")
    return data


def load_index(source: str | os.PathLike) -> PackIndex:
    """Fetch and check the index at ``source`` (URL or path); :class:`PullError` when it is malformed."""
    url = as_url(source)
    raw = _read_url(url, MAX_INDEX_BYTES, "index")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise PullError(f"index {safe_text(url)} is not JSON: {json_problem(exc)}") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT or doc.get("version") != INDEX_VERSION:
        raise PullError(f"index {safe_text(url)} is not a {INDEX_FORMAT} version {INDEX_VERSION} file")
    packs = doc.get("packs")
    if not isinstance(packs, list):
        raise PullError(f"index {safe_text(url)}: packs must be a list")
    entries = [_check_entry(e, i) for i, e in enumerate(packs)]
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise PullError(f"index {safe_text(url)} names a pack more than once")
    return PackIndex(url, entries)


# ---------------------------------------------------------------- download
def _append_http(url: str, part: Path, have: int, size: int) -> None:
    """Append the bytes of ``url`` from offset ``have`` to ``part`` (a server that ignores the range, or
    answers another one, restarts it from 0); reads at most ``size + 1`` bytes in all. Whatever arrived
    stays in ``part`` (resumable); raises :class:`PullError` on a network error."""
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            resumed = have and resp.status == 206 and \
                (resp.headers.get("Content-Range") or "").startswith(f"bytes {have}-")
            with open(part, "ab" if resumed else "wb") as fh:
                total = have if resumed else 0
                while total <= size:
                    try:
                        chunk = resp.read(min(CHUNK, size + 1 - total))
                    except http.client.IncompleteRead as exc:  # the server promised more than it sent
                        fh.write(exc.partial)
                        break
                    if not chunk:
                        break
                    fh.write(chunk)
                    total += len(chunk)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise PullError(f"download {safe_text(url)}: {safe_text(getattr(exc, 'reason', exc))}") from None


@contextlib.contextmanager
def _partial_lock(folder: Path):
    """Hold an exclusive lock on the partial-downloads ``folder`` (POSIX ``flock`` on the folder itself, so no
    lock file; elsewhere no lock): two pulls into one store (two packs with the same bytes share a partial file;
    two server replicas pull at start) take turns instead of truncating or deleting it under each other."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _download(url: str, size: int, sha256: str, store: Path) -> bytes:
    """The pack bytes at ``url``, checked: exactly ``size`` bytes with this ``sha256``. Over HTTP, resumes a
    partial download of the same sha256 once (``<store>/.partial/<sha256>.part``, one HTTP pull at a time per store);
    a partial that then fails the hash is dropped and fetched again from the start. A ``file://`` URL is read
    whole, with no partial file. :class:`PullError` (the store untouched) otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        data = read_regular(urllib.request.url2pathname(parts.path), size, what="pack file", error=PullError)
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
            raise PullError(f"{safe_text(url)}: size or sha256 is not the index's (a swapped or tampered file); "
                            "refused")
        return data
    part = store / ".partial" / f"{sha256}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    with _partial_lock(part.parent):
        return _download_locked(url, size, sha256, part)


def _download_locked(url: str, size: int, sha256: str, part: Path) -> bytes:
    for attempt in range(2):
        have = part.stat().st_size if part.is_file() else 0
        if have > size:
            part.unlink()
            have = 0
        if have < size:
            _append_http(url, part, have, size)
        n = part.stat().st_size
        if n > size:
            part.unlink()
            raise PullError(f"{safe_text(url)}: the server sent more than the {size} bytes the index gives; refused")
        if n < size:
            raise PullError(f"{safe_text(url)}: download truncated at {n} of {size} bytes; pull again to resume")
        data = part.read_bytes()
        if hashlib.sha256(data).hexdigest() == sha256:
            part.unlink()
            return data
        part.unlink()
        if not have:  # a fresh download that does not match: the server sends another file
            break
    raise PullError(f"{safe_text(url)}: sha256 is not the index's {sha256[:16]}… (a swapped or tampered file); refused")


def _check_signature(data: bytes, sig_text: bytes | None, policy: PackPolicy, name: str) -> None:
    import warnings

    if policy.signatures == "off":
        return
    try:
        verify_bytes(data, sig_text, policy.keys(), source=name)
    except SignatureError as exc:
        if policy.signatures == "require":
            raise
        warnings.warn(f"{exc}; installing it anyway (signature policy 'warn')", UnverifiedPackWarning, stacklevel=3)


def pull(index_source: str | os.PathLike, name: str, store: str | os.PathLike | None = None,
         policy: PackPolicy | None = None, index: PackIndex | None = None) -> Path:
    """Download pack ``name`` from the index at ``index_source`` (URL or path; ``index``: already loaded) into
    ``store`` (default :func:`default_store`) and return its installed path ``<store>/<name>.pack.gguf``.

    Order of checks: size and sha256 from the index, then the signature under ``policy`` (default
    :meth:`PackPolicy.from_env`), then the pack is parsed, validated and its recipient compared with the
    index's; only then is it written (pack and ``.sig`` atomically). Raises :class:`PullError` /
    :class:`~commandv.runtime.pack.signing.SignatureError` / :class:`PackError`, leaving the store as it was."""
    idx = index if index is not None else load_index(index_source)
    entry = idx.find(name)
    policy = policy if policy is not None else PackPolicy.from_env()
    store = Path(store) if store is not None else default_store()
    target = store / f"{entry['name']}{STORE_SUFFIX}"
    check_output_target(target, "pack", PullError)
    check_output_target(signature_path(target), "signature", PullError)
    store.mkdir(parents=True, exist_ok=True)
    data = _download(idx.resolve(entry["url"]), entry["size"], entry["sha256"], store)
    sig_text = None
    if entry.get("signature"):
        s = entry["signature"]
        sig_text = _read_url(idx.resolve(s["url"]), s["size"], "signature")
        if len(sig_text) != s["size"] or hashlib.sha256(sig_text).hexdigest() != s["sha256"]:
            raise PullError(f"signature of {name!r}: size or sha256 is not the index's (a swapped file); refused")
    _check_signature(data, sig_text, policy, name)
    pack = parse_pack(data, name)
    pack.validate()
    if pack.recipient["fingerprint"] != entry["recipient"]["fingerprint"]:
        raise PullError(f"pack {name!r} is for model {pack.recipient['fingerprint'][:16]}…, not the "
                        f"{entry['recipient']['fingerprint'][:16]}… the index gives; refused")
    if sig_text is not None:
        with atomic_path(signature_path(target)) as tmp:
            tmp.write_bytes(sig_text)
    else:
        signature_path(target).unlink(missing_ok=True)  # a stale signature of an older version
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target


# ---------------------------------------------------------------- store
def list_store(store: str | os.PathLike | None = None) -> list[dict]:
    """The packs in ``store`` (default :func:`default_store`), by name: ``name``, ``path``, ``size``,
    ``sha256``, ``recipient`` (its name or arch), ``signer`` (the ``.sig``'s key id, not verified here) and
    ``error`` (why the file does not parse, else None)."""
    store = Path(store) if store is not None else default_store()
    out = []
    for path in sorted(store.iterdir()) if store.is_dir() else []:
        name = pack_name_of(path.name)
        if name is None:
            continue
        row = {"name": name, "path": path, "size": None, "sha256": None, "recipient": "", "signer": None,
               "error": None}
        try:
            data = read_pack_bytes(path)
            row["size"], row["sha256"] = len(data), hashlib.sha256(data).hexdigest()
            pack = parse_pack(data, path)
            pack.validate()
            row["recipient"] = str(pack.recipient.get("name") or pack.recipient["arch"])
            row["signer"] = _signer(path, data)[0]
        except (ValueError, OSError) as exc:
            row["error"] = safe_text(exc)
        out.append(row)
    return out


def remove(name: str, store: str | os.PathLike | None = None) -> list[Path]:
    """Delete pack ``name`` (and its ``.sig``) from ``store``; returns the removed files.
    :class:`PullError` when the name is not a pack name or no such pack is stored."""
    if not isinstance(name, str) or not PACK_NAME.match(name):
        raise PullError(f"{safe_text(name)[:80]!r} is not a pack name (letters, digits, '.', '_', '-')")
    store = Path(store) if store is not None else default_store()
    removed = []
    for suffix in (STORE_SUFFIX, ".gguf"):
        path = store / f"{name}{suffix}"
        for p in (path, signature_path(path)):
            if p.is_file() or p.is_symlink():
                p.unlink()
                removed.append(p)
    if not removed:
        raise PullError(f"no pack named {name!r} in {store}")
    return removed
