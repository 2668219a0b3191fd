"""An adapter applied to the model it was trained on, as a pack (identity translators): the ``donor+adapter`` and
``recipient+direct`` rows of an evaluation, and the donor's own behavior text (:mod:`commandv.exporter.transfer.anchor`)."""

from __future__ import annotations

import os

import numpy as np

from commandv.exporter.adapters.folder import Adapter
from commandv.runtime.pack.model import BehaviorPack, PackEntry


def adapter_pack(adapter: Adapter, fingerprint: str, arch: str, n_layer: int, name: str) -> BehaviorPack:
    """The adapter applied to the model it was trained on (identity translators), as a pack.

    ``fingerprint`` / ``arch`` / ``n_layer``: that model's (e.g. from
    :func:`~commandv.runtime.models.fingerprint.model_info_from_gguf`); ``name``: the pack's name."""
    f32 = lambda a: None if a is None else np.ascontiguousarray(a, np.float32)  # noqa: E731
    entries = [PackEntry(layer=e.layer, donor_layer=e.layer, A=f32(e.A), b=f32(e.b), C=f32(e.C), P=f32(e.P),
                         Q=f32(e.Q), e=f32(e.e), act=e.act, positions=adapter.positions) for e in adapter.edits]
    return BehaviorPack(entries=entries, name=name, meta={"adapter_sha256": adapter.sha256, "self_pack": True},
                        recipient={"fingerprint": fingerprint, "arch": arch, "n_layer": n_layer,
                                   "d_model": adapter.d_model})


def model_adapter_pack(model: str | os.PathLike, adapter: Adapter, name: str) -> BehaviorPack:
    """:func:`adapter_pack` for the GGUF ``model`` (zoo key or .gguf path), whose fingerprint, architecture and
    layer count are read from the file."""
    from commandv.runtime.models.fingerprint import model_info_from_gguf
    from commandv.runtime.models.ref import resolve_model

    info = model_info_from_gguf(resolve_model(model).path)
    return adapter_pack(adapter, info.fingerprint, info.arch, info.n_layer, name)
