"""Profile a model on a prompt set, through the store (computed once, then reused).

``profile_model("smollm2-135m-instruct", "general", backend="gguf")`` resolves the
model (zoo key, .gguf file, HF folder or hub id), looks the profile up by
(model fingerprint, prompt-set hash, backend) and computes it only if missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from commandv.runtime import __version__
from commandv.runtime.fingerprint import file_fingerprint, model_info_from_gguf
from commandv.runtime.model_ref import ModelError, ModelRef, resolve_model
from commandv.runtime.pack_gguf import json_problem
from commandv.runtime.safe_io import not_regular_reason, read_regular

from .prompts import PromptSet, load_prompt_set
from .store import Profile, ProfileMeta, find_profile, profile_path

BACKENDS = ("gguf", "hf")
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


def _check_batch(batch: int | None) -> None:
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ModelError(f"batch must be a positive integer, got {batch!r}")


def compute_profile(ref: ModelRef, ident: ModelIdentity, prompts: PromptSet, backend: str,
                    batch: int | None = None, progress: bool = True, template: bool = True) -> Profile:
    """Run the capture backend and wrap the result as a :class:`Profile`.

    ``batch``: prompts per forward pass; None = each backend's fastest on a CPU (HF: 8 with left
    padding; GGUF: one at a time, shared template prefix decoded once, one context per thread).
    """
    import time

    _check_batch(batch)
    t0 = time.perf_counter()
    if backend == "gguf":
        if ref.kind != "gguf":
            raise ModelError(f"backend 'gguf' needs a .gguf model, got {ref.kind} ({ref.spec}); use --backend hf")
        from .capture_gguf import capture_gguf

        res = capture_gguf(ref.path, prompts.prompts, template=template, batch_prompts=1 if batch is None else batch,
                           progress=progress)
    elif backend == "hf":
        from .capture_hf import capture_hf
        from .hf_models import load_hf_model

        model, tok, _ = load_hf_model(ref.spec if ref.zoo_key else str(ref.path), progress=progress)
        res = capture_hf(model, tok, prompts.prompts, template=template, batch_size=8 if batch is None else batch,
                         progress=progress)
    else:
        raise ModelError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    seconds = res.seconds or (time.perf_counter() - t0)
    if res.n_layer != ident.n_layer or res.d_model != ident.d_model:
        raise ModelError(f"captured {res.n_layer}×{res.d_model} but the model header says "
                         f"{ident.n_layer}×{ident.d_model}")
    meta = ProfileMeta(
        model_fingerprint=ident.fingerprint, network_fingerprint=ident.network_fingerprint,
        model_name=ident.name, arch=ident.arch, n_layer=ident.n_layer, d_model=ident.d_model,
        n_prompts=len(prompts.prompts), prompt_set=prompts.name, prompt_sha256=prompts.sha256,
        backend=backend, template=res.template, rendered_example=res.rendered_example,
        tool_version=__version__, seconds=float(seconds), token_counts=list(res.token_counts))
    return Profile(layers=res.layers, meta=meta)


def profile_model(model: str, prompts: str | PromptSet = "general", backend: str = "gguf", *,
                  limit: int | None = None, batch: int | None = None, match: str = "file", force: bool = False,
                  progress: bool = True, root: Path | None = None) -> tuple[Profile, Path, bool]:
    """Get (or compute and store) a profile. Returns ``(profile, path, was_cached)``."""
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    _check_batch(batch)
    ps = prompts if isinstance(prompts, PromptSet) else load_prompt_set(prompts, limit=limit)
    ref = resolve_model(model)
    if backend == "gguf" and ref.kind != "gguf":
        backend = "hf"
    ident = model_identity(ref)
    path = profile_path(ident.fingerprint, ps.sha256, backend, root)
    if not force:
        hit = find_profile(ident.fingerprint, ps.sha256, backend, ident.network_fingerprint, match, root,
                           template=ident.template)
        if hit is not None:
            return hit, path, True
    prof = compute_profile(ref, ident, ps, backend, batch=batch, progress=progress)
    prof.save(path)
    return prof, path, False
