"""The one activation table (runtime/edit/activations.py) against every other representation, the C ones included."""

import re
from pathlib import Path

import numpy as np
import pytest

from commandv.runtime.edit import activations as acts
from commandv.runtime.edit import lowrank
from commandv.runtime.engines.onnx import surgery as onnx_surgery
from commandv.runtime.native import build

NATIVE = Path(build.__file__).parent


def test_table_is_in_c_id_order_and_names_are_unique():
    assert [k.c_id for k in acts.KINDS] == list(range(len(acts.KINDS)))
    names = [n for k in acts.KINDS for n in k.names]
    assert len(names) == len(set(names)) and not set(names) & set(acts.ALIASES)
    assert all(a in acts.ACTIVATIONS for a in acts.ALIASES.values())


def test_derived_tables_are_the_old_ones():
    """The derived module-level names keep the values they had as hand-written tables."""
    assert lowrank.ACTIVATIONS is acts.ACTIVATIONS and lowrank.ACTIVATION_ALIASES is acts.ALIASES
    assert list(acts.ACTIVATIONS) == ["linear", "relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish",
                                      "tanh", "sigmoid"]
    assert build.ACT_IDS == {"linear": 0, "relu": 1, "gelu": 2, "gelu_new": 3, "gelu_pytorch_tanh": 3,
                             "silu": 4, "swish": 4, "tanh": 5, "sigmoid": 6}
    assert onnx_surgery.SLOT_ACTS == ("linear", "relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid")
    assert onnx_surgery._ACT_ALIAS == {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "swish": "silu"}


def test_c_enum_agrees_with_the_table():
    header = (NATIVE / "cmdv_core.h").read_text()
    enum = {m.group(1): int(m.group(2)) for m in re.finditer(r"\b(CMDV_ACT_[A-Z_]+)\s*=\s*(\d+)", header)}
    assert enum.pop("CMDV_ACT_COUNT") == len(acts.KINDS)
    assert enum == {k.c_enum: k.c_id for k in acts.KINDS}


def test_c_name_table_agrees_with_the_table():
    """cmdv_spec.c's name → id table accepts exactly the Python names and aliases, with the same ids."""
    spec = (NATIVE / "cmdv_spec.c").read_text()
    body = spec[spec.index("ACTS[] = {"):]
    body = body[:body.index("};")]
    c_names = {n: e for n, e in re.findall(r'\{"([^"]*)",\s*(CMDV_ACT_[A-Z_]+)\}', body)}
    enum_of = {k.c_enum: k for k in acts.KINDS}
    want = {n: acts.KIND_OF[n].c_enum for n in acts.ACTIVATIONS}
    want.update({a: acts.KIND_OF[c].c_enum for a, c in acts.ALIASES.items()})
    assert c_names == want
    assert set(c_names.values()) <= set(enum_of)
    supported = re.search(r'#define SUPPORTED_ACTS "([^"]*)"', spec).group(1)
    assert supported == ", ".join(sorted(acts.ACTIVATIONS))  # the same "supported: …" message as Python


@pytest.mark.parametrize("name", sorted(acts.ACTIVATIONS) + sorted(acts.ALIASES) + [" GELU_New ", None])
def test_every_spelling_resolves(name):
    k = acts.kind(name)
    x = np.linspace(-3, 3, 7)
    assert np.array_equal(lowrank.apply_activation(name, x), k.numpy(x))
    assert onnx_surgery.SLOT_ACTS[k.c_id] == k.slot


def test_unknown_activation_message():
    with pytest.raises(ValueError, match=r"unknown activation 'mish'; supported: gelu, gelu_new, "):
        acts.canonical_activation("mish")


def test_torch_functions_match_numpy():
    torch = pytest.importorskip("torch")
    from commandv.runtime.engines.reference import _TORCH_ACTS

    x = np.linspace(-4, 4, 17)
    for name, f in acts.ACTIVATIONS.items():
        np.testing.assert_allclose(_TORCH_ACTS[name](torch.tensor(x)).numpy(), f(x), atol=1e-12, err_msg=name)
        np.testing.assert_allclose(acts.torch_activation(name)(torch.tensor(x)).numpy(), f(x), atol=1e-12)


def test_onnx_nodes_for_every_slot():
    pytest.importorskip("onnx")
    for slot in onnx_surgery.SLOT_ACTS:
        nodes, out = onnx_surgery._act_nodes(slot, "u", f"p/{slot}")
        assert nodes and out == f"p/{slot}/z"
        kind = acts.SLOT_KIND[slot]
        if kind.onnx_op:
            assert [n.op_type for n in nodes] == [kind.onnx_op]
