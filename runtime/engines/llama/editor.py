"""The behavior-pack edit inside llama.cpp's eval callback (native C or Python).

An :class:`EditEntry` is one pack entry bound to this request: float32 matrices,
effective strength (entry strength × pack strength) and the absolute prompt
rows it targets. An editor holds the entries of the current request and is the
context's eval callback:

* ``begin(pos0, n_tokens, out_pos)`` before each ``llama_decode`` of the prompt
  (tokens at absolute positions ``pos0 .. pos0+n_tokens-1``; ``out_pos`` = the
  absolute positions of the rows that produce logits), ``end()`` after it;
* asked about a tensor, it wants only ``l_out-N`` of layers with a targeted row
  in the current micro-batch, and answers ``False`` at once when inactive
  (generated tokens);
* given a computed ``l_out-N`` it edits the targeted rows in place,
  ``h += s * delta(h)`` per entry in order. ``l_out`` of the last layer holds
  only the output rows; rows are matched by count.

:class:`NativeEditor` runs ``runtime/native/cmdv_core.c``; :class:`PyEditor` is
the same logic in numpy (fallback when no C compiler is available). Both do the
arithmetic in float64 and round each edited value to float32 once.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from commandv.runtime.edit.lowrank import lowrank_delta
from commandv.runtime.engines.llama import ggml_bindings as gb
from commandv.runtime.engines.llama.lowlevel import LlamaContext, LlamaError, LlamaModel
from commandv.runtime.engines.request_checks import StrengthError, target_rows
from commandv.runtime.pack.model import BehaviorPack


@dataclass
class EditEntry:
    """One entry bound to a request. Matrices float32 C-contiguous (``A [d, r]`` …); ``rows`` int32 sorted."""

    layer: int
    A: np.ndarray
    b: np.ndarray
    C: np.ndarray
    act: str
    strength: float
    rows: np.ndarray
    P: np.ndarray | None = None
    Q: np.ndarray | None = None
    e: np.ndarray | None = None

    def delta64(self, h: np.ndarray) -> np.ndarray:
        """``delta(h)`` in float64 for ``h [n, d]``."""
        f64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
        return lowrank_delta(np.asarray(h, np.float64), f64(self.A), f64(self.b), f64(self.C), self.act,
                             f64(self.P), f64(self.Q), f64(self.e))


def _f32(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.ascontiguousarray(a, dtype=np.float32)


def compile_entries(packs: Sequence[BehaviorPack], strengths: Sequence[float], n_tokens: int,
                    rows: Sequence[int] | None = None) -> list[EditEntry]:
    """Entries of ``packs`` (list order, then file order) for a prompt of ``n_tokens`` tokens.

    ``rows`` overrides every entry's positions with these absolute rows (tests).
    Entries with effective strength 0 are dropped. Raises :class:`PositionsError`.
    """
    out: list[EditEntry] = []
    for pi, (pack, s) in enumerate(zip(packs, strengths)):
        for ei, en in enumerate(pack.entries):
            eff = float(en.strength) * float(s)
            if not math.isfinite(eff):
                raise StrengthError(f"pack {pack.name!r} entry {ei}: strength {eff} is not finite")
            idx = target_rows(en.positions, n_tokens, rows, f"pack {pack.name!r} entry {ei}")
            if eff == 0.0 or not idx:
                continue
            out.append(EditEntry(int(en.layer), _f32(en.A), _f32(en.b), _f32(en.C), en.act, eff,
                                 np.asarray(idx, dtype=np.int32), _f32(en.P), _f32(en.Q), _f32(en.e)))
    return out


class PyEditor:
    """The edit as a Python eval callback (numpy); slower, used when the C core is unavailable."""

    native = False

    def __init__(self, d: int, n_layer: int):
        self.d, self.n_layer = int(d), int(n_layer)
        self.entries: list[EditEntry] = []
        self.active = False
        self.need: set[int] = set()
        self.pos0 = self.n_tokens = 0
        self.out_pos: list[int] = []
        self.rec: np.ndarray | None = None
        self.n_applied = 0
        self._names = gb.layer_outputs(self.n_layer)

    def load(self, entries: list[EditEntry]) -> None:
        self.entries = list(entries)
        self.active = False

    def set_record(self, rec: np.ndarray | None) -> None:
        """Record each layer's rows (after the edits) into ``rec [n_layer, T, d]`` float32; None stops."""
        self.rec = rec

    def begin(self, pos0: int, n_tokens: int, out_pos: Sequence[int]) -> int:
        self.pos0, self.n_tokens, self.out_pos = int(pos0), int(n_tokens), [int(p) for p in out_pos]
        hi = pos0 + n_tokens
        self.need = {e.layer for e in self.entries if np.any((e.rows >= pos0) & (e.rows < hi))}
        self.active = bool(self.need) or self.rec is not None
        return len(self.need)

    def end(self) -> None:
        self.active = False

    def check_error(self) -> None:
        return None

    def __call__(self, t: int, ask: bool) -> bool:
        if not self.active:  # generated tokens: nothing to do (True after compute = keep going)
            return not ask
        il = self._names.get(gb.tensor_name(t))
        want = il is not None and (il in self.need or self.rec is not None)
        if ask:
            return want
        if want:
            self._edit(t, il)
        return True

    def _edit(self, t: int, il: int) -> None:
        n_rows = gb.tensor_shape(t)[1]
        if n_rows == 0:
            return
        if n_rows == self.n_tokens:
            pos = np.arange(self.pos0, self.pos0 + n_rows)
        elif n_rows == len(self.out_pos):
            pos = np.asarray(self.out_pos)
        else:
            raise LlamaError(f"{gb.layer_output_name(il)} has {n_rows} rows; expected {self.n_tokens} tokens "
                             f"or {len(self.out_pos)} outputs")
        local = {int(p): r for r, p in enumerate(pos)}
        if il in self.need:
            for e in self.entries:
                if e.layer != il:
                    continue
                rr = [local[int(p)] for p in e.rows if int(p) in local]
                if not rr:
                    continue
                h = gb.read_rows(t, rr).astype(np.float64)
                with np.errstate(over="ignore", invalid="ignore"):  # an absurd strength: inf/NaN rows, as in C
                    new = (h + e.strength * e.delta64(h)).astype(np.float32)
                gb.write_rows(t, rr, new)
                self.n_applied += len(rr)
        if self.rec is not None:
            keep = (pos >= 0) & (pos < self.rec.shape[1])
            self.rec[il, pos[keep]] = gb.read_rows(t, np.nonzero(keep)[0])


