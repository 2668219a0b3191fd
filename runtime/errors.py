"""The project's error base and the error families shared across modules.

Every exception class commandv defines derives from :class:`CommandVError` and keeps its built-in base
(``ValueError`` or ``RuntimeError``), so ``except ValueError`` still works. ``cmdv`` prints any
:class:`CommandVError` as one red line and exits 2 (``runtime/cli/errors.py`` ``user_errors``); the server turns
the ``ValueError`` ones into HTTP 400 (``runtime/serve/openai_api.py`` ``error_from``).

Families used by several modules live here, so a module can raise or catch them without importing the
module that does the work::

    from commandv.runtime.errors import CommandVError, ModelError, PackError, EngineError

    raise PackError(f"{path}: entry_count {n} outside 1..4096")

Other errors live next to the code that raises them (e.g. ``ZooError(ModelError)`` in ``zoo.py``,
``SignatureError(PackError)`` in ``pack/signing.py``, ``LlamaError`` in ``engines/llama/lowlevel.py``).
"""

from __future__ import annotations


class CommandVError(Exception):
    """A user-facing error: its message is one line that names the problem."""


class ModelError(CommandVError, ValueError):
    """A model spec, file or folder cannot be used (missing, malformed, unreachable)."""


class PackError(CommandVError, ValueError):
    """A behavior pack is malformed, inconsistent, or does not fit the model."""


class EngineError(CommandVError, ValueError):
    """A request to an engine (llama.cpp or ONNX Runtime) is invalid; the model stays usable."""
