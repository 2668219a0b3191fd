"""exporter/evaluation/pair.py: which prompts a pack's fit saw, and ``run_pair_eval`` end to end on two tiny GGUF
models of different widths (every configuration is generated, the rows agree with generation run here on its own,
and every output is written)."""

import json

import numpy as np
import pytest


def test_fit_prompt_texts_is_the_profile_the_token_rows_and_the_anchor_prompts():
    """The prompts a pack's fit saw: the profile set, the general set's first token-row prompts, the anchor
    texts' training prompts (spelled out here from the prompt files and the training pool)."""
    from commandv.exporter.evaluation.pair import fit_prompt_texts, profiling_set, training_prompts
    from commandv.profiles.prompts import load_prompt_set

    pset = profiling_set("french", 64)
    assert fit_prompt_texts(pset) == set(pset.prompts)
    tokens = set(load_prompt_set("general").prompts[:300])
    assert fit_prompt_texts(pset, "french", token_prompts=300) == set(pset.prompts) | tokens
    anchors = set(training_prompts("french", 10)[0])
    assert len(anchors) == 10 and not anchors & set(pset.prompts)
    assert fit_prompt_texts(pset, "french", anchor_texts=10) == set(pset.prompts) | anchors


@pytest.mark.llama
def test_run_pair_eval_end_to_end(tmp_home, tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("torch")
    from commandv.exporter.adapters.folder import load_adapter
    from commandv.exporter.evaluation.evaluate import PairReport
    from commandv.exporter.evaluation.pair import PairEvalSettings, pair_key, profiling_set, run_pair_eval
    from commandv.exporter.transfer.export import export_pack
    from commandv.profiles.profiler import profile_model
    from commandv.runtime.engines.llama.engine import Recipient
    from commandv.runtime.pack.model import BehaviorPack
    from tests.test_export_cli import _tiny_pair

    fixtures, donor, recip, _ = _tiny_pair(tmp_path)
    fixtures.save_reft_adapter(tmp_path / "ad", "NodiReFT", layers=(0, 2), rank=4, d=64)
    fixtures.save_reft_adapter(tmp_path / "direct", "NodiReFT", layers=(1,), rank=4, d=48)
    s = PairEvalSettings(strengths=(0.0, 1.0), n_expected=3, max_tokens=4, profile_prompts=24, method="pinv")
    out = tmp_path / "reports"
    rep = run_pair_eval(str(donor), str(recip), "pirate", tmp_path / "ad", out, tmp_path / "direct", s, progress=False)

    labels = [c.label for c in rep.configs]
    assert labels == ["recipient", "recipient+transfer@0", "recipient+transfer@1", "recipient+direct", "donor",
                      "donor+adapter"]
    stem = out / f"{pair_key(str(donor), str(recip))}-pirate"
    for ext in (".json", ".md", ".png", ".pack.gguf"):
        assert stem.with_name(stem.name + ext).is_file()
    again = PairReport.from_json(json.loads(stem.with_name(stem.name + ".json").read_text()))
    assert [c.label for c in again.configs] == labels and again.settings["method"] == "pinv"

    # the off-shelf rows are what each model generates with no pack, asked here on its own
    prompts = [x["prompt"] for x in rep.by_label("recipient").samples]
    assert len(prompts) == 3
    for model, label in ((recip, "recipient"), (donor, "donor")):
        with Recipient(str(model), n_ctx=2048) as eng:
            want = [eng.generate(p, max_tokens=4) for p in prompts]
        assert [x["response"] for x in rep.by_label(label).samples] == want
    # strength 0 is the recipient alone
    assert ([x["response"] for x in rep.by_label("recipient+transfer@0").samples]
            == [x["response"] for x in rep.by_label("recipient").samples])

    # the pack written beside the report is the export of the same adapter on the same profiles
    pset = profiling_set("pirate", 24, 0)
    d, _, _ = profile_model(str(donor), pset, "gguf")
    r, _, _ = profile_model(str(recip), pset, "gguf")
    ref = export_pack(load_adapter(tmp_path / "ad"), d, r, rcond=None, method="pinv").pack
    pack = BehaviorPack.load(stem.with_name(stem.name + ".pack.gguf"))
    assert [e.layer for e in pack.entries] == [e.layer for e in ref.entries]
    for a, b in zip(pack.entries, ref.entries):
        np.testing.assert_allclose(a.A, b.A, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(a.C, b.C, rtol=1e-6, atol=1e-7)
