"""Tests for profiles/hf_models.py: GGUF → cached HF folder round trip, direct HF folders.

Fast tests use a tiny Q8_0 llama GGUF written by ``tests.tiny_models`` (real
dequantization, byte-level BPE, ChatML template). The zoo's tiny-random-llama
fixture (32000-token vocab, ~25 s through transformers' GGUF loader) is marked slow.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from commandv.profiles import hf_models  # noqa: E402
from commandv.profiles.hf_models import hf_folder_for_gguf, load_hf_model  # noqa: E402
from commandv.runtime.models import zoo  # noqa: E402
from commandv.runtime.models.fingerprint import file_fingerprint  # noqa: E402
from commandv.runtime.models.ref import ModelError  # noqa: E402
from commandv.runtime.paths import hf_cache_dir  # noqa: E402
from tests.tiny_models import write_tiny_llama_gguf  # noqa: E402

TEXT = "Hello world, this is a tiny test of the cache."


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("home")
        mp.setenv("COMMANDV_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def q8(tmp_path_factory):
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("q8") / "tiny-q8.gguf", dtype="q8_0")


def _direct(gguf_path):
    """(ids, logits, chat_template) from transformers' own GGUF loader (independent of our cache)."""
    m = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                          dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    ids, logits = _logits(m, tok)
    return ids, logits, tok.chat_template


def _logits(model, tok):
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids, model(ids).logits


@pytest.fixture(scope="module")
def reference(q8):
    return _direct(q8)


def _check_roundtrip(spec, gguf_path, reference):
    model, tok, ref = load_hf_model(spec, progress=False)
    assert ref.kind == "gguf" and ref.path == gguf_path.resolve()
    folder = hf_cache_dir() / file_fingerprint(gguf_path)[:16]
    assert (folder / "config.json").is_file() and (folder / hf_models.SOURCE_FILE).is_file()
    assert not hasattr(model.config, "quantization_config")
    assert not model.training
    ids, logits = _logits(model, tok)
    ref_ids, ref_logits, ref_template = reference
    assert torch.equal(ids, ref_ids)
    assert logits.dtype == torch.float32
    assert torch.equal(logits, ref_logits)
    assert tok.chat_template == ref_template
    return model, tok, ref


def test_gguf_roundtrip_through_cache(home, q8, reference):
    _, tok, _ = _check_roundtrip(str(q8), q8, reference)
    assert tok.chat_template  # the ChatML template survived the cache


def test_second_load_uses_cached_folder(home, q8, reference, monkeypatch):
    load_hf_model(q8, progress=False)  # make sure the cache exists
    calls = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    model, tok, ref = load_hf_model(str(q8), progress=False)
    assert len(calls) == 1 and "gguf_file" not in calls[0]
    assert torch.equal(_logits(model, tok)[1], reference[1])


def test_hf_folder_spec_and_dtype(home, q8, reference):
    folder = hf_folder_for_gguf(q8, progress=False)
    model, tok, ref = load_hf_model(str(folder), dtype="bfloat16")
    assert ref.kind == "hf" and ref.path == folder.resolve()
    assert next(model.parameters()).dtype == torch.bfloat16
    _, logits = _logits(model, tok)
    assert torch.allclose(logits.float(), reference[1], atol=0.1, rtol=0.05)


def test_bad_dtype(home):
    with pytest.raises(ModelError, match="unsupported dtype 'int8'"):
        load_hf_model("definitely/not-fetched", dtype="int8")


def test_bad_spec(home, tmp_path):
    with pytest.raises(ModelError, match="model not found"):
        load_hf_model(str(tmp_path / "missing.gguf"))


def test_failed_conversion_leaves_no_cache(q8, monkeypatch, tmp_path):
    monkeypatch.setenv("COMMANDV_HOME", str(tmp_path))  # fresh, empty cache
    real = transformers.PreTrainedModel.save_pretrained

    def dying(self, *a, **kw):
        real(self, *a, **kw)
        raise KeyboardInterrupt  # killed after writing part of the folder

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", dying)
    with pytest.raises(KeyboardInterrupt):
        hf_folder_for_gguf(q8, progress=False)
    assert list(hf_cache_dir().iterdir()) == []


@pytest.mark.slow
def test_tiny_random_llama_fixture_roundtrip(home):
    tiny = zoo.fetch("tiny-random-llama", progress=False)
    _check_roundtrip("tiny-random-llama", tiny, _direct(tiny))
