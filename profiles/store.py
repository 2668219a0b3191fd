"""Profiles on disk: ``[N, d]`` float32 per layer in safetensors, metadata as JSON.

A profile belongs to (model fingerprint, prompt-set hash, backend). By default
the model fingerprint is the exact file's sha256; with ``match="network"`` a
profile made on another file of the same network (e.g. another quantization)
is accepted too, when the user asks for that.

Files live in ``profiles_dir()/<fingerprint[:16]>/<promptsha[:16]>-<backend>.safetensors``
and are written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from commandv.runtime.atomic import atomic_path
from commandv.runtime.errors import CommandVError
from commandv.runtime.paths import profiles_dir
from commandv.runtime.safe_io import json_problem, not_regular_reason

PROFILE_VERSION = 1
_META_KEY = "commandv.profile"


class ProfileError(CommandVError, ValueError):
    """A profile file is missing, malformed, or does not match what was asked."""


@dataclass
class ProfileMeta:
    """Provenance of a profile; ``n_layer`` matrices of shape ``[n_prompts, d_model]``."""

    model_fingerprint: str
    network_fingerprint: str
    model_name: str
    arch: str
    n_layer: int
    d_model: int
    n_prompts: int
    prompt_set: str
    prompt_sha256: str
    backend: str
    template: str | None
    rendered_example: str
    dtype: str = "float32"
    tool_version: str = ""
    seconds: float = 0.0
    token_counts: list[int] = field(default_factory=list)
    version: int = PROFILE_VERSION


@dataclass
class Profile:
    """``layers[i]`` is block ``i``'s output at each prompt's last token: ``[N, d]`` float32."""

    layers: list[np.ndarray]
    meta: ProfileMeta

    def layer(self, i: int) -> np.ndarray:
        if not (0 <= i < len(self.layers)):
            raise ProfileError(f"layer {i} out of range 0..{len(self.layers) - 1}")
        return self.layers[i]

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (safetensors)."""
        from safetensors.numpy import save_file

        self.validate()
        tensors = {f"layer.{i}": np.ascontiguousarray(x, dtype=np.float32) for i, x in enumerate(self.layers)}
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(asdict(self.meta))})
        return path

    def validate(self) -> None:
        m = self.meta
        if len(self.layers) != m.n_layer:
            raise ProfileError(f"profile has {len(self.layers)} layers, metadata says {m.n_layer}")
        for i, x in enumerate(self.layers):
            if x.shape != (m.n_prompts, m.d_model):
                raise ProfileError(f"layer {i} has shape {list(x.shape)}, expected [{m.n_prompts}, {m.d_model}]")
            if not np.all(np.isfinite(x)):
                raise ProfileError(f"layer {i} has NaN or Inf values")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Profile":
        """Read and validate the profile file ``path`` (data only: safetensors never unpickles); returns the
        :class:`Profile`. Only a regular file is opened (memory-mapped, so its size bounds what is read); anything
        else, a malformed file or a mismatch raises :class:`ProfileError` with a one-line message."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        why = not_regular_reason(path)  # safe_open would block on a FIFO; only a regular file is memory-mapped
        if why == "not found":
            raise ProfileError(f"profile not found: {path}")
        if why is not None:
            raise ProfileError(f"profile {path} is {why}, not a regular file" if why.startswith("a ")
                               else f"profile {path} cannot be read: {why}")
        try:
            with safe_open(str(path), framework="np") as fh:
                raw = (fh.metadata() or {}).get(_META_KEY)
                if raw is None:
                    raise ProfileError(f"{path}: not a commandv profile (no {_META_KEY!r} metadata)")
                meta = _parse_meta(raw, path)
                keys = set(fh.keys())
                want = {f"layer.{i}" for i in range(meta.n_layer)}
                if keys != want:
                    raise ProfileError(f"{path}: tensors {sorted(keys - want)[:3]} extra / {sorted(want - keys)[:3]} missing")
                layers = [fh.get_tensor(f"layer.{i}") for i in range(meta.n_layer)]
        except ProfileError:
            raise
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise ProfileError(f"{path}: corrupt profile ({type(exc).__name__}: {str(exc)[:160]})") from None
        for i, x in enumerate(layers):
            if x.dtype != np.float32:
                raise ProfileError(f"{path}: layer {i} has dtype {x.dtype}, expected float32")
        prof = cls(layers=layers, meta=meta)
        prof.validate()
        return prof


_MAX_LAYERS = 4096
_MAX_DIM = 1 << 17


_META_TYPES = {"model_fingerprint": str, "network_fingerprint": str, "model_name": str, "arch": str,
               "prompt_set": str, "prompt_sha256": str, "backend": str, "template": (str, type(None)),
               "rendered_example": str, "dtype": str, "tool_version": str, "seconds": (int, float),
               "token_counts": list}
_KIND_NAMES = {str: "a string", (str, type(None)): "a string or null", (int, float): "a number", list: "a list"}


def _parse_meta(raw: str, path: Path) -> ProfileMeta:
    """The metadata JSON as a :class:`ProfileMeta`, with its sizes checked before anything is sized by them."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # syntax, nesting depth, ints over the digit limit
        raise ProfileError(f"{path}: profile metadata is not valid JSON ({json_problem(exc)})") from None
    if not isinstance(doc, dict):
        raise ProfileError(f"{path}: profile metadata is not a JSON object")
    try:
        meta = ProfileMeta(**doc)
    except TypeError as exc:
        raise ProfileError(f"{path}: profile metadata fields do not match ({str(exc).split(': ', 1)[-1][:120]})") from None
    if meta.version != PROFILE_VERSION:
        raise ProfileError(f"{path}: profile version {meta.version} not supported")
    for name, kind in _META_TYPES.items():
        v = getattr(meta, name)
        if not isinstance(v, kind) or isinstance(v, bool):
            raise ProfileError(f"{path}: profile metadata {name} {str(v)[:40]!r} is not {_KIND_NAMES[kind]}")
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in meta.token_counts):
        raise ProfileError(f"{path}: profile metadata token_counts must be a list of integers")
    for name, hi in (("n_layer", _MAX_LAYERS), ("d_model", _MAX_DIM), ("n_prompts", 1 << 31)):
        v = getattr(meta, name)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ProfileError(f"{path}: profile metadata {name} {v!r} is not an integer")
        if not 1 <= v <= hi:
            raise ProfileError(f"{path}: profile metadata {name} {v} outside 1..{hi}")
    return meta


