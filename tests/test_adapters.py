"""Adapter folders → Adapter: real pyreft saves, the authors' adapter, and bad inputs.

Folders are written by pyreft/pyvene themselves (``ReftModel.save`` and what
``ReftTrainer.save_model`` writes) on a tiny random Llama; every DonorEdit is
checked against the live pyreft intervention, and once end to end against
pyreft's intervened forward pass of the model.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from commandv.exporter.adapters.folder import Adapter, adapter_hash, load_adapter  # noqa: E402
from commandv.exporter.adapters.interventions import AdapterError  # noqa: E402
from tests.helpers import shared_dir  # noqa: E402
from tests.pyreft_fixtures import pyreft_apply, save_reft_adapter  # noqa: E402

D, RANK, LAYERS = 32, 4, (0, 2)
KEY = "layer_{}_comp_block_output_unit_pos_nunit_1#0"
REAL = shared_dir() / "adapters" / "llama3.2-3b-instruct-cot-nodireft"
REAL_LAYERS = list(range(0, 27, 2))
# adapter_hash of the authors' folder (config.json + 14 intkey files); pinned so a change is noticed
REAL_SHA256 = "65c6ebc7a2bc6c9194be0d762df0b1763abd89f28f4468fbd7c15c2d119b1c8e"


@pytest.fixture(scope="module")
def pyreft():
    return pytest.importorskip("pyreft", exc_type=ImportError)


def _check_edits(adapter: Adapter, by_layer: dict, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for edit in adapter.edits:
        h = (rng.standard_normal((5, D)) * 2.0).astype(np.float32).astype(np.float64)
        want = pyreft_apply(by_layer[edit.layer], h)
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(h + edit.delta(h), want, rtol=1e-5, atol=1e-5 * scale)
        assert np.abs(want - h).max() > 1e-2 * scale


# ---------------------------------------------------------------- real pyreft saves


@pytest.mark.parametrize("kind,add_bias", [("DiReFT", False), ("NodiReFT", True), ("NodiReFT", False)])
def test_reft_model_save(pyreft, tmp_path, kind, add_bias):
    _, by_layer = save_reft_adapter(tmp_path / "ad", kind, LAYERS, RANK, D, form="save", add_bias=add_bias)
    assert (tmp_path / "ad" / "config.json").exists()
    ad = load_adapter(tmp_path / "ad")
    assert ad.layers == list(LAYERS)
    assert ad.kind == kind and ad.component == "block_output" and ad.positions == "l1"
    assert ad.d_model == D and all(e.rank == RANK and e.kind == kind for e in ad.edits)
    assert ad.source == str(tmp_path / "ad") and len(ad.sha256) == 64
    _check_edits(ad, by_layer)


def test_trainer_save_model_form(pyreft, tmp_path):
    """``ReftTrainer.save_model(out)`` writes ``out/intervenable_model/intkey_*.bin`` without a config."""
    _, nodi = save_reft_adapter(tmp_path / "nodi", "NodiReFT", LAYERS, RANK, D, form="trainer", seed=1)
    assert not (tmp_path / "nodi" / "intervenable_model" / "config.json").exists()
    with pytest.raises(AdapterError, match="NoReFT from NodiReFT"):
        load_adapter(tmp_path / "nodi")
    for folder in (tmp_path / "nodi", tmp_path / "nodi" / "intervenable_model"):
        ad = load_adapter(folder, kind="NodiReFT")
        assert ad.kind == "NodiReFT" and ad.layers == list(LAYERS)
        assert ad.source == str(tmp_path / "nodi" / "intervenable_model")
        _check_edits(ad, nodi, seed=1)
    # giving the wrong type of the pair is not detectable from weights, but changes the edit
    wrong = load_adapter(tmp_path / "nodi", kind="NoReFT")
    assert wrong.edits[0].P is not None

    _, di = save_reft_adapter(tmp_path / "di", "DiReFT", LAYERS, RANK, D, form="trainer", seed=2)
    ad = load_adapter(tmp_path / "di")
    assert ad.kind == "DiReFT" and ad.layers == list(LAYERS)
    _check_edits(ad, di, seed=2)


def test_block_output_is_the_decoder_layer_output(pyreft, tmp_path):
    """End to end: pyreft's intervened forward equals adding each edit to ``model.layers[L]``'s output."""
    reft_model, _ = save_reft_adapter(tmp_path / "ad", "NodiReFT", LAYERS, RANK, D, add_bias=True, seed=3)
    ad = load_adapter(tmp_path / "ad")
    ids = torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(0))
    pos = 5
    with torch.no_grad():
        _, intervened = reft_model({"input_ids": ids}, unit_locations={"sources->base": (None, [[[pos]]] * 2)})
    base = reft_model.model

    def hook_for(edit):
        def hook(_mod, _args, out):
            hs = (out[0] if isinstance(out, tuple) else out).clone()
            row = hs[0, pos].double().numpy()
            hs[0, pos] = torch.from_numpy(row + edit.delta(row)).to(hs.dtype)
            return (hs, *out[1:]) if isinstance(out, tuple) else hs
        return hook

    handles = [base.model.layers[e.layer].register_forward_hook(hook_for(e)) for e in ad.edits]
    try:
        with torch.no_grad():
            mine = base(input_ids=ids).logits
    finally:
        for hd in handles:
            hd.remove()
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    err = (mine - intervened.logits).abs().max().item()
    assert err < 1e-4
    assert (plain - intervened.logits).abs().max().item() > 100 * max(err, 1e-6)


def test_metadata_positions_act_and_overrides(pyreft, tmp_path):
    _, by_layer = save_reft_adapter(tmp_path / "ad", "DiReFT", LAYERS, RANK, D, seed=4)
    (tmp_path / "ad" / "training_metadata.json").write_text(json.dumps({"positions": "f1+l1", "act_fn": "relu"}))
    ad = load_adapter(tmp_path / "ad")
    assert ad.positions == "f1+l1" and all(e.act == "relu" for e in ad.edits)
    assert ad.meta["positions"] == "f1+l1"
    ad = load_adapter(tmp_path / "ad", act="linear", positions="l3")
    assert ad.positions == "l3" and all(e.act == "linear" for e in ad.edits)
    _check_edits(ad, by_layer)


def test_config_decides_which_files_are_read(pyreft, tmp_path):
    """pyvene loads only the config's interventions: a stray intkey file is ignored (and not hashed)."""
    save_reft_adapter(tmp_path / "ad", "DiReFT", LAYERS, RANK, D, seed=5)
    h0 = load_adapter(tmp_path / "ad").sha256
    shutil.copy(tmp_path / "ad" / f"intkey_{KEY.format(0)}.bin", tmp_path / "ad" / f"intkey_{KEY.format(3)}.bin")
    ad = load_adapter(tmp_path / "ad")
    assert ad.layers == list(LAYERS) and ad.sha256 == h0


