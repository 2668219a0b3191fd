"""Real-model checks on SmolLM2-135M-Instruct (Q4_1 GGUF from the zoo; fetched on first use)."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    from commandv.runtime.models import zoo

    return zoo.fetch("smollm2-135m-instruct", progress=False)


def test_hf_and_gguf_profiles_agree(smol):
    """Issue 2 parity: the two backends on the same GGUF give per-layer mean cosine ≥ 0.99."""
    from commandv.profiles.capture_gguf import capture_gguf
    from commandv.profiles.capture_hf import capture_hf
    from commandv.profiles.hf_models import load_hf_model
    from commandv.profiles.prompts import load_prompt_set

    prompts = load_prompt_set("general", limit=24).prompts
    g = capture_gguf(smol, prompts, progress=False)
    model, tok, _ = load_hf_model("smollm2-135m-instruct", progress=False)
    h = capture_hf(model, tok, prompts, progress=False)
    assert g.n_layer == h.n_layer == 30 and g.d_model == h.d_model == 576
    assert g.token_counts == h.token_counts  # same rendering and tokenization
    cos = []
    for a, b in zip(g.layers, h.layers):
        a, b = a.astype(np.float64), b.astype(np.float64)
        cos.append(float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean()))
    print("per-layer mean cosine hf vs gguf:", [round(c, 4) for c in cos])
    assert min(cos) >= 0.99
