"""Generation slots: llama.cpp contexts sharing one loaded model, and a bounded queue in front of them.

A llama.cpp model is read-only once loaded, so several contexts can run on it at once from different
threads (ctypes releases the GIL during ``llama_decode``). :func:`open_slots` loads the model once as a
:class:`SlotRecipient` and makes ``n - 1`` more recipients that share its model, vocabulary, pack policy
and token cache but own their context, edit callback state and cached template prefix. Every slot has the same
settings (threads, context, batch), so a greedy request gives the same tokens on any slot, alone or beside
others.

:class:`SlotPool` runs jobs on free slots, one thread per slot; a job waits in a queue of at most
``max_queue`` jobs (:class:`QueueFullError` beyond it), gives up at its deadline
(:class:`RequestTimeoutError`) and stops when cancelled (:class:`CancelledError`).

Call as::

    slots = open_slots("smollm2-135m-instruct", n=2, n_threads=1)
    pool = SlotPool(slots, max_queue=16)
    fut, job = pool.submit(lambda rec, job: rec.generate("Hi", max_tokens=8), timeout=60)
    text = fut.result()
    pool.close()
"""

from __future__ import annotations

import concurrent.futures
import copy
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from commandv.runtime.engines.llama.editor import make_context, make_editor
from commandv.runtime.engines.llama.engine import Recipient
from commandv.runtime.errors import CommandVError, EngineError
from commandv.runtime.models.chat_template import ChatTemplateError
from commandv.runtime.pack.policy import PackPolicy, ReferenceStates


class QueueFullError(CommandVError, RuntimeError):
    """Every slot is busy and the queue holds ``max_queue`` jobs (HTTP 429)."""


class RequestTimeoutError(CommandVError, RuntimeError):
    """A job passed its deadline, waiting for a slot or generating (HTTP 504)."""


class CancelledError(CommandVError, RuntimeError):
    """A job was cancelled (its client went away)."""


def _common(a, b) -> int:
    """Length of the common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class SlotRecipient(Recipient):
    """A :class:`~commandv.runtime.engines.llama.engine.Recipient` serving requests in a slot, which keeps the KV rows of its chat
    template's fixed prefix (the tokens every conversation starts with: the default system prompt, the user
    header) and decodes only the rest of each prompt.

    The prefix is decoded once, alone, and requests reuse its first ``n`` rows, ``n`` = the tokens the prompt
    shares with it, cut at the first row a pack entry edits (rows before it are unedited in both) and before
    the last prompt token. So a request's result depends on the request alone, never on what the slot ran
    before: the same on every slot, alone or beside others. :meth:`setup_prefix` finds the prefix."""

    _prefix: list = []
    _primed = 0  # leading rows of _prefix the KV memory holds, as the prefix's own pass computed them

    def setup_prefix(self) -> None:
        """Find the template prefix (shared by two one-message conversations) and forget any primed rows;
        no prefix without a chat template."""
        self._prefix, self._primed = [], 0
        if self.chat_template is None:
            return
        try:
            a, b = (self.encode_chat([{"role": "user", "content": c}]) for c in ("A", "B"))
        except (ChatTemplateError, EngineError):
            return
        self._prefix = a[: min(_common(a, b), self.n_ubatch)]

    def _prime(self) -> None:
        """Decode the prefix alone into a cleared KV memory, no edits."""
        self.editor.load([])
        self.editor.end()
        self.ctx.clear()
        self._primed = 0
        self.ctx.decode([self._prefix], logits_for="none")
        self._primed = len(self._prefix)

    def _prefill_chunks(self, ids, entries, record, all_logits, start: int = 0):
        if not start and record is None and not all_logits and self._prefix:
            n = min(_common(ids, self._prefix), len(ids) - 1,
                    *(int(e.rows.min()) for e in entries if e.rows.size))
            if n > 0:
                if self._primed < n:
                    self._prime()
                start = n
        self._primed = start  # what the KV memory keeps of the prefix while this request overwrites the rest
        return super()._prefill_chunks(ids, entries, record, all_logits, start)


def slot_threads(n: int, n_threads: int | None = None) -> int:
    """CPU threads of each of ``n`` slots: ``n_threads`` when given, else the cores divided among them (>= 1)."""
    return int(n_threads or max(1, (os.cpu_count() or 1) // int(n)))


def open_slots(model, n: int = 1, n_threads: int | None = None, n_ctx: int = 4096, policy: PackPolicy | None = None,
               force: bool = False) -> list:
    """``n`` :class:`SlotRecipient` objects over one load of ``model`` (zoo key or GGUF path).

    ``n_threads``: CPU threads of each slot (default: the cores divided among the slots, at least 1).
    With an edit-size limit in ``policy`` the reference hidden states are computed once, here, and every
    slot measures against them. Close with :func:`close_slots`."""
    if int(n) < 1:
        raise ValueError(f"slots must be >= 1, got {n}")
    threads = slot_threads(n, n_threads)
    first = SlotRecipient(model, n_ctx=n_ctx, n_threads=threads, force=force, policy=policy)
    if first.policy.max_delta_norm is not None:
        first.reference_states()
    slots = [first] + [_share(first, threads) for _ in range(int(n) - 1)]
    for s in slots:
        s.setup_prefix()
    return slots


def _share(first, threads: int):
    """Another recipient on ``first``'s model: its own context and edit state, the rest shared."""
    rec = copy.copy(first)
    rec.editor = make_editor(first.d_model, first.n_layer, first.native)
    rec.ctx = make_context(first.model, rec.editor, n_ctx=first.n_ctx, n_batch=first.n_ubatch,
                           n_ubatch=first.n_ubatch, n_threads=threads)
    rec.last_stats, rec._request = None, 0
    if first._reference is not None:  # its own cache of measurements; the states themselves are shared
        rec._reference = ReferenceStates(first._reference.prompts)
    rec._shared_model = True
    return rec


