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
    from commandv.exporter.adapters.folder import Adapter, load_adapter
    from commandv.exporter.adapters.interventions import AdapterError
    from commandv.exporter.transfer.export import ExportError, ExportResult, choose_method, export_pack
    from commandv.exporter.transfer.gated import Contrast

_LAZY = {"Adapter": ".adapters.folder", "load_adapter": ".adapters.folder", "AdapterError": ".adapters.interventions",
         "export_pack": ".transfer.export", "ExportResult": ".transfer.export", "ExportError": ".transfer.export",
         "choose_method": ".transfer.export", "Contrast": ".transfer.gated"}
"""Public names imported on first use (name → module)."""

__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())

__all__ = ["Adapter", "AdapterError", "Contrast", "ExportError", "ExportResult", "choose_method", "export_pack",
           "load_adapter"]
