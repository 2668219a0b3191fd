"""llama.cpp engine vs independent references: the torch engine on the same tiny f32 GGUF, llama.cpp's own
control vector (``llama_set_adapter_cvec``), and SmolLM2-135M Q4_1 vs its dequantized HF copy (slow)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from commandv.runtime.engines.llama.engine import Recipient  # noqa: E402
from commandv.runtime.pack.model import BehaviorPack, PackEntry  # noqa: E402
from tests.helpers import cosine_rows, rel_err  # noqa: E402

pytestmark = pytest.mark.llama
PROMPT = "Please write a short story about a robot that learns to paint the sea."


def random_pack(d=64, n_layer=4, layers=(1,), r=3, seed=0, positions="l1", scale=0.5, act="relu", pq=False,
                offset=False, fingerprint="0" * 64, arch="llama", strength=1.0, name="pack") -> BehaviorPack:
    """A random pack: ``A ~ N(0, 1/d)``, ``C ~ N(0, scale²)``; optional P/Q and offset e."""
    rng = np.random.default_rng(seed)
    entries = []
    for layer in layers:
        kw = {}
        if pq:
            kw["P"] = (rng.standard_normal((d, 2)) / np.sqrt(d)).astype(np.float32)
            kw["Q"] = (scale * rng.standard_normal((2, d))).astype(np.float32)
        if offset:
            kw["e"] = (0.3 * rng.standard_normal(d)).astype(np.float32)
        entries.append(PackEntry(layer=layer, A=(rng.standard_normal((d, r)) / np.sqrt(d)).astype(np.float32),
                                 b=(rng.standard_normal(r) + 1.0).astype(np.float32),
                                 C=(scale * rng.standard_normal((r, d))).astype(np.float32), act=act,
                                 positions=positions, strength=strength, **kw))
    return BehaviorPack(entries=entries, recipient=dict(fingerprint=fingerprint, arch=arch, n_layer=n_layer,
                                                        d_model=d), name=name)


@pytest.fixture(scope="module")
def rec(tiny_gguf):
    r = Recipient(tiny_gguf, n_ctx=256, kv_type="f32", flash_attn=False, n_threads=1)
    yield r
    r.close()


@pytest.fixture(scope="module")
def eng(tiny_hf):
    torch = pytest.importorskip("torch")  # noqa: F841
    from commandv.runtime.engines.reference import TorchRecipient

    return TorchRecipient(*tiny_hf)


def _cases(fp):
    return {
        "relu-l1": ([random_pack(layers=(1,), seed=1, fingerprint=fp)], None),
        "gelu-PQ-e-f1+l1-s0.5": ([random_pack(layers=(0, 2), seed=2, act="gelu", pq=True, offset=True,
                                              positions="f1+l1", fingerprint=fp)], [0.5]),
        "two-packs-s2-s0.5": ([random_pack(layers=(1,), seed=3, act="silu", fingerprint=fp),
                               random_pack(layers=(1, 3), seed=4, act="gelu_new", positions="l3", pq=True,
                                           fingerprint=fp, strength=1.5)], [2.0, 0.5]),
        "last-layer-tanh": ([random_pack(layers=(3,), seed=5, act="tanh", positions="f2+l2", fingerprint=fp)], None),
    }


CASES = ["relu-l1", "gelu-PQ-e-f1+l1-s0.5", "two-packs-s2-s0.5", "last-layer-tanh"]


def test_same_tokens_both_engines(rec, eng):
    assert rec.encode(PROMPT) == eng.encode(PROMPT)


@pytest.mark.parametrize("case", CASES)
def test_parity_with_torch_engine(rec, eng, case):
    from commandv.runtime.engines.reference import pack_edits

    packs, strengths = _cases(rec.fingerprint)[case]
    ids = eng.encode(PROMPT)
    lt0, ht0 = eng.prompt_forward(ids, [], record_hidden=True)
    lt, ht = eng.prompt_forward(ids, pack_edits(packs, strengths), record_hidden=True)
    ll0, hl0 = rec.prompt_pass(ids, record_layers=True, all_logits=True)
    ll, hl = rec.prompt_pass(ids, packs, strengths, record_layers=True, all_logits=True)
    assert sorted(hl) == sorted(ht) == list(range(4))
    for layer in range(4):
        assert rel_err(hl[layer], ht[layer]) < 1e-4, layer
        # the edit itself (edited minus plain) agrees too, not only the states
        dt = ht[layer] - ht0[layer]
        if np.abs(dt).max() > 1e-3:
            assert rel_err(hl[layer] - hl0[layer], dt) < 1e-3, layer
    assert rel_err(ll, lt) < 1e-4
    assert np.abs(lt - lt0).max() > 1e-2  # the pack does something
    eog = rec.eog_tokens()
    want = eng.generate_ids(ids, pack_edits(packs, strengths), max_new_tokens=12, stop_ids=eog)
    assert rec.generate_ids(ids, packs, strengths, max_tokens=12) == want


def test_greedy_text_matches_torch(rec, eng):
    from commandv.runtime.engines.reference import pack_edits

    packs, _ = _cases(rec.fingerprint)["relu-l1"]
    ids = eng.encode(PROMPT)
    new = eng.generate_ids(ids, pack_edits(packs), max_new_tokens=10, stop_ids=rec.eog_tokens())
    assert rec.generate(PROMPT, packs=packs, max_tokens=10) == rec.detokenize(new)


def _cvec_logits(rec, ids, deltas: dict[int, np.ndarray]) -> np.ndarray:
    """llama.cpp's control vector applied to the LAST prompt token's decode step only."""
    from commandv.runtime.engines.llama.lowlevel import _ll

    L = _ll()
    ctx = rec.ctx
    data = np.zeros((rec.n_layer - 1, rec.d_model), np.float32)  # layer 1 .. n_layer-1
    for layer, v in deltas.items():
        assert layer >= 1  # llama.cpp has no control vector at layer 0
        data[layer - 1] = v
    lo, hi = min(deltas), max(deltas)
    ctx.clear()
    ctx.decode([ids[:-1]], logits_for="none")
    ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    assert L.llama_set_adapter_cvec(ctx.ptr, ptr, data.size, rec.d_model, lo, hi) == 0
    try:
        return ctx.logits(ctx.decode([ids[-1:]])[0])
    finally:
        L.llama_set_adapter_cvec(ctx.ptr, None, 0, rec.d_model, -1, -1)
        ctx.clear()


def test_control_vector_oracle_one_layer(rec):
    ids = rec.encode(PROMPT)
    pack = random_pack(layers=(2,), seed=11, act="gelu", pq=True, offset=True, fingerprint=rec.fingerprint)
    s = 1.7
    _, h0 = rec.prompt_pass(ids, record_layers=True)
    delta = s * pack.entries[0].delta(h0[2][-1:].astype(np.float64))[0]
    want = _cvec_logits(rec, ids, {2: delta})
    got, _ = rec.prompt_pass(ids, [pack], [s])
    plain, _ = rec.prompt_pass(ids)
    assert np.abs(got - plain).max() > 0.1
    assert rel_err(got, want) < 1e-5


def test_control_vector_oracle_two_layers(rec):
    """Edits at layers 1 and 3: the second delta is taken on the state that already saw the first edit."""
    ids = rec.encode("Count from one to ten.")
    p1 = random_pack(layers=(1,), seed=12, fingerprint=rec.fingerprint)
    p2 = random_pack(layers=(3,), seed=13, act="silu", fingerprint=rec.fingerprint)
    _, h0 = rec.prompt_pass(ids, record_layers=True)
    d1 = p1.entries[0].delta(h0[1][-1:].astype(np.float64))[0]
    _, h1 = rec.prompt_pass(ids, [p1], record_layers=True)
    d3 = 0.5 * p2.entries[0].delta(h1[3][-1:].astype(np.float64))[0]
    want = _cvec_logits(rec, ids, {1: d1, 3: d3})
    got, _ = rec.prompt_pass(ids, [p1, p2], [1.0, 0.5])
    assert rel_err(got, want) < 1e-5


# ---------------------------------------------------------------- real model (slow)
def _calibrated_pack(rec, layers, rank, rel_norm, seed, h_ref):
    """Random rank-``rank`` linear pack whose edit is about ``rel_norm`` × the residual norm at each layer."""
    rng = np.random.default_rng(seed)
    d = rec.d_model
    entries = []
    for layer in layers:
        A = (rng.standard_normal((d, rank)) / np.sqrt(d)).astype(np.float32)
        C = rng.standard_normal((rank, d)).astype(np.float32)
        h = h_ref[layer][-1:]
        z = h @ A
        scale = rel_norm * np.linalg.norm(h) / max(np.linalg.norm(np.maximum(z, 0) @ C), 1e-6)
        entries.append(PackEntry(layer=layer, A=A, b=np.zeros(rank, np.float32), C=(C * scale).astype(np.float32),
                                 act="relu"))
    return BehaviorPack(entries=entries, recipient=dict(fingerprint=rec.fingerprint, arch=rec.arch,
                                                        n_layer=rec.n_layer, d_model=d))


def _prefix_match(a: list[int], b: list[int]) -> float:
    """Fraction of the longer continuation that both share as a common prefix."""
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same / max(len(a), len(b), 1)


@pytest.mark.slow
def test_smollm2_q4_vs_dequantized_hf():
    """SmolLM2-135M Q4_1 (llama.cpp) vs its dequantized fp32 HF copy (torch): report agreement."""
    torch = pytest.importorskip("torch")
    import sys

    from commandv.profiles.hf_models import torch_recipient
    from commandv.profiles.prompts import load_prompt_set
    from commandv.runtime.engines.reference import pack_edits

    key = "smollm2-135m-instruct"
    rec = Recipient(key, n_ctx=1024, kv_type="f32", flash_attn=False, n_threads=1)
    eng = torch_recipient(key)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two thread pools spinning on a small machine slow each other down badly
    try:
        prompts = load_prompt_set("general", limit=50).prompts
        _, h_ref = rec.prompt_pass(rec.encode(prompts[0]), record_layers=True)
        layers = list(range(2, rec.n_layer, 4))
        pack = _calibrated_pack(rec, layers, rank=8, rel_norm=0.3, seed=0, h_ref=h_ref)
        edits = pack_edits([pack])
        eog = rec.eog_tokens()
        probe, last = max(layers), rec.n_layer - 1
        cos_edit, cos_final, match, match0, exact, exact0 = [], [], [], [], 0, 0
        for k, p in enumerate(prompts):
            if k % 10 == 0:
                print(f"smollm2 parity: prompt {k}/{len(prompts)}", file=sys.stderr, flush=True)
            ids = rec.encode(p)
            assert ids == eng.encode(p)
            _, hl0 = rec.prompt_pass(ids, record_layers=True)
            _, hl = rec.prompt_pass(ids, [pack], record_layers=True)
            _, ht0 = eng.prompt_forward(ids, [], record_hidden=True)
            _, ht = eng.prompt_forward(ids, edits, record_hidden=True)
            cos_edit.append(float(cosine_rows((hl[probe] - hl0[probe])[-1:], (ht[probe] - ht0[probe])[-1:])[0]))
            cos_final.append(float(cosine_rows((hl[last] - hl0[last])[-1:], (ht[last] - ht0[last])[-1:])[0]))
            a, b = rec.generate_ids(ids, [pack], max_tokens=16), eng.generate_ids(ids, edits, 16, stop_ids=eog)
            a0, b0 = rec.generate_ids(ids, max_tokens=16), eng.generate_ids(ids, [], 16, stop_ids=eog)
            match.append(_prefix_match(a, b))
            match0.append(_prefix_match(a0, b0))
            exact += a == b
            exact0 += a0 == b0
    finally:
        torch.set_num_threads(threads)
        rec.close()
    n = len(prompts)
    report = dict(prompts=n, layers=layers, mean_cos_edit_at_probe=float(np.mean(cos_edit)),
                  min_cos_edit_at_probe=float(np.min(cos_edit)), mean_cos_final_delta=float(np.mean(cos_final)),
                  min_cos_final_delta=float(np.min(cos_final)),
                  greedy_prefix_match_pack=float(np.mean(match)), identical_continuations_pack=exact / n,
                  greedy_prefix_match_plain=float(np.mean(match0)), identical_continuations_plain=exact0 / n)
    print("SMOLLM2_PARITY", report)
    assert report["mean_cos_edit_at_probe"] > 0.9
    assert report["mean_cos_final_delta"] > 0.8
    assert report["greedy_prefix_match_pack"] > 0.4
