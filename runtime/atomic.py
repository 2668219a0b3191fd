"""Atomic file writes: write to a temp file beside the target, fsync, rename.

An interrupted writer leaves at most a ``*.partial-*`` file, never a file at
the target path that a later run would trust.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from commandv.runtime.errors import CommandVError
from commandv.runtime.safe_io import check_output_target


class AtomicTargetError(CommandVError, ValueError):
    """A target that must not be replaced (e.g. the folder the process works in)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success rename it onto ``target``.

    On any exception the temp file is removed and ``target`` is untouched. A ``target`` that exists and is not
    a regular file (a device node such as ``/dev/null``, a FIFO, a socket, a folder; also behind a symlink) is
    refused with :class:`AtomicTargetError` before anything is created: the rename would replace the node.
    Call as ``with atomic_path(out) as tmp: write(tmp)``.
    """
    target = Path(target)
    check_output_target(target, "file", AtomicTargetError)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.partial-", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _holds_cwd(target: Path) -> bool:
    cwd, real = Path.cwd().resolve(), target.resolve()
    return real == cwd or real in cwd.parents


def replace_problem(target: str | os.PathLike, is_own: Callable[[str], bool]) -> str | None:
    """Why replacing the folder ``target`` as a whole (:func:`atomic_dir`) would lose something, or None:
    it is a file, it holds the current folder, or it holds entries whose names ``is_own`` does not accept."""
    target = Path(os.path.abspath(os.path.expanduser(target)))
    if target.exists() and not target.is_dir():
        return "it is a file, not a folder"
    if _holds_cwd(target):
        return "it holds the current folder"
    others = sorted(f.name for f in target.iterdir() if not is_own(f.name)) if target.is_dir() else []
    if others:
        return f"it holds other files ({', '.join(others[:3])}{', …' if len(others) > 3 else ''})"
    return None


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside ``target``; on success it replaces ``target`` (made readable like any
    folder: ``mkdtemp`` makes 0700). Refuses (:class:`AtomicTargetError`) a ``target`` that holds the current
    working folder, or that exists and is not a folder (a file, a device node, a FIFO: never replaced)."""
    import shutil

    target = Path(os.path.abspath(os.path.expanduser(target)))
    check_output_target(target, "folder", AtomicTargetError, folder=True)
    if _holds_cwd(target):
        raise AtomicTargetError(f"refusing to replace {target}: it holds the current folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if target.exists():  # swap, then delete the old one: at no point is there nothing at target for long
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)
