"""pyreft intervention state dicts → DonorEdit: parity with pyreft's own forward.

The reference is pyreft 0.1.0 itself (``intervention(base)`` on random rows) for
every intervention type, activation and bias setting; when pyreft is missing
the same state dicts are built by hand and checked against written-out numpy
formulas (those tests always run).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from commandv.exporter.adapters.interventions import (  # noqa: E402
    INTERVENTION_TYPES,
    AdapterError,
    DonorEdit,
    from_state_dict,
    infer_type,
    normalize_type,
    orthogonal_weight,
)
from tests.pyreft_fixtures import make_intervention, pyreft_apply, torch_roundtrip  # noqa: E402

D, R = 24, 4

# (kind, act, add_bias) — every type, every bias flag, linear and non-linear activations
CASES = [
    ("LoReFT", None, None), ("LoReFT", "relu", None), ("LoReFT", "gelu", None), ("LoReFT", "silu", None),
    ("NoReFT", "linear", True), ("NoReFT", "relu", True), ("NoReFT", "gelu", False), ("NoReFT", None, False),
    ("DiReFT", None, None), ("DiReFT", "relu", None), ("DiReFT", "silu", None),
    ("NodiReFT", "linear", True), ("NodiReFT", "gelu", True), ("NodiReFT", None, False), ("NodiReFT", "relu", False),
    ("ConsReFT", None, None),
    ("LobiReFT", None, None),
]


@pytest.fixture(scope="module")
def pyreft():
    return pytest.importorskip("pyreft", exc_type=ImportError)


def _rows(seed: int, n: int = 5, d: int = D) -> np.ndarray:
    """``h [n, d]`` with a spread of scales, so activations leave their linear range."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * rng.uniform(0.5, 3.0, (n, 1))).astype(np.float32).astype(np.float64)


def _assert_matches(got: np.ndarray, want: np.ndarray, h: np.ndarray) -> None:
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    # the edit is far from the identity: a wrong conversion could not pass by accident
    assert np.abs(want - h).max() > 1e-2 * scale


# ---------------------------------------------------------------- parity with pyreft


@pytest.mark.parametrize("kind,act,add_bias", CASES)
def test_matches_pyreft_forward(pyreft, kind, act, add_bias):
    iv = make_intervention(kind, D, R, act=act, add_bias=add_bias, seed=CASES.index((kind, act, add_bias)))
    state = torch_roundtrip(iv.state_dict())
    edit = from_state_dict(state, kind, layer=0, act=act)
    assert (edit.kind, edit.layer, edit.d, edit.rank) == (kind, 0, D, R)
    for name in ("A", "b", "C", "P", "Q", "e"):
        t = getattr(edit, name)
        assert t is None or t.dtype == np.float64
    h = _rows(1)
    _assert_matches(h + edit.delta(h), pyreft_apply(iv, h), h)


@pytest.mark.parametrize("kind", ["LoReFT", "NoReFT", "DiReFT", "NodiReFT"])
def test_wrong_activation_is_detected(pyreft, kind):
    """The parity check can fail: converting a relu intervention as linear does not match."""
    iv = make_intervention(kind, D, R, act="relu", add_bias=True, seed=3)
    edit = from_state_dict(torch_roundtrip(iv.state_dict()), kind, layer=0, act="linear")
    h = _rows(2)
    assert not np.allclose(h + edit.delta(h), pyreft_apply(iv, h), rtol=1e-3, atol=1e-3)


def test_noreft_bias_is_an_offset(pyreft):
    iv = make_intervention("NoReFT", D, R, add_bias=True, seed=4)
    edit = from_state_dict(torch_roundtrip(iv.state_dict()), "NoReFT", layer=0)
    p = iv.proj_layer.bias.detach().double().numpy()
    Pw = iv.proj_layer.weight.detach().double().numpy()
    np.testing.assert_allclose(edit.e, -p @ Pw, rtol=1e-12)
    no_bias = from_state_dict(torch_roundtrip(iv.state_dict()), "NodiReFT", layer=0)
    assert no_bias.e is None and no_bias.P is None  # NodiReFT ignores proj_layer.bias and the projection


def test_shrunk_rotation_diagonal_zeroes_a_column_like_pyreft(pyreft):
    """After weight decay the ``original`` diagonal drops below 1 and torch's ``.int()`` zeroes that column."""
    iv = make_intervention("DiReFT", D, R, seed=5)
    with torch.no_grad():
        iv.rotate_layer.parametrizations.weight.original[1, 1] = -0.6
    R_eff = iv.rotate_layer.weight.detach().double().numpy()
    assert np.abs(R_eff[:, 1]).max() == 0.0
    edit = from_state_dict(torch_roundtrip(iv.state_dict()), "DiReFT", layer=0)
    np.testing.assert_array_equal(edit.C[1], 0.0)
    h = _rows(3)
    _assert_matches(h + edit.delta(h), pyreft_apply(iv, h), h)


