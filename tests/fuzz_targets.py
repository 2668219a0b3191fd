"""Fuzz targets for the pack reader and the adapter importer (used by test_fuzz_pack.py and benchmarks/fuzz_long.py).

A mutation is a list of ``(op, a, b)`` with integer arguments, applied to a
valid seed's bytes by :func:`mutate`; hypothesis draws them in the tests and a
plain random loop draws them in the long run, so any failure reproduces from
``(target, seed index, ops)``.

Properties: :func:`pack_target` must either load a pack that validates and
survives a write/read round trip unchanged, or raise :class:`PackError`;
:func:`adapter_target` must either load an adapter whose edits are finite
with consistent shapes, or raise :class:`AdapterError`. Anything else
(another exception, a crash, a hang) is a finding.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

OPS = ("flip", "byte", "u32", "u64", "u32h", "u64h", "trunc", "insert", "delete", "dup", "pkl")
_I32 = (0, 1, 2, 3, 4, 5, 8, 9, 12, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
_I64 = _I32 + (1 << 32, 1 << 40, 1 << 60, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 30000, 65537)
HEADER_SPAN = 2048  # "h" ops aim at the first bytes, where counts, lengths and offsets live


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    """Apply ``ops`` in order; every op is total (any integers are valid)."""
    buf = bytearray(data)
    for op, a, b in ops:
        n = len(buf)
        if op == "pkl":
            buf = bytearray(_mutate_pickle(bytes(buf), a, b))
            continue
        if n == 0 and op != "insert":
            continue
        if op == "flip":
            i = a % (n * 8)
            buf[i // 8] ^= 1 << (i % 8)
        elif op == "byte":
            buf[a % n] = b & 0xFF
        elif op in ("u32", "u64", "u32h", "u64h"):
            width = 4 if op.startswith("u32") else 8
            pool = _I32 if width == 4 else _I64
            val = pool[b % len(pool)] if b % 3 else b % (1 << (8 * width))
            at = a % (min(n, HEADER_SPAN) if op.endswith("h") else n)
            buf[at:at + width] = val.to_bytes(width, "little")[: max(0, n - at)]
        elif op == "trunc":
            del buf[a % (n + 1):]
        elif op == "insert":
            k = 1 + b % 8
            buf[a % (n + 1):a % (n + 1)] = (b >> 3).to_bytes(8, "little")[:k]
        elif op == "delete":
            i = a % n
            del buf[i:i + 1 + b % 64]
        elif op == "dup":
            i = a % n
            chunk = bytes(buf[i:i + 1 + b % 64])
            j = (b >> 8) % (n + 1)
            buf[j:j] = chunk
    return bytes(buf)


def _mutate_pickle(data: bytes, a: int, b: int) -> bytes:
    """For torch zip files: flip one byte of the ``data.pkl`` record and re-zip (CRCs stay valid)."""
    try:
        zin = zipfile.ZipFile(io.BytesIO(data))
        records = [(n, zin.read(n)) for n in zin.namelist()]
    except Exception:  # noqa: BLE001 - not a readable zip: leave the bytes alone
        return data
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for name, blob in records:
            if name.endswith("data.pkl") and blob:
                i = a % len(blob)
                blob = blob[:i] + bytes([(blob[i] + 1 + b % 255) & 0xFF]) + blob[i + 1:]
            zout.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), blob)
    return out.getvalue()


# ---------------------------------------------------------------- pack target
@lru_cache(maxsize=1)
def pack_seeds() -> tuple[bytes, ...]:
    """Valid packs: the corpus base (f32 and f16), one entry without P/Q/e, three entries."""
    from tests.make_bad_corpus import base_pack, pack_bytes

    p1 = base_pack(1)
    p1.entries = p1.entries[1:]
    p3 = base_pack(2)
    p3.entries = p3.entries + [base_pack(3).entries[0]]
    p3.entries[-1].layer = 0
    return (pack_bytes(base_pack()), pack_bytes(base_pack(), "f16"), pack_bytes(p1), pack_bytes(p3))


def pack_target(data: bytes) -> str:
    """``"loaded"`` or ``"error"``; raises AssertionError (or the reader's own exception) on a finding."""
    from commandv.runtime.pack.gguf_io import write_pack
    from commandv.runtime.pack.model import PackError, parse_pack

    try:
        pack = parse_pack(data, "fuzz.gguf")
        pack.validate()
    except PackError:
        return "error"
    _render(pack)  # what `cmdv inspect` shows must not crash
    with tempfile.TemporaryDirectory() as tmp:  # a loaded pack must survive write → read unchanged
        path = Path(tmp) / "rt.gguf"
        write_pack(pack, path)
        again = parse_pack(path.read_bytes(), path)
    again.validate()
    assert again.recipient == pack.recipient and len(again.entries) == len(pack.entries)
    for x, y in zip(pack.entries, again.entries):
        assert (x.layer, x.act, x.positions, x.donor_layer) == (y.layer, y.act, y.positions, y.donor_layer)
        for name in ("A", "b", "C", "P", "Q", "e"):
            u, v = getattr(x, name), getattr(y, name)
            assert (u is None) == (v is None) and (u is None or np.array_equal(u, v)), name
    return "loaded"


def _render(pack) -> None:
    from rich.console import Console

    from commandv.exporter.transfer.export import diagnostics_table

    con = Console(file=io.StringIO(), width=120)
    con.print(pack.summary(), markup=False)
    for k, v in sorted(pack.meta.items()):
        con.print(f"  {k}: {v}", highlight=False, markup=False)
    if pack.diagnostics:
        con.print(diagnostics_table(pack.diagnostics))


# ---------------------------------------------------------------- adapter target
ADAPTER_KEY = "layer_{}_comp_block_output_unit_pos_nunit_1#0"


@lru_cache(maxsize=1)
def adapter_seeds() -> tuple[dict[str, bytes], ...]:
    """Valid adapter folders as ``{file name: bytes}``: NodiReFT (2 layers), NoReFT with bias, LoReFT."""
    import torch

    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    d, r = 8, 2

    def blob(state) -> bytes:
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def folder(states: dict, kind: str) -> dict[str, bytes]:
        keys = [ADAPTER_KEY.format(layer) for layer in states]
        cfg = {"sorted_keys": keys, "intervention_types": [f"<class 'pyreft.interventions.{kind}'>"] * len(keys)}
        files = {f"intkey_{k}.bin": blob(s) for k, s in zip(keys, states.values())}
        return {"config.json": json.dumps(cfg).encode(), **files}

    nodi = lambda: {"proj_layer.weight": rnd(r, d), "learned_source.weight": rnd(r, d),  # noqa: E731
                    "learned_source.bias": rnd(r)}
    q, _ = torch.linalg.qr(rnd(d, r))
    return (folder({0: nodi(), 2: nodi()}, "NodireftIntervention"),
            folder({1: dict(nodi(), **{"proj_layer.bias": rnd(r)})}, "NoreftIntervention"),
            folder({3: {"weight": rnd(r, d), "bias": rnd(r), "rotate_layer": q.contiguous()}}, "LoreftIntervention"))


def adapter_target(files: dict[str, bytes], folder: Path) -> str:
    """Write ``files`` into the empty ``folder`` and import it: ``"loaded"`` or ``"error"``."""
    from commandv.exporter.adapters.folder import load_adapter
    from commandv.exporter.adapters.interventions import AdapterError

    for name, data in files.items():
        (folder / name).write_bytes(data)
    try:
        ad = load_adapter(folder)
    except AdapterError:
        return "error"
    assert ad.edits and len({e.d for e in ad.edits}) == 1
    for e in ad.edits:
        d, r = e.A.shape
        assert r >= 1 and e.b.shape == (r,) and e.C.shape == (r, d)
        for name in ("A", "b", "C", "P", "Q", "e"):
            t = getattr(e, name)
            assert t is None or np.all(np.isfinite(t)), name
    return "loaded"


def mutate_adapter(files: dict[str, bytes], which: int, ops) -> dict[str, bytes]:
    """Mutate one file of an adapter folder (``which`` picks it, in sorted name order)."""
    names = sorted(files)
    name = names[which % len(names)]
    return {**files, name: mutate(files[name], ops)}