def profile_path(model_fingerprint: str, prompt_sha256: str, backend: str, root: Path | None = None) -> Path:
    """Where the store keeps the profile for this key."""
    root = root or profiles_dir()
    return root / model_fingerprint[:16] / f"{prompt_sha256[:16]}-{backend}.safetensors"


def find_profile(model_fingerprint: str, prompt_sha256: str, backend: str, network_fingerprint: str | None = None,
                 match: str = "file", root: Path | None = None, template: str | None = None) -> Profile | None:
    """Look a profile up; ``match="network"`` also accepts one made on another file of the same network
    (same shapes and vocabulary; weights are not compared) with the same chat ``template``."""
    if match not in ("file", "network"):
        raise ProfileError(f"match must be 'file' or 'network', not {match!r}")
    p = profile_path(model_fingerprint, prompt_sha256, backend, root)
    if p.is_file():
        prof = Profile.load(p)
        m = prof.meta
        # the path holds only 16-character prefixes: a profile for another key (copied or swapped in) is a miss
        if (m.model_fingerprint, m.prompt_sha256, m.backend) == (model_fingerprint, prompt_sha256, backend):
            return prof
    if match == "network" and network_fingerprint:
        root = root or profiles_dir()
        for cand in sorted(root.glob(f"*/{prompt_sha256[:16]}-{backend}.safetensors")):
            try:
                prof = Profile.load(cand)
            except ProfileError:
                continue
            if (prof.meta.network_fingerprint, prof.meta.prompt_sha256, prof.meta.backend, prof.meta.template) == (
                    network_fingerprint, prompt_sha256, backend, template):
                return prof
    return None
