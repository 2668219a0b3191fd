"""commandv.profiles — prompt sets, activation capture (HF and GGUF), profile store.

The public names, in one import (each is imported on first use, so ``import commandv.profiles`` stays
light)::

    from commandv.profiles import profile_model

    prof, path, cached = profile_model("smollm2-135m-instruct", "general", limit=256)
    prof.layer(3)  # [n_prompts, d_model] float32: the last prompt token's block-3 output, one row per prompt
"""

from typing import TYPE_CHECKING

from commandv.runtime.lazy_names import lazy_names

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these come from __getattr__ below
    from commandv.profiles.profiler import profile_model
    from commandv.profiles.prompts import PromptSet, load_prompt_set
    from commandv.profiles.store import Profile, ProfileError, ProfileMeta

_LAZY = {"profile_model": ".profiler", "Profile": ".store", "ProfileMeta": ".store", "ProfileError": ".store",
         "PromptSet": ".prompts", "load_prompt_set": ".prompts"}
"""Public names imported on first use (name → module)."""

__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())

__all__ = ["Profile", "ProfileError", "ProfileMeta", "PromptSet", "load_prompt_set", "profile_model"]
