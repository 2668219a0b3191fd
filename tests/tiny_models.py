"""Tiny random-weight llama GGUF fixtures for fast parity tests.

``write_tiny_llama_gguf`` writes a small ``llama``-architecture GGUF with a
real byte-level BPE tokenizer (gpt2-style, ``qwen2`` pre-tokenizer) and a
ChatML chat template. Both llama.cpp and transformers' GGUF loader accept it.

``reference_forward`` is an independent numpy forward pass of such a file
(llama.cpp conventions: adjacent-pair RoPE on the GGUF-stored Q/K rows), used
to check llama.cpp captures and transformers captures against a third party.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from commandv.runtime.atomic import atomic_path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ROPE_THETA = 100000.0
RMS_EPS = 1e-5
N_MERGES = 200

# Own words, only used to learn a few BPE merges (no third-party text).
_CORPUS = (
    "the quick model reads the prompt and then writes an answer. "
    "a small language model has layers, heads and a residual stream. "
    "we translate the activations of one model into another model with least squares. "
    "please write a short story about a robot that learns to paint the sea. "
    "what is the capital of the country where the river meets the mountains? "
    "hello there, how are you today? i am fine, thank you for asking. "
    "count from one to ten: 1 2 3 4 5 6 7 8 9 10. the answer is 42. "
    "system user assistant instruction response question explain describe list "
    "behavior transfer adapter donor recipient profile layer token vector matrix "
) * 3


class TinyModelError(ValueError):
    """Bad arguments for a tiny fixture model."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build_bpe_vocab(n_merges: int = N_MERGES) -> tuple[list[str], list[str], list[int]]:
    """Learn a byte-level BPE vocab on a fixed corpus.

    Returns ``(tokens, merges, token_types)``: 256 byte tokens, ``n_merges``
    merged tokens, then the ChatML specials (token type 3 = control).
    Deterministic: ties are broken by the pair's text.
    """
    spell = _bytes_to_unicode()
    words = re.findall(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+", _CORPUS)
    counts = Counter(tuple(spell[b] for b in w.encode("utf-8")) for w in words)
    tokens = [spell[b] for b in range(256)]
    merges: list[str] = []
    seqs = {w: list(w) for w in counts}
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, c in counts.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], "".join(kv[0])))[0]
        a, b = best
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        for w in seqs:
            s, out, i = seqs[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    types = [1] * len(tokens) + [3] * len(SPECIAL_TOKENS)
    return tokens + list(SPECIAL_TOKENS), merges, types


def tiny_weights(
    n_vocab: int, n_layer: int, d_model: int, n_head: int, n_kv_head: int, d_ff: int, seed: int
) -> dict[str, np.ndarray]:
    """Random float32 weights in GGUF names and numpy layout ``[out, in]``.

    Scales keep the residual stream O(1): embeddings ~N(0, 1), projections
    ~N(0, 1/fan_in), norm gains 1 ± 0.1 (non-trivial so a missing norm shows).
    """
    rng = np.random.default_rng(seed)
    hd = d_model // n_head

    def lin(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    def gain(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"token_embd.weight": rng.standard_normal((n_vocab, d_model)).astype(np.float32)}
    for i in range(n_layer):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = gain(d_model)
        w[p + "attn_q.weight"] = lin(n_head * hd, d_model)
        w[p + "attn_k.weight"] = lin(n_kv_head * hd, d_model)
        w[p + "attn_v.weight"] = lin(n_kv_head * hd, d_model)
        w[p + "attn_output.weight"] = lin(d_model, n_head * hd)
        w[p + "ffn_norm.weight"] = gain(d_model)
        w[p + "ffn_gate.weight"] = lin(d_ff, d_model)
        w[p + "ffn_up.weight"] = lin(d_ff, d_model)
        w[p + "ffn_down.weight"] = lin(d_model, d_ff)
    w["output_norm.weight"] = gain(d_model)
    w["output.weight"] = lin(n_vocab, d_model)
    return w


def write_tiny_llama_gguf(
    path: str | Path,
    n_layer: int = 4,
    d_model: int = 64,
    n_head: int = 4,
    n_kv_head: int = 2,
    d_ff: int = 128,
    seed: int = 0,
    dtype: str = "f32",
    chat_template: str | None = CHATML_TEMPLATE,
    n_ctx_train: int = 2048,
) -> Path:
    """Write a tiny random llama GGUF at ``path`` (atomically) and return the path.

    ``dtype``: storage of 2-D weights: ``'f32'``, ``'f16'`` or ``'q8_0'``
    (norms stay f32). ``chat_template=None`` writes a model without a template.
    """
    import gguf

    if d_model % n_head or n_head % n_kv_head:
        raise TinyModelError(f"d_model={d_model} must divide by n_head={n_head}, and n_head by n_kv_head={n_kv_head}")
    qtypes = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }
    if dtype not in qtypes:
        raise TinyModelError(f"dtype {dtype!r} not in {sorted(qtypes)}")
    ftype = {"f32": 0, "f16": 1, "q8_0": 7}[dtype]
    tokens, merges, types = build_bpe_vocab()
    weights = tiny_weights(len(tokens), n_layer, d_model, n_head, n_kv_head, d_ff, seed)

    path = Path(path)
    with atomic_path(path) as tmp:
        wr = gguf.GGUFWriter(str(tmp), "llama")
        wr.add_name("tiny-llama-random")
        wr.add_file_type(ftype)
        wr.add_vocab_size(len(tokens))
        wr.add_context_length(n_ctx_train)
        wr.add_embedding_length(d_model)
        wr.add_block_count(n_layer)
        wr.add_feed_forward_length(d_ff)
        wr.add_head_count(n_head)
        wr.add_head_count_kv(n_kv_head)
        wr.add_rope_dimension_count(d_model // n_head)
        wr.add_rope_freq_base(ROPE_THETA)
        wr.add_layer_norm_rms_eps(RMS_EPS)
        wr.add_tokenizer_model("gpt2")
        wr.add_tokenizer_pre("qwen2")
        wr.add_token_list(tokens)
        wr.add_token_types(types)
        wr.add_token_merges(merges)
        wr.add_bos_token_id(tokens.index("<|endoftext|>"))
        wr.add_eos_token_id(tokens.index("<|im_end|>"))
        wr.add_pad_token_id(tokens.index("<|endoftext|>"))
        wr.add_add_bos_token(False)
        if chat_template is not None:
            wr.add_chat_template(chat_template)
        for name, arr in weights.items():
            qt = qtypes[dtype] if arr.ndim == 2 else gguf.GGMLQuantizationType.F32
            if qt == gguf.GGMLQuantizationType.F32:
                wr.add_tensor(name, arr)
            elif qt == gguf.GGMLQuantizationType.F16:
                wr.add_tensor(name, arr.astype(np.float16))
            else:
                data = gguf.quants.quantize(arr, qt)
                wr.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qt)
        wr.write_header_to_file()
        wr.write_kv_data_to_file()
        wr.write_tensors_to_file()
        wr.close()
    return path


def read_gguf_weights(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Dequantized float32 weights ``{name: [out, in]}`` and llama hparams of a GGUF."""
    import gguf

    r = gguf.GGUFReader(str(path))

    def field(key):
        f = r.fields[key]
        return f.parts[f.data[0]].item()

    hp = {
        "n_layer": field("llama.block_count"),
        "n_head": field("llama.attention.head_count"),
        "n_kv_head": field("llama.attention.head_count_kv"),
        "eps": field("llama.attention.layer_norm_rms_epsilon"),
        "theta": field("llama.rope.freq_base"),
    }
    w = {}
    for t in r.tensors:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        w[t.name] = np.asarray(arr, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)])
    return w, hp


def reference_forward(path: str | Path, token_ids: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Numpy forward of a tiny llama GGUF on one sequence.

    Returns ``(layers, logits)``: ``layers[i]`` is block i's output (residual
    stream, before the final norm), float32 ``[T, d]``; ``logits`` ``[T, n_vocab]``.
    RoPE rotates adjacent pairs (llama.cpp's ``NORM`` mode on GGUF Q/K rows).
    """
    w, hp = read_gguf_weights(path)
    x = w["token_embd.weight"][np.asarray(token_ids)].astype(np.float64)
    T, d = x.shape
    nh, nkv = hp["n_head"], hp["n_kv_head"]
    hd = d // nh
    pos = np.arange(T)[:, None]
    inv = hp["theta"] ** (-np.arange(0, hd, 2) / hd)
    ang = pos * inv[None, :]  # [T, hd/2]
    cos, sin = np.cos(ang), np.sin(ang)

    def norm(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + hp["eps"]) * g

    def rope(v):  # v [T, h, hd]
        a, b = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2] = a * cos[:, None, :] - b * sin[:, None, :]
        out[..., 1::2] = a * sin[:, None, :] + b * cos[:, None, :]
        return out

    mask = np.triu(np.full((T, T), -np.inf), 1)
    layers = []
    for i in range(hp["n_layer"]):
        p = f"blk.{i}."
        h = norm(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(T, nh, hd))
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(T, nkv, hd))
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, nkv, hd)
        rep = nh // nkv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        att = np.einsum("hts,shd->thd", s, v).reshape(T, nh * hd)
        x = x + att @ w[p + "attn_output.weight"].T
        h = norm(x, w[p + "ffn_norm.weight"])
        g = h @ w[p + "ffn_gate.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        layers.append(x.astype(np.float32))
    out_w = w.get("output.weight", w["token_embd.weight"])
    logits = norm(x, w["output_norm.weight"]) @ out_w.T
    return layers, logits.astype(np.float32)
