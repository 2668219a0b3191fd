"""Tests for runtime/models/fingerprint.py: file / network fingerprints and GGUF model info."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from commandv.runtime.models import fingerprint as fpm
from commandv.runtime.models.fingerprint import file_fingerprint, model_info_from_gguf, network_fingerprint
from commandv.runtime.models.ref import ModelError

TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COMMANDV_HOME", str(tmp_path / "home"))


def write_gguf(path: Path, dtype: str = "f32", d: int = 8, n_layer: int = 2, vocab=("a", "b", "c", "d"),
               arch: str = "llama", template: str | None = None, seed: int = 0) -> Path:
    """A tiny GGUF: embeddings [V, d], per layer attn_q [d, d] and norm [d]. dtype f32 / f16 / q8_0."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-test")
    w.add_block_count(n_layer)
    w.add_embedding_length(d)
    w.add_token_list(list(vocab))
    if template:
        w.add_chat_template(template)
    tensors = {"token_embd.weight": rng.standard_normal((len(vocab), d)).astype(np.float32)}
    for i in range(n_layer):
        tensors[f"blk.{i}.attn_q.weight"] = rng.standard_normal((d, d)).astype(np.float32)
        tensors[f"blk.{i}.attn_norm.weight"] = np.ones(d, dtype=np.float32)
    for name, arr in tensors.items():
        if dtype == "f16" and arr.ndim == 2:
            w.add_tensor(name, arr.astype(np.float16))
        elif dtype == "q8_0" and arr.ndim == 2:
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_file_fingerprint_is_sha256_of_bytes(tmp_path):
    p = tmp_path / "x.bin"
    data = os.urandom(3 << 20)  # spans several read chunks
    p.write_bytes(data)
    assert file_fingerprint(p) == hashlib.sha256(data).hexdigest()
    assert file_fingerprint(str(p)) == hashlib.sha256(data).hexdigest()


def test_file_fingerprint_cache_keyed_by_size_and_mtime(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"a" * 1000)
    first = file_fingerprint(p)
    st = p.stat()
    # same size and mtime: the cached value is returned (proves the file is not re-read)
    p.write_bytes(b"b" * 1000)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_fingerprint(p) == first
    # new mtime: re-hashed
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert file_fingerprint(p) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_fingerprint_cache_survives_corrupt_cache_file(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"hello")
    fpm._cache_file().parent.mkdir(parents=True, exist_ok=True)
    fpm._cache_file().write_text("{not json")
    assert file_fingerprint(p) == hashlib.sha256(b"hello").hexdigest()


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        file_fingerprint(tmp_path / "nope.gguf")
    with pytest.raises(ModelError, match="not found"):
        network_fingerprint(tmp_path / "nope.gguf")


def test_network_fingerprint_ignores_dtype(tmp_path):
    a = write_gguf(tmp_path / "a.gguf", "f32")
    b = write_gguf(tmp_path / "b.gguf", "f16")
    q = write_gguf(tmp_path / "q.gguf", "q8_0", d=32)
    q32 = write_gguf(tmp_path / "q32.gguf", "f32", d=32, seed=5)  # other weights, same network
    assert file_fingerprint(a) != file_fingerprint(b)
    assert network_fingerprint(a) == network_fingerprint(b)
    assert network_fingerprint(q) == network_fingerprint(q32)
    assert network_fingerprint(q) != network_fingerprint(a)


@pytest.mark.parametrize("change", [dict(d=16), dict(n_layer=3), dict(vocab=("a", "b", "c", "e")),
                                    dict(arch="qwen2")])
def test_network_fingerprint_changes_with_network(tmp_path, change):
    base = write_gguf(tmp_path / "base.gguf")
    other = write_gguf(tmp_path / "other.gguf", **change)
    assert network_fingerprint(base) != network_fingerprint(other)


def test_model_info(tmp_path):
    p = write_gguf(tmp_path / "m.gguf", "f16", d=8, n_layer=3, template=TEMPLATE)
    info = model_info_from_gguf(p)
    assert (info.arch, info.n_layer, info.d_model, info.n_vocab) == ("llama", 3, 8, 4)
    assert info.name == "tiny-test" and info.chat_template == TEMPLATE
    assert info.fingerprint == hashlib.sha256(p.read_bytes()).hexdigest()
    assert info.network_fingerprint == network_fingerprint(p)
    assert model_info_from_gguf(p) == info  # cached copy is identical
    nochat = model_info_from_gguf(write_gguf(tmp_path / "n.gguf"))
    assert nochat.chat_template is None


def test_not_a_gguf(tmp_path):
    p = tmp_path / "junk.gguf"
    p.write_bytes(b"PK\x03\x04 definitely not gguf" * 10)
    with pytest.raises(ModelError, match="not a valid GGUF file: .*junk.gguf: "):
        model_info_from_gguf(p)
    with pytest.raises(ModelError, match="not a valid GGUF file"):
        network_fingerprint(p)


def test_truncated_gguf(tmp_path):
    good = write_gguf(tmp_path / "g.gguf")
    bad = tmp_path / "t.gguf"
    bad.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ModelError, match="not a valid GGUF file"):
        model_info_from_gguf(bad)