# ---------------------------------------------------------------- the authors' adapter


@pytest.fixture(scope="module")
def real_adapter():
    if not REAL.is_dir():
        pytest.skip(f"{REAL} not present")
    return load_adapter(REAL)


def test_real_adapter_layout(real_adapter):
    ad = real_adapter
    assert ad.layers == REAL_LAYERS
    assert ad.kind == "NodiReFT" and ad.component == "block_output" and ad.positions == "l1"
    assert ad.d_model == 3072 and all(e.rank == 8 and e.d == 3072 for e in ad.edits)
    assert all(e.act == "linear" and e.P is None and e.e is None for e in ad.edits)
    assert ad.meta["intervention_type"] == "NodireftIntervention"


def test_real_adapter_values_equal_the_files(real_adapter):
    for edit in real_adapter.edits:
        state = torch.load(REAL / f"intkey_{KEY.format(edit.layer)}.bin", map_location="cpu", weights_only=True)
        assert state["learned_source.weight"].dtype == torch.bfloat16
        for got, t in ((edit.A, state["learned_source.weight"].T), (edit.b, state["learned_source.bias"]),
                       (edit.C, state["proj_layer.weight"])):
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got, t.double().numpy())
        assert np.abs(edit.C).max() > 0


def test_real_adapter_hash_is_stable(real_adapter):
    h = hashlib.sha256()
    for name in sorted(["config.json", *(f"intkey_{KEY.format(L)}.bin" for L in REAL_LAYERS)]):
        h.update(name.encode())
        h.update(hashlib.sha256((REAL / name).read_bytes()).digest())
    assert real_adapter.sha256 == h.hexdigest() == adapter_hash(REAL) == REAL_SHA256
    assert load_adapter(REAL).sha256 == real_adapter.sha256


