"""The result both capture backends (HF and GGUF) return."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CaptureResult:
    """Per-layer last-token activations. ``layers[i]``: float32 ``[N, d_model]``, N = number of prompts.

    ``rendered_example`` is the first prompt as the model saw it; ``template`` the chat template used
    (None for raw prompts); ``token_counts`` the prompt lengths in tokens; ``seconds`` the capture time.
    """

    layers: list[np.ndarray]
    n_layer: int
    d_model: int
    rendered_example: str
    template: str | None
    token_counts: list[int] = field(default_factory=list)
    seconds: float = 0.0