class NativeEditor:
    """The edit in C (``cmdv_core.c``): the callback costs a few ns per graph node during generation."""

    native = True

    def __init__(self, core, d: int, n_layer: int):
        self.core, self.d, self.n_layer = core, int(d), int(n_layer)
        self._st = core.lib.cmdv_state_new(self.d, self.n_layer)
        if not self._st:
            raise LlamaError("cmdv_state_new failed")
        self._alive: list = []  # numpy arrays whose pointers the C state holds
        self._rec = None

    @property
    def state(self) -> int:
        return self._st

    @property
    def n_applied(self) -> int:
        return int(self.core.lib.cmdv_state_n_applied(self._st))

    def load(self, entries: list[EditEntry]) -> None:
        from commandv.runtime.native.build import ACT_IDS

        L = self.core.lib
        L.cmdv_state_clear(self._st)
        L.cmdv_state_reset_error(self._st)
        fp = lambda a: None if a is None else a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
        alive = []
        for e in entries:
            q = 0 if e.P is None else int(e.P.shape[1])
            rows = np.ascontiguousarray(e.rows, dtype=np.int32)
            idx = L.cmdv_state_add_entry(self._st, e.layer, int(e.A.shape[1]), ACT_IDS[e.act], fp(e.A), fp(e.b),
                                         fp(e.C), q, fp(e.P), fp(e.Q), fp(e.e), float(e.strength),
                                         rows.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), int(rows.size))
            if idx < 0:
                raise LlamaError(f"native edit refused an entry: {self._error()}")
            alive.append(e)
        self._alive = alive

    def set_record(self, rec: np.ndarray | None) -> None:
        self._rec = rec
        ptr = None if rec is None else rec.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        self.core.lib.cmdv_state_set_record(self._st, ptr, 0 if rec is None else int(rec.shape[1]))

    def begin(self, pos0: int, n_tokens: int, out_pos: Sequence[int]) -> int:
        op = np.ascontiguousarray(out_pos, dtype=np.int32)
        return int(self.core.lib.cmdv_state_begin(self._st, int(pos0), int(n_tokens),
                                                   op.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), int(op.size)))

    def end(self) -> None:
        self.core.lib.cmdv_state_end(self._st)

    def _error(self) -> str | None:
        msg = self.core.lib.cmdv_state_error(self._st)
        return msg.decode("utf-8", "replace") if msg else None

    def check_error(self) -> None:
        msg = self._error()
        if msg:
            self.core.lib.cmdv_state_reset_error(self._st)
            raise LlamaError(f"native edit failed: {msg}")

    def free(self) -> None:
        if getattr(self, "_st", None):
            self.core.lib.cmdv_state_free(self._st)
            self._st = None

    def __del__(self) -> None:
        try:
            self.free()
        except Exception:
            pass


class NativeContext(LlamaContext):
    """A :class:`LlamaContext` whose ``cb_eval`` is a C function pointer with C ``user_data``."""

    def __init__(self, model: LlamaModel, c_callback: int, user_data: int, n_ctx: int = 2048,
                 n_batch: int | None = None, n_ubatch: int | None = None, n_threads: int | None = None,
                 kv_type: str = "f16", flash_attn: bool | None = None):
        super().__init__(model, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch, n_seq_max=1, n_threads=n_threads,
                         kv_type=kv_type, flash_attn=flash_attn, c_callback=(int(c_callback), int(user_data)))


def make_editor(d: int, n_layer: int, native: bool | None = None):
    """A :class:`NativeEditor` when the C core builds (``native`` None/True), else a :class:`PyEditor`.

    ``native=True`` raises :class:`LlamaError` when the C core is unavailable.
    """
    if native is not False:
        from commandv.runtime.native.build import load, unavailable_reason

        core = load()
        if core is not None:
            return NativeEditor(core, d, n_layer)
        if native:
            raise LlamaError(f"native edit core unavailable: {unavailable_reason()}")
    return PyEditor(d, n_layer)


def make_context(model: LlamaModel, editor, **kw) -> LlamaContext:
    """A context with ``editor`` as its eval callback (C pointer for the native editor)."""
    if isinstance(editor, NativeEditor):
        return NativeContext(model, editor.core.eval_cb, editor.state, **kw)
    return LlamaContext(model, eval_callback=editor, **kw)
