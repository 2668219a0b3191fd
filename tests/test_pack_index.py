"""Pack distribution (runtime/pack/index.py, `cmdv packs index|pull|list|rm`): index contents, pulls over
file:// and a local HTTP server (honest, lying, truncating, swapping), resume, signature policy, the store."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest
from typer.testing import CliRunner

from commandv.runtime.pack.index import PullError, build_index, list_store, load_index, pull, remove
from commandv.runtime.pack.model import BehaviorPack
from commandv.runtime.pack.policy import PackPolicy
from commandv.runtime.pack.signing import SignatureError, UnverifiedPackWarning, generate_keypair, sign_pack
from tests.make_bad_corpus import base_pack
from tests.serve_helpers import PackHTTPServer, tamper_cases


@pytest.fixture()
def site(tmp_path):
    """A folder of two packs (``a`` signed, ``b`` unsigned) with its index, and the signing key pair."""
    key, pub, kid = generate_keypair(tmp_path / "keys", name="k")
    site = tmp_path / "site"
    site.mkdir()
    sign_pack(base_pack(0).save(site / "a.pack.gguf"), key)
    base_pack(1).save(site / "b.gguf")
    (site / "notes.txt").write_text("not a pack")
    build_index(site, site / "index.json")
    return site, pub, kid


def _require(pub) -> PackPolicy:
    return PackPolicy(signatures="require", trusted=(pub,))


def test_index_lists_what_a_client_checks(site):
    folder, pub, kid = site
    doc = json.loads((folder / "index.json").read_text())
    assert doc["format"] == "commandv-pack-index" and doc["version"] == 1
    a, b = doc["packs"]
    data = (folder / "a.pack.gguf").read_bytes()
    assert (a["name"], a["url"], a["size"], a["sha256"]) == ("a", "a.pack.gguf", len(data),
                                                             hashlib.sha256(data).hexdigest())
    assert a["recipient"] == {k: str(base_pack().recipient[k]) for k in ("fingerprint", "arch", "name")}
    assert a["signer"] == kid and a["signature"]["url"] == "a.pack.gguf.sig"
    assert a["created_by"] == "commandv bad-corpus"
    assert (b["name"], b["url"], b["signer"], b["signature"]) == ("b", "b.gguf", None, None)
    # URLs are relative to the index file, wherever it is written
    build_index(folder, folder.parent / "elsewhere" / "index.json")
    other = json.loads((folder.parent / "elsewhere" / "index.json").read_text())
    assert other["packs"][0]["url"] == "../site/a.pack.gguf"


def test_index_refuses_a_stale_signature(site):
    folder, pub, kid = site
    (folder / "a.pack.gguf.sig").write_bytes((folder / "a.pack.gguf.sig").read_bytes())
    BehaviorPack.load(folder / "b.gguf").save(folder / "a.pack.gguf")  # the pack changed, its .sig did not
    with pytest.raises(PullError, match="re-sign"):
        build_index(folder, folder / "index2.json")
    assert not (folder / "index2.json").exists()


@pytest.mark.parametrize("as_path", [False, True])
def test_pull_over_file_url_installs_pack_and_signature(site, tmp_path, as_path):
    folder, pub, kid = site
    index = folder / "index.json"
    store = tmp_path / "store"
    path = pull(index if as_path else index.as_uri(), "a", store=store, policy=_require(pub))
    assert path == store / "a.pack.gguf"
    assert path.read_bytes() == (folder / "a.pack.gguf").read_bytes()
    assert (store / "a.pack.gguf.sig").read_bytes() == (folder / "a.pack.gguf.sig").read_bytes()
    assert not list(store.glob(".a*")) and not (store / ".partial").exists()  # a file:// pull needs no partial file
    rows = list_store(store)
    assert [(r["name"], r["signer"], r["error"]) for r in rows] == [("a", kid, None)]


def test_pull_over_http_and_store_list_rm(site, tmp_path):
    folder, pub, kid = site
    store = tmp_path / "store"
    with PackHTTPServer(folder) as srv:
        pull(srv.url + "index.json", "a", store=store, policy=_require(pub))
        with pytest.raises(SignatureError, match="unsigned"):
            pull(srv.url + "index.json", "b", store=store, policy=_require(pub))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pull(srv.url + "index.json", "b", store=store, policy=PackPolicy(signatures="warn", trusted=(pub,)))
        assert any(issubclass(w.category, UnverifiedPackWarning) for w in caught)
        with pytest.raises(PullError, match="no pack named 'c'"):
            pull(srv.url + "index.json", "c", store=store)
    assert [r["name"] for r in list_store(store)] == ["a", "b"]
    assert [p.name for p in remove("a", store)] == ["a.pack.gguf", "a.pack.gguf.sig"]
    assert [r["name"] for r in list_store(store)] == ["b"]
    with pytest.raises(PullError, match="no pack named"):
        remove("a", store)
    with pytest.raises(PullError, match="not a pack name"):
        remove("../b", store)


def test_every_tamper_case_is_refused_and_never_reaches_the_store(tmp_path):
    got = tamper_cases(tmp_path)
    assert len(got) >= 10
    accepted = {k: v for k, v in got.items() if v is None or v.startswith("store touched")}
    assert not accepted, accepted
    assert "sha256" in got["server_swaps_file"] and "truncated" in got["server_truncates"]
    assert "more than" in got["server_sends_extra_bytes"] and "unsigned" in got["unsigned_pack"]
    assert "unknown key" in got["untrusted_signer"] and "scheme" in got["index_points_at_other_scheme"]


def test_truncated_download_resumes_with_a_range_request(site, tmp_path):
    folder, pub, kid = site
    store = tmp_path / "store"
    size = (folder / "a.pack.gguf").stat().st_size
    with PackHTTPServer(folder) as srv:
        srv.mode = "truncate"
        with pytest.raises(PullError, match="truncated.*resume"):
            pull(srv.url + "index.json", "a", store=store, policy=_require(pub))
        assert not (store / "a.pack.gguf").exists()
        (part,) = (store / ".partial").iterdir()
        assert part.stat().st_size == size // 2
        srv.mode, srv.ranges[:] = "honest", []
        pull(srv.url + "index.json", "a", store=store, policy=_require(pub))
        assert f"bytes={size // 2}-" in srv.ranges
        assert (store / "a.pack.gguf").read_bytes() == (folder / "a.pack.gguf").read_bytes()
        # a server that ignores Range: the download restarts from 0
        remove("a", store)
        srv.mode = "truncate"
        with pytest.raises(PullError):
            pull(srv.url + "index.json", "a", store=store, policy=_require(pub))
        srv.mode = "ignore_range"
        pull(srv.url + "index.json", "a", store=store, policy=_require(pub))
        assert (store / "a.pack.gguf").read_bytes() == (folder / "a.pack.gguf").read_bytes()


def test_corrupt_partial_is_dropped_and_fetched_again(site, tmp_path):
    folder, pub, kid = site
    store = tmp_path / "store"
    entry = load_index(folder / "index.json").find("a")
    (store / ".partial").mkdir(parents=True)
    (store / ".partial" / f"{entry['sha256']}.part").write_bytes(b"junk" * 10)
    with PackHTTPServer(folder) as srv:
        pull(srv.url + "index.json", "a", store=store, policy=_require(pub))
        assert srv.ranges[1:3] == ["bytes=40-", None]  # (after the index) resumed, hash failed, fetched again
    assert (store / "a.pack.gguf").read_bytes() == (folder / "a.pack.gguf").read_bytes()


def test_server_size_claims_are_not_trusted(site, tmp_path):
    """The index's size and sha256 decide: a Content-Length promising more than the (right) bytes it sends
    installs the pack, since every byte checks out."""
    folder, pub, kid = site
    with PackHTTPServer(folder) as srv:
        srv.mode = "lying_length"
        path = pull(srv.url + "index.json", "a", store=tmp_path / "store", policy=_require(pub))
    assert path.read_bytes() == (folder / "a.pack.gguf").read_bytes()


def test_failed_pull_keeps_the_installed_version(site, tmp_path):
    folder, pub, kid = site
    store = tmp_path / "store"
    installed = pull(folder / "index.json", "a", store=store, policy=_require(pub))
    before = installed.read_bytes()
    with PackHTTPServer(folder) as srv:
        srv.mode = "extra"
        with pytest.raises(PullError):
            pull(srv.url + "index.json", "a", store=store, policy=_require(pub))
    assert installed.read_bytes() == before and (store / "a.pack.gguf.sig").exists()


@pytest.mark.parametrize("doc, needle", [
    ("not json", "not JSON"),
    ({"format": "other", "version": 1, "packs": []}, "not a commandv-pack-index"),
    ({"format": "commandv-pack-index", "version": 1, "packs": [{"name": "a/b"}]}, "not a pack name"),
    ({"format": "commandv-pack-index", "version": 1, "packs": [{"name": "a", "url": "a", "size": -1}]}, "size"),
])
def test_malformed_index_is_refused(tmp_path, doc, needle):
    p = tmp_path / "index.json"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(PullError, match=needle):
        load_index(p)


def test_cli_packs_index_pull_list_rm(site, tmp_path):
    from commandv.exporter.cli.main import app

    folder, pub, kid = site
    store = tmp_path / "store"
    runner = CliRunner()
    r = runner.invoke(app, ["packs", "index", str(folder), "-o", str(tmp_path / "i.json")])
    assert r.exit_code == 0 and "indexed 2 packs" in r.output
    r = runner.invoke(app, ["packs", "pull", str(tmp_path / "i.json"), "a", "--store", str(store),
                            "--signatures", "require", "--trusted", str(pub)])
    assert r.exit_code == 0 and "installed a" in r.output, r.output
    r = runner.invoke(app, ["packs", "pull", str(tmp_path / "i.json"), "b", "--store", str(store),
                            "--signatures", "require", "--trusted", str(pub)])
    assert r.exit_code == 2 and "unsigned" in r.output and not (store / "b.pack.gguf").exists()
    r = runner.invoke(app, ["packs", "list", "--store", str(store)])
    assert r.exit_code == 0 and "a " in r.output and kid in r.output
    r = runner.invoke(app, ["packs", "rm", "a", "--store", str(store)])
    assert r.exit_code == 0 and not (store / "a.pack.gguf").exists()
    r = runner.invoke(app, ["packs", "rm", "a", "--store", str(store)])
    assert r.exit_code == 2 and "no pack named" in r.output


@pytest.mark.parametrize("over", ["file", "http"])
def test_concurrent_pulls_of_the_same_bytes_share_no_partial_file(tmp_path, over):
    """Two packs with the same bytes (one sha256) pulled into one store at the same time, as the replicas of
    `cmdv serve --ray` do at start: every pull succeeds and both are installed (they once shared one partial
    file, and one pull deleted it under the other)."""
    import threading

    site = tmp_path / "site"
    site.mkdir()
    base_pack(0).save(site / "one.pack.gguf")
    (site / "two.pack.gguf").write_bytes((site / "one.pack.gguf").read_bytes())
    build_index(site, site / "index.json")
    off = PackPolicy(signatures="off")
    errors = []

    def pull_many(source, name, store):
        try:
            for _ in range(15):
                pull(source, name, store=store, policy=off)
        except Exception as exc:  # reported below
            errors.append(exc)

    def race(source):
        store = tmp_path / f"store-{over}"
        threads = [threading.Thread(target=pull_many, args=(source, n, store)) for n in ("one", "two", "one")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert [r["name"] for r in list_store(store)] == ["one", "two"]

    if over == "file":
        race(site / "index.json")
    else:
        with PackHTTPServer(site) as srv:
            race(srv.url + "index.json")