# ---------------------------------------------------------------- bad inputs (no pyreft needed)


def _state(d=D, r=RANK, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"proj_layer.weight": torch.randn(r, d, generator=g), "learned_source.weight": torch.randn(r, d, generator=g),
            "learned_source.bias": torch.randn(r, generator=g)}


def _folder(tmp_path: Path, states: dict, types: list[str] | None = None, config: bool = True) -> Path:
    """An adapter folder with ``intkey_<key>.bin`` per entry of ``states`` and a pyvene-like config."""
    folder = tmp_path / "adapter"
    folder.mkdir(exist_ok=True)
    for key, state in states.items():
        torch.save(state, folder / f"intkey_{key}.bin")
    if config:
        keys = list(states)
        types = types or ["<class 'pyreft.interventions.NodireftIntervention'>"] * len(keys)
        (folder / "config.json").write_text(json.dumps({"sorted_keys": keys, "intervention_types": types}))
    return folder


def test_handmade_folder_loads(tmp_path):
    folder = _folder(tmp_path, {KEY.format(1): _state(seed=1), KEY.format(5): _state(seed=2)})
    ad = load_adapter(folder)
    assert ad.layers == [1, 5] and ad.kind == "NodiReFT"
    np.testing.assert_array_equal(ad.edits[1].C, _state(seed=2)["proj_layer.weight"].double().numpy())


