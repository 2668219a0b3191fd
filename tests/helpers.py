"""Small shared test helpers (not fixtures)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def shared_dir() -> Path:
    """The workspace's shared folder (evaluation data, the seed authors' adapter): ``$COMMANDV_SHARED``,
    else ``../shared`` beside the checkout. Tests that need it skip when it is missing."""
    env = os.environ.get("COMMANDV_SHARED")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[1].parent / "shared"


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``[N, d]`` arrays."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def check_prompt_clock(rec, monkeypatch, step: str, prompt: str, packs=()) -> None:
    """Slow ``rec.<step>`` (part of a request's preparation) by 0.2 s and check that the engine's stats put it
    on the prompt clock: ``prompt_tps`` is the wait for the first token (text, streamed and token-id requests)."""
    import time

    import pytest

    inner = getattr(rec, step)

    def slow(*a, **kw):
        time.sleep(0.2)
        return inner(*a, **kw)

    monkeypatch.setattr(rec, step, slow)
    for request in (lambda: rec.generate(prompt, packs=packs, max_tokens=2),
                    lambda: "".join(rec.generate(prompt, packs=packs, max_tokens=2, stream=True)),
                    lambda: rec.generate_ids(rec.encode(prompt), packs, max_tokens=1)):
        request()
        st = rec.last_stats
        assert st.prepare_s >= 0.2 and st.prepare_cpu_s < 0.1 and st.prompt_s < st.prepare_s, st
        assert st.prompt_tps == pytest.approx(st.n_prompt / (st.prepare_s + st.prompt_s))
        assert st.prompt_tps < st.n_prompt / 0.2
        assert st.prompt_cpu_tps == pytest.approx(st.n_prompt / (st.prepare_cpu_s + st.prompt_cpu_s))
