"""The parts of `cmdv serve` that need no model: request parsing, the pack folder, the slot pool, metrics,
the missing-dependency message, and that importing the runtime pulls in no web framework."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from commandv.runtime.pack.model import PackError
from commandv.runtime.serve import ServeError, need
from commandv.runtime.serve.metrics import Metrics
from commandv.runtime.serve.openai_api import APIError, error_from, parse_request, split_model
from commandv.runtime.serve.pack_dir import PackDir, UnknownPackError, pack_name_of
from commandv.runtime.serve.slots import QueueFullError, RequestTimeoutError, SlotPool
from tests.make_bad_corpus import base_pack

MODEL = "m"


def test_runtime_import_pulls_in_no_web_framework():
    code = ("import sys, commandv.runtime, commandv.runtime.serve, commandv.runtime.serve.openai_api, "
            "commandv.runtime.serve.slots, commandv.runtime.pack.index, commandv.runtime.cli.serve, "
            "commandv.runtime.cli.packs\n"
            "print(','.join(m for m in ('fastapi', 'uvicorn', 'sse_starlette', 'ray', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_missing_dependency_names_the_pip_package():
    with pytest.raises(ServeError, match=r"needs some-pkg .*; pip install some-pkg$"):
        need("commandv_no_such_module", "some-pkg")


def test_model_name_packs_and_strengths():
    assert split_model("m", "m") == []
    assert split_model("m+a+b@0.5+c@-2", "m") == [("a", 1.0), ("b", 0.5), ("c", -2.0)]
    assert split_model("m+a@", "m") == [("a", 1.0)]  # an empty strength is the default
    for bad, status in (("x+a", 404), ("m+a@nan", 400), ("m+a@1e999", 400), (None, 400)):
        with pytest.raises(APIError) as exc:
            split_model(bad, "m")
        assert exc.value.status == status


@pytest.fixture()
def pack_dir(tmp_path):
    loads = []

    def load(path):
        loads.append(path.name)
        if "bad" in path.name:
            raise PackError(f"{path.name}: refused\nsecond line")
        return base_pack()

    (tmp_path / "a.pack.gguf").write_bytes(b"x")
    (tmp_path / "bad.gguf").write_bytes(b"x")
    (tmp_path / ".partial-z.pack.gguf").write_bytes(b"x")
    (tmp_path / "a.pack.gguf.sig").write_bytes(b"x")
    (tmp_path / "sp ace.gguf").write_bytes(b"x")
    return PackDir(tmp_path, load, min_interval=0), loads, tmp_path


def test_pack_dir_loads_each_file_version_once(pack_dir):
    pd, loads, folder = pack_dir
    recs = pd.scan()
    assert sorted(recs) == ["a", "bad"] and recs["a"].ok and not recs["bad"].ok
    assert "\n" not in recs["bad"].error
    pd.scan()
    assert sorted(loads) == ["a.pack.gguf", "bad.gguf"]  # unchanged files are not read again
    os.utime(folder / "a.pack.gguf", ns=(1, 1))
    pd.scan()
    assert loads.count("a.pack.gguf") == 2
    (folder / "a.pack.gguf.sig").write_bytes(b"xy")  # a new signature is a new version too
    pd.scan()
    assert loads.count("a.pack.gguf") == 3
    (folder / "a.gguf").write_bytes(b"x")
    assert not pd.scan()["a"].ok and "several files" in pd.get("a").error
    with pytest.raises(UnknownPackError):
        pd.get("nope")
    assert [r.name for r in pd.loaded()] == []


def test_pack_names():
    assert pack_name_of("pirate.pack.gguf") == "pirate" and pack_name_of("pirate.gguf") == "pirate"
    for bad in (".x.gguf", "x.gguf.sig", "x.bin", "a b.gguf", "-x.gguf", "x" * 65 + ".gguf"):
        assert pack_name_of(bad) is None


def test_parse_request_refuses_bad_bodies(pack_dir):
    pd, _, _ = pack_dir
    ok = {"model": "m+a", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    req = parse_request(ok, "chat", MODEL, pd, n_ctx=100)
    assert req.messages == [{"role": "user", "content": "hi"}] and [p.name for p in req.packs] == ["a"]
    assert req.max_tokens == 100  # the default is capped by the context
    cases = [([], 400), ({**ok, "messages": "hi"}, 400), ({**ok, "model": "m+bad"}, 400),
             ({**ok, "model": "m+zz"}, 404), ({**ok, "packs": [{"name": "a", "weight": 1}]}, 400),
             ({**ok, "seed": -1}, 400), ({**ok, "max_tokens": 101}, 400), ({**ok, "logprobs": True}, 400),
             ({**ok, "temperature": float("nan")}, 400), ({**ok, "stop": [""]}, 400)]
    for body, status in cases:
        with pytest.raises(APIError) as exc:
            parse_request(body, "chat", MODEL, pd, n_ctx=100)
        assert exc.value.status == status, body
        assert set(exc.value.body()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(APIError):
        parse_request({"model": "m", "prompt": [1, 2]}, "completion", MODEL, pd, n_ctx=100)


def test_errors_map_to_statuses():
    from commandv.runtime.engines.request_checks import StrengthError

    assert error_from(StrengthError("bad")).status == 400
    assert error_from(QueueFullError("full")).status == 429
    assert error_from(RequestTimeoutError("slow")).status == 504
    err = error_from(KeyError("secret detail"))
    assert err.status == 500 and "secret" not in err.message


def test_slot_pool_queue_limit_and_timeouts():
    release = threading.Event()

    def hold(slot, job):
        release.wait(10)
        return slot

    pool = SlotPool(["s0"], max_queue=1)
    f1, _ = pool.submit(hold, timeout=30)
    f2, _ = pool.submit(hold, timeout=0.2)  # waits behind f1, past its deadline
    with pytest.raises(QueueFullError):
        pool.submit(hold, timeout=30)
    time.sleep(0.3)
    release.set()
    assert f1.result(5) == "s0"
    with pytest.raises(RequestTimeoutError, match="waiting"):
        f2.result(5)

    def steps(slot, job):
        for _ in range(100):
            time.sleep(0.01)
            job.check()

    f3, job = pool.submit(steps, timeout=30)
    job.cancel.set()
    with pytest.raises(Exception, match="went away"):
        f3.result(5)
    assert (pool.waiting, pool.running) == (0, 0)
    pool._exec.shutdown()


def test_metrics_text():
    m = Metrics()
    m.request("/v1/chat/completions", 200, ["p\"1"], 10, 5, 0.1, 0.5, 0.7)
    m.request("/v1/chat/completions", 404)
    text = m.render(queue_depth=2, slots=1)
    assert 'cmdv_requests_total{endpoint="/v1/chat/completions",status="200"} 1' in text
    assert 'cmdv_pack_requests_total{pack="p\\"1"} 1' in text
    assert "cmdv_decode_tokens_per_second 10" in text and "cmdv_queue_depth 2" in text
    assert "cmdv_request_duration_seconds_count 1" in text


def test_slots_reuse_the_template_prefix_without_changing_results(tiny_gguf):
    """Slots keep the chat template's prefix rows: logits agree with a plain recipient, a pack editing the first
    row turns the reuse off, and each request's tokens are the same on any slot in any order."""
    pytest.importorskip("llama_cpp")
    import numpy as np

    from commandv.runtime.engines.llama.engine import Recipient
    from commandv.runtime.serve.slots import close_slots, open_slots
    from tests.test_llama_parity import random_pack

    slots = open_slots(tiny_gguf, n=2, n_threads=1, n_ctx=256)
    plain = Recipient(tiny_gguf, n_ctx=256, n_threads=1)
    try:
        a, b = slots
        assert len(a._prefix) > 2 and a._prefix == b._prefix
        last = random_pack(layers=(2,), seed=1, scale=1.0, act="silu", fingerprint=plain.fingerprint)
        first = random_pack(layers=(1,), seed=2, positions="f1+l1", fingerprint=plain.fingerprint)
        chats = [[{"role": "user", "content": "Tell me about rivers."}],
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]]
        for msgs in chats:
            ids = plain.encode_chat(msgs)
            for packs in ([], [last], [first]):
                got = a.prompt_pass(ids, packs)[0]
                assert np.allclose(got, plain.prompt_pass(ids, packs)[0], atol=1e-4)
                assert (a._primed > 0) == (packs != [first])  # prefix rows reused unless a pack edits row 0
        requests = [(msgs, packs) for msgs in chats for packs in ([], [last], [first])]
        run = lambda r, m, p: r.chat(m, packs=p, max_tokens=8)  # noqa: E731
        forward = [run(a, m, p) for m, p in requests]
        backward = [run(b, m, p) for m, p in reversed(requests)][::-1]
        assert forward == backward
    finally:
        plain.close()
        close_slots(slots)