@pytest.mark.parametrize("kind", ["DiReFT", "LobiReFT"])
def test_bf16_saved_rotation(pyreft, kind):
    """Adapters trained on GPU in bf16 store a bf16 ``original``/``base``; CPU torch cannot run
    Householder in bf16, the importer must still read them (in float64)."""
    iv = make_intervention(kind, D, R, seed=6)
    state = {k: (v.bfloat16() if v.is_floating_point() else v) for k, v in iv.state_dict().items()}
    edit = from_state_dict(torch_roundtrip(state), kind, layer=0)
    # reference: pyreft's fp32 module holding the bf16-rounded parameters
    ref = make_intervention(kind, D, R, seed=7)
    ref.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    h = _rows(4)
    _assert_matches(h + edit.delta(h), pyreft_apply(ref, h), h)


def test_global_rng_untouched(pyreft):
    iv = make_intervention("DiReFT", D, R, seed=8)
    state = torch_roundtrip(iv.state_dict())
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    orthogonal_weight(state)
    assert torch.equal(torch.rand(3), expected)


def test_infer_type_from_real_state_dicts(pyreft):
    for kind in ("LoReFT", "DiReFT"):
        state = torch_roundtrip(make_intervention(kind, D, R, seed=9).state_dict())
        assert infer_type(state) == kind
        assert from_state_dict(state, None, layer=2).kind == kind
    for kind, needle in (("NoReFT", "NoReFT from NodiReFT"), ("NodiReFT", "NoReFT from NodiReFT"),
                         ("ConsReFT", "ConsReFT from LobiReFT"), ("LobiReFT", "ConsReFT from LobiReFT")):
        state = torch_roundtrip(make_intervention(kind, D, R, add_bias=False, seed=9).state_dict())
        with pytest.raises(AdapterError, match=needle):
            from_state_dict(state, None, layer=0)


# ---------------------------------------------------------------- numpy formulas (no pyreft)


def _np_act(name: str, x: np.ndarray) -> np.ndarray:
    if name == "linear":
        return x
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "gelu":
        return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    if name == "silu":
        return x / (1.0 + np.exp(-x))
    raise AssertionError(name)


def _t(a: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(a)).float()


def _torch_rotation(d: int, r: int, seed: int) -> tuple[dict, np.ndarray]:
    """A torch-orthogonal-parametrized ``[d, r]`` weight as pyreft saves it, and its effective value."""
    torch.manual_seed(seed)

    class Rot(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.nn.init.orthogonal_(torch.empty(d, r)))

    mod = torch.nn.utils.parametrizations.orthogonal(Rot())
    with torch.no_grad():
        mod.parametrizations.weight.original.add_(0.5 * torch.randn(d, r).tril(-1))
    state = {f"rotate_layer.{k}": v.clone() for k, v in mod.state_dict().items()}
    mod.double()  # effective weight of the stored fp32 values, computed in float64
    return state, mod.weight.detach().numpy()


@pytest.mark.parametrize("act", ["linear", "relu", "gelu", "silu"])
def test_numpy_formulas(act):
    rng = np.random.default_rng(11)
    W = rng.standard_normal((R, D)) / np.sqrt(D)
    b = rng.standard_normal(R)
    P = rng.standard_normal((R, D)) / np.sqrt(D)
    p = rng.standard_normal(R)
    c = rng.standard_normal(R)
    Rlo = np.linalg.qr(rng.standard_normal((D, R)))[0]
    rot_state, Rrot = _torch_rotation(D, R, 12)
    W, b, P, p, c, Rlo = (_t(x).double().numpy() for x in (W, b, P, p, c, Rlo))  # values as stored in fp32
    h = _rows(5)
    a = lambda x: _np_act(act, x)  # noqa: E731
    cases = {
        "LoReFT": ({"weight": W, "bias": b, "rotate_layer": Rlo},
                   h + (a(h @ W.T + b) - h @ Rlo) @ Rlo.T),
        "NoReFT": ({"proj_layer.weight": P, "proj_layer.bias": p, "learned_source.weight": W,
                    "learned_source.bias": b}, h + (a(h @ W.T + b) - (h @ P.T + p)) @ P),
        "NodiReFT": ({"proj_layer.weight": P, "proj_layer.bias": p, "learned_source.weight": W,
                      "learned_source.bias": b}, h + a(h @ W.T + b) @ P),
        "DiReFT": ({**rot_state, "learned_source.weight": W, "learned_source.bias": b},
                   h + a(h @ W.T + b) @ Rrot.T),
        "ConsReFT": ({**rot_state, "learned_source": c}, h + (c - h @ Rrot) @ Rrot.T),
        "LobiReFT": ({**rot_state, "learned_source": c}, h + c @ Rrot.T),
    }
    assert set(cases) == set(INTERVENTION_TYPES)
    for kind, (state, want) in cases.items():
        state = torch_roundtrip({k: (_t(v) if isinstance(v, np.ndarray) else v) for k, v in state.items()})
        edit = from_state_dict(state, kind, layer=7, act=act)
        assert isinstance(edit, DonorEdit) and edit.layer == 7
        np.testing.assert_allclose(h + edit.delta(h), want, rtol=1e-9, atol=1e-9, err_msg=kind)


