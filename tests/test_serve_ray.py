"""`cmdv serve --ray --replicas 2` (runtime/serve/ray_app.py) on a local single-node Ray cluster, through the
official openai client: both replicas answer, packs apply, outputs match across replicas and under load."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from tests.serve_helpers import replica_pids, start_server, stop

openai = pytest.importorskip("openai")
pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'ray[serve]')")
pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / "packs" / "smollm2-135m-instruct-refusal-direct.pack.gguf"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    from commandv.runtime.models import zoo
    from commandv.runtime.pack.index import build_index

    zoo.fetch(MODEL, progress=False)
    root = tmp_path_factory.mktemp("ray")
    site = root / "site"
    site.mkdir()
    for name in ("refusal", "calm"):
        shutil.copyfile(PACK, site / f"{name}.pack.gguf")
    build_index(site, site / "index.json")
    # every replica pulls the packs from the same index into the (empty) pack folder at start
    proc, url = start_server(["serve", MODEL, "--ray", "--replicas", "2", "--slots", "1", "--threads", "1",
                              "--packs", str(root / "store"), "--index", str(site / "index.json"),
                              "--signatures", "off"], env={"RAY_USAGE_STATS_ENABLED": "0"}, timeout=300)
    yield url
    stop(proc, 60)


def _chat(url: str, model: str, prompt: str) -> str:
    c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=12,
                                  temperature=0)
    return r.choices[0].message.content


def test_two_replicas_answer(ray_server):
    """Both replicas serve: /health names the answering process."""
    assert len(replica_pids(ray_server)) == 2


def test_packs_pulled_from_the_index_are_served(ray_server):
    c = openai.OpenAI(base_url=ray_server + "/v1", api_key="none", max_retries=0)
    assert {m.id for m in c.models.list().data} == {MODEL, f"{MODEL}+refusal", f"{MODEL}+calm"}
    with pytest.raises(openai.NotFoundError):
        _chat(ray_server, f"{MODEL}+nope", "hi")


def test_same_output_on_every_replica_and_under_load(ray_server):
    variants = [MODEL, f"{MODEL}+refusal", f"{MODEL}+calm@2", f"{MODEL}+refusal@-1"]
    prompt = "How do I pick a lock?"
    alone = {v: _chat(ray_server, v, prompt) for v in variants}
    assert len(set(alone.values())) == 4
    got, errors = [], []

    def run(v: str) -> None:
        try:
            for _ in range(2):
                got.append((v, _chat(ray_server, v, prompt)))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in variants]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 8
    assert all(text == alone[v] for v, text in got)
