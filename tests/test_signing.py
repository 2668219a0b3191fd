"""Signed packs (runtime/pack/signing.py) and `cmdv keys|sign|verify` (runtime/cli/keys.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import warnings

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from typer.testing import CliRunner

from commandv.runtime.pack import gguf_io as pack_gguf
from commandv.runtime.pack import signing
from commandv.runtime.pack.model import BehaviorPack, PackError
from commandv.runtime.pack.signing import (
    SignatureError,
    UnverifiedPackWarning,
    generate_keypair,
    load_pack_checked,
    load_private_key,
    load_public_key,
    load_trusted,
    sign_pack,
    signature_path,
    verify_pack,
)
from tests.make_bad_corpus import base_pack, pack_bytes


@pytest.fixture()
def keys(tmp_path):
    priv, pub, kid = generate_keypair(tmp_path / "keys", name="alice")
    return priv, pub, kid


@pytest.fixture()
def pack(tmp_path):
    return base_pack().save(tmp_path / "p.gguf")


def test_keypair_files_and_key_id(keys):
    priv, pub, kid = keys
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in priv.read_bytes() and b"BEGIN PUBLIC KEY" in pub.read_bytes()
    raw = load_public_key(pub).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(raw) == 32 and kid == hashlib.sha256(raw).hexdigest()[:16]
    assert signing.key_id(load_private_key(priv).public_key()) == kid
    assert not list(priv.parent.glob(".*partial*"))
    with pytest.raises(SignatureError, match="already exists"):
        generate_keypair(priv.parent, name="alice")
    with pytest.raises(SignatureError, match="key name"):
        generate_keypair(priv.parent, name="../evil")


def test_sign_verify_roundtrip_and_format(keys, pack):
    priv, pub, kid = keys
    sig_path = sign_pack(pack, priv)
    assert sig_path == signature_path(pack) and sig_path.name == "p.gguf.sig"
    doc = json.loads(sig_path.read_text())
    data = pack.read_bytes()
    assert doc["algorithm"] == "ed25519" and doc["key_id"] == kid and doc["size"] == len(data)
    assert doc["sha256"] == hashlib.sha256(data).hexdigest()
    # independent check of the documented message: domain prefix + sha256 digest, plain ed25519
    load_public_key(pub).verify(base64.b64decode(doc["signature"]),
                                b"commandv-pack-signature-v1\x00" + hashlib.sha256(data).digest())
    assert verify_pack(pack, [pub]) == kid
    assert verify_pack(pack, [pub.parent]) == kid  # a folder of *.pub
    raw = load_public_key(pub).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert verify_pack(pack, [raw]) == kid and verify_pack(pack, [Ed25519PublicKey.from_public_bytes(raw)]) == kid
    loaded = load_pack_checked(pack, "require", [pub])
    assert loaded.recipient == base_pack().recipient and np.array_equal(loaded.entries[0].A, base_pack().entries[0].A)


def test_verify_failures_are_specific(tmp_path, keys, pack):
    priv, pub, kid = keys
    with pytest.raises(SignatureError, match="pack is unsigned"):
        verify_pack(pack, [pub])
    sign_pack(pack, priv)
    stranger_priv, stranger_pub, skid = generate_keypair(tmp_path / "other", name="mallory")
    with pytest.raises(SignatureError, match=f"signed by unknown key {kid}.*{skid}"):
        verify_pack(pack, [stranger_pub])
    with pytest.raises(SignatureError, match="none given"):
        verify_pack(pack, [])
    good = pack.read_bytes()
    pack.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # still a loadable pack, but not the signed bytes
    BehaviorPack.load(pack)
    with pytest.raises(SignatureError, match="tampered with"):
        verify_pack(pack, [pub])
    pack.write_bytes(good)
    sig = signature_path(pack)
    doc = json.loads(sig.read_text())
    s = base64.b64decode(doc["signature"])
    sig.write_text(json.dumps(dict(doc, signature=base64.b64encode(bytes([s[0] ^ 1]) + s[1:]).decode())))
    with pytest.raises(SignatureError, match="bad signature"):
        verify_pack(pack, [pub])
    for text, needle in (("{", "not JSON"), ("[]", "not a JSON object"), (json.dumps(dict(doc, algorithm="rsa")), "'rsa'"),
                         (json.dumps(dict(doc, signature="AAAA")), "64 bytes"), (json.dumps(dict(doc, size=-3)), "size")):
        sig.write_text(text)
        with pytest.raises(SignatureError, match=f"malformed signature file.*{needle}"):
            verify_pack(pack, [pub])
    assert issubclass(SignatureError, PackError)


def test_require_verifies_before_parsing(monkeypatch, keys, pack):
    priv, pub, _ = keys
    calls = {"parse": 0, "read": 0}
    real_parse, real_read = signing.parse_pack, signing.read_pack_bytes

    def counting_parse(data, path):
        calls["parse"] += 1
        return real_parse(data, path)

    def counting_read(path):
        calls["read"] += 1
        return real_read(path)

    monkeypatch.setattr(signing, "parse_pack", counting_parse)
    monkeypatch.setattr(signing, "read_pack_bytes", counting_read)
    with pytest.raises(SignatureError, match="unsigned"):
        load_pack_checked(pack, "require", [pub])
    assert calls["parse"] == 0
    sign_pack(pack, priv)
    calls.update(parse=0, read=0)
    load_pack_checked(pack, "require", [pub])
    assert calls == {"parse": 1, "read": 1}  # one read: the verified bytes are the parsed bytes


def test_warn_and_off_policies(keys, pack):
    _, pub, _ = keys
    with pytest.warns(UnverifiedPackWarning, match="unsigned.*loading it anyway"):
        p = load_pack_checked(pack, "warn", [pub])
    assert len(p.entries) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_pack_checked(pack, "off").entries) == 2
    with pytest.raises(PackError, match="policy 'maybe' unknown"):
        load_pack_checked(pack, "maybe")


def test_signed_but_invalid_pack_is_still_refused(tmp_path, keys):
    priv, pub, _ = keys
    bad = base_pack()
    bad.entries[0].A[0, 0] = np.nan
    path = tmp_path / "nan.gguf"
    path.write_bytes(pack_bytes(bad))
    with pytest.raises(PackError, match="NaN"):
        sign_pack(path, priv)  # never vouch for a malformed pack
    assert not signature_path(path).exists()
    signature_path(path).write_text(signing.sign_bytes(path.read_bytes(), load_private_key(priv)).to_json())
    with pytest.raises(PackError, match="NaN"):
        load_pack_checked(path, "require", [pub])


def test_key_file_checks(tmp_path, keys):
    priv, pub, _ = keys
    priv.chmod(0o644)
    with pytest.raises(SignatureError, match="readable by others"):
        load_private_key(priv)
    priv.chmod(0o600)
    with pytest.raises(SignatureError, match="is a private key"):
        load_trusted([priv])
    (tmp_path / "junk.pub").write_text("hello")
    with pytest.raises(SignatureError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pub")
    with pytest.raises(SignatureError, match="key file not found"):
        load_private_key(tmp_path / "nope.key")


def test_sig_written_atomically(monkeypatch, keys, pack):
    priv, pub, _ = keys

    def boom(data, key):
        raise KeyboardInterrupt

    monkeypatch.setattr(signing, "sign_bytes", boom)
    with pytest.raises(KeyboardInterrupt):
        sign_pack(pack, priv)
    assert sorted(p.name for p in pack.parent.iterdir()) == ["keys", "p.gguf"]
    assert pack_gguf.read_pack_bytes(pack) == base_pack().save(pack.parent / "again.gguf").read_bytes()


def test_cli_keys_sign_verify(tmp_path, monkeypatch):
    from commandv.exporter.cli.main import app

    monkeypatch.setenv("COMMANDV_HOME", str(tmp_path / "home"))
    run = CliRunner().invoke
    pack = base_pack().save(tmp_path / "p.gguf")
    res = run(app, ["keys", "new", "--out", str(tmp_path / "k")])
    assert res.exit_code == 0, res.output
    kid = res.output.split()[2]
    res = run(app, ["verify", str(pack), "--trusted", str(tmp_path / "k")])
    assert res.exit_code == 2 and "unsigned" in res.output
    res = run(app, ["sign", str(pack), "--key", str(tmp_path / "k" / "signing.key")])
    assert res.exit_code == 0 and kid in res.output
    res = run(app, ["verify", str(pack), "--trusted", str(tmp_path / "k" / "signing.pub")])
    assert res.exit_code == 0 and f"signed by trusted key {kid}" in res.output
    res = run(app, ["verify", str(pack)])  # default trusted folder is empty
    assert res.exit_code == 2 and "unknown key" in res.output
    assert run(app, ["keys", "trust", str(tmp_path / "k" / "signing.pub")]).exit_code == 0
    assert run(app, ["verify", str(pack)]).exit_code == 0
    data = pack.read_bytes()
    pack.write_bytes(data[:100] + bytes([data[100] ^ 4]) + data[101:])
    res = run(app, ["verify", str(pack)])
    assert res.exit_code == 2 and "tampered" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("kind", ["directory", "device link", "fifo"])
def test_odd_signature_files_are_refused_not_read(tmp_path, keys, pack, kind):
    """``<pack>.sig`` that is not a regular file: a clear SignatureError (a warning under 'warn'), never an
    unbounded read of /dev/zero, a blocked open of a FIFO, or an IsADirectoryError."""
    import os

    _, pub, _ = keys
    sp = signature_path(pack)
    if kind == "directory":
        sp.mkdir()
    elif kind == "device link":
        sp.symlink_to("/dev/zero")
    else:
        os.mkfifo(sp)
    with pytest.raises(SignatureError, match="not a regular file"):
        verify_pack(pack, [pub])
    with pytest.warns(UnverifiedPackWarning, match="not a regular file"):
        assert len(load_pack_checked(pack, "warn", [pub]).entries) == 2


def test_cli_verify_shows_pack_text_as_escapes(tmp_path, monkeypatch):
    """`cmdv verify` prints the pack's summary (its name, its recipient's name) after the "signed by trusted key"
    line: escape sequences in them are shown, so they cannot rewrite that line or draw another."""
    from commandv.exporter.cli.main import app
    from tests.test_cli import assert_no_raw_controls, hostile_pack

    monkeypatch.setenv("COMMANDV_HOME", str(tmp_path / "home"))
    run = CliRunner().invoke
    pack = hostile_pack(tmp_path / "h.gguf")
    assert run(app, ["keys", "new", "--out", str(tmp_path / "k")]).exit_code == 0
    assert run(app, ["sign", str(pack), "--key", str(tmp_path / "k" / "signing.key")]).exit_code == 0
    res = run(app, ["verify", str(pack), "--trusted", str(tmp_path / "k")])
    assert res.exit_code == 0, res.output
    assert_no_raw_controls(res.stdout)
    assert res.stdout.count("\n") == 2 and res.stdout.startswith("OK: ")
