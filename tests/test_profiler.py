"""Model identity for profiles (profiles/profiler.py): what an HF folder's fingerprint covers."""

import json
import shutil

import numpy as np
import pytest

from commandv.profiles.identity import model_identity
from commandv.runtime.models.ref import ModelError, resolve_model


def _hf_folder(path, template="{{ messages[0]['content'] }}"):
    from safetensors.numpy import save_file

    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 8,
                                                  "vocab_size": 16}))
    save_file({"w": np.arange(8, dtype=np.float32)}, str(path / "model.safetensors"))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return path


def test_hf_identity_covers_tokenizer_and_template(tmp_path, tmp_home):
    a = model_identity(resolve_model(str(_hf_folder(tmp_path / "a"))))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert model_identity(resolve_model(str(tmp_path / "b"))).fingerprint == a.fingerprint  # same files
    (tmp_path / "b" / "chat_template.jinja").write_text("{{ 'system: ' }}{{ messages[0]['content'] }}")
    b = model_identity(resolve_model(str(tmp_path / "b")))
    assert b.fingerprint != a.fingerprint and b.network_fingerprint == a.network_fingerprint
    assert a.template == "{{ messages[0]['content'] }}" and b.template.startswith("{{ 'system: ' }}")
    assert (a.n_layer, a.d_model, a.arch) == (2, 8, "llama")


@pytest.mark.parametrize("config,msg", [
    ([1, 2], "is not a JSON object"),
    ({"model_type": "gpt2", "n_layer": 2, "n_embd": 8}, "no positive integer 'num_hidden_layers'"),
    ({"num_hidden_layers": 2, "hidden_size": "8"}, "no positive integer 'hidden_size'"),
])
def test_hf_config_problems_are_model_errors(tmp_path, tmp_home, config, msg):
    folder = _hf_folder(tmp_path / "m")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=msg):
        model_identity(resolve_model(str(folder)))


@pytest.mark.parametrize("batch", [0, -1, 2.5, True])
def test_batch_must_be_positive(batch, tmp_home):
    from commandv.profiles.profiler import profile_model

    with pytest.raises(ModelError, match="batch must be a positive integer"):
        profile_model("does-not-matter.gguf", batch=batch)
