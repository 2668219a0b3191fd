"""commandv.runtime — the device side of Command-V.

Pack format (read/write/verify) and engines. Importing this package must not
load torch, transformers, llama.cpp or ONNX Runtime: the engines are handed out
lazily (first use imports their module), and they import their own dependencies
when they load a model.

The public names, in one import::

    from commandv.runtime import BehaviorPack, Recipient

    pack = BehaviorPack.load("pirate-smollm2.gguf")
    with Recipient("smollm2-135m-instruct") as eng:  # or OnnxRecipient / TorchRecipient: see Engine
        print(eng.generate("Tell me about rivers.", packs=[pack], max_tokens=64))
"""

from typing import TYPE_CHECKING

from commandv.runtime.engines.protocol import Engine
from commandv.runtime.errors import CommandVError, EngineError, ModelError
from commandv.runtime.lazy_names import lazy_names
from commandv.runtime.pack.model import BehaviorPack, PackEntry, PackError
from commandv.runtime.version import __version__  # the package's version; pyproject.toml has the same

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these come from __getattr__ below
    from commandv.runtime.engines.llama.engine import Recipient
    from commandv.runtime.engines.onnx.engine import OnnxRecipient
    from commandv.runtime.engines.reference import TorchRecipient
    from commandv.runtime.pack.policy import PackPolicy

_LAZY = {"Recipient": ".engines.llama.engine", "OnnxRecipient": ".engines.onnx.engine", "TorchRecipient": ".engines.reference",
         "PackPolicy": ".pack.policy"}
"""Public names imported on first use (name → module)."""

__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())

__all__ = ["BehaviorPack", "PackEntry", "PackError", "CommandVError", "ModelError", "EngineError", "Engine",
           "Recipient", "OnnxRecipient", "TorchRecipient", "PackPolicy", "__version__"]