def test_missing_folder_and_no_files(tmp_path):
    with pytest.raises(AdapterError, match="adapter folder not found"):
        load_adapter(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(AdapterError, match="no intkey_"):
        load_adapter(tmp_path / "empty")


def test_bad_config(tmp_path):
    folder = _folder(tmp_path, {KEY.format(0): _state()})
    (folder / "config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="config.json: invalid JSON"):
        load_adapter(folder)
    (folder / "config.json").write_text(json.dumps({"sorted_keys": [KEY.format(0), KEY.format(4)],
                                                    "intervention_types": ["NodireftIntervention"] * 2}))
    with pytest.raises(AdapterError, match=r"intkey_layer_4_.*\.bin is missing"):
        load_adapter(folder)
    (folder / "config.json").write_text(json.dumps({"sorted_keys": [KEY.format(0)]}))
    with pytest.raises(AdapterError, match="intervention_types missing"):
        load_adapter(folder)
    (folder / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(AdapterError, match="expected a JSON object"):
        load_adapter(folder)
    (folder / "config.json").write_text(json.dumps({"sorted_keys": [["x"]], "intervention_types": ["NodiReFT"]}))
    with pytest.raises(AdapterError, match="must be lists of strings"):
        load_adapter(folder)


def test_unknown_type_and_activation(tmp_path):
    folder = _folder(tmp_path, {KEY.format(0): _state()}, types=["<class 'pyreft.interventions.FooIntervention'>"])
    with pytest.raises(AdapterError, match="unknown intervention type"):
        load_adapter(folder)
    with pytest.raises(AdapterError, match="unknown intervention type 'bogus'"):
        load_adapter(folder, kind="bogus")
    assert load_adapter(folder, kind="NodiReFT").kind == "NodiReFT"
    with pytest.raises(AdapterError, match="unknown activation 'swoosh'"):
        load_adapter(folder, kind="NodiReFT", act="swoosh")


class _Marker:
    """Unpickling this creates ``path`` (what a malicious adapter file could do)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("how", ["torch_save", "pickle_dump", "pickle_set"])
def test_refuses_to_unpickle_code(tmp_path, how):
    marker = tmp_path / "EXECUTED"
    folder = tmp_path / "adapter"
    folder.mkdir()
    path = folder / f"intkey_{KEY.format(0)}.bin"
    if how == "torch_save":
        torch.save({"x": _Marker(marker)}, path)
    elif how == "pickle_dump":
        path.write_bytes(pickle.dumps({"x": _Marker(marker)}))
    else:
        path.write_bytes(pickle.dumps({1, 2, 3}))
    assert not marker.exists()
    with pytest.raises(AdapterError, match="refusing to unpickle") as info:
        load_adapter(folder, kind="NodiReFT")
    assert not marker.exists()
    assert "weights_only` set to `False`" not in str(info.value)  # no advice to load unsafely
    if how != "pickle_set":  # the payload is live: a plain unpickle would have run it
        pickle.loads(pickle.dumps(_Marker(tmp_path / "control")))
        assert (tmp_path / "control").exists()


def test_unreadable_or_wrong_content(tmp_path):
    folder = _folder(tmp_path, {KEY.format(0): _state()}, config=False)
    path = folder / f"intkey_{KEY.format(0)}.bin"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="not a readable torch state dict"):
        load_adapter(folder, kind="NodiReFT")
    for bad, needle in (([torch.zeros(3)], "expected a dict"), ({"w": 3}, "non-tensor"),
                        ({"proj_layer.weight": torch.zeros(4, 32, dtype=torch.int32)}, "non-float")):
        torch.save(bad, path)
        with pytest.raises(AdapterError, match=needle):
            load_adapter(folder, kind="NodiReFT")


def test_nan_and_shape_mismatch(tmp_path):
    s = _state()
    s["proj_layer.weight"][2, 3] = float("nan")
    folder = _folder(tmp_path, {KEY.format(0): s})
    with pytest.raises(AdapterError, match=r"intkey_layer_0.*NaN"):
        load_adapter(folder)
    s = _state()
    s["proj_layer.weight"] = torch.randn(RANK, 16)  # learned_source.weight is [4, 32]
    folder = _folder(tmp_path, {KEY.format(0): s})
    with pytest.raises(AdapterError, match="inconsistent shapes"):
        load_adapter(folder)


def test_bad_keys_and_layer_sets(tmp_path):
    folder = _folder(tmp_path, {"layer_0_comp_mlp_output_unit_pos_nunit_1#0": _state()})
    with pytest.raises(AdapterError, match="component 'mlp_output' not supported"):
        load_adapter(folder)
    shutil.rmtree(folder)
    folder = _folder(tmp_path, {"whatever": _state()}, config=False)
    with pytest.raises(AdapterError, match="not of the form"):
        load_adapter(folder, kind="NodiReFT")
    shutil.rmtree(folder)
    folder = _folder(tmp_path, {KEY.format(0): _state(), KEY.format(0)[:-1] + "1": _state(seed=1)})
    with pytest.raises(AdapterError, match=r"several interventions on donor layer\(s\) \[0\]"):
        load_adapter(folder)
    shutil.rmtree(folder)
    folder = _folder(tmp_path, {KEY.format(0): _state(), KEY.format(1): _state(d=48)})
    with pytest.raises(AdapterError, match="disagree on the hidden size"):
        load_adapter(folder)


def test_hash_tracks_content(tmp_path):
    folder = _folder(tmp_path, {KEY.format(0): _state(), KEY.format(2): _state(seed=1)})
    h0 = load_adapter(folder).sha256
    assert h0 == adapter_hash(folder) == load_adapter(folder).sha256
    torch.save(_state(seed=7), folder / f"intkey_{KEY.format(2)}.bin")
    h1 = load_adapter(folder).sha256
    assert h1 != h0
    (folder / "training_metadata.json").write_text(json.dumps({"positions": "l1"}))
    assert load_adapter(folder).sha256 == h1  # metadata is not part of the weights hash


def test_explicit_type_must_agree_with_config(pyreft, tmp_path):
    """With a config.json the saved types decide; a different explicit type is an error, not a silent override
    (NoReFT vs NodiReFT is not detectable from the weights and changes the edit)."""
    save_reft_adapter(tmp_path / "ad", "NodiReFT", LAYERS, RANK, D, seed=4)
    assert load_adapter(tmp_path / "ad", kind="nodireft").kind == "NodiReFT"
    with pytest.raises(AdapterError, match="config.json says NodiReFT but the type given is NoReFT"):
        load_adapter(tmp_path / "ad", kind="NoReFT")