# ---------------------------------------------------------------- names and bad inputs


@pytest.mark.parametrize("name,canon", [
    ("<class 'pyreft.interventions.NodireftIntervention'>", "NodiReFT"),
    ("pyreft.interventions.LoreftIntervention", "LoReFT"),
    ("NoreftIntervention", "NoReFT"),
    ("direft", "DiReFT"),
    ("ConsReFT", "ConsReFT"),
    ("lobireftintervention", "LobiReFT"),
])
def test_normalize_type(name, canon):
    assert normalize_type(name) == canon


def _nodireft_state(d=D, r=R):
    g = torch.Generator().manual_seed(0)
    return {"proj_layer.weight": torch.randn(r, d, generator=g), "learned_source.weight": torch.randn(r, d, generator=g),
            "learned_source.bias": torch.randn(r, generator=g)}


def test_unknown_type_and_activation():
    with pytest.raises(AdapterError, match="unknown intervention type 'FooReFT'"):
        from_state_dict(_nodireft_state(), "FooReFT", layer=0)
    with pytest.raises(AdapterError, match="unknown activation 'swoosh'"):
        from_state_dict(_nodireft_state(), "NodiReFT", layer=0, act="swoosh")


def test_bad_state_dicts():
    s = _nodireft_state()
    s["learned_source.weight"] = torch.randn(R, 2 * D)
    with pytest.raises(AdapterError, match="inconsistent shapes"):
        from_state_dict(s, "NodiReFT", layer=0)
    s = _nodireft_state()
    s["learned_source.bias"][1] = float("nan")
    with pytest.raises(AdapterError, match="NaN or Inf"):
        from_state_dict(s, "NodiReFT", layer=0)
    s = _nodireft_state()
    del s["learned_source.bias"]
    with pytest.raises(AdapterError, match="lacks"):
        from_state_dict(s, "NodiReFT", layer=0)
    s = _nodireft_state()
    s["proj_layer.bias"] = torch.randn(R + 1)
    with pytest.raises(AdapterError, match="proj_layer.bias"):
        from_state_dict(s, "NoReFT", layer=0)
    s = _nodireft_state()
    s["learned_source.weight"] = torch.randn(D)
    with pytest.raises(AdapterError, match="2-D"):
        from_state_dict(s, "NodiReFT", layer=0)
    s = _nodireft_state(r=0)
    with pytest.raises(AdapterError, match="rank is 0"):
        from_state_dict(s, "NodiReFT", layer=0)
    with pytest.raises(AdapterError, match="match no pyreft intervention"):
        from_state_dict({"foo": torch.zeros(2)}, None, layer=0)


def test_rotation_without_base_is_refused():
    """Without the saved ``base`` the rotation would silently be a fresh random one."""
    rot_state, _ = _torch_rotation(D, R, 13)
    state = {k: v for k, v in rot_state.items() if not k.endswith(".base")}
    state.update({"learned_source.weight": torch.randn(R, D), "learned_source.bias": torch.randn(R)})
    with pytest.raises(AdapterError, match=r"weight\.0\.base"):
        from_state_dict(state, "DiReFT", layer=0)
    rot_state["rotate_layer.parametrizations.weight.0.base"] = torch.randn(D + 1, D + 1)
    rot_state.update({"learned_source.weight": torch.randn(R, D), "learned_source.bias": torch.randn(R)})
    with pytest.raises(AdapterError, match="orthogonal rotation"):
        from_state_dict(rot_state, "DiReFT", layer=0)
