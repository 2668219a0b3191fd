"""Tests for runtime/models/ref.py: resolving zoo keys, GGUF files, HF folders and hub ids."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gguf
import numpy as np
import pytest

from commandv.runtime.models import zoo
from commandv.runtime.models.ref import ModelError, ModelRef, is_gguf_file, resolve_model
from commandv.runtime.models.zoo import ZOO, ZooError


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COMMANDV_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write_gguf(path: Path) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(4)
    w.add_tensor("output_norm.weight", np.ones(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_file(tmp_path):
    p = write_gguf(tmp_path / "m.gguf")
    ref = resolve_model(str(p))
    assert ref == ModelRef(spec=str(p), kind="gguf", path=p.resolve(), gguf_file="m.gguf", zoo_key=None)
    assert ref.folder == tmp_path.resolve()
    assert is_gguf_file(p)


def test_gguf_magic_not_extension(tmp_path):
    p = write_gguf(tmp_path / "model.bin")
    assert resolve_model(p).kind == "gguf"


def test_not_gguf_file(tmp_path):
    p = tmp_path / "fake.gguf"
    p.write_bytes(b"\x00\x01not a gguf")
    with pytest.raises(ModelError, match="not a GGUF file: .*fake.gguf"):
        resolve_model(str(p))
    assert not is_gguf_file(p)


def test_hf_folder(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    ref = resolve_model(str(tmp_path / "hf"))
    assert ref.kind == "hf" and ref.path == (tmp_path / "hf").resolve() and ref.gguf_file is None
    assert ref.folder == ref.path


def test_folder_with_one_gguf(tmp_path):
    write_gguf(tmp_path / "only.gguf")
    ref = resolve_model(tmp_path)
    assert ref.kind == "gguf" and ref.gguf_file == "only.gguf"
    write_gguf(tmp_path / "second.gguf")
    with pytest.raises(ModelError, match="several GGUF files"):
        resolve_model(tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(tmp_path / "e")


def test_missing_path(tmp_path):
    spec = str(tmp_path / "nope.gguf")
    with pytest.raises(ModelError, match=r"model not found: .*nope.gguf \(not a zoo key, file or folder\)"):
        resolve_model(spec)
    with pytest.raises(ModelError, match="model not found: nope"):
        resolve_model("nope")
    with pytest.raises(ModelError, match="empty"):
        resolve_model("  ")


def test_existing_path_wins_over_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "org" / "name" / "config.json").write_text("{}")
    assert resolve_model("org/name").kind == "hf"


def test_hub_id_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hfcache"))
    with pytest.raises(ModelError, match=r"cannot reach the Hugging Face hub to download someorg/somemodel "
                                         r"\(offline\?\).*zoo key: smollm2-135m-instruct"):
        resolve_model("someorg/somemodel")


def test_hub_id_network_error(monkeypatch):
    import huggingface_hub

    def unreachable(repo_id, **kw):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(ModelError, match=r"cannot reach the Hugging Face hub.*\[Name or service not known\]"):
        resolve_model("someorg/somemodel")


def test_hub_id_cached_snapshot(tmp_path, monkeypatch):
    import huggingface_hub

    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "config.json").write_text("{}")
    seen = []

    def cached(repo_id, **kw):
        seen.append(kw.get("local_files_only"))
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cached)
    ref = resolve_model("someorg/somemodel")
    assert ref.kind == "hub" and ref.path == snap and seen == [True]  # no network call needed


@pytest.fixture
def fake_zoo(monkeypatch, tmp_path):
    entry = dataclasses.replace(ZOO["tiny-random-llama"], key="fakekey", filename="f.gguf")
    monkeypatch.setitem(ZOO, "fakekey", entry)
    fetched = []

    def fake_fetch(key, force=False, progress=True, verify=False):
        fetched.append(key)
        path = write_gguf(zoo.target_path(key))
        zoo._write_stamp(path, ZOO[key].sha256)  # what fetch does once the sha256 matched
        return path

    target = zoo.target_path("fakekey")
    target.parent.mkdir(parents=True)
    monkeypatch.setattr(zoo, "fetch", fake_fetch)
    return fetched


def test_zoo_key_not_fetched(fake_zoo):
    with pytest.raises(ZooError, match="not fetched; run `cmdv models fetch fakekey`"):
        resolve_model("fakekey", auto_fetch=False)
    assert fake_zoo == []


def test_zoo_key_auto_fetch(fake_zoo):
    ref = resolve_model("fakekey")
    assert fake_zoo == ["fakekey"]
    assert ref.kind == "gguf" and ref.zoo_key == "fakekey" and ref.gguf_file == "f.gguf"
    assert ref.path == zoo.target_path("fakekey").resolve()
    # already fetched: found without fetching
    assert resolve_model("fakekey", auto_fetch=False).path == ref.path and fake_zoo == ["fakekey"]
