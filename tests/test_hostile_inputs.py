"""The hostile-file corpus (tests/hostile_corpus.py): every case gets its reader's specific one-line error.

The corpus is built once per module into a temporary folder (FIFOs, symlinks to devices and bombs cannot live
in git). Beyond the per-case check: the adapter cases finish fast and in bounded memory (a FIFO used to hang
the reader, the deflate bomb to expand to 1.3 GB), legitimate deflated torch files still load, and an exported
pack records no local path.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import hostile_corpus
from tests.bad_corpus import run_case

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero need a POSIX system")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    folder = tmp_path_factory.mktemp("hostile")
    return folder, {c["name"]: c for c in hostile_corpus.build(folder)}


@contextlib.contextmanager
def _guard(seconds: int = 30, headroom: int = 3 << 30):
    """Turn a regression into a failure, not a hung or swapping test run: SIGALRM after ``seconds`` and (Linux)
    an address-space limit ``headroom`` bytes above the current size (a read of /dev/zero hits MemoryError)."""
    import resource
    import signal

    def alarm(*_):
        raise TimeoutError(f"reader still running after {seconds} s")

    old_handler = signal.signal(signal.SIGALRM, alarm)
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    try:
        vm = [ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmSize:")]
        if vm:
            want = int(vm[0].split()[1]) * 1024 + headroom
            if old_limit[1] == resource.RLIM_INFINITY or want < old_limit[1]:
                resource.setrlimit(resource.RLIMIT_AS, (want, old_limit[1]))
    except OSError:
        pass
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, old_limit)


@pytest.mark.parametrize("name", [f"hostile:{fn.__name__}" for fn in hostile_corpus.CASES])
def test_case_gets_its_specific_error(corpus, name):
    folder, cases = corpus
    with _guard():
        outcome = run_case(cases[name], root=folder)
    assert outcome.ok, f"{name} ({cases[name]['note']}): {outcome.status}: {outcome.detail}"
    assert "\n" not in outcome.detail


def test_outputs_left_untouched(corpus):
    """The refused outputs are still what they were: the FIFO a FIFO, the link a link to /dev/null, no temp files."""
    import stat

    folder, cases = corpus
    for name in ("hostile:output_fifo", "hostile:output_dev_null", "hostile:export_out_dev_null"):
        run_case(cases[name], root=folder)
    out = folder / "out"
    assert stat.S_ISFIFO(os.lstat(out / "fifo.json").st_mode)
    assert os.readlink(out / "dev_null.gguf") == "/dev/null" and os.readlink(out / "export_dev_null.gguf") == "/dev/null"
    assert not [p.name for p in out.iterdir() if ".partial-" in p.name]


_MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    from commandv.exporter.adapters.folder import load_adapter
    from commandv.exporter.adapters.interventions import AdapterError
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {}
    for folder in sys.argv[1:]:
        t0 = time.perf_counter()
        try:
            load_adapter(folder)
            what = "accepted"
        except AdapterError as exc:
            what = str(exc)
        out[folder] = [time.perf_counter() - t0, what]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"cases": out, "growth_kb": peak - base}))
""")


