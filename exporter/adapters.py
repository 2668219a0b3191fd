"""Read pyreft/pyvene adapter folders (data only: ``torch.load(weights_only=True)``).

Two on-disk forms are accepted:

* ``ReftModel.save(dir)`` / ``IntervenableModel.save``: ``config.json`` (pyvene
  ``IntervenableConfig``: ``representations``, ``intervention_types``,
  ``sorted_keys``) plus one ``intkey_<key>.bin`` per intervention.
* ``ReftTrainer.save_model(out)``: ``out/intervenable_model/intkey_*.bin`` only
  (no config): the type is inferred from the keys or given by the caller.

Layers come from the keys ``layer_{L}_comp_{component}_unit_{unit}_nunit_{n}#{i}``.
Positions (``l1``, ``f1+l1``…) are a training-data setting pyreft does not
store; they come from ``training_metadata.json`` when present, else the caller
(default ``l1``, the paper's setting).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from commandv.runtime.pack_gguf import json_problem

from .interventions import AdapterError, DonorEdit, from_state_dict, normalize_type

_KEY = re.compile(r"^layer_(\d+)_comp_([a-z_]+?)_unit_([a-z_.]+)_nunit_(\d+)#(\d+)$")
SUPPORTED_COMPONENTS = ("block_output",)
MAX_CONFIG_BYTES = 4 << 20


@dataclass
class Adapter:
    """A donor adapter: one :class:`DonorEdit` per intervened donor layer, in layer order."""

    edits: list[DonorEdit]
    kind: str
    positions: str
    component: str
    sha256: str
    source: str
    meta: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return [e.layer for e in self.edits]

    @property
    def d_model(self) -> int:
        return self.edits[0].d


def _parse_key(key: str) -> tuple[int, str]:
    m = _KEY.match(key)
    if not m:
        raise AdapterError(f"intervention key {key!r} is not of the form layer_L_comp_C_unit_U_nunit_N#I")
    return int(m.group(1)), m.group(2)


def _load_state(path: Path) -> dict:
    import pickle

    import torch

    try:
        with warnings.catch_warnings():  # legacy pickles are refused below anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise AdapterError(
            f"{path.name}: refusing to unpickle (only plain tensor state dicts are read): {_unpickle_reason(exc)}"
        ) from None
    except Exception as exc:
        raise AdapterError(f"{path.name}: not a readable torch state dict ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise AdapterError(f"{path.name}: expected a dict of tensors, got {type(state).__name__}")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdapterError(f"{path.name}: state dict holds non-tensor values")
    if not all(v.is_floating_point() for k, v in state.items() if k not in ("embed_dim", "interchange_dim")):
        raise AdapterError(f"{path.name}: state dict holds non-float weights")
    return state


def _unpickle_reason(exc: Exception) -> str:
    """The informative part of torch's weights-only refusal, e.g. ``Unsupported global: GLOBAL exec was not an
    allowed global by default`` (the rest is boilerplate, including advice to load unsafely, which we never relay)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = text.split(marker, 1)[1].strip().splitlines()[0]
        return reason.split(". Please use", 1)[0].strip()[:160]
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(boiler) and "weights_only" not in ln]
    return (useful or [type(exc).__name__])[0][:160]


