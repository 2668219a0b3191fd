"""Profile a model on a prompt set, through the store (computed once, then reused).

``profile_model("smollm2-135m-instruct", "general", backend="gguf")`` resolves the
model (zoo key, .gguf file, HF folder or hub id), looks the profile up by
(model fingerprint, prompt-set hash, backend) and computes it only if missing.
"""

from __future__ import annotations

from pathlib import Path

from commandv.profiles.identity import ModelIdentity, model_identity
from commandv.profiles.prompts import PromptSet, load_prompt_set
from commandv.profiles.store import Profile, ProfileMeta, find_profile, profile_path
from commandv.runtime import __version__
from commandv.runtime.errors import ModelError
from commandv.runtime.models.ref import ModelRef, resolve_model

BACKENDS = ("gguf", "hf")


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
        from commandv.profiles.capture_gguf import capture_gguf

        res = capture_gguf(ref.path, prompts.prompts, template=template, batch_prompts=1 if batch is None else batch,
                           progress=progress)
    elif backend == "hf":
        from commandv.profiles.capture_hf import capture_hf
        from commandv.profiles.hf_models import load_hf_model

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
