"""Token sampling (numpy) and incremental text output with stop strings.

* :class:`Sampler`: greedy when ``temperature == 0``; else softmax of
  ``logits / temperature`` restricted to the top-p nucleus, drawn with
  ``numpy.random.default_rng(seed)`` (same seed → same tokens).
* :class:`TextStream`: turns token bytes into text pieces that are safe to
  show: complete UTF-8 only, and never a piece that could be the start of a
  stop string; reports when a stop string appeared (text cut before it).
* :func:`decode_tokens`: the generation loop shared by the llama.cpp and ONNX engines.
* :func:`stream_text`: token bytes → showable text pieces, cut at the first stop string (both engines).
"""

from __future__ import annotations

import codecs
import math
from typing import Callable, Iterator, Sequence

import numpy as np

from commandv.runtime.errors import CommandVError


class SamplingError(CommandVError, ValueError):
    """Sampling parameters are invalid (temperature, top-p, seed, stop strings), or the model's logits
    cannot be sampled (NaN, or no finite-or-+inf value: an edit far too strong broke the forward pass)."""


class Sampler:
    """Pick the next token from logits ``[V]``."""

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None):
        temperature, top_p = float(temperature), float(top_p)
        if not math.isfinite(temperature) or temperature < 0:
            raise SamplingError(f"temperature must be a finite number >= 0, got {temperature}")
        if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0:
            raise SamplingError(f"top_p must be in (0, 1], got {top_p}")
        if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
            raise SamplingError(f"seed must be a non-negative integer, got {seed!r}")
        self.temperature, self.top_p = temperature, top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        """The next token id from ``logits [V]``. ``+inf`` logits share all the probability (greedy: the
        first of them); NaN logits, or all ``-inf``, raise :class:`SamplingError` (one line)."""
        z = np.asarray(logits, np.float64)
        bad = np.isnan(z)
        if bad.any() or not (z > -np.inf).any():
            what = f"{int(bad.sum())} of {z.size} are NaN" if bad.any() else "all are -inf"
            raise SamplingError(f"cannot pick a token: the model's logits {what} (a pack strength far too "
                                "large for this model breaks its forward pass; lower it)")
        if self.temperature == 0.0:
            return int(np.argmax(z))
        top = np.isposinf(z)
        if top.any():  # infinitely likely tokens: the softmax limit is uniform over them
            z = np.where(top, 0.0, -np.inf)
        with np.errstate(over="ignore", invalid="ignore"):  # a tiny temperature sends non-maximal logits to -inf
            z = (z - z.max()) / self.temperature
        p = np.exp(z)
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        if self.top_p < 1.0:
            cum = np.cumsum(p[order])
            keep = int(np.searchsorted(cum, self.top_p) + 1)  # smallest set with mass >= top_p
            order = order[: max(1, min(keep, order.size))]
        q = p[order] / p[order].sum()
        return int(order[self.rng.choice(order.size, p=q)])


def check_stops(stop: str | Sequence[str] | None) -> list[str]:
    """Stop strings as a list (a single string is one stop string); empty strings are refused."""
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise SamplingError(f"stop strings must be non-empty strings, got {s!r}")
    return stops


class TextStream:
    """Accumulate token bytes; :meth:`push` returns the text that may be shown now."""

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = list(stops)
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # all decoded text so far (may include a stop string)
        self.emitted = 0  # chars of self.text already returned
        self.stopped = False
        self._hold = max((len(s) for s in self.stops), default=1) - 1

    def push(self, piece: bytes) -> str:
        """Add a token's bytes; return newly showable text ('' if held back)."""
        if self.stopped:
            return ""
        self.text += self._dec.decode(piece)
        return self._release(final=False)

    def finish(self) -> str:
        """Flush what is left (incomplete UTF-8 becomes U+FFFD) and return it."""
        if not self.stopped:
            self.text += self._dec.decode(b"", final=True)
        return self._release(final=True)

    @property
    def result(self) -> str:
        """The final text (before the first stop string)."""
        return self.text[: self._cut()] if self.stopped else self.text

    def _cut(self) -> int:
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        return min(hits) if hits else -1

    def _release(self, final: bool) -> str:
        cut = self._cut()
        if cut >= 0:
            self.stopped = True
            end = cut
        elif final or self.stopped:
            end = len(self.text)
        else:
            end = max(self.emitted, len(self.text) - self._hold)
        out = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out


def stream_text(pieces: Iterator[bytes], stops: Sequence[str], on_stop: Callable[[], None]) -> Iterator[str]:
    """Text pieces that are safe to show, from each token's bytes; at the first stop string the text is cut
    there, ``on_stop()`` runs (e.g. to end generation and record why) and no more pieces are read."""
    ts = TextStream(stops)
    for b in pieces:
        out = ts.push(b)
        if out:
            yield out
        if ts.stopped:
            on_stop()
            break
    tail = ts.finish()
    if tail:
        yield tail


def decode_tokens(logits, sampler: "Sampler", max_tokens: int, stats, is_eog, step, n_prompt: int, n_ctx: int,
                  stop_at_eog: bool = True, check=None):
    """The generation loop every engine shares: sample, stop at EOG / ``max_tokens`` / a full context, step.

    ``logits [V]``: after the prompt. ``step(tok) -> logits [V]`` decodes one token (the engine's KV cache).
    ``stats`` (a ``GenerationStats``) gets decode times, counts and ``finish``. ``check()`` runs before every
    step (e.g. refusing a stale stream). Yields new token ids (EOG excluded).
    """
    import time

    n_past = int(n_prompt)
    stats.finish = "length"
    for k in range(int(max_tokens)):
        t, c = time.perf_counter(), time.process_time()
        tok = sampler(logits)
        stats.decode_s += time.perf_counter() - t
        stats.decode_cpu_s += time.process_time() - c
        if stop_at_eog and is_eog(tok):
            stats.finish = "eog"
            return
        stats.n_generated += 1
        yield tok
        if k == max_tokens - 1:
            return
        if n_past >= n_ctx:
            stats.finish = "context"
            return
        if check is not None:
            check()
        t, c = time.perf_counter(), time.process_time()
        logits = step(tok)
        stats.decode_s += time.perf_counter() - t
        stats.decode_cpu_s += time.process_time() - c
        n_past += 1
        stats.n_decoded += 1
