"""Activation capture with transformers: last prompt token of every decoder block's output.

Forward hooks on ``model.model.layers[i]`` record the block output (residual
stream before the final norm; a hook handles blocks returning a tuple or a bare
tensor). Prompts are batched with left padding, so the last column is every
prompt's last token; position ids are passed explicitly from the attention mask.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from commandv.profiles.capture_result import CaptureResult
from commandv.runtime.engines.reference import decoder_layers  # noqa: F401  (re-exported)
from commandv.runtime.errors import CommandVError
from commandv.runtime.models.chat_template import render_chat, user_turn


class HFCaptureError(CommandVError, ValueError):
    """Prompts or model unsuitable for capture."""


def left_pad_batch(seqs, pad: int):
    """Token lists → ``(input_ids [B, L], attention_mask [B, L])`` torch tensors, left-padded with ``pad``."""
    import torch

    L = max(len(t) for t in seqs)
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for row, t in enumerate(seqs):
        ids[row, L - len(t):] = torch.tensor(list(t))
        mask[row, L - len(t):] = 1
    return ids, mask


def render_prompts(tokenizer, prompts: Sequence[str], template: bool = True) -> tuple[list[str], list[list[int]]]:
    """Render each prompt as one user turn + generation header and tokenize without extra specials."""
    if template:
        tmpl = getattr(tokenizer, "chat_template", None)
        bos = tokenizer.bos_token or ""
        eos = tokenizer.eos_token or ""
        rendered = [render_chat(tmpl, user_turn(p), True, bos, eos) for p in prompts]
        ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in rendered]
    else:
        rendered = list(prompts)
        ids = [tokenizer(r)["input_ids"] for r in rendered]
    return rendered, ids


def capture_hf(model, tokenizer, prompts: Sequence[str], *, template: bool = True, batch_size: int = 8,
               max_tokens: int | None = None, progress: bool = True) -> CaptureResult:
    """Capture ``[N, d]`` per layer for ``prompts`` (see module docstring)."""
    import torch

    if not prompts:
        raise HFCaptureError("no prompts to profile")
    rendered, ids = render_prompts(tokenizer, prompts, template)
    limit = max_tokens or getattr(model.config, "max_position_embeddings", None) or 1 << 30
    for i, t in enumerate(ids):
        if len(t) > limit:
            raise HFCaptureError(f"prompt {i} has {len(t)} tokens, longer than the model's context ({limit})")
        if not t:
            raise HFCaptureError(f"prompt {i} is empty after tokenization")
    layers = decoder_layers(model)
    n_layer = len(layers)
    d = int(model.config.hidden_size) if hasattr(model.config, "hidden_size") else None
    out = [[] for _ in range(n_layer)]
    grabbed: dict[int, torch.Tensor] = {}

    def hook(i):
        def fn(_mod, _inp, output):
            h = output[0] if isinstance(output, (tuple, list)) else output
            grabbed[i] = h[:, -1, :].detach().float().cpu()
        return fn

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    # sort by length so batches pad little; restore order afterwards
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    t0 = time.perf_counter()
    from commandv.runtime.progress import progress_bar

    try:
        with progress_bar("profiling (hf)", len(ids), enabled=progress) as advance, torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                input_ids, mask = left_pad_batch([ids[i] for i in idx], pad)
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                grabbed.clear()
                model(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=False)
                for li in range(n_layer):
                    out[li].append((idx, grabbed[li].numpy()))
                advance(len(idx))
    finally:
        for h in handles:
            h.remove()
    result = []
    for li in range(n_layer):
        arr = np.zeros((len(ids), out[li][0][1].shape[1]), dtype=np.float32)
        for idx, rows in out[li]:
            arr[idx] = rows
        result.append(arr)
    return CaptureResult(
        layers=result, n_layer=n_layer, d_model=d or result[0].shape[1], rendered_example=rendered[0],
        template=getattr(tokenizer, "chat_template", None) if template else None,
        token_counts=[len(t) for t in ids], seconds=time.perf_counter() - t0)
