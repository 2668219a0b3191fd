"""Reading untrusted files and writing outputs without surprises.

Every reader of a file that may come from someone else goes through
:func:`read_regular`: it opens without blocking (a FIFO cannot hang the
reader), refuses anything that is not a regular file *after* opening it (a
symlink to ``/dev/zero`` or ``/dev/urandom`` reports ``st_size`` 0 and would
read forever), and never reads more than ``max_bytes`` (a file that grows while
being read is caught too). Every writer checks its target with
:func:`check_output_target` before doing any work: an existing path that is not
a regular file (a device node, a FIFO, a folder) is refused, never replaced.

Call as::

    data = read_regular(path, max_bytes=4 << 20, what="adapter config", error=AdapterError)
    check_output_target(out, what="pack", error=ExportError)

What such a file holds is often JSON: :func:`json_problem` turns a failed ``json.loads`` into a short reason
for the one-line error message.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path


def _kind(mode: int) -> str:
    """A file type in words, for messages: ``'a FIFO'``, ``'a character device'``…"""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def not_regular_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` (followed through symlinks) is not a regular file, or None when it is one.

    Returns ``'not found'`` for a missing path (or a dangling link), else e.g. ``'a FIFO (named pipe)'``.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None if stat.S_ISREG(st.st_mode) else _kind(st.st_mode)


def read_regular(path: str | os.PathLike, max_bytes: int, what: str, error: type[Exception] = ValueError) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them.

    ``what`` names the file in messages (``"adapter config"``); ``error`` is the exception class raised, with a
    one-line message, when the path is missing, is not a regular file (FIFO, device, folder, socket — also behind a
    symlink), cannot be read, or holds more than ``max_bytes`` bytes. Never blocks on a FIFO and never reads more than
    ``max_bytes + 1`` bytes, whatever ``st_size`` claims.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # O_NONBLOCK open of a socket / writer-less FIFO on some systems
            raise error(f"{what} {path} is not a regular file") from None
        raise error(f"{what} {path} cannot be read: {exc.strerror or type(exc).__name__}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise error(f"{what} {path} is larger than {max_bytes} bytes")
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # it grew while we read it
                raise error(f"{what} {path} is larger than {max_bytes} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(fd)


def json_problem(exc: BaseException) -> str:
    """A short reason for a failed ``json.loads`` (syntax, nesting depth, or an integer too long to convert).

    Call as ``except (ValueError, RecursionError) as exc: raise MyError(f"… not JSON: {json_problem(exc)}")``.
    """
    if isinstance(exc, json.JSONDecodeError):
        return exc.msg
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).split(":")[0][:100]


def check_output_target(path: str | os.PathLike, what: str, error: type[Exception] = ValueError,
                        folder: bool = False) -> Path:
    """Refuse an output path that exists and is not what will be written there; returns ``Path(path)``.

    ``folder=False``: ``path`` must be missing or a regular file (a device node, FIFO, socket or folder there is
    refused, never replaced). ``folder=True``: missing or a folder. Symlinks are judged by what they point to, and a
    symlink to a special file is refused as that file. Raises ``error`` with a one-line message.
    """
    path = Path(os.path.expanduser(str(path)))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise error(f"{what} output {path} cannot be checked: {exc.strerror or type(exc).__name__}") from None
    if folder and not stat.S_ISDIR(st.st_mode):
        raise error(f"{what} output {path} exists and is {_kind(st.st_mode) if not stat.S_ISREG(st.st_mode) else 'a file'}, "
                    "not a folder")
    if not folder and not stat.S_ISREG(st.st_mode):
        raise error(f"{what} output {path} exists and is {_kind(st.st_mode)}; refusing to replace it "
                    "(give a regular file path)")
    return path
