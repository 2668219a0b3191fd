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
import io
import json
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from commandv.exporter.adapters.interventions import AdapterError, DonorEdit, from_state_dict, normalize_type
from commandv.runtime.safe_io import json_problem, read_regular

_KEY = re.compile(r"^layer_(\d+)_comp_([a-z_]+?)_unit_([a-z_.]+)_nunit_(\d+)#(\d+)$")
SUPPORTED_COMPONENTS = ("block_output",)
MAX_CONFIG_BYTES = 4 << 20
MAX_STATE_BYTES = 512 << 20
"""Largest ``intkey_*.bin`` read (LoReFT at d=8192, rank 1024 in float32 is ~100 MB)."""
MAX_EXPANDED_BYTES = 512 << 20
"""Largest total of a torch zip's entries once expanded, whatever the config says."""
MAX_EXPAND_RATIO = 64
MAX_ZIP_ENTRIES, MAX_ZIP_DIRECTORY_BYTES = 4096, 1 << 20
"""Most entries and central-directory bytes of an ``intkey_*.bin`` zip (a 500 MB directory would be millions of
objects in :mod:`zipfile`); torch writes 6 records plus one per storage."""
"""torch writes its zip entries stored (ratio 1); more than this many expanded bytes per file byte is a bomb."""


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


