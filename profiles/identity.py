"""What identifies a model for profiles and packs: its fingerprints, name, shape and chat template.

``model_identity(resolve_model(spec))`` reads the GGUF header, or for an HF folder hashes ``config.json``, the
weights and the tokenizer / chat template files; it raises :class:`~commandv.runtime.errors.ModelError` for an
unusable folder. Used by the profiler (the profile store key), ``torch_recipient`` and the ONNX export.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from commandv.runtime.errors import ModelError
from commandv.runtime.models.fingerprint import file_fingerprint, model_info_from_gguf
from commandv.runtime.models.ref import ModelRef
from commandv.runtime.safe_io import json_problem, not_regular_reason, read_regular

MAX_MODEL_JSON_BYTES = 64 << 20
"""Largest config.json / tokenizer_config.json / chat_template.jinja read from an HF model folder."""


@dataclass(frozen=True)
class ModelIdentity:
    """What a profile records about its model. ``template``: the chat template text (None: none), which
    decides the profiled token, so a profile made with another template is never reused."""

    fingerprint: str
    network_fingerprint: str
    name: str
    arch: str
    n_layer: int
    d_model: int
    template: str | None = None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                    "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt")
"""HF folder files besides config.json and the weights that change what a prompt renders or tokenizes to."""


def model_identity(ref: ModelRef) -> ModelIdentity:
    """Fingerprints and shape of a resolved model: the GGUF header, or for an HF folder the sha256 of
    ``config.json``, the weights and the tokenizer / chat template files."""
    if ref.kind == "gguf":
        info = model_info_from_gguf(ref.path)
        return ModelIdentity(info.fingerprint, info.network_fingerprint, info.name, info.arch, info.n_layer,
                             info.d_model, info.chat_template)
    folder = ref.folder
    raw_cfg = read_regular(folder / "config.json", MAX_MODEL_JSON_BYTES, "model file", ModelError)
    try:
        cfg = json.loads(raw_cfg.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ModelError(f"{folder}/config.json unreadable: {json_problem(exc)}") from None
    if isinstance(cfg, dict) and isinstance(cfg.get("text_config"), dict):
        cfg = cfg["text_config"]
    if not isinstance(cfg, dict):
        raise ModelError(f"{folder}/config.json is not a JSON object")
    for key in ("num_hidden_layers", "hidden_size"):
        if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool) or cfg[key] < 1:
            raise ModelError(f"{folder}/config.json has no positive integer {key!r} (not a supported decoder "
                             "config; the GGUF of the model works)")
    h = hashlib.sha256(raw_cfg)
    for w in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(w.name.encode() + bytes.fromhex(file_fingerprint(w)))
    for name in _TOKENIZER_FILES:
        if not_regular_reason(folder / name) != "not found":  # a FIFO or device there is refused, not skipped
            h.update(name.encode() + bytes.fromhex(file_fingerprint(folder / name)))
    net = hashlib.sha256(json.dumps({k: cfg.get(k) for k in (
        "model_type", "num_hidden_layers", "hidden_size", "vocab_size", "intermediate_size",
        "num_attention_heads", "num_key_value_heads")}, sort_keys=True).encode()).hexdigest()
    return ModelIdentity(h.hexdigest(), net, folder.name, str(cfg.get("model_type")),
                         int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), _hf_template(folder))


def _hf_template(folder: Path) -> str | None:
    """The chat template transformers would load from ``folder`` (chat_template.jinja, else
    tokenizer_config.json's ``chat_template``), or None."""
    jinja = folder / "chat_template.jinja"
    if os.path.lexists(jinja) and not_regular_reason(jinja) != "not found":
        return read_regular(jinja, MAX_MODEL_JSON_BYTES, "model file", ModelError).decode("utf-8", errors="replace")
    tc_path = folder / "tokenizer_config.json"
    if not_regular_reason(tc_path) not in (None, "not found"):  # a FIFO or device: refused, never read
        read_regular(tc_path, MAX_MODEL_JSON_BYTES, "model file", ModelError)
    try:
        tc = json.loads(read_regular(tc_path, MAX_MODEL_JSON_BYTES, "model file", ModelError).decode("utf-8"))
    except (ValueError, RecursionError):  # missing or malformed: no template (ModelError is a ValueError)
        return None
    t = tc.get("chat_template") if isinstance(tc, dict) else None
    return t if isinstance(t, str) or t is None else json.dumps(t, sort_keys=True)
