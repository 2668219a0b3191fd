"""Load a model with transformers on the workstation (fp32 by default).

``load_hf_model(spec)`` accepts any spec :func:`commandv.runtime.models.ref.resolve_model`
does. A GGUF file is dequantized by transformers once (the slow step, longer
for bigger models) and saved as a normal HF folder in
``hf_cache_dir()/<file sha256[:16]>/``; later loads read that folder.
HF folders and hub ids load directly.

torch / transformers are imported lazily so importing this module is cheap.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

from commandv.profiles.identity import model_identity
from commandv.runtime.atomic import atomic_dir
from commandv.runtime.errors import ModelError
from commandv.runtime.models.fingerprint import file_fingerprint
from commandv.runtime.models.ref import ModelRef, resolve_model
from commandv.runtime.paths import hf_cache_dir

DTYPES = ("float32", "float16", "bfloat16")
SOURCE_FILE = "commandv_source.json"


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ModelError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def hf_folder_for_gguf(gguf_path: str | os.PathLike, progress: bool = True) -> Path:
    """The cached HF folder made from ``gguf_path`` (dequantized to fp32), made on first use.

    The folder holds config.json, fp32 safetensors weights and the tokenizer,
    plus ``commandv_source.json`` naming the GGUF it came from. Written
    atomically: a killed conversion leaves no folder that a later run trusts.
    """
    gguf_path = Path(gguf_path).resolve()
    fp = file_fingerprint(gguf_path)
    folder = hf_cache_dir() / fp[:16]
    if (folder / "config.json").is_file() and (folder / SOURCE_FILE).is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    status = None
    if progress:
        from rich.console import Console

        status = Console(stderr=True).status(f"dequantizing {gguf_path.name} into an HF folder (once)")
        status.start()
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        except Exception as exc:  # noqa: BLE001 - unsupported arch, bad file, ...
            raise ModelError(f"transformers cannot load {gguf_path}: {exc}") from None
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_dir(folder) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / SOURCE_FILE).write_text(
                json.dumps({"gguf": str(gguf_path), "sha256": fp}, indent=1), encoding="utf-8")
        del model
        gc.collect()
    finally:
        if status is not None:
            status.stop()
    return folder


def _load_folder(folder: Path, dtype: str, spec: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _torch_dtype(dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"transformers cannot load {spec} from {folder}: {exc}") from None
    model.eval()
    return model, tok


def load_hf_model(spec: str | os.PathLike, dtype: str = "float32", auto_fetch: bool = True,
                  progress: bool = True) -> tuple[Any, Any, ModelRef]:
    """Load ``spec`` with transformers → ``(model, tokenizer, ref)``; model in eval mode.

    ``dtype``: one of float32 (default), float16, bfloat16. GGUF specs go
    through :func:`hf_folder_for_gguf` (fp32 weights on disk). Raises
    :class:`ModelError` for unusable specs.
    """
    _torch_dtype(dtype)  # validate before any slow work
    ref = resolve_model(spec, auto_fetch=auto_fetch)
    if ref.kind == "gguf":
        folder = hf_folder_for_gguf(ref.path, progress=progress)
    else:
        folder = ref.folder
    model, tok = _load_folder(folder, dtype, str(spec))
    return model, tok, ref


def torch_recipient(spec: str | os.PathLike):
    """The reference engine (:class:`~commandv.runtime.engines.reference.TorchRecipient`) on ``spec``'s HF model,
    with the model's fingerprint so packs are checked against it."""
    from commandv.runtime.engines.reference import TorchRecipient

    model, tok, ref = load_hf_model(spec)
    ident = model_identity(ref)
    return TorchRecipient(model, tok, ident.fingerprint, ident.arch)
