"""Signed behavior packs: ed25519 signatures in a detached ``<pack>.sig`` file.

Design: the signature lives in a small JSON file beside the pack
(``pirate.gguf`` → ``pirate.gguf.sig``)::

    {"format": "commandv-pack-signature", "version": 1, "algorithm": "ed25519",
     "key_id": "<16 hex>", "sha256": "<pack sha256 hex>", "size": <bytes>,
     "signature": "<base64 of 64 bytes>"}

Why detached rather than a key inside the GGUF: the canonical bytes are then
simply *the whole pack file*, with nothing to exclude or re-pad; a signed pack
is byte-identical to the unsigned one (its sha256, the C reader and every
other GGUF reader are unaffected); a curator can sign someone else's pack
without rewriting it; and checking needs no GGUF parsing at all, so with
policy ``require`` nothing of an untrusted file is parsed before its bytes are
proven to come from a trusted key. The cost is a second file to carry along;
a missing one is reported as "unsigned".

What is signed: ``b"commandv-pack-signature-v1\\0" + sha256(pack bytes)`` with
ed25519 (the domain prefix keeps a pack-signing key from being usable to
sign anything else that it could be confused with). ``key_id`` is the first
16 hex digits of sha256 of the 32-byte raw public key; it only selects the
trusted key to try, the signature itself decides.

Keys: private key = PKCS#8 PEM, written with mode 0600 (and refused when
group/other can read it, as ssh does); public key = SubjectPublicKeyInfo PEM
(``*.pub``). :func:`load_pack_checked` reads the pack once, checks the
signature on those very bytes, and only then parses them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union

from commandv.runtime.atomic import write_text_atomic
from commandv.runtime.errors import PackError
from commandv.runtime.pack.gguf_io import read_pack_bytes
from commandv.runtime.pack.model import BehaviorPack, parse_pack
from commandv.runtime.paths import cache_home
from commandv.runtime.safe_io import check_output_target, json_problem, read_regular

ALGORITHM = "ed25519"
SIG_FORMAT = "commandv-pack-signature"
SIG_VERSION = 1
SIG_SUFFIX = ".sig"
POLICIES = ("require", "warn", "off")
MAX_SIG_BYTES = 16 << 10  # a signature file is ~400 bytes
MAX_KEY_BYTES = 64 << 10
_DOMAIN = b"commandv-pack-signature-v1\x00"
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")

TrustedKey = Union[str, os.PathLike, bytes, "Ed25519PublicKey"]  # noqa: F821


class SignatureError(PackError):
    """A pack is unsigned, signed by an unknown key, tampered with, or its signature file is malformed."""


class UnverifiedPackWarning(UserWarning):
    """Policy ``warn``: a pack whose signature did not verify was loaded anyway."""


@dataclass(frozen=True)
class Signature:
    """Contents of a ``.sig`` file. ``signature``: 64 raw bytes; ``sha256``: hex of the pack bytes."""

    key_id: str
    sha256: str
    size: int
    signature: bytes
    algorithm: str = ALGORITHM

    def to_json(self) -> str:
        return json.dumps({"format": SIG_FORMAT, "version": SIG_VERSION, "algorithm": self.algorithm,
                           "key_id": self.key_id, "sha256": self.sha256, "size": self.size,
                           "signature": base64.b64encode(self.signature).decode("ascii")}, indent=1) + "\n"


# ---------------------------------------------------------------- keys
def default_keys_dir() -> Path:
    """Where ``cmdv keys new`` writes key pairs by default."""
    return cache_home() / "keys"


def default_trusted_dir() -> Path:
    """Public keys (``*.pub``) trusted when no explicit list is given (``cmdv keys trust`` adds one)."""
    return cache_home() / "trusted_keys"


def key_id(public_key) -> str:
    """First 16 hex digits of sha256 of the 32-byte raw ed25519 public key."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _write_private(target: Path, data: bytes) -> None:
    """Atomic write with mode 0600 from the start (mkstemp), never world-readable in between."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.partial-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_keypair(out_dir: str | os.PathLike | None = None, name: str = "signing",
                     overwrite: bool = False) -> tuple[Path, Path, str]:
    """Make an ed25519 key pair: ``out_dir/name.key`` (PEM, 0600) and ``out_dir/name.pub``.

    Returns ``(private_path, public_path, key_id)``. Refuses to overwrite unless asked.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name) or name.startswith("."):
        raise SignatureError(f"key name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    out = Path(out_dir) if out_dir is not None else default_keys_dir()
    priv_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (priv_path, pub_path):
        check_output_target(p, what="key", error=SignatureError)  # a device or FIFO there is never replaced
        if p.exists() and not overwrite:
            raise SignatureError(f"{p} already exists (choose another --name or folder)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_private(priv_path, pem)
    write_text_atomic(pub_path, pub.decode("ascii"))
    return priv_path, pub_path, key_id(key.public_key())


def _read_key_file(path: Path) -> bytes:
    """The bytes of the key file ``path`` (at most :data:`MAX_KEY_BYTES`), via :func:`~.safe_io.read_regular`:
    a missing file, a FIFO (never opened blocking), a device or a folder raises :class:`SignatureError` saying
    which."""
    return read_regular(path, MAX_KEY_BYTES, what="key file", error=SignatureError)


def load_private_key(path: str | os.PathLike):
    """Read an ed25519 private key (PKCS#8 PEM) from ``path``; returns an ``Ed25519PrivateKey``.

    Raises :class:`SignatureError` for a missing or special file, a public key (``.pub``) given instead, a key
    that group/other can read, or anything that is not an unencrypted ed25519 PEM private key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    data = _read_key_file(path)
    if b"PUBLIC KEY" in data and b"PRIVATE KEY" not in data:
        raise SignatureError(f"{path}: is a public key; signing needs the private .key file of the pair "
                             "(from `cmdv keys new`)")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise SignatureError(f"{path}: private key is readable by others (mode {path.stat().st_mode & 0o777:o}); "
                             "run chmod 600 on it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path}: not an unencrypted PEM private key ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: a {type(key).__name__}, not an ed25519 key")
    return key


def load_public_key(source: TrustedKey):
    """An ed25519 public key from a ``.pub`` PEM file, PEM bytes, 32 raw bytes, or a key object."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if isinstance(source, Ed25519PublicKey):
        return source
    if isinstance(source, bytes) and len(source) == 32:
        return Ed25519PublicKey.from_public_bytes(source)
    where = "public key bytes" if isinstance(source, bytes) else str(source)
    data = source if isinstance(source, bytes) else _read_key_file(Path(source))
    if b"PRIVATE KEY" in data:
        raise SignatureError(f"{where}: is a private key; trust the matching .pub file instead")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{where}: not a PEM public key ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{where}: a {type(key).__name__}, not an ed25519 key")
    return key


def load_trusted(sources: Iterable[TrustedKey]) -> list:
    """Public keys from files, folders (every ``*.pub`` inside), bytes or key objects."""
    keys = []
    for s in sources:
        if isinstance(s, (str, os.PathLike)) and Path(s).is_dir():
            keys += [load_public_key(p) for p in sorted(Path(s).glob("*.pub"))]
        else:
            keys.append(load_public_key(s))
    return keys


def default_trusted_keys() -> list:
    """The keys in :func:`default_trusted_dir` (empty when the folder does not exist)."""
    d = default_trusted_dir()
    return load_trusted([d]) if d.is_dir() else []


# ---------------------------------------------------------------- sign / verify
def signature_path(pack_path: str | os.PathLike) -> Path:
    """``pirate.gguf`` → ``pirate.gguf.sig``."""
    p = Path(pack_path)
    return p.with_name(p.name + SIG_SUFFIX)


def _message(sha256_hex: str) -> bytes:
    return _DOMAIN + bytes.fromhex(sha256_hex)


def sign_bytes(data: bytes, private_key) -> Signature:
    """Sign pack bytes with an ``Ed25519PrivateKey``."""
    sha = hashlib.sha256(data).hexdigest()
    return Signature(key_id=key_id(private_key.public_key()), sha256=sha, size=len(data),
                     signature=private_key.sign(_message(sha)))


def sign_pack(path: str | os.PathLike, private_key_path: str | os.PathLike) -> Path:
    """Check that ``path`` is a valid pack, sign its bytes, write ``<path>.sig`` atomically; return the sig path."""
    path = Path(path)
    key = load_private_key(private_key_path)
    data = read_pack_bytes(path)
    parse_pack(data, path).validate()  # never vouch for a malformed pack
    return write_text_atomic(signature_path(path), sign_bytes(data, key).to_json())


def parse_signature(text: bytes, source: str) -> Signature:
    """Parse and check a ``.sig`` file's contents; :class:`SignatureError` ("malformed …") otherwise."""
    def bad(why: str) -> SignatureError:
        return SignatureError(f"{source}: malformed signature file ({why})")

    if len(text) > MAX_SIG_BYTES:
        raise bad(f"{len(text)} bytes, limit {MAX_SIG_BYTES}")
    try:
        doc = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # syntax, encoding, nesting depth, ints over the digit limit
        raise bad(f"not JSON: {json_problem(exc)}") from None
    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    if doc.get("format", SIG_FORMAT) != SIG_FORMAT or doc.get("version", SIG_VERSION) != SIG_VERSION:
        raise bad(f"format {doc.get('format')!r} version {doc.get('version')!r}, expected {SIG_FORMAT!r} {SIG_VERSION}")
    if doc.get("algorithm") != ALGORITHM:
        raise bad(f"algorithm {doc.get('algorithm')!r} is not supported (only {ALGORITHM!r})")
    kid, sha, size, sig = doc.get("key_id"), doc.get("sha256"), doc.get("size"), doc.get("signature")
    if not isinstance(kid, str) or not _KEY_ID.match(kid):
        raise bad(f"key_id {kid!r} is not 16 lowercase hex digits")
    if not isinstance(sha, str) or not _SHA.match(sha):
        raise bad(f"sha256 {sha!r} is not 64 lowercase hex digits")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise bad(f"size {size!r} is not a byte count")
    try:
        raw = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 64:
        raise bad("signature is not base64 of 64 bytes")
    return Signature(key_id=kid, sha256=sha, size=-1 if size is None else size, signature=raw)


def verify_bytes(data: bytes, sig_text: bytes | None, trusted: Iterable[TrustedKey], source: str = "pack") -> str:
    """Check ``data`` against a signature file's contents (``None``: absent); return the signer's key id."""
    from cryptography.exceptions import InvalidSignature

    if sig_text is None:
        raise SignatureError(f"{source}: pack is unsigned (no {Path(source).name}{SIG_SUFFIX} beside it)")
    sig = parse_signature(sig_text, f"{source}{SIG_SUFFIX}")
    keys = {key_id(k): k for k in load_trusted(trusted)}
    if sig.key_id not in keys:
        known = ", ".join(sorted(keys)) or "none given"
        raise SignatureError(f"{source}: signed by unknown key {sig.key_id} (trusted keys: {known})")
    sha = hashlib.sha256(data).hexdigest()
    if sha != sig.sha256 or (sig.size >= 0 and sig.size != len(data)):
        raise SignatureError(f"{source}: pack was tampered with: its sha256 {sha[:16]}… ({len(data)} bytes) is not "
                             f"the signed {sig.sha256[:16]}…")
    try:
        keys[sig.key_id].verify(sig.signature, _message(sig.sha256))
    except InvalidSignature:
        raise SignatureError(f"{source}: bad signature: not made by key {sig.key_id} for these bytes "
                             "(signature file tampered with)") from None
    return sig.key_id


def _read_sig(path: Path) -> bytes | None:
    """The bytes of ``<path>.sig`` (``None`` when there is none); at most :data:`MAX_SIG_BYTES` are read,
    so a huge file, a FIFO or a link to a device cannot exhaust memory or block."""
    sp = signature_path(path)
    if not os.path.lexists(sp):
        return None
    try:
        return read_regular(sp, MAX_SIG_BYTES, what="signature file", error=SignatureError)
    except SignatureError as exc:  # read_regular's reason, in this module's wording
        why = str(exc).removeprefix(f"signature file {sp} ").removeprefix("is ")
        if why.startswith("cannot be read: "):
            why = why.removeprefix("cannot be read: ")
            raise SignatureError(f"{sp}: cannot read the signature file ({why})") from None
        if why.startswith("signature file not found"):
            why = "a link to nothing, not a regular file"
        raise SignatureError(f"{sp}: malformed signature file ({why})") from None


def verify_pack(path: str | os.PathLike, trusted: Iterable[TrustedKey]) -> str:
    """Verify ``<path>.sig`` over the pack's bytes with the ``trusted`` keys; return the signer's key id.

    Raises :class:`SignatureError`: unsigned, unknown signer, tampered pack / bad signature, malformed sig file.
    """
    path = Path(path)
    return verify_bytes(read_pack_bytes(path), _read_sig(path), trusted, str(path))


def load_pack_checked(path: str | os.PathLike, policy: str = "require",
                      trusted: Iterable[TrustedKey] = ()) -> BehaviorPack:
    """Load and validate a pack under a signature ``policy``.

    ``require``: the bytes are read once and verified before anything is parsed
    (:class:`SignatureError` otherwise). ``warn``: a failed check emits an
    :class:`UnverifiedPackWarning` and the pack loads. ``off``: no check.
    """
    if policy not in POLICIES:
        raise PackError(f"signature policy {policy!r} unknown; choose one of {', '.join(POLICIES)}")
    path = Path(path)
    data = read_pack_bytes(path)
    if policy != "off":
        try:
            verify_bytes(data, _read_sig(path), trusted, str(path))
        except SignatureError as exc:
            if policy == "require":
                raise
            warnings.warn(f"{exc}; loading it anyway (signature policy 'warn')", UnverifiedPackWarning, stacklevel=2)
    pack = parse_pack(data, path)
    pack.validate()
    return pack
