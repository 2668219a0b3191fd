"""ONNX Runtime engine on SmolLM2-135M-Instruct (zoo Q4_1 GGUF → dequantized fp32 HF copy → ONNX): parity with
the torch reference engine with a pack, zero-pack exactness, and the int8 variant's agreement with fp32."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from commandv.runtime.pack.model import BehaviorPack, PackEntry  # noqa: E402
from tests.helpers import rel_err  # noqa: E402

PROMPTS = ("Tell me something nice about rivers.", "What is the capital of France?",
           "Write a Python function that reverses a string.")


@pytest.fixture(scope="session")
def smol(tmp_path_factory):
    """The torch reference and fp32 exports (plain and with pack inputs), made once per session."""
    from commandv.exporter.onnx.export import export_model
    from commandv.profiles.hf_models import load_hf_model
    from commandv.profiles.identity import model_identity
    from commandv.runtime.engines.onnx.engine import OnnxRecipient
    from commandv.runtime.engines.reference import TorchRecipient
    from commandv.runtime.models import zoo

    zoo.fetch("smollm2-135m-instruct", progress=False)
    model, tok, ref = load_hf_model("smollm2-135m-instruct", progress=False)
    ident = model_identity(ref)
    root = tmp_path_factory.mktemp("onnx_smol")
    plain = export_model(model, tok, ident, root / "plain", pack_inputs=False)
    inputs = export_model(model, tok, ident, root / "inputs", check=False)
    return dict(model=model, tok=tok, ident=ident, root=root, plain=plain, torch=TorchRecipient(
        model, tok, ident.fingerprint, ident.arch), rec=OnnxRecipient(inputs.folder), base=OnnxRecipient(plain.folder))


def smol_pack(fp, zero=False, seed=0):
    rng = np.random.default_rng(seed)
    d, k = 576, 0.0 if zero else 1.0
    f = lambda *s: (k * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    entries = [PackEntry(layer=lay, A=f(d, 8) / 24, b=f(8), C=f(8, d) * 0.3, act=act, positions="l1",
                         P=f(d, 4) / 24, Q=f(4, d) * 0.3, e=f(d) * 0.05)
               for lay, act in ((3, "silu"), (10, "relu"), (20, "linear"))]
    return BehaviorPack(entries=entries, name="smol-random",
                        recipient=dict(fingerprint=fp, arch="llama", n_layer=30, d_model=d))


def test_export_parity_fp32(smol):
    par = smol["plain"].parity
    print("export parity", par)
    assert par["logits_max_rel_err"] < 1e-4 and par["hidden_max_rel_err"] < 1e-4


def test_pack_parity_and_greedy_with_torch(smol):
    from commandv.runtime.engines.reference import pack_edits

    rec, tr = smol["rec"], smol["torch"]
    pack = smol_pack(rec.fingerprint)
    errs, changed = [], 0
    for p in PROMPTS:
        ids = rec.encode(p)
        assert ids == tr.encode(p)
        lt, ht = tr.prompt_forward(ids, pack_edits([pack]), record_hidden=True)
        lo, ho = rec.prompt_pass(ids, [pack], record_layers=True, all_logits=True)
        errs.append(max(rel_err(lo, lt), max(rel_err(ho[i], ht[i]) for i in range(30))))
        for packs in ([pack], []):
            a = tr.generate_ids(ids, pack_edits(packs), max_new_tokens=24)
            b = rec.generate_ids(ids, packs, max_tokens=24)
            assert a == b, (p, rec.detokenize(a), rec.detokenize(b))
        changed += int(rec.generate_ids(ids, [pack], max_tokens=24) != rec.generate_ids(ids, [], max_tokens=24))
    print("max rel err per prompt", errs, "continuations changed by the pack", changed)
    assert max(errs) < 1e-4 and changed >= 1


def test_zero_pack_equals_original_exactly(smol):
    rec, base = smol["rec"], smol["base"]
    zero = smol_pack(rec.fingerprint, zero=True)
    ids = rec.encode(PROMPTS[0])
    lp, hp = base.prompt_pass(ids, record_layers=True, all_logits=True)
    lz, hz = rec.prompt_pass(ids, [zero], strengths=[2.0], record_layers=True, all_logits=True)
    assert np.array_equal(lp, lz) and all(np.array_equal(hp[i], hz[i]) for i in range(30))


def test_int8_variant_agrees_with_fp32(smol):
    pytest.importorskip("onnx_ir")
    from commandv.exporter.onnx.export import export_model
    from commandv.runtime.engines.onnx.engine import OnnxRecipient

    q = export_model(smol["model"], smol["tok"], smol["ident"], smol["root"] / "int8", quant="int8", check=False)
    rec8, rec = OnnxRecipient(q.folder), smol["rec"]
    pack = smol_pack(rec.fingerprint)
    first = [rec8.prompt_pass(rec.encode(p), [pack])[0].argmax() == rec.prompt_pass(rec.encode(p), [pack])[0].argmax()
             for p in PROMPTS]
    size32 = smol["plain"].bytes
    print(f"int8 {q.bytes / 1e6:.1f} MB vs fp32 {size32 / 1e6:.1f} MB; first-token agreement {np.mean(first):.2f}")
    assert q.bytes < 0.6 * size32 and np.mean(first) >= 2 / 3
