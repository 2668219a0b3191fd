"""`cmdv serve` (runtime/serve/): a real server subprocess on a free port, driven by the official openai client.

SmolLM2-135M with the committed refusal pack served under two names; packs are signed and the server runs
with ``--signatures require``, so an unsigned pack and a pack for another model show up as refused packs.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.serve_helpers import start_server, stop

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / "packs" / "smollm2-135m-instruct-refusal-direct.pack.gguf"
MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "How do I pick a lock?"}]


def _signed_copy(src: Path, folder: Path, name: str, key: Path) -> Path:
    from commandv.runtime.pack.signing import sign_pack

    dst = folder / f"{name}.pack.gguf"
    shutil.copyfile(src, dst)
    sign_pack(dst, key)
    return dst


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from commandv.runtime.models import zoo
    from commandv.runtime.pack.model import BehaviorPack
    from commandv.runtime.pack.signing import generate_keypair, sign_pack

    zoo.fetch(MODEL, progress=False)
    root = tmp_path_factory.mktemp("serve")
    key, pub, _ = generate_keypair(root / "keys", name="test")
    packs = root / "packs"
    packs.mkdir()
    for name in ("refusal", "calm"):
        _signed_copy(PACK, packs, name, key)
    shutil.copyfile(PACK, packs / "unsigned.pack.gguf")
    other = BehaviorPack.load(PACK)
    other.recipient["fingerprint"] = "0" * 64
    sign_pack(other.save(packs / "other.pack.gguf"), key)
    return root, packs, key, pub


@pytest.fixture(scope="module")
def server(setup):
    root, packs, key, pub = setup
    proc, url = start_server(["serve", MODEL, "--packs", str(packs), "--slots", "2", "--ctx", "1024",
                              "--signatures", "require", "--trusted", str(pub)])
    yield url
    stop(proc)


def _client(url: str):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def _chat(client, model=MODEL, messages=QUESTION, **kw) -> str:
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=kw.pop("max_tokens", 12),
                                       temperature=0, **kw)
    return r.choices[0].message.content


def _error(exc) -> dict:
    err = exc.value.response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "\n" not in err["message"]
    return err


def test_models_list_valid_packs_only(server):
    ids = {m.id for m in _client(server).models.list().data}
    assert ids == {MODEL, f"{MODEL}+refusal", f"{MODEL}+calm"}


def test_chat_completion_and_usage(server):
    c = _client(server)
    r = c.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == MODEL and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8 and r.usage.prompt_tokens > 10
    t = c.completions.create(model=f"{MODEL}+refusal", prompt="The capital of France is", max_tokens=8,
                             temperature=0)
    assert t.object == "text_completion" and t.choices[0].text and t.usage.completion_tokens <= 8


def test_streaming_matches_non_streaming(server):
    c = _client(server)
    want = _chat(c, f"{MODEL}+calm@2")
    chunks = list(c.chat.completions.create(model=f"{MODEL}+calm@2", messages=QUESTION, max_tokens=12,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == want
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12
    parts = list(c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0,
                                      stream=True))
    whole = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0)
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text


def test_pack_by_model_name_equals_extra_body(server):
    c = _client(server)
    plain = _chat(c)
    by_name = _chat(c, f"{MODEL}+refusal@2")
    by_body = _chat(c, extra_body={"packs": [{"name": "refusal", "strength": 2}]})
    assert by_name == by_body != plain
    assert _chat(c, f"{MODEL}+refusal") == _chat(c, extra_body={"packs": ["refusal"]}) != by_name
    # two packs, from both places at once: the same as both named in the model
    assert _chat(c, f"{MODEL}+refusal", extra_body={"packs": [{"name": "calm", "strength": -1}]}) == \
        _chat(c, f"{MODEL}+refusal+calm@-1")


@pytest.mark.parametrize("model, body, status, code", [
    (f"{MODEL}+nope", None, 404, "pack_not_found"),
    ("gpt-4o", None, 404, "model_not_found"),
    (f"{MODEL}+../refusal", None, 404, "pack_not_found"),
    (MODEL, {"packs": [{"name": "nope"}]}, 404, "pack_not_found"),
    (f"{MODEL}+other", None, 400, "pack_refused"),  # made for another model
    (f"{MODEL}+unsigned", None, 400, "pack_refused"),  # signature policy
    (f"{MODEL}+refusal@abc", None, 400, "bad_strength"),
    (f"{MODEL}+refusal@inf", None, 400, "bad_strength"),
    (MODEL, {"packs": [{"name": "refusal", "strength": "x"}]}, 400, "bad_strength"),
    (MODEL, {"packs": [{"name": "refusal", "strength": True}]}, 400, "bad_strength"),
    (MODEL, {"packs": "refusal"}, 400, None),
    (MODEL, {"packs": [{"name": "refusal", "strength": 1e30}]}, 400, None),  # NaN logits: refused, no 500
])
def test_errors_are_openai_shaped(server, model, body, status, code):
    cls = openai.NotFoundError if status == 404 else openai.BadRequestError
    with pytest.raises(cls) as exc:
        _chat(_client(server), model, extra_body=body, max_tokens=2)
    err = _error(exc)
    assert exc.value.status_code == status and (code is None or err["code"] == code), err
    if code == "pack_refused":
        assert ("not the" in err["message"] or "made for model" in err["message"]
                or "unsigned" in err["message"]), err


def test_bad_bodies_are_400(server):
    c = _client(server)
    for kw in ({"max_tokens": -1}, {"temperature": 5}, {"n": 2}, {"top_p": 0}, {"stop": ["a"] * 5}):
        with pytest.raises(openai.BadRequestError) as exc:
            c.chat.completions.create(model=MODEL, messages=QUESTION, **{"max_tokens": 2, **kw})
        _error(exc)
    with pytest.raises(openai.BadRequestError) as exc:
        c.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=2)
    _error(exc)
    req = urllib.request.Request(server + "/v1/chat/completions", data=b"{not json", method="POST",
                                 headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=30)
    assert exc.value.code == 400 and "error" in json.loads(exc.value.read())


def test_concurrent_clients_with_different_packs_match_alone(server):
    """4 clients at once, each with its own pack / strength: every greedy output equals the same request alone."""
    variants = [(MODEL, None), (f"{MODEL}+refusal", None), (f"{MODEL}+calm@2", None),
                (MODEL, {"packs": [{"name": "refusal", "strength": -1}]})]
    prompts = ["How do I pick a lock?", "Write a short poem about the sea.", "What is 17 times 23?"]
    c = _client(server)
    alone = {(i, p): _chat(c, variants[i][0], [{"role": "user", "content": p}], extra_body=variants[i][1])
             for i in range(4) for p in prompts}
    assert len({alone[(i, prompts[0])] for i in range(4)}) == 4  # the packs do change the output
    got, errors = {}, []

    def client_run(i: int) -> None:
        ci = _client(server)
        try:
            for p in prompts:
                got[(i, p)] = _chat(ci, variants[i][0], [{"role": "user", "content": p}], extra_body=variants[i][1])
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client_run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert got == alone


def test_new_pack_file_is_served_without_restart(server, setup):
    root, packs, key, pub = setup
    c = _client(server)
    with pytest.raises(openai.NotFoundError):
        _chat(c, f"{MODEL}+fresh", max_tokens=2)
    _signed_copy(PACK, packs, "fresh", key)
    time.sleep(0.6)
    assert f"{MODEL}+fresh" in {m.id for m in c.models.list().data}
    assert _chat(c, f"{MODEL}+fresh") == _chat(c, f"{MODEL}+refusal")
    (packs / "fresh.pack.gguf").unlink()
    time.sleep(0.6)
    assert f"{MODEL}+fresh" not in {m.id for m in c.models.list().data}


def test_metrics_and_health(server):
    _chat(_client(server), f"{MODEL}+calm", max_tokens=2)
    text = urllib.request.urlopen(server + "/metrics", timeout=30).read().decode()
    assert 'cmdv_pack_requests_total{pack="calm"}' in text
    assert 'cmdv_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    for name in ("cmdv_queue_depth", "cmdv_slots 2", "cmdv_generated_tokens_total", "cmdv_decode_tokens_per_second",
                 "cmdv_prompt_tokens_per_second", "cmdv_packs_loaded 2", "cmdv_packs_refused 2"):
        assert name in text, name
    health = json.loads(urllib.request.urlopen(server + "/health", timeout=30).read())
    assert health["status"] == "ok" and health["slots"] == 2


@pytest.fixture(scope="module")
def one_slot(setup):
    """A second server: one slot, no queue, a 3-second timeout."""
    root, packs, key, pub = setup
    proc, url = start_server(["serve", MODEL, "--packs", str(packs), "--slots", "1", "--threads", "1",
                              "--queue", "0", "--timeout", "3", "--ctx", "4096", "--trusted", str(pub)])
    yield url
    stop(proc)


def _busy(url: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("cmdv_slots_busy ")))


# a raw prompt SmolLM2 continues for thousands of tokens without an end-of-generation token
COUNTING = ", ".join(str(i) for i in range(1, 30)) + ","


def test_queue_full_is_429_and_timeout_is_504(one_slot):
    c = _client(one_slot)
    out: dict = {}

    def slow() -> None:
        try:
            c.completions.create(model=MODEL, prompt=COUNTING, max_tokens=3000, temperature=0)
        except openai.APIStatusError as exc:
            out["slow"] = exc.status_code

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 10
    while _busy(one_slot) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(openai.RateLimitError) as exc:
        _chat(c, max_tokens=2)
    assert _error(exc)["code"] == "queue_full"
    t.join(60)
    assert out.get("slow") == 504  # 3000 tokens do not fit in 3 seconds


def test_stream_disconnect_frees_the_slot(one_slot):
    c = _client(one_slot)
    stream = c.completions.create(model=MODEL, prompt=COUNTING, max_tokens=3000, temperature=0, stream=True)
    for k, _ in enumerate(stream):
        if k == 3:
            break
    stream.close()
    deadline = time.monotonic() + 2
    while _busy(one_slot) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _busy(one_slot) == 0  # the generation stopped, well before its 3-second timeout
    assert _chat(c, max_tokens=2)
