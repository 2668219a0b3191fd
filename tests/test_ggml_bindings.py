"""ggml_bindings: mirrored struct layout, reads and in-place writes inside a real eval callback."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from commandv.runtime.engines.llama import ggml_bindings as gb  # noqa: E402
from commandv.runtime.engines.llama.lowlevel import LlamaContext, LlamaModel  # noqa: E402
from tests.tiny_models import read_gguf_weights, reference_forward  # noqa: E402

pytestmark = pytest.mark.llama
IDS = [10, 300, 257, 42, 99, 457, 7]


@pytest.fixture(scope="module")
def model(tiny_gguf):
    m = LlamaModel(tiny_gguf)
    yield m
    m.free()


def _run(model, cb, ids=IDS, logits_for="last", kv_type="f32"):
    with LlamaContext(model, n_ctx=256, eval_callback=cb, kv_type=kv_type, flash_attn=False, n_threads=1) as ctx:
        idx = ctx.decode([ids], logits_for=logits_for)
        return ctx.logits(idx[0])


def test_struct_layout_matches_library():
    gb.check_layout()
    assert ctypes.sizeof(gb.GgmlTensorStruct) == 336
    assert gb.GgmlTensorStruct.ne.offset == 16 and gb.GgmlTensorStruct.name.offset == 256


def test_shapes_names_and_strides_are_sane(model):
    L = gb.lib()
    seen = {}

    def cb(t, ask):
        info = gb.tensor_info(t)
        s = gb.GgmlTensorStruct.from_address(t)
        # the mirror agrees with the library's own accessors
        assert s.name.decode() == info.name
        assert L.ggml_nelements(t) == int(np.prod(info.ne))
        assert info.n_dims == L.ggml_n_dims(t)
        seen[info.name] = info
        return False

    _run(model, cb)
    outs = {k: v for k, v in seen.items() if k.startswith("l_out-")}
    assert sorted(outs) == [f"l_out-{i}" for i in range(4)]
    for i in range(3):
        info = outs[f"l_out-{i}"]
        assert info.ne == (64, len(IDS), 1, 1) and info.type == 0 and info.type_name == "f32"
        assert info.nb[:2] == (4, 256)
    assert outs["l_out-3"].ne == (64, 1, 1, 1)  # last layer: output rows only


def test_read_rows_matches_reference(model, tiny_gguf):
    got = {}

    def cb(t, ask):
        name = gb.tensor_name(t)
        if ask:
            return name.startswith("l_out-")
        got[name] = gb.read_rows(t)
        assert gb.tensor_strides(t)[0] == 4 and gb.tensor_type(t) == 0
        if name == "l_out-1":
            np.testing.assert_array_equal(gb.read_rows(t, [6, 0]), got[name][[6, 0]])
        return True

    _run(model, cb)
    ref, _ = reference_forward(tiny_gguf, IDS)
    for i in range(3):
        np.testing.assert_allclose(got[f"l_out-{i}"], ref[i], atol=1e-4)
    np.testing.assert_allclose(got["l_out-3"], ref[3][-1:], atol=1e-4)


def test_write_rows_changes_downstream(model, tiny_gguf):
    """Overwrite the last layer's output row with v: logits must become out_norm(v) @ W_out."""
    rng = np.random.default_rng(1)
    v = rng.standard_normal((1, 64)).astype(np.float32)
    back = {}

    def cb(t, ask):
        name = gb.tensor_name(t)
        if ask:
            return name == "l_out-3"
        if name == "l_out-3":
            gb.write_rows(t, [0], v)
            back["v"] = gb.read_rows(t)
        return True

    logits = _run(model, cb)
    np.testing.assert_array_equal(back["v"], v)
    w, hp = read_gguf_weights(tiny_gguf)
    x = v[0].astype(np.float64)
    want = (x / np.sqrt((x * x).mean() + hp["eps"]) * w["output_norm.weight"]) @ w["output.weight"].T
    np.testing.assert_allclose(logits, want, atol=1e-4)


def test_write_middle_layer_propagates(model):
    def cb_zero(t, ask):
        name = gb.tensor_name(t)
        if ask:
            return name == "l_out-1"
        gb.write_rows(t, range(len(IDS)), np.zeros((len(IDS), 64), np.float32))
        return True

    base = _run(model, None)
    edited = _run(model, cb_zero)
    assert not np.allclose(base, edited, atol=1e-3)


def test_errors(model):
    errs = []

    def cb(t, ask):
        info = gb.tensor_info(t)
        if ask:
            return info.name == "l_out-0" or (info.type == 1 and "type" not in errs)
        if info.name == "l_out-0":
            for bad in (
                lambda: gb.write_rows(t, [0], np.zeros((1, 63), np.float32)),
                lambda: gb.write_rows(t, [99], np.zeros((1, 64), np.float32)),
                lambda: gb.read_rows(t, [-1]),
            ):
                with pytest.raises(gb.GgmlError):
                    bad()
                errs.append("ok")
        else:
            with pytest.raises(gb.GgmlError, match="only f32"):
                gb.write_rows(t, [0], np.zeros((1, info.ne[0]), np.float32))
            errs.append("type")
        return True

    _run(model, cb, kv_type="f16")
    assert errs.count("ok") == 3 and errs.count("type") == 1
    with pytest.raises(gb.GgmlError, match="null"):
        gb.tensor_shape(0)
