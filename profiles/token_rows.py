"""Token-aligned rows: block outputs at every token of the prompt text, paired across two models by where the
token ends in that text (the fit rows of ``--method pinv-tokens``).

A last-token profile (:mod:`commandv.profiles.store`) has one row per prompt, and at early layers the last
token (the chat template's final token, the same for every prompt) barely varies: the translators fitted on it
are low-rank there and drop most of an adapter's edit. The states of the prompt's own tokens vary in every
direction the model uses. Two models with different tokenizers still agree on the text, so a donor token and a
recipient token that end at the same byte of the prompt saw the same text::

    d = capture_token_rows("smollm2-135m-instruct", prompts)          # every content token + the last token
    r = capture_token_rows("qwen2.5-coder-0.5b-instruct", prompts)
    XD, XR = aligned_rows(d, r)                                      # per layer [M, d_D], [M, d_R]
    dprof, rprof = with_token_rows(donor_profile, recipient_profile, XD, XR)

Rows come from the project's llama.cpp engine (one prompt pass per prompt, chat template applied).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from commandv.profiles.store import Profile
from commandv.runtime.atomic import atomic_path
from commandv.runtime.errors import CommandVError
from commandv.runtime.paths import profiles_dir
from commandv.runtime.progress import progress_bar
from commandv.runtime.safe_io import not_regular_reason

LAST = -1
"""``end`` of a prompt's last token (the template's final token, where packs edit), whatever its text."""


class TokenRowsError(CommandVError, ValueError):
    """Token rows that cannot be paired (different prompts, no common token ends)."""


@dataclass
class TokenRows:
    """One model's block outputs at the tokens of a prompt list.

    ``layers[l]`` ``[T, d]`` float32; row ``t`` is the token of prompt ``prompt[t]`` whose text ends ``end[t]``
    bytes into the prompt's text (UTF-8), or :data:`LAST` for the prompt's last token.
    """

    layers: list[np.ndarray]
    prompt: np.ndarray
    end: np.ndarray
    prompts_sha256: str

    @property
    def n_rows(self) -> int:
        return int(self.prompt.shape[0])


def prompts_digest(prompts: Sequence[str]) -> str:
    """sha256 of the prompt list (the pairing key of two models' rows)."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.encode("utf-8") + b"\0")
    return h.hexdigest()


def content_ends(pieces: Sequence[bytes], content: bytes) -> list[int]:
    """Where each token ends inside ``content``: for token pieces ``pieces`` (the bytes each token adds to the
    rendered prompt) → per token the end offset within the last occurrence of ``content`` in their
    concatenation, ``0`` for tokens ending before it and ``len(content) + 1`` for those ending after it."""
    joined = b"".join(pieces)
    start = joined.rfind(content)
    if start < 0 or not content:
        return [0] * len(pieces)
    out, pos = [], 0
    for p in pieces:
        pos += len(p)
        out.append(min(max(pos - start, 0), len(content) + 1))
    return out


def capture_token_rows(model: str, prompts: Sequence[str], *, max_per_prompt: int = 32,
                       progress: bool = True) -> TokenRows:
    """Block outputs of ``model`` (zoo key or .gguf) at the prompt-text tokens of every prompt (at most
    ``max_per_prompt``, evenly spaced, with distinct ends) and at its last token → :class:`TokenRows`."""
    from commandv.runtime.engines.llama.engine import Recipient

    prompt_idx, ends = [], []
    with Recipient(model) as eng, progress_bar(f"token rows {model}", len(prompts), enabled=progress,
                                              unit="prompts") as advance:
        layers_rows: list[list[np.ndarray]] = [[] for _ in range(eng.n_layer)]
        for k, text in enumerate(prompts):
            ids = eng.encode(text)
            _, hidden = eng.prompt_pass(ids, record_layers=True)
            content = text.encode("utf-8")
            e = content_ends([eng.token_bytes(t) for t in ids], content)
            inside = [i for i, x in enumerate(e) if 0 < x <= len(content)]
            inside = [i for j, i in enumerate(inside) if j == 0 or e[i] != e[inside[j - 1]]]
            if len(inside) > max_per_prompt:
                inside = [inside[int(round(j))] for j in np.linspace(0, len(inside) - 1, max_per_prompt)]
            rows = inside + [len(ids) - 1]
            for l in range(eng.n_layer):
                layers_rows[l].append(hidden[l][rows])
            prompt_idx += [k] * len(rows)
            ends += [e[i] for i in inside] + [LAST]
            advance(1)
    return TokenRows(layers=[np.concatenate(r).astype(np.float32) for r in layers_rows],
                     prompt=np.asarray(prompt_idx, np.int32), end=np.asarray(ends, np.int32),
                     prompts_sha256=prompts_digest(prompts))


def aligned_rows(donor: TokenRows, recipient: TokenRows) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Rows of both models at the tokens that end at the same byte of the same prompt (and at each prompt's last
    token) → ``(XD, XR)``: per layer ``[M, d_D]`` and ``[M, d_R]``, row ``m`` of each the same place."""
    if donor.prompts_sha256 != recipient.prompts_sha256:
        raise TokenRowsError("token rows were captured on different prompts")
    where = {(int(p), int(e)): i for i, (p, e) in enumerate(zip(recipient.prompt, recipient.end))}
    pairs = [(i, where[(int(p), int(e))]) for i, (p, e) in enumerate(zip(donor.prompt, donor.end))
             if (int(p), int(e)) in where]
    if not pairs:
        raise TokenRowsError("no token of the two models ends at the same place in any prompt")
    di = np.asarray([i for i, _ in pairs])
    ri = np.asarray([j for _, j in pairs])
    return [X[di] for X in donor.layers], [X[ri] for X in recipient.layers]


def with_token_rows(donor: Profile, recipient: Profile, XD: Sequence[np.ndarray], XR: Sequence[np.ndarray]
                    ) -> tuple[Profile, Profile]:
    """The two last-token profiles with the aligned token rows ``XD`` / ``XR`` (from :func:`aligned_rows`)
    appended to every layer: ``[N + M, d]``, one prompt-set key for both (for ``export_pack``)."""
    if len(XD) != donor.meta.n_layer or len(XR) != recipient.meta.n_layer or XD[0].shape[0] != XR[0].shape[0]:
        raise TokenRowsError("token rows do not match the profiles (layers or row counts differ)")
    m = int(XD[0].shape[0])
    tag = hashlib.sha256(f"{donor.meta.prompt_sha256}+{recipient.meta.prompt_sha256}+tokens".encode()).hexdigest()

    def extended(p: Profile, X: Sequence[np.ndarray]) -> Profile:
        layers = [np.concatenate([p.layers[l], np.asarray(X[l], np.float32)]) for l in range(p.meta.n_layer)]
        meta = dataclasses.replace(p.meta, n_prompts=p.meta.n_prompts + m, prompt_sha256=tag,
                                   prompt_set=f"{p.meta.prompt_set}+{m} token rows")
        return Profile(layers=layers, meta=meta)

    return extended(donor, XD), extended(recipient, XR)


def token_rows_path(model_fingerprint: str, prompts_sha256: str, max_per_prompt: int, root: Path | None = None
                    ) -> Path:
    """Where the profile store keeps a model's token rows on a prompt list (beside its last-token profiles)."""
    name = f"tokens-{prompts_sha256[:16]}-{max_per_prompt}.safetensors"
    return (root or profiles_dir()) / model_fingerprint[:16] / name


def save_token_rows(rows: TokenRows, path: Path, model_fingerprint: str, max_per_prompt: int) -> Path:
    """Write ``rows`` atomically (safetensors: ``layer.{i}`` ``[T, d]``, ``prompt`` / ``end`` ``[T]``, the keys in
    the metadata)."""
    from safetensors.numpy import save_file

    tensors = {f"layer.{i}": np.ascontiguousarray(x, np.float32) for i, x in enumerate(rows.layers)}
    tensors.update(prompt=np.ascontiguousarray(rows.prompt, np.int32), end=np.ascontiguousarray(rows.end, np.int32))
    meta = {"model_fingerprint": model_fingerprint, "prompts_sha256": rows.prompts_sha256,
            "max_per_prompt": str(max_per_prompt), "n_layer": str(len(rows.layers))}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_token_rows(path: Path, model_fingerprint: str, prompts_sha256: str, max_per_prompt: int
                    ) -> TokenRows | None:
    """The token rows stored at ``path`` for exactly this key, or None (a miss) when the file is absent, not a
    regular file, made for another key or malformed (wrong tensors, shapes, dtypes, non-finite values)."""
    from safetensors import SafetensorError, safe_open

    if not_regular_reason(path) is not None:
        return None
    try:
        with safe_open(str(path), framework="np") as fh:
            meta = fh.metadata() or {}
            if (meta.get("model_fingerprint"), meta.get("prompts_sha256"), meta.get("max_per_prompt")) != (
                    model_fingerprint, prompts_sha256, str(max_per_prompt)):
                return None
            n_layer = int(meta.get("n_layer", "0"))
            if set(fh.keys()) != {f"layer.{i}" for i in range(n_layer)} | {"prompt", "end"} or n_layer < 1:
                return None
            layers = [fh.get_tensor(f"layer.{i}") for i in range(n_layer)]
            prompt, end = fh.get_tensor("prompt"), fh.get_tensor("end")
    except (SafetensorError, OSError, ValueError, TypeError):
        return None
    t = prompt.shape
    if (prompt.dtype != np.int32 or end.dtype != np.int32 or len(t) != 1 or end.shape != t
            or any(x.dtype != np.float32 or x.ndim != 2 or x.shape != (t[0], layers[0].shape[1]) for x in layers)
            or not all(np.isfinite(x).all() for x in layers)):
        return None
    return TokenRows(layers=layers, prompt=prompt, end=end, prompts_sha256=prompts_sha256)


def stored_token_rows(model: str, prompts: Sequence[str], *, max_per_prompt: int = 32, progress: bool = True,
                      root: Path | None = None) -> TokenRows:
    """:func:`capture_token_rows`, kept in the profile store: rows stored for this model file (by fingerprint), these
    prompts and ``max_per_prompt`` are read back; otherwise the model is run and its rows stored."""
    from commandv.profiles.identity import model_identity
    from commandv.runtime.models.ref import resolve_model

    fingerprint = model_identity(resolve_model(model)).fingerprint
    digest = prompts_digest(prompts)
    path = token_rows_path(fingerprint, digest, max_per_prompt, root)
    rows = load_token_rows(path, fingerprint, digest, max_per_prompt)
    if rows is None:
        rows = capture_token_rows(model, prompts, max_per_prompt=max_per_prompt, progress=progress)
        save_token_rows(rows, path, fingerprint, max_per_prompt)
    return rows


def add_token_rows(donor_model: str, recipient_model: str, donor: Profile, recipient: Profile,
                   n_prompts: int = 256, *, texts: Sequence[str] = (), progress: bool = True
                   ) -> tuple[Profile, Profile]:
    """The donor and recipient last-token profiles with both models' aligned token rows on the first
    ``n_prompts`` prompts of the general set, then on ``texts`` (e.g. text the donor writes with its adapter:
    :mod:`commandv.exporter.transfer.anchor`), appended (:func:`capture_token_rows` → :func:`aligned_rows` →
    :func:`with_token_rows`; both models' rows are kept in the profile store, :func:`stored_token_rows`)."""
    from commandv.profiles.prompts import load_prompt_set

    prompts = (load_prompt_set("general", limit=n_prompts).prompts if n_prompts > 0 else []) + list(texts)
    d = stored_token_rows(donor_model, prompts, progress=progress)
    r = stored_token_rows(recipient_model, prompts, progress=progress)
    XD, XR = aligned_rows(d, r)
    return with_token_rows(donor, recipient, XD, XR)
