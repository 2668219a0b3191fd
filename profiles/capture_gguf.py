"""Capture residual-stream profiles from a GGUF model with llama.cpp.

For each prompt (chat template applied once, generation header included) we
take the LAST prompt token's output of every transformer block -- llama.cpp's
graph tensors ``l_out-0`` ... ``l_out-{n_layer-1}`` (before the final norm)::

    res = capture_gguf("model.gguf", ["Hello!", "Tell me about rivers."])
    res.layers[3]  # float32 [2, d_model]: block 3's output at each prompt's last token

By default prompts go one at a time and the tokens every prompt shares (the
chat template's system prompt and turn header) are decoded once: their KV
cells are kept and each prompt decodes only its own tail (``reuse_prefix``);
the common prefix is often a third to a half of a short chat prompt.

With ``batch_prompts`` > 1, several prompts go into one ``llama_decode`` batch
with distinct sequence ids. The context is built with a unified KV cache and ``n_ubatch`` >= the batch's
total tokens, so the batch is one micro-batch in batch order and the eval
callback fires once per layer. ``l_out`` of the last layer only holds the rows
that produce logits (one per sequence, in order): rows are picked by count.
Batching costs attention over every cell of the unified cache (masked), which
on a CPU can outweigh the larger matmuls: one prompt at a time with the shared
prefix is the default; measure before raising ``batch_prompts``.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from commandv.runtime import crash
from commandv.runtime.engines.llama import ggml_bindings as gb
from commandv.runtime.engines.llama.lowlevel import ContextOverflowError, LlamaContext, LlamaError, LlamaModel

MAX_BATCH_TOKENS = 2048
MIN_SHARED_PREFIX = 4  # shorter common prefixes are decoded with each prompt


def shared_prefix_len(token_lists: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix common to every list (0 for an empty input)."""
    if not token_lists:
        return 0
    first, n = token_lists[0], min(len(t) for t in token_lists)
    for t in token_lists[1:]:
        k = 0
        while k < n and t[k] == first[k]:
            k += 1
        n = k
    return n


class CaptureError(LlamaError):
    """A capture could not be done as asked (bad input, unexpected graph)."""


from commandv.profiles.capture_result import CaptureResult  # noqa: E402  (re-exported)


def prepare_prompts(model: LlamaModel, prompts: Sequence[str], template: bool = True) -> tuple[list[str], list[list[int]]]:
    """Render (user turn + generation header) and tokenize each prompt.

    With ``template`` the rendered text is tokenized without adding BOS/EOS
    (the template writes what it needs, as transformers does); raw prompts get
    the model's default special tokens. Returns ``(rendered, token_ids)``.
    """
    if template:
        rendered = [model.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]
        tokens = [model.tokenize(r, add_special=False, parse_special=True) for r in rendered]
    else:
        rendered = list(prompts)
        tokens = [model.tokenize(r, add_special=True, parse_special=True) for r in rendered]
    return rendered, tokens


def plan_batches(token_counts: Sequence[int], batch_prompts: int, max_batch_tokens: int) -> list[list[int]]:
    """Group consecutive prompt indices: at most ``batch_prompts`` prompts and ``max_batch_tokens`` tokens per group
    (a single longer prompt gets a group of its own)."""
    groups: list[list[int]] = []
    cur: list[int] = []
    cur_tok = 0
    for i, n in enumerate(token_counts):
        if cur and (len(cur) >= batch_prompts or cur_tok + n > max_batch_tokens):
            groups.append(cur)
            cur, cur_tok = [], 0
        cur.append(i)
        cur_tok += n
    if cur:
        groups.append(cur)
    return groups


