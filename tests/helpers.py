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
