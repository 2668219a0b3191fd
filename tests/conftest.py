"""Shared pytest fixtures: tiny random GGUF models (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import write_tiny_llama_gguf


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """Path to a tiny f32 llama GGUF (4 layers, d=64, ChatML template, byte-level BPE)."""
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_gguf_no_template(tmp_path_factory) -> Path:
    """Like ``tiny_gguf`` but without ``tokenizer.chat_template``."""
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("tiny_nt") / "tiny_nt.gguf", chat_template=None)


@pytest.fixture()
def tmp_home(tmp_path, monkeypatch) -> Path:
    """An empty COMMANDV_HOME for tests that write caches, profiles or models."""
    home = tmp_path / "cmdv_home"
    monkeypatch.setenv("COMMANDV_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_hf(tiny_gguf, tmp_path_factory):
    """The tiny GGUF loaded into transformers (dequantized copy cached in a session temp home)."""
    import os

    pytest.importorskip("transformers")
    from commandv.profiles.hf_models import load_hf_model

    old = os.environ.get("COMMANDV_HOME")
    os.environ["COMMANDV_HOME"] = str(tmp_path_factory.mktemp("hf_home"))
    try:
        model, tok, ref = load_hf_model(str(tiny_gguf), progress=False)
    finally:
        if old is None:
            os.environ.pop("COMMANDV_HOME", None)
        else:
            os.environ["COMMANDV_HOME"] = old
    return model, tok
