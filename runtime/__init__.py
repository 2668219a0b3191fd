"""commandv.runtime — the device side of Command-V.

Pack format (read/write/verify) and engines. Importing this package must not
load torch or transformers: engines import their own dependencies lazily.
"""

__version__ = "0.1.0"

from .pack import BehaviorPack, PackEntry, PackError  # noqa: E402,F401

__all__ = ["BehaviorPack", "PackEntry", "PackError", "__version__"]