def test_adapter_cases_fast_and_bounded(corpus):
    """Every hostile adapter is refused within 2 s each (a FIFO used to hang), and the peak resident memory of the
    process grows by less than 200 MB over all of them (the deflate bomb expanded to 1.3 GB)."""
    folder, cases = corpus
    mine = [c for c in cases.values() if c["reader"] == "adapter"]
    assert len(mine) >= 7
    # a fresh process: its peak RSS reflects these loads only (torch is imported before the baseline is taken)
    code = "import torch\n" + _MEASURE
    try:
        proc = subprocess.run([sys.executable, "-c", code, *(str(folder / c["path"]) for c in mine)],
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("loading the hostile adapters did not finish in 120 s (a FIFO read blocks?)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for path, (seconds, what) in res["cases"].items():
        assert what != "accepted", path
        assert seconds < 2.0, f"{path}: {seconds:.1f} s"
    assert res["growth_kb"] < 200 * 1024, f"peak RSS grew by {res['growth_kb'] / 1024:.0f} MB"


def _rezip(data: bytes, method: int) -> bytes:
    """A torch zip save with every entry rewritten with ``method`` (zipfile.ZIP_DEFLATED / ZIP_STORED)."""
    import io
    import zipfile

    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=method) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    return out.getvalue()


def test_deflated_torch_file_within_bounds_loads(tmp_path):
    """torch never writes compressed entries, but a re-zipped (deflated) adapter of honest size still loads:
    only the expansion is bounded, not the compression method."""
    import zipfile

    from commandv.exporter.adapters.folder import load_adapter

    f = hostile_corpus._adapter_folder(tmp_path, "deflated")
    intkey = f / f"intkey_{hostile_corpus._KEY0}.bin"
    before = load_adapter(f)
    intkey.write_bytes(_rezip(intkey.read_bytes(), zipfile.ZIP_DEFLATED))
    after = load_adapter(f)
    assert after.edits[0].C.tolist() == before.edits[0].C.tolist() and after.sha256 != before.sha256


def test_bomb_without_config_shapes_refused_by_ratio(tmp_path):
    """With no config.json (ReftTrainer's intervenable_model/), the expansion ratio alone refuses the bomb."""
    from commandv.exporter.adapters.folder import load_adapter
    from commandv.exporter.adapters.interventions import AdapterError

    f = hostile_corpus._adapter_folder(tmp_path, "bomb_no_config", config=False)
    (f / f"intkey_{hostile_corpus._KEY0}.bin").write_bytes(hostile_corpus.torch_bomb(256 << 20))
    with pytest.raises(AdapterError, match=r"expand to 2684\d+ bytes \(1 compressed entry.*\(64x the file's"):
        load_adapter(f, kind="NodiReFT")


def test_config_shapes_bound_an_oversized_state(tmp_path):
    """A stored (uncompressed) state far larger than the config's hidden size and rank allow is refused
    before torch.load."""
    import torch

    from commandv.exporter.adapters.folder import load_adapter
    from commandv.exporter.adapters.interventions import AdapterError

    f = hostile_corpus._adapter_folder(tmp_path, "oversized")
    state = hostile_corpus._nodi_state()
    state["padding"] = torch.zeros(1 << 19)  # 2 MiB: more than 6 [8, 2] matrices + 1 MiB of records
    torch.save(state, f / f"intkey_{hostile_corpus._KEY0}.bin")
    with pytest.raises(AdapterError, match="what the config's hidden size and rank allow"):
        load_adapter(f)


def test_dangling_config_link_is_reported(tmp_path):
    """A config.json that is a dangling symlink is an error, not "no config" (which would load every intkey file)."""
    from commandv.exporter.adapters.folder import load_adapter
    from commandv.exporter.adapters.interventions import AdapterError

    f = hostile_corpus._adapter_folder(tmp_path, "dangling")
    (f / "config.json").unlink()
    (f / "config.json").symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(AdapterError, match="adapter file not found: .*config.json"):
        load_adapter(f)


@pytest.mark.parametrize("trainer_layout", [False, True])
def test_exported_pack_records_no_local_path(tmp_path, trainer_layout):
    """A pack shared with others names its adapter folder and hashes, never the exporting machine's paths."""
    from commandv.exporter.adapters.folder import load_adapter
    from commandv.exporter.transfer.export import export_pack
    from commandv.runtime.pack.model import BehaviorPack
    from tests.test_export import setup

    private = tmp_path / "home-of-alice" / "secret-project"
    folder = hostile_corpus._adapter_folder(private, "pirate", config=not trainer_layout)
    if trainer_layout:  # ReftTrainer.save_model: <out>/intervenable_model/intkey_*.bin, no config
        inner = folder / "intervenable_model"
        inner.mkdir()
        for p in folder.glob("intkey_*.bin"):
            p.rename(inner / p.name)
    ad = load_adapter(folder, kind="NodiReFT")
    _, donor, recip = setup(dD=hostile_corpus._D, dR=6)
    pack = BehaviorPack.load(export_pack(ad, donor, recip, name="pirate").pack.save(tmp_path / "pirate.gguf"))
    text = json.dumps([pack.meta, pack.recipient, pack.name, pack.diagnostics])
    want = "pirate/intervenable_model" if trainer_layout else "pirate"
    assert pack.meta["adapter_source"] == want and pack.meta["adapter_sha256"] == ad.sha256
    for part in ("home-of-alice", "secret-project", str(tmp_path), str(Path.home())):
        assert part not in text, part
    strings = [v for v in pack.meta.values() if isinstance(v, str)]
    assert not [s for s in strings if os.path.isabs(s)], strings


# ---------------------------------------------------------------- packs: memory amplification, special files
PACK_NAMES = [f"hostile:{fn.__name__}" for fn in hostile_corpus.CASES if fn.__name__.startswith("pack_")]
BOMBS = ["hostile:pack_shared_data_bomb", "hostile:pack_overlap_bomb"]


class _Hung(Exception):
    pass


def _with_watchdog(seconds: int, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, raising :class:`_Hung` if it still runs after ``seconds`` (a blocked FIFO open
    fails the test instead of hanging the run)."""
    import signal

    def fire(signum, frame):
        raise _Hung(f"still running after {seconds} s (blocked on a FIFO?)")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        return fn(*args, **kwargs)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _traced(fn, *args, **kwargs):
    """``(result or raised exception, seconds, tracemalloc peak bytes)`` of ``fn(*args, **kwargs)``."""
    import time
    import tracemalloc

    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        try:
            res = _with_watchdog(30, fn, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - returned to the caller, who checks it
            res = exc
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return res, seconds, peak


def test_pack_cases_registered():
    assert len(PACK_NAMES) >= 10 and set(BOMBS) <= set(PACK_NAMES)


@pytest.mark.parametrize("name", PACK_NAMES)
def test_pack_case_fails_fast_in_bounded_memory(corpus, name):
    """Each pack case (the 2 GiB bombs included) is refused with its error within 10 s, tracemalloc peak under
    24 MB (the bombs' files are ~1.5 MB; one float32 copy per tensor used to take 2 GiB)."""
    folder, cases = corpus
    outcome, seconds, peak = _traced(run_case, cases[name], folder)
    assert outcome.ok, outcome.detail
    assert peak < 24 << 20 and seconds < 10, (name, f"{peak / 1e6:.1f} MB", f"{seconds:.2f} s")


@pytest.mark.parametrize("name", BOMBS)
def test_bombs_really_declare_gigabytes(corpus, name):
    """The reference reader (``gguf.GGUFReader``: maps tensors without copying) sees 3072 tensors that take
    2 GiB as float32, in a file under 2 MB: what the old reader allocated."""
    gguf = pytest.importorskip("gguf")
    folder, cases = corpus
    path = folder / cases[name]["path"]
    r = gguf.GGUFReader(str(path))
    declared = sum(int(t.n_elements) * 4 for t in r.tensors)
    assert len(r.tensors) == 3 * hostile_corpus.BOMB_ENTRIES
    assert declared == 2147614720 and path.stat().st_size < 2 << 20


def test_shared_data_is_refused_even_under_a_loose_bound(corpus):
    """With the size bound lifted, the shared-data bomb is still refused, as overlapping data: the first two
    tensors at offset 0 are named."""
    from commandv.runtime.pack.gguf_io import _LIMITS
    from commandv.runtime.pack.gguf_strict import GGUFFormatError, parse_gguf

    folder, cases = corpus
    data = (folder / cases["hostile:pack_shared_data_bomb"]["path"]).read_bytes()
    loose = type(_LIMITS)(**{**_LIMITS.__dict__, "max_expansion": 1 << 20})
    with pytest.raises(GGUFFormatError, match=r"tensors 'entry\.0\.A' and 'entry\.0\.b' share data bytes \d+\.\.\d+"):
        parse_gguf(data, "bomb", loose)


def _gguf(tensors: list[tuple[str, int, int]], data_bytes: int) -> bytes:
    """A GGUF v3 with one key and 1-D f32 tensors ``(name, n_floats, offset)`` over ``data_bytes`` zero bytes."""
    import struct

    from tests.make_bad_corpus import STR, _s, _val

    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 1))
    out += _s(b"general.architecture") + struct.pack("<I", STR) + _val(STR, "x")
    for name, n, off in tensors:
        out += _s(name.encode()) + struct.pack("<IQ", 1, n) + struct.pack("<IQ", 0, off)
    out += b"\0" * (-len(out) % 32)
    return bytes(out) + bytes(data_bytes)


def test_overlap_rule_matches_a_byte_coverage_reference():
    """400 random layouts of 2-6 tensors (some empty): refused exactly when some byte belongs to two tensors
    (counted byte by byte), and the two tensors named really share bytes."""
    import numpy as np

    from commandv.runtime.pack.gguf_strict import GGUFFormatError, Limits, parse_gguf

    rng = np.random.default_rng(19)
    loose = Limits(max_expansion=1 << 20)
    seen = {"refused": 0, "accepted": 0}
    for k in range(400):
        layout = [(f"t{i}", int(rng.integers(0, 24)), 32 * int(rng.integers(0, 10)))
                  for i in range(int(rng.integers(2, 7)))]
        cover = np.zeros(10 * 32 + 4 * 24, np.int32)
        for _, n, off in layout:
            cover[off:off + 4 * n] += 1
        try:
            g = parse_gguf(_gguf(layout, len(cover)), f"layout{k}", loose)
        except GGUFFormatError as exc:
            seen["refused"] += 1
            assert cover.max() > 1, (layout, str(exc))
            a, b = str(exc).split("tensors '")[1].split("' share")[0].split("' and '")
            span = {name: (off, off + 4 * n) for name, n, off in layout}
            assert max(span[a][0], span[b][0]) < min(span[a][1], span[b][1]), (layout, str(exc))
        else:
            seen["accepted"] += 1
            assert cover.max() <= 1, layout
            assert [t.name for t in g.tensors] == [t[0] for t in layout]
    assert min(seen.values()) > 40, seen


def test_expansion_bound_is_inclusive_at_twice_the_file_size():
    """Three tensors at offset 0 sized so their float32 total is exactly 2x the file size: not refused by the
    bound (the overlap rule refuses it); one float more: refused by the bound, with the exact figures."""
    from commandv.runtime.pack.gguf_strict import GGUFFormatError, parse_gguf

    d = 4096  # data section bytes; t0 and t1 fill it, t2 makes up the rest
    header = len(_gguf([("t0", 0, 0), ("t1", 0, 0), ("t2", 0, 0)], 0))
    size = header + d
    n2 = (2 * size - 2 * d) // 4
    assert 4 * (d // 4 + d // 4 + n2) == 2 * size and 4 * n2 <= d
    at_bound = _gguf([("t0", d // 4, 0), ("t1", d // 4, 0), ("t2", n2, 0)], d)
    with pytest.raises(GGUFFormatError, match="tensors 't0' and 't1' share data bytes"):
        parse_gguf(at_bound, "f")
    over = _gguf([("t0", d // 4, 0), ("t1", d // 4, 0), ("t2", n2 + 1, 0)], d)
    with pytest.raises(GGUFFormatError, match=rf"f: tensors would expand to {2 * size + 4} bytes as float32, more than "
                                              rf"2 times the file size \({size} bytes\)"):
        parse_gguf(over, "f")


def test_unreferenced_tensor_is_never_copied():
    """A pack whose 8 MB tensor no entry references is refused ("unexpected tensors") without widening anything:
    the parse allocates far less than that tensor (the old reader copied every tensor first)."""
    import numpy as np

    from commandv.runtime.pack.model import PackError, parse_pack
    from tests.make_bad_corpus import base_pack, describe, encode

    kvs, tensors = describe(base_pack())
    data = encode(kvs, tensors + [("entry.7.A", np.ones((8, 1 << 18), np.float32))]).data
    assert len(data) > 8 << 20
    res, _, peak = _traced(parse_pack, data, "extra.gguf")
    assert isinstance(res, PackError) and "unexpected tensors ['entry.7.A']" in str(res), res
    assert peak < 1 << 20, f"{peak / 1e6:.1f} MB"


def test_valid_f16_pack_widens_each_tensor_once(tmp_path):
    """A valid 4 MB f16 pack loads with one float32 copy per tensor: the parse's peak is the float32 size of its
    tensors (computed from the pack) plus under 1 MB, and the values are the file's."""
    import numpy as np

    from commandv.runtime.pack.model import BehaviorPack, PackEntry, parse_pack

    rng = np.random.default_rng(3)
    d, r = 2048, 256
    entries = [PackEntry(layer=i, A=rng.standard_normal((d, r)).astype(np.float32), b=np.zeros(r, np.float32),
                         C=rng.standard_normal((r, d)).astype(np.float32)) for i in range(2)]
    pack = BehaviorPack(entries=entries, recipient=dict(fingerprint="0" * 64, arch="llama", n_layer=4, d_model=d))
    path = pack.save(tmp_path / "f16.gguf", dtype="f16")
    data = path.read_bytes()
    f32_bytes = sum(4 * getattr(e, n).size for e in entries for n in ("A", "b", "C"))
    res, _, peak = _traced(parse_pack, data, str(path))
    assert not isinstance(res, Exception), res
    assert f32_bytes <= peak < f32_bytes + (1 << 20), (peak, f32_bytes, len(data))
    for e, want in zip(res.entries, entries):
        assert e.A.dtype == np.float32 and e.A.flags.writeable and e.A.flags.owndata
        np.testing.assert_array_equal(e.A, want.A.astype(np.float16).astype(np.float32))


def test_signing_refuses_bombs_and_public_keys(corpus, tmp_path):
    """``sign_pack`` on a bomb: the pack's error, in bounded memory, no .sig written. Signing with a ``.pub``: says
    it is a public key (it used to say "private key is readable by others"). A FIFO as the key: named as a FIFO
    (it used to be "key file not found"), without blocking."""
    from commandv.runtime.pack.model import PackError
    from commandv.runtime.pack.signing import (
        SignatureError,
        generate_keypair,
        load_private_key,
        sign_pack,
        signature_path,
    )

    folder, cases = corpus
    priv, pub, _ = generate_keypair(tmp_path / "k")
    bomb = folder / cases["hostile:pack_overlap_bomb"]["path"]
    res, _, peak = _traced(sign_pack, bomb, priv)
    assert isinstance(res, PackError) and "more than 2 times the file size" in str(res) and peak < 24 << 20, (res, peak)
    assert not signature_path(bomb).exists()
    good = folder / cases["hostile:pack_sig_fifo"]["path"]
    with pytest.raises(SignatureError, match=r"pub: is a public key; signing needs the private \.key file"):
        sign_pack(good, pub)
    fifo = tmp_path / "k" / "fifo.key"
    os.mkfifo(fifo)
    with pytest.raises(SignatureError, match=r"key file .*fifo\.key is a FIFO \(named pipe\), not a regular file"):
        _with_watchdog(10, load_private_key, fifo)
    with pytest.raises(SignatureError, match="key file not found"):
        load_private_key(tmp_path / "k" / "missing.key")


def test_cli_sign_with_public_key_is_one_clear_line(tmp_path):
    from typer.testing import CliRunner

    from commandv.exporter.cli.main import app
    from commandv.runtime.pack.signing import generate_keypair
    from tests.make_bad_corpus import base_pack

    pack = base_pack().save(tmp_path / "p.gguf")
    _, pub, _ = generate_keypair(tmp_path / "k")
    res = CliRunner().invoke(app, ["sign", str(pack), "--key", str(pub)])
    assert res.exit_code == 2 and res.output.startswith("error:") and "is a public key" in res.output, res.output
    assert "readable by others" not in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "p.gguf.sig").exists()


def test_cmdv_inspect_on_hostile_packs_is_one_line(corpus):
    """`cmdv inspect` on every hostile pack (bombs, FIFO, /dev/zero link, folder): exit 2, one line, no traceback."""
    from typer.testing import CliRunner

    from commandv.exporter.cli.main import app

    folder, cases = corpus
    runner = CliRunner()
    paths = [folder / c["path"] for c in cases.values() if c["reader"] == "pack" and c["name"] in PACK_NAMES]
    assert len(paths) >= 7
    for path in paths:
        res = _with_watchdog(30, runner.invoke, app, ["inspect", str(path)])
        assert res.exit_code == 2 and res.output.startswith("error:"), (path.name, res.output[-500:])
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_export_cli_refuses_device_output_up_front(tmp_path):
    """``cmdv export -o <link to /dev/null>``: one error line naming the device, before the models are looked up
    (they do not exist here), and the link is still a link to /dev/null."""
    from typer.testing import CliRunner

    from commandv.exporter.cli.main import app

    link = tmp_path / "null.gguf"
    link.symlink_to("/dev/null")
    folder = hostile_corpus._adapter_folder(tmp_path, "pirate")
    res = CliRunner().invoke(app, ["export", "--adapter", str(folder), "--donor", str(tmp_path / "no-donor"),
                                   "--recipient", str(tmp_path / "no-recipient"), "-o", str(link)])
    assert res.exit_code == 2 and "is a character device; refusing to replace it" in res.output, res.output
    assert "no-donor" not in res.output and os.readlink(link) == "/dev/null"


def test_atomic_dir_refuses_a_file(tmp_path):
    """A folder writer (train-demo --out, model downloads) never replaces a file or device with a folder."""
    from commandv.runtime.atomic import AtomicTargetError, atomic_dir

    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(AtomicTargetError, match="exists and is a file, not a folder"):
        with atomic_dir(tmp_path / "notes.txt"):
            pass
    assert (tmp_path / "notes.txt").read_text() == "keep me" and len(list(tmp_path.iterdir())) == 1


def test_model_paths_special_files_refused(tmp_path, monkeypatch):
    """A FIFO or device given as a model, inside an HF model folder, or as evaluation data: a one-line error
    saying what it is (never handed to a parser that would block or read forever)."""
    from commandv.exporter.training.behaviors import BehaviorError, _read_jsonl
    from commandv.profiles.identity import model_identity
    from commandv.runtime.models.fingerprint import file_fingerprint
    from commandv.runtime.models.ref import ModelError, ModelRef, resolve_model

    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with _guard():
        with pytest.raises(ModelError, match="is a FIFO \\(named pipe\\), neither a file nor a folder"):
            resolve_model(fifo)
        with pytest.raises(ModelError, match="model file .* is a FIFO \\(named pipe\\), not a regular file"):
            file_fingerprint(fifo)
        hf = tmp_path / "hf"
        hf.mkdir()
        (hf / "config.json").write_text('{"num_hidden_layers": 2, "hidden_size": 8, "model_type": "llama"}')
        os.mkfifo(hf / "tokenizer_config.json")
        with pytest.raises(ModelError, match="tokenizer_config.json is a FIFO"):
            model_identity(ModelRef(spec=str(hf), kind="hf", path=hf))
        (hf / "config.json").unlink()
        (hf / "config.json").symlink_to("/dev/zero")
        with pytest.raises(ModelError, match="config.json is a character device"):
            model_identity(ModelRef(spec=str(hf), kind="hf", path=hf))
        data = tmp_path / "data"
        data.mkdir()
        os.mkfifo(data / "advbench.jsonl")
        monkeypatch.setenv("COMMANDV_EVAL_DATA", str(data))
        with pytest.raises(BehaviorError, match="advbench.jsonl is a FIFO"):
            _read_jsonl("advbench.jsonl")


def test_keys_new_never_replaces_a_special_file(tmp_path):
    """``cmdv keys new --overwrite`` onto a FIFO named like the key: refused, the FIFO left as it was."""
    import os
    import stat

    from commandv.runtime.pack.signing import SignatureError, generate_keypair

    fifo = tmp_path / "k.key"
    os.mkfifo(fifo)
    with pytest.raises(SignatureError, match="FIFO"):
        generate_keypair(tmp_path, "k", overwrite=True)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not (tmp_path / "k.pub").exists()


def test_committed_packs_hold_no_local_paths():
    """Packs shipped in the repository record names and hashes, never where they were made."""
    from pathlib import Path

    from commandv.runtime.pack.model import BehaviorPack

    root = Path(__file__).resolve().parents[1]
    packs = sorted((root / "packs").glob("*.gguf")) + sorted((root / "benchmarks" / "results").rglob("*.gguf"))
    assert packs
    for p in packs:
        meta = BehaviorPack.load(p).meta
        for k, v in meta.items():
            text = str(v)
            assert not text.startswith(("/", "~")) and "/work/" not in text and "/home/" not in text, (p.name, k, text)
