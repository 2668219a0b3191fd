"""Where commandv keeps downloaded models, profiles and caches.

``cache_home()`` is ``$COMMANDV_HOME`` if set, else ``$XDG_CACHE_HOME/commandv``,
else ``~/.cache/commandv``. The environment is read on every call (tests
point ``COMMANDV_HOME`` at a temp folder). Nothing here creates folders:
writers create what they write into (``atomic_path`` makes parents).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """The root folder for everything commandv downloads or caches."""
    home = os.environ.get("COMMANDV_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "commandv"
    return Path.home() / ".cache" / "commandv"


def models_dir() -> Path:
    """Zoo models: ``models_dir()/<key>/<filename>``."""
    return cache_home() / "models"


def profiles_dir() -> Path:
    """Activation profiles computed on the workstation."""
    return cache_home() / "profiles"


def hf_cache_dir() -> Path:
    """Dequantized Hugging Face folders made from GGUF files, keyed by file fingerprint."""
    return cache_home() / "hf"
