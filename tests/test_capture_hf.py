"""HF capture: last-token block outputs vs an independent numpy forward; batching invariance."""

import pytest

pytest.importorskip("torch")

from commandv.profiles.capture_hf import HFCaptureError, capture_hf, render_prompts  # noqa: E402
from tests.helpers import cosine_rows, rel_err  # noqa: E402
from tests.tiny_models import reference_forward  # noqa: E402

PROMPTS = ["Hi!", "What is the capital of France and why?", "Write a haiku about rain on a tin roof.",
           "2+2?", "Explain recursion to a ten year old, briefly."]


def test_matches_numpy_reference(tiny_hf, tiny_gguf):
    model, tok = tiny_hf
    res = capture_hf(model, tok, PROMPTS, batch_size=2, progress=False)
    assert res.n_layer == 4 and res.d_model == 64 and len(res.layers) == 4
    assert res.rendered_example.startswith("<|im_start|>user\nHi!") and res.rendered_example.endswith(
        "<|im_start|>assistant\n")
    _, ids = render_prompts(tok, PROMPTS)
    for i, t in enumerate(ids):
        ref_layers, _ = reference_forward(tiny_gguf, t)
        for li in range(4):
            assert rel_err(res.layers[li][i], ref_layers[li][-1]) < 1e-3


def test_batching_and_padding_do_not_change_results(tiny_hf):
    model, tok = tiny_hf
    a = capture_hf(model, tok, PROMPTS, batch_size=1, progress=False)
    b = capture_hf(model, tok, PROMPTS, batch_size=5, progress=False)
    for x, y in zip(a.layers, b.layers):
        assert cosine_rows(x, y).min() > 0.99999
        assert rel_err(y, x) < 1e-4


def test_errors(tiny_hf):
    model, tok = tiny_hf
    with pytest.raises(HFCaptureError, match="no prompts"):
        capture_hf(model, tok, [], progress=False)
    with pytest.raises(HFCaptureError, match="longer than"):
        capture_hf(model, tok, ["word " * 50], max_tokens=20, progress=False)
