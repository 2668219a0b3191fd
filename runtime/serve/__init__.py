"""``cmdv serve``: an OpenAI-compatible HTTP server that applies behavior packs per request.

Modules: :mod:`.pack_dir` (the watched pack folder, policy checked once per file), :mod:`.slots` (llama.cpp
contexts sharing one loaded model, a bounded queue), :mod:`.metrics` (Prometheus text), :mod:`.openai_api`
(request parsing and response shapes, no web framework), :mod:`.app` (the FastAPI app), :mod:`.ray_app`
(the same app as a Ray Serve deployment).

Importing this package needs nothing beyond the runtime; FastAPI, uvicorn, sse-starlette and Ray are
imported by the modules that use them, through :func:`need`.
"""

from __future__ import annotations

import importlib

from commandv.runtime.errors import CommandVError


class ServeError(CommandVError, RuntimeError):
    """The server cannot start or run as asked (a missing dependency, a bad option, an unusable folder)."""


def need(module: str, package: str):
    """``importlib.import_module(module)``, or :class:`ServeError` naming the pip package that provides it.

    Call as ``fastapi = need("fastapi", "fastapi")``; the message is one line (``pip install …``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ServeError(f"cmdv serve needs {package} ({module} is not importable: {str(exc).splitlines()[0]}); "
                         f"pip install {package}") from None
