"""commandv.runtime — the device side of Command-V.

Pack format (read/write/verify) and engines. Importing this package must not
load torch or transformers: engines import their own dependencies lazily.
"""

from .version import __version__  # noqa: F401 (the package's version; pyproject.toml has the same)
from .pack import BehaviorPack, PackEntry, PackError  # noqa: F401

__all__ = ["BehaviorPack", "PackEntry", "PackError", "__version__"]
