"""How every ``cmdv`` command reports a user error: one red line on stderr and exit code 2.

Decorate a command function, under its typer registration::

    from commandv.runtime.cli.errors import user_errors

    @app.command("inspect")
    @user_errors
    def inspect_cmd(pack: Path) -> None: ...

User errors are :class:`~commandv.runtime.errors.CommandVError` (the base of every error class the project
defines), operating-system errors (a missing file, a folder where a file goes, no permission, a full disk) and
a missing optional dependency (``torch``, ``pyreft``, ``onnxruntime``, ``fastapi``, ``ray``, …: the commands
import them in their bodies; the line names the pip package to install). Other exceptions are bugs and
propagate with their traceback.

This module lives in the runtime package so that runtime and exporter commands share it (imports go
runtime ← profiles ← exporter).
"""

from __future__ import annotations

import functools
from typing import Callable

import typer
from rich.console import Console
from rich.markup import escape

from commandv.runtime.errors import CommandVError
from commandv.runtime.terminal import safe_text

err = Console(stderr=True)
"""The console user errors (and the CLI's warnings) are printed on."""
_out = Console(highlight=False, soft_wrap=True)


def say(*lines: str) -> None:
    """Print lines built from paths, key ids and file text on stdout: no markup, and control characters (newlines
    included) shown as escapes, so a file name or pack name cannot draw a line of its own."""
    _out.print("\n".join(safe_text(line) for line in lines), markup=False)

OPTIONAL_PACKAGES = {
    "torch": "torch",
    "transformers": "transformers",
    "accelerate": "accelerate",
    "huggingface_hub": "huggingface_hub",
    "pyreft": "pyreft",
    "pyvene": "pyvene",
    "datasets": "datasets",
    "matplotlib": "matplotlib",
    "onnx": "onnx",
    "onnx_ir": "onnx-ir",
    "onnxscript": "onnxscript",
    "onnxruntime": "onnxruntime",
    "tokenizers": "tokenizers",
    "llama_cpp": "llama-cpp-python",
    "fastapi": "fastapi",
    "starlette": "fastapi",
    "uvicorn": "uvicorn",
    "sse_starlette": "sse-starlette",
    "ray": "ray[serve]",
}
"""Top-level module of an optional dependency → the pip package that provides it."""


def error_line(message: object) -> None:
    """Print ``error: message`` in red on stderr; the message (which can hold file names and file text) is
    shown, never read as markup nor acted on by the terminal."""
    err.print(f"[red]error:[/red] {escape(safe_text(message))}", highlight=False, soft_wrap=True)


def missing_package(exc: ModuleNotFoundError) -> str | None:
    """The pip package of the optional dependency ``exc`` says is missing, or None (not an optional one)."""
    top = (exc.name or "").split(".")[0]
    return OPTIONAL_PACKAGES.get(top)


def user_errors(fn: Callable) -> Callable:
    """Turn user errors (see the module docstring) raised by the command ``fn`` into one red line and exit
    code 2; other exceptions propagate."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (CommandVError, OSError) as exc:
            error_line(exc)
            raise typer.Exit(2) from None
        except ModuleNotFoundError as exc:
            package = missing_package(exc)
            if package is None:
                raise
            error_line(f"this command needs {package} ({exc.name} is not installed); pip install {package}")
            raise typer.Exit(2) from None

    return wrapper
