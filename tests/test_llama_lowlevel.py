"""engines/llama/lowlevel.py on the tiny GGUF, checked against an independent numpy forward and transformers."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from commandv.runtime.engines.llama.lowlevel import (  # noqa: E402
    ContextOverflowError,
    LlamaContext,
    LlamaError,
    LlamaModel,
    ModelLoadError,
    NoChatTemplateError,
    greedy_generate,
)
from tests.tiny_models import CHATML_TEMPLATE, build_bpe_vocab, reference_forward  # noqa: E402

pytestmark = pytest.mark.llama
TEXT = "Hello there, how are you? The model writes 42 answers."


@pytest.fixture(scope="module")
def model(tiny_gguf):
    m = LlamaModel(tiny_gguf)
    yield m
    m.free()


def test_model_metadata(model):
    tokens, _, _ = build_bpe_vocab()
    assert (model.n_layer, model.n_embd, model.n_vocab) == (4, 64, len(tokens))
    assert model.chat_template == CHATML_TEMPLATE
    assert model.arch == "llama"
    assert model.token_text(model.eos) == "<|im_end|>"


def test_tokenize_roundtrip_and_specials(model):
    ids = model.tokenize(TEXT)
    assert len(ids) < len(TEXT.encode())  # merges are used
    assert model.detokenize(ids) == TEXT
    sp = model.tokenize("<|im_start|>user\n", parse_special=True)
    assert sp[0] == model.tokenize("<|im_start|>")[0] and model.token_text(sp[0]) == "<|im_start|>"
    assert len(model.tokenize("<|im_start|>", parse_special=False)) > 1


def test_chat_template_engines_agree(model):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    want = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    assert model.apply_chat_template(msgs, engine="jinja") == want
    assert model.apply_chat_template(msgs, engine="llama") == want
    assert model.apply_chat_template(msgs, add_generation_prompt=False, engine="llama") == want[: -len("<|im_start|>assistant\n")]


def test_auto_engine_renders_like_transformers(model):
    """A template with a default system turn (as SmolLM2/Qwen have): llama.cpp's built-in ChatML drops it."""
    tmpl = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nDefault system.<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    msgs = [{"role": "user", "content": "Hi"}]
    want = "<|im_start|>system\nDefault system.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert model.apply_chat_template(msgs, template=tmpl) == want
    assert model.apply_chat_template(msgs, template=tmpl, engine="jinja") == want
    with pytest.raises(LlamaError, match="unknown template engine"):
        model.apply_chat_template(msgs, engine="mustache")


def test_no_template_is_a_clear_error(tiny_gguf_no_template):
    with LlamaModel(tiny_gguf_no_template) as m:
        assert m.chat_template is None
        with pytest.raises(NoChatTemplateError, match="no chat template"):
            m.apply_chat_template([{"role": "user", "content": "x"}])


def test_logits_match_numpy_reference(model, tiny_gguf):
    ids = model.tokenize(TEXT)
    _, ref = reference_forward(tiny_gguf, ids)
    with LlamaContext(model, n_ctx=256, kv_type="f32", flash_attn=False, n_threads=1) as ctx:
        last = ctx.decode([ids], logits_for="all")[0]
        got = np.stack([ctx.logits(i) for i in range(last + 1)])
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())


def test_multi_sequence_batch_equals_single(model):
    seqs = [model.tokenize(t) for t in ("one two three", "a much longer prompt about the sea and robots", "x")]
    with LlamaContext(model, n_ctx=256, n_seq_max=3, kv_type="f32", flash_attn=False, n_threads=1) as ctx:
        idx = ctx.decode(seqs)
        batched = [ctx.logits(i) for i in idx]
        singles = []
        for s in seqs:
            ctx.clear()
            singles.append(ctx.logits(ctx.decode([s])[0]))
    for b, s in zip(batched, singles):
        np.testing.assert_allclose(b, s, atol=1e-5)


def test_greedy_generation_matches_reference(model, tiny_gguf):
    prompt = model.tokenize(model.apply_chat_template([{"role": "user", "content": "count to ten"}]))
    with LlamaContext(model, n_ctx=256, kv_type="f32", flash_attn=False, n_threads=1) as ctx:
        out = greedy_generate(ctx, prompt, 6)
        assert ctx.n_past(0) == len(prompt) + 5
    seq, want = list(prompt), []
    for _ in range(6):
        t = int(np.argmax(reference_forward(tiny_gguf, seq)[1][-1]))
        want.append(t)
        seq.append(t)
    assert out == want


