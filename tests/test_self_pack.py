"""The adapter as a pack on its own model (identity translators)."""

import numpy as np

from commandv.exporter.adapters.folder import Adapter
from commandv.exporter.adapters.interventions import DonorEdit
from commandv.exporter.adapters.self_pack import adapter_pack


def test_adapter_pack_is_the_adapter():
    rng = np.random.default_rng(0)
    e = DonorEdit(2, rng.standard_normal((16, 4)), rng.standard_normal(4), rng.standard_normal((4, 16)), kind="NodiReFT")
    ad = Adapter(edits=[e], kind="NodiReFT", positions="l1", component="block_output", sha256="s" * 64, source="x")
    p = adapter_pack(ad, "f" * 64, "llama", 4, "self")
    p.validate()
    h = rng.standard_normal((3, 16))
    assert np.allclose(p.entries[0].delta(h.astype(np.float32)), e.delta(h), rtol=1e-4, atol=1e-4)
    assert p.entries[0].layer == 2