def close_slots(slots: list) -> None:
    """Free every slot's context and edit state, then the model (once)."""
    for rec in reversed(slots):
        if getattr(rec, "_shared_model", False):
            for obj in (rec.ctx, rec.editor):
                if hasattr(obj, "free"):
                    obj.free()
        else:
            rec.close()


@dataclass
class Job:
    """One queued request: set ``cancel`` to stop it; ``deadline``: ``time.monotonic()`` seconds."""

    deadline: float
    cancel: threading.Event = field(default_factory=threading.Event)
    started: float | None = None

    def check(self) -> None:
        """Raise :class:`CancelledError` / :class:`RequestTimeoutError` when the job must stop now."""
        if self.cancel.is_set():
            raise CancelledError("the client went away")
        if time.monotonic() > self.deadline:
            what = "generating" if self.started is not None else "waiting for a free slot"
            raise RequestTimeoutError(f"the request timed out {what}")


class SlotPool:
    """Runs ``fn(slot, job)`` on a free slot in a thread of its own; at most ``len(slots) + max_queue`` jobs
    are admitted at a time."""

    def __init__(self, slots: list, max_queue: int = 16):
        if int(max_queue) < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.slots = list(slots)
        self.max_queue = int(max_queue)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for s in self.slots:
            self._free.put(s)
        self._exec = concurrent.futures.ThreadPoolExecutor(len(self.slots), thread_name_prefix="cmdv-slot")
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = 0

    @property
    def n_slots(self) -> int:
        return len(self.slots)

    def submit(self, fn: Callable, timeout: float) -> tuple[concurrent.futures.Future, Job]:
        """Queue ``fn(slot, job)``; returns its future and the :class:`Job` (cancel it to stop the work).

        Raises :class:`QueueFullError` at once when the queue is full. ``timeout``: seconds from now until
        the job's deadline (waiting included); ``fn`` should call ``job.check()`` as it goes."""
        job = Job(deadline=time.monotonic() + float(timeout))
        with self._lock:
            if self.waiting + self.running >= self.n_slots + self.max_queue:
                raise QueueFullError(f"all {self.n_slots} slots are busy and {self.waiting} requests are queued "
                                     f"(limit {self.max_queue}); retry later")
            self.waiting += 1
        try:
            return self._exec.submit(self._run, fn, job), job
        except BaseException:
            with self._lock:
                self.waiting -= 1
            raise

    def _run(self, fn: Callable, job: Job):
        with self._lock:
            self.waiting -= 1
            self.running += 1
        slot = self._free.get()
        try:
            job.check()
            job.started = time.monotonic()
            return fn(slot, job)
        finally:
            self._free.put(slot)
            with self._lock:
                self.running -= 1

    def close(self) -> None:
        """Stop taking jobs, wait for the running ones, free the slots."""
        self._exec.shutdown(wait=True, cancel_futures=True)
        close_slots(self.slots)
