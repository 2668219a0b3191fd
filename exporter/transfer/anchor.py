"""Behavior-anchored token rows: text the donor writes with its adapter, read by both models, joins the fit.

Why: the general prompts are English questions, so neither profile varies along what a style adapter writes
(French, say): the translators fitted on them have no row where that feature moves, and the folded edit loses it.
The donor's own answers *with* the adapter are text in the behavior. Both models read that text; their states at
tokens that end at the same byte are paired (:mod:`commandv.profiles.token_rows`) and appended to the fit rows of
``pinv-tokens``. On Qwen0.5B → SmolLM2 French (40 tuning prompts, strength 1): 10 % French with the general
token rows alone, 92 % with the donor's answers with its adapter added (35 % with the answers it was trained on
instead); on the 160 held-out prompts 41 %, 0.54 of the donor's own rate
(``benchmarks/results/transfer/qwen0.5b-to-smollm2-french.json``). It did not carry refusal or pirate there::

    texts = behavior_texts("qwen2.5-coder-0.5b-instruct", adapter, prompts)      # list[str], the donor's answers
    dprof, rprof = add_token_rows(donor, recipient, dprof, rprof, 256, texts=texts)
"""

from __future__ import annotations

from typing import Sequence

from commandv.exporter.adapters.folder import Adapter
from commandv.runtime.progress import progress_bar

ANCHOR_MAX_TOKENS = 32
"""Tokens the donor writes per anchor prompt (greedy)."""


def behavior_texts(donor_model: str, adapter: Adapter, prompts: Sequence[str], max_tokens: int = ANCHOR_MAX_TOKENS,
                   progress: bool = True) -> list[str]:
    """The donor's greedy answers to ``prompts`` with ``adapter`` applied to it at strength 1 (llama.cpp; the
    adapter folded as a self-pack, :func:`~commandv.exporter.adapters.self_pack.model_adapter_pack`), blank answers
    dropped. ``donor_model``: zoo key or .gguf of the model the adapter was trained on."""
    from commandv.exporter.adapters.self_pack import model_adapter_pack
    from commandv.runtime.engines.llama.engine import Recipient

    pack = model_adapter_pack(donor_model, adapter, "anchor")
    texts = []
    with Recipient(donor_model, n_ctx=2048) as eng, progress_bar("donor behavior text", len(prompts),
                                                                 enabled=progress, unit="prompts") as advance:
        for p in prompts:
            texts.append(eng.generate(p, packs=[pack], strengths=[1.0], max_tokens=max_tokens))
            advance(1)
    return [t for t in texts if t.strip()]