def _read_json(path: Path) -> dict:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterError(f"{path.name} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # syntax, encoding, nesting depth, ints over the digit limit
        raise AdapterError(f"{path.name}: invalid JSON ({json_problem(exc)})") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{path.name}: expected a JSON object")
    return data


def adapter_hash(folder: Path, names: list[str] | None = None) -> str:
    """sha256 over the names and bytes of ``config.json`` and the ``intkey_*.bin`` files.

    ``names``: the file names to cover (default: config.json and every intkey file).
    """
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if names is not None:
            if p.name in names:
                h.update(p.name.encode())
                h.update(hashlib.sha256(p.read_bytes()).digest())
        elif p.name == "config.json" or (p.name.startswith("intkey_") and p.suffix == ".bin"):
            h.update(p.name.encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def load_adapter(
    path: str | Path,
    kind: str | None = None,
    act: str | None = None,
    positions: str | None = None,
) -> Adapter:
    """Read a pyreft adapter folder into an :class:`Adapter`.

    ``kind`` supplies the intervention type (folders without config.json; with one, it must agree), ``act`` the activation
    (pyreft never saves ``act_fn``; default ``linear`` as in pyreft), ``positions``
    the targeted positions (default: training_metadata.json, else ``l1``).
    With a config.json only its ``sorted_keys`` are read (as pyvene does); the
    hash covers config.json and those files.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise AdapterError(f"adapter folder not found: {folder}")
    if not (folder / "config.json").exists() and (folder / "intervenable_model").is_dir():
        folder = folder / "intervenable_model"
    files = {p.name[len("intkey_"):-len(".bin")]: p for p in folder.glob("intkey_*.bin")}
    if not files:
        raise AdapterError(f"{folder}: no intkey_*.bin files (not a pyreft adapter folder)")
    types_by_key: dict[str, str] = {}
    config: dict = {}
    if (folder / "config.json").exists():
        config = _read_json(folder / "config.json")
        keys = config.get("sorted_keys")
        types = config.get("intervention_types")
        if not isinstance(keys, list) or not isinstance(types, list) or len(keys) != len(types):
            raise AdapterError("config.json: sorted_keys and intervention_types missing or of different lengths")
        if not all(isinstance(k, str) for k in keys) or not all(isinstance(t, str) for t in types):
            raise AdapterError("config.json: sorted_keys and intervention_types must be lists of strings")
        for k, t in zip(keys, types):
            if k not in files:
                raise AdapterError(f"config.json names intervention {k!r} but intkey_{k}.bin is missing")
            types_by_key[k] = str(t)  # normalized when used; an explicit ``kind`` must agree with it
        # pyvene loads exactly the config's interventions: stray intkey files are not part of the adapter
        files = {k: files[k] for k in keys}
        if not files:
            raise AdapterError("config.json lists no interventions")
    meta_path = folder / "training_metadata.json"
    meta = _read_json(meta_path) if meta_path.exists() else {}
    if positions is None:
        positions = str(meta.get("positions") or "l1")
    if act is None:
        act = str(meta.get("act_fn") or "linear")

    edits = []
    components = set()
    for key, file in files.items():
        layer, component = _parse_key(key)
        components.add(component)
        if component not in SUPPORTED_COMPONENTS:
            raise AdapterError(f"{file.name}: component {component!r} not supported (only {SUPPORTED_COMPONENTS})")
        saved = types_by_key.get(key)
        if not kind:
            k = normalize_type(saved) if saved else None
        else:  # an explicit type may name one config.json's type string does not; it may not contradict it
            k = normalize_type(kind)
            try:
                known = normalize_type(saved) if saved else None
            except AdapterError:
                known = None
            if known and known != k:
                raise AdapterError(f"{file.name}: config.json says {known} but the type given is {k}; drop the "
                                   "type (config.json decides) or fix config.json")
        try:
            edits.append(from_state_dict(_load_state(file), k, layer, act))
        except AdapterError as exc:
            msg = str(exc)
            raise AdapterError(msg if msg.startswith(file.name) else f"{file.name}: {msg}") from None
    edits.sort(key=lambda e: e.layer)
    dups = {e.layer for e in edits if sum(x.layer == e.layer for x in edits) > 1}
    if dups:
        raise AdapterError(f"several interventions on donor layer(s) {sorted(dups)}")
    if len({e.d for e in edits}) != 1:
        raise AdapterError(f"interventions disagree on the hidden size: {sorted({e.d for e in edits})}")
    kinds = sorted({e.kind for e in edits})
    return Adapter(
        edits=edits,
        kind="+".join(kinds),
        positions=positions,
        component=components.pop(),
        sha256=adapter_hash(folder, ["config.json", *(p.name for p in files.values())]),
        source=str(folder),
        meta={k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))},
    )