def read_state_bytes(path: Path, bound: int | None = None) -> bytes:
    """The bytes of the torch file ``path`` (an ``intkey_*.bin``), checked not to expand past a bound.

    Reads only a regular file, at most :data:`MAX_STATE_BYTES`. A torch save is a zip: the sizes its entries
    declare (what ``torch.load`` allocates) must sum to at most ``bound`` (what the adapter config's shapes allow;
    None: no config bound), :data:`MAX_EXPANDED_BYTES`, and :data:`MAX_EXPAND_RATIO` × the file's size (torch
    stores entries uncompressed; a deflated entry of zeros expands 1000-fold). Raises :class:`AdapterError`.
    Call as ``torch.load(io.BytesIO(read_state_bytes(path)), weights_only=True)``.
    """
    data = read_regular(path, MAX_STATE_BYTES, "adapter file", AdapterError)
    if data[:4] != b"PK\x03\x04":  # not a zip: torch's legacy format, whose storages are never compressed
        return data
    entries, directory = _zip_directory(data)
    if entries > MAX_ZIP_ENTRIES or directory > MAX_ZIP_DIRECTORY_BYTES:  # zipfile makes an object per entry
        raise AdapterError(f"{path.name}: its zip archive declares {entries} entries in a {directory}-byte directory "
                           f"(a torch state dict has a few dozen; at most {MAX_ZIP_ENTRIES} are read)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
        raise AdapterError(f"{path.name}: not a readable torch state dict (corrupt zip archive: "
                           f"{str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from None
    total = sum(i.file_size for i in infos)
    limits = [(MAX_EXPANDED_BYTES, "the absolute cap"),
              (max(MAX_EXPAND_RATIO * len(data), 1 << 20), f"{MAX_EXPAND_RATIO}x the file's {len(data)} bytes")]
    if bound is not None:
        limits.append((bound, "what the config's hidden size and rank allow"))
    limit, why = min(limits)
    if total > limit:
        packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
        how = f" ({len(packed)} compressed entr{'y' if len(packed) == 1 else 'ies'}, e.g. {packed[0]})" if packed else ""
        raise AdapterError(f"{path.name}: its zip entries expand to {total} bytes{how}, more than {limit} ({why}); "
                           "refusing a possible decompression bomb")
    return data


def _zip_directory(data: bytes) -> tuple[int, int]:
    """(entry count, central directory size in bytes) that the zip archive ``data``'s end record declares (its
    zip64 record when the plain one overflows), as :mod:`zipfile` will read them; ``(0, 0)`` when there is no
    readable end record (zipfile then reports the archive as corrupt)."""
    import struct

    i = data.rfind(b"PK\x05\x06", max(0, len(data) - (1 << 16) - 22))
    if i < 0 or i + 22 > len(data):
        return 0, 0
    entries, directory = struct.unpack_from("<HI", data, i + 10)
    if (entries == 0xFFFF or directory == 0xFFFFFFFF) and i >= 20 and data[i - 20:i - 16] == b"PK\x06\x07":
        at = struct.unpack_from("<Q", data, i - 12)[0]
        if at + 56 <= len(data) and data[at:at + 4] == b"PK\x06\x06":
            entries, directory = struct.unpack_from("<QQ", data, at + 32)
    return entries, directory


def _state_bound(config: dict) -> int | None:
    """The most bytes one intervention's state may hold given the config's ``intervention_dimensions`` (d) and
    ``representations`` (rank at index 4), or None when the config does not say: six ``[d, r]`` matrices and
    vectors in float64, plus 1 MiB for the pickle and zip records (every pyreft type holds at most four)."""
    dims, reps = config.get("intervention_dimensions"), config.get("representations")
    ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 20  # noqa: E731
    if not isinstance(dims, list) or not dims or not all(ok(v) for v in dims):
        return None
    d = max(dims)
    ranks = [r[4] for r in reps if isinstance(r, list) and len(r) > 4] if isinstance(reps, list) else []
    r = max(ranks) if ranks and all(ok(v) for v in ranks) else d
    return 8 * 6 * (d * r + d + r) + (1 << 20)


def _load_state(path: Path, data: bytes | None = None, bound: int | None = None) -> dict:
    """The tensor state dict in ``path`` (or in ``data``, its bytes from :func:`read_state_bytes`), data only:
    dense float tensors keyed by strings. Raises :class:`AdapterError`."""
    import pickle

    import torch

    if data is None:
        data = read_state_bytes(path, bound)
    try:
        with warnings.catch_warnings():  # legacy pickles are refused below anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
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
    for k, v in state.items():
        if v.layout != torch.strided:  # sparse / compressed layouts: numpy conversion raises TypeError
            raise AdapterError(f"{path.name}: tensor {k[:80]!r} has layout {str(v.layout).replace('torch.', '')}; "
                               "only dense tensors are read")
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


def _read_json(path: Path, raw: bytes | None = None) -> dict:
    """A JSON object from ``path`` (a regular file of at most :data:`MAX_CONFIG_BYTES`; or from ``raw``, its bytes)."""
    if raw is None:
        raw = read_regular(path, MAX_CONFIG_BYTES, "adapter file", AdapterError)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # syntax, encoding, nesting depth, ints over the digit limit
        raise AdapterError(f"{path.name}: invalid JSON ({json_problem(exc)})") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{path.name}: expected a JSON object")
    return data


def adapter_hash(folder: Path, names: list[str] | None = None) -> str:
    """sha256 over the names and bytes of ``config.json`` and the ``intkey_*.bin`` files.

    ``names``: the file names to cover (default: config.json and every intkey file). Reads regular files only,
    each bounded (:class:`AdapterError` for a FIFO, a device, a file too large).
    """
    digests = {}
    for p in Path(folder).iterdir():
        if (p.name in names) if names is not None else (
                p.name == "config.json" or (p.name.startswith("intkey_") and p.suffix == ".bin")):
            digests[p.name] = hashlib.sha256(read_regular(p, MAX_STATE_BYTES, "adapter file", AdapterError)).digest()
    return _combine(digests)


def _combine(digests: dict[str, bytes]) -> str:
    """:func:`adapter_hash` of files already read: ``{file name: sha256 digest of its bytes}``."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(name.encode())
        h.update(digests[name])
    return h.hexdigest()


def adapter_name(source: str | os.PathLike) -> str:
    """What a pack records of the adapter folder ``source``: its base name, never the local path
    (``/home/me/adapters/pirate`` → ``pirate``; a ReftTrainer ``…/run/intervenable_model`` → ``run/intervenable_model``)."""
    p = Path(os.path.abspath(os.fspath(source)))
    return f"{p.parent.name}/{p.name}" if p.name == "intervenable_model" and p.parent.name else p.name


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
        if os.path.exists(folder):
            raise AdapterError(f"adapter path {folder} is not a folder (give the folder holding intkey_*.bin)")
        raise AdapterError(f"adapter folder not found: {folder}")
    if not os.path.lexists(folder / "config.json") and (folder / "intervenable_model").is_dir():
        folder = folder / "intervenable_model"
    files = {p.name[len("intkey_"):-len(".bin")]: p for p in folder.glob("intkey_*.bin")}
    if not files:
        raise AdapterError(f"{folder}: no intkey_*.bin files (not a pyreft adapter folder)")
    types_by_key: dict[str, str] = {}
    config: dict = {}
    digests: dict[str, bytes] = {}  # every file read once: parsed and hashed from the same bytes
    if os.path.lexists(folder / "config.json"):  # a dangling link is reported, not taken for "no config"
        raw = read_regular(folder / "config.json", MAX_CONFIG_BYTES, "adapter file", AdapterError)
        digests["config.json"] = hashlib.sha256(raw).digest()
        config = _read_json(folder / "config.json", raw)
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
    meta = _read_json(meta_path) if os.path.lexists(meta_path) else {}
    bound = _state_bound(config)
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
            data = read_state_bytes(file, bound)
            digests[file.name] = hashlib.sha256(data).digest()
            edits.append(from_state_dict(_load_state(file, data), k, layer, act))
        except AdapterError as exc:
            msg = str(exc)
            raise AdapterError(msg if file.name in msg else f"{file.name}: {msg}") from None
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
        sha256=_combine(digests),
        source=str(folder),
        meta={k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))},
    )
