"""commandv.exporter — pyreft adapter import, layer mapping, translators, folding, pack export.

The public names, in one import (each is imported on first use, so ``import commandv.exporter`` stays
light)::

    from commandv.exporter import export_pack, load_adapter
    from commandv.profiles import profile_model

    donor, _, _ = profile_model("qwen2.5-coder-0.5b-instruct", "general", limit=256)
    recip, _, _ = profile_model("smollm2-135m-instruct", "general", limit=256)
    result = export_pack(load_adapter("adapters/qwen2.5-coder-0.5b-instruct/pirate"), donor, recip)
    result.pack.save("pirate-smollm2.gguf")  # result.diagnostics: held-out fit per layer pair
"""

from typing import TYPE_CHECKING

from commandv.runtime.lazy_names import lazy_names

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these come from __getattr__ below
    from .adapters import Adapter, load_adapter
    from .export import ExportError, ExportResult, export_pack
    from .interventions import AdapterError

_LAZY = {"Adapter": ".adapters", "load_adapter": ".adapters", "AdapterError": ".interventions",
         "export_pack": ".export", "ExportResult": ".export", "ExportError": ".export"}
"""Public names imported on first use (name → module)."""

__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())

__all__ = ["Adapter", "AdapterError", "ExportError", "ExportResult", "export_pack", "load_adapter"]