class _LayerGrabber:
    """Eval callback collecting each sequence's last-token row of every ``l_out-N``."""

    def __init__(self, n_layer: int):
        self.targets = gb.layer_outputs(n_layer)
        self.last_rows: list[int] = []
        self.got: dict[int, np.ndarray] = {}
        self.enabled = True

    def start(self, last_rows: Sequence[int], n_tokens: int, enabled: bool = True) -> None:
        self.enabled = bool(enabled)
        self.last_rows = list(last_rows)
        self.n_tokens = int(n_tokens)
        self.got = {}

    def __call__(self, t: int, ask: bool) -> bool:
        if not self.enabled:
            return not ask
        name = gb.tensor_name(t)
        if ask:
            return name in self.targets
        il = self.targets.get(name)
        if il is None:
            return True
        if il in self.got:
            raise CaptureError(f"{name} computed twice in one batch: the batch was split into micro-batches")
        n_rows = gb.tensor_shape(t)[1]
        n_seq = len(self.last_rows)
        if n_rows == self.n_tokens:
            rows = self.last_rows
        elif n_rows == n_seq:  # last layer: only output rows, one per sequence, in batch order
            rows = list(range(n_seq))
        else:
            raise CaptureError(f"{name} has {n_rows} rows; expected {self.n_tokens} tokens or {n_seq} outputs")
        self.got[il] = gb.read_rows(t, rows)
        return True


class _Runner:
    """One context + layer grabber decoding a share of the prompt groups into ``out``."""

    def __init__(self, model: LlamaModel, ctx_kw: dict, tokens, counts, prefix: int, align: int, out) -> None:
        self.grab = _LayerGrabber(model.n_layer)
        self.model, self.tokens, self.counts, self.prefix, self.align, self.out = model, tokens, counts, prefix, align, out
        self.ctx = LlamaContext(model, eval_callback=self.grab, **ctx_kw)

    def run(self, groups: Sequence[Sequence[int]], advance) -> None:
        ctx, grab, tokens, prefix = self.ctx, self.grab, self.tokens, self.prefix
        if prefix:
            ctx.clear()
            grab.start([], 0, enabled=False)
            ctx.decode([tokens[0][:prefix]], logits_for="none")
        for g in groups:
            if prefix:  # one prompt: keep the shared prefix's cells, decode the rest
                ctx.keep_prefix(prefix)
                tail = tokens[g[0]][prefix:]
                grab.start([len(tail) - 1], len(tail))
                ctx.decode([tail], logits_for="last")
            else:
                ctx.clear()
                lay = ctx.layout([self.counts[i] for i in g], self.align)
                grab.start(lay.last, lay.n_tokens)
                ctx.decode([tokens[i] for i in g], logits_for="last", align=self.align)
            if len(grab.got) != self.model.n_layer:
                missing = sorted(set(range(self.model.n_layer)) - set(grab.got))
                raise CaptureError(f"eval callback missed layers {missing[:8]} "
                                   f"(graph names differ for arch {self.model.arch}?)")
            for il, rows in grab.got.items():
                self.out[il][g] = rows
            advance(len(g))

    def free(self) -> None:
        self.ctx.free()