def test_clear_resets_memory(model):
    ids = model.tokenize(TEXT)
    with LlamaContext(model, n_ctx=256, n_threads=1) as ctx:
        a = ctx.logits(ctx.decode([ids])[0])
        b = ctx.logits(ctx.decode([ids])[0])  # continues: positions shift, logits differ
        ctx.clear()
        c = ctx.logits(ctx.decode([ids])[0])
    assert not np.allclose(a, b)
    np.testing.assert_allclose(a, c, atol=1e-6)


def test_too_long_prompt_names_both_lengths(model):
    with LlamaContext(model, n_ctx=256, n_threads=1) as ctx:
        with pytest.raises(ContextOverflowError, match=r"300.*256"):
            ctx.decode([[5] * 300])
        ctx.decode([[5] * 200])
        with pytest.raises(ContextOverflowError, match=r"200 cached.*256"):
            ctx.decode([[5] * 100])


def test_bad_batch_inputs(model):
    with LlamaContext(model, n_ctx=256, n_seq_max=2, n_threads=1) as ctx:
        with pytest.raises(LlamaError, match="vocab"):
            ctx.decode([[model.n_vocab + 3]])
        with pytest.raises(LlamaError, match="seq ids"):
            ctx.decode([[1], [2], [3]])
        with pytest.raises(LlamaError, match="empty"):
            ctx.decode([[]])


def test_callback_exception_propagates(model):
    def cb(t, ask):
        if not ask:
            raise KeyError("boom")
        return True

    with LlamaContext(model, n_ctx=256, eval_callback=cb, n_threads=1) as ctx:
        with pytest.raises(KeyError, match="boom"):
            ctx.decode([[1, 2, 3]])


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        LlamaModel(tmp_path / "nope.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        LlamaModel(junk)
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    with pytest.raises(ModelLoadError, match="could not load"):
        LlamaModel(trunc)


def test_truncated_real_file(tiny_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:50_000])
    with pytest.raises(ModelLoadError):
        LlamaModel(cut)


def test_transformers_parity(model, tiny_gguf):
    """transformers' GGUF loader reads the same model: same tokens, same template, same logits."""
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")
    d, f = str(tiny_gguf.parent), tiny_gguf.name
    tok = tr.AutoTokenizer.from_pretrained(d, gguf_file=f)
    hf = tr.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    msgs = [{"role": "user", "content": TEXT}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == model.apply_chat_template(msgs)
    for s in (TEXT, rendered, "  spaces\tand\nnewlines  ", "ünïcode ☃ 1234567"):
        assert tok(s, add_special_tokens=False)["input_ids"] == model.tokenize(s), s
    ids = model.tokenize(rendered)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    with LlamaContext(model, n_ctx=256, kv_type="f32", flash_attn=False, n_threads=1) as ctx:
        last = ctx.decode([ids], logits_for="all")[0]
        got = np.stack([ctx.logits(i) for i in range(last + 1)])
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())


def test_layout_and_aligned_decode(model):
    seqs = [model.tokenize(t) for t in ("one two three", "a much longer prompt about the sea", "x")]
    with LlamaContext(model, n_ctx=256, n_seq_max=4, kv_type="f32", flash_attn=False, n_threads=1) as ctx:
        lay = ctx.layout([len(s) for s in seqs], align=8)
        assert lay.pads[0] == 0
        starts = [lay.last[i] - len(seqs[i]) + 1 for i in range(3)]
        assert all(s % 8 == 0 for s in starts) and lay.n_tokens == lay.last[-1] + 1
        idx = ctx.decode(seqs, logits_for="all", align=8)
        assert idx == lay.last
        for s, i in zip(seqs, idx):
            assert np.isfinite(ctx.logits(i - len(s) + 1)).all()  # every real token has logits
        with pytest.raises(LlamaError, match="no logits"):
            ctx.logits(len(seqs[0]))  # first pad token after sequence 0
        with pytest.raises(LlamaError, match="free for pad"):
            ctx.decode([[1], [2], [3], [4]], seq_ids=[0, 1, 2, 3], align=8)
