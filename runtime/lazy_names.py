"""Names a package hands out but imports only when first used (PEP 562 module ``__getattr__``).

A package ``__init__`` keeps ``import commandv.runtime`` light (no llama.cpp, ONNX Runtime or torch) while
``from commandv.runtime import Recipient`` still works::

    from commandv.runtime.lazy_names import lazy_names

    _LAZY = {"Recipient": ".engines.llama.engine", "OnnxRecipient": ".engines.onnx.engine"}  # name -> module (relative)
    __getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())

The first access imports the module, stores the name in the package's namespace (later accesses are plain
attribute reads) and returns it; an unknown name raises ``AttributeError`` as usual, so ``from package import
submodule`` keeps working.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_names(package: str, table: dict[str, str], namespace: dict[str, Any]
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the package ``package`` (its ``__name__``) whose ``namespace`` (its
    ``globals()``) gets the names of ``table`` (name → module, relative to ``package`` or absolute) on first
    use."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