def _progress(enabled: bool, total: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]capture gguf"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} prompts/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def capture_gguf(
    model_path: str | os.PathLike | LlamaModel,
    prompts: Sequence[str],
    *,
    template: bool = True,
    batch_prompts: int = 1,
    n_threads: int | None = None,
    progress: bool = True,
    n_ctx: int | None = None,
    max_batch_tokens: int = MAX_BATCH_TOKENS,
    exact: bool = True,
    align: int = 32,
    reuse_prefix: bool = True,
    workers: int | None = None,
) -> CaptureResult:
    """Last-prompt-token output of every block for each prompt, with llama.cpp.

    ``template``: apply the GGUF chat template (user turn + generation header);
    False feeds raw prompts. ``n_ctx``: the longest allowed prompt (default: the
    model's training context). ``exact``: f32 KV cache and no flash attention
    (matches an f32 reference to ~1e-6; llama.cpp's defaults -- f16 KV, flash
    attention -- differ by ~1e-3). ``align``: start every sequence of a batch
    at a KV cell multiple of ``align`` (pad tokens in between) so batching is
    bit-identical to one prompt at a time; 0 saves the pads but then quantized
    models differ by ~1% between batch compositions. ``reuse_prefix`` (one prompt at a time only):
    decode the tokens all prompts share once and keep their KV cells. ``workers``: contexts decoding
    in parallel threads, ``n_threads // workers`` threads each (default: one per thread when
    ``batch_prompts`` is 1, which scales better on few cores than one context with all threads;
    results do not depend on it). Raises :class:`ContextOverflowError` before any
    decoding if a prompt is longer than that, :class:`CaptureError` for no
    prompts, ``ModelLoadError`` for a missing/corrupt file.
    """
    if isinstance(prompts, str) or not len(prompts):
        raise CaptureError("prompts must be a non-empty list of strings")
    if batch_prompts < 1:
        raise CaptureError(f"batch_prompts must be >= 1, got {batch_prompts}")
    own = not isinstance(model_path, LlamaModel)
    model = LlamaModel(Path(model_path)) if own else model_path
    try:
        rendered, tokens = prepare_prompts(model, prompts, template)
        counts = [len(t) for t in tokens]
        limit = int(n_ctx or model.n_ctx_train or 4096)
        for i, n in enumerate(counts):
            if n == 0:
                raise CaptureError(f"prompt {i} tokenizes to nothing")
            if n > limit:
                raise ContextOverflowError(f"prompt {i} has {n} tokens, longer than the context of {limit} tokens")
        groups = plan_batches(counts, batch_prompts, max(max_batch_tokens, max(counts)))
        prefix = 0
        if reuse_prefix and batch_prompts == 1:
            prefix = min(shared_prefix_len(tokens), min(counts) - 1)  # every prompt keeps >= 1 own token
            prefix = prefix if prefix >= MIN_SHARED_PREFIX else 0
        need = max(sum(counts[i] for i in g) + align * len(g) for g in groups)
        size = int(-(-need // 256) * 256)
        out = [np.empty((len(prompts), model.n_embd), dtype=np.float32) for _ in range(model.n_layer)]
        threads = int(n_threads or os.cpu_count() or 1)
        n_workers = max(1, min(int(workers or (threads if batch_prompts == 1 else 1)), len(groups), threads))
        kw = dict(n_ctx=size, n_batch=size, n_ubatch=size, n_seq_max=max(len(g) for g in groups) + 1,
                  n_threads=max(1, threads // n_workers), kv_type="f32" if exact else "f16",
                  flash_attn=False if exact else None)
        runners = [_Runner(model, kw, tokens, counts, prefix, align, out) for _ in range(n_workers)]
        t0 = time.perf_counter()
        note = (f"capturing hidden states of {model.path.name} ({len(prompts)} prompts, {n_workers} context(s), "
                f"{kw['n_threads']} thread(s) each, batches of up to {size} tokens)")
        try:
            with crash.operation(note), _progress(progress, len(prompts)) as bar:
                task = bar.add_task("capture", total=len(prompts), rate="-")
                lock = threading.Lock()
                done = [0]

                def advance(k: int) -> None:
                    with lock:
                        done[0] += k
                        rate = done[0] / max(time.perf_counter() - t0, 1e-9)
                        bar.update(task, advance=k, rate=f"{rate:.1f}")

                if n_workers == 1:
                    runners[0].run(groups, advance)
                else:  # data-parallel contexts, one thread each: llama_decode releases the GIL
                    from concurrent.futures import ThreadPoolExecutor

                    with ThreadPoolExecutor(n_workers) as pool:
                        futs = [pool.submit(r.run, groups[k::n_workers], advance) for k, r in enumerate(runners)]
                        for f in futs:
                            f.result()
        finally:
            for r in runners:
                r.free()
        return CaptureResult(
            layers=out,
            n_layer=model.n_layer,
            d_model=model.n_embd,
            rendered_example=rendered[0],
            template=model.chat_template if template else None,
            token_counts=counts,
            seconds=time.perf_counter() - t0,
        )
    finally:
        if own:
            model.free()
