"""Evaluation pieces: judges, utility check, self-packs, config runner (fake engine), report figures, plot."""

import numpy as np

from commandv.exporter.adapters import Adapter
from commandv.exporter.behaviors import EvalPrompt, get_behavior
from commandv.exporter.eval_pair import pair_key, plot_report
from commandv.exporter.evaluate import ConfigResult, PairReport, adapter_pack, run_config, utility_ok, utility_questions
from commandv.exporter.interventions import DonorEdit


def test_utility_questions_and_judge():
    qs = utility_questions()
    assert len(qs) >= 20 and all(q["answer"] for q in qs)
    assert utility_ok("The answer is 56.", "56")
    assert not utility_ok("The answer is 560.", "56")
    assert utility_ok("Paris is the capital.", "paris")
    assert not utility_ok("Comparison", "paris")


def test_utility_ok_numbers_stand_alone():
    for text in ("12.5", "It is 12.05.", "0.12", "12,000", "12,5", "120", "112"):
        assert not utility_ok(text, "12"), text
    for text in ("12", "12.", "The root is 12.0!", "12°", "12, since 12·12 = 144", "(12)", "twelve or 12"):
        assert utility_ok(text, "12"), text


def test_adapter_pack_is_the_adapter():
    rng = np.random.default_rng(0)
    e = DonorEdit(2, "NodiReFT", rng.standard_normal((16, 4)), rng.standard_normal(4), rng.standard_normal((4, 16)))
    ad = Adapter(edits=[e], kind="NodiReFT", positions="l1", component="block_output", sha256="s" * 64, source="x")
    p = adapter_pack(ad, "f" * 64, "llama", 4, "self")
    p.validate()
    h = rng.standard_normal((3, 16))
    assert np.allclose(p.entries[0].delta(h.astype(np.float32)), e.delta(h), rtol=1e-4, atol=1e-4)
    assert p.entries[0].layer == 2


class FakeEngine:
    path = type("P", (), {"name": "fake.gguf"})()

    def generate(self, prompt, packs=(), strengths=None, max_tokens=32):
        if packs:
            return "Arr matey! " + ("56" if "7 times 8" in prompt else "sure")
        return "56" if "7 times 8" in prompt else "Hello"


def test_run_config_and_report(tmp_path):
    beh = get_behavior("pirate")
    prompts = [EvalPrompt("a", "style", True), EvalPrompt("b", "style", True)]
    util = [{"prompt": "What is 7 times 8?", "answer": "56"}, {"prompt": "Capital of Japan?", "answer": "tokyo"}]
    off = run_config(FakeEngine(), "recipient", beh, prompts, util, None, 1.0, 8)
    on = run_config(FakeEngine(), "recipient+transfer@1", beh, prompts, util, object(), 1.0, 8)
    direct = run_config(FakeEngine(), "recipient+direct", beh, prompts, util, object(), 1.0, 8)
    assert off.expected_rate == 0.0 and on.expected_rate == 1.0 and on.utility == 0.5
    rep = PairReport("a-to-b", "pirate", "a", "b", 8, [off, on, direct], [{"recipient_layer": 1, "r2_r2d": 0.5,
                                                                            "r2_d2r": 0.4}])
    f = rep.figures()
    assert f["a-to-b.transferred_pirate"][0] == 1.0 and f["a-to-b.recovered_gain_pirate"][0] == 1.0
    assert f["a-to-b.utility_delta_pts_pirate"][0] == 0.0 and f["a-to-b.best_strength_pirate"][0] == 1.0
    assert f["a-to-b.recovered_gain_pirate_best"][0] == 1.0 and "a-to-b.recovered_gain" not in f
    worse = run_config(FakeEngine(), "recipient+transfer@2", beh, prompts, util[1:], object(), 2.0, 8)
    rep.configs[0].utility = 1.0  # now every transfer costs 50 points of utility: none is admissible
    assert worse.utility == 0.0 and rep.best_transfer() is None
    assert rep.best_transfer(max_utility_drop_pts=60).label == "recipient+transfer@1"
    assert "| recipient | 0% |" in rep.markdown()
    assert plot_report(rep, tmp_path / "r.png").stat().st_size > 1000
    # a sweep without s=1: the figures of the main strength are left out, the rest stay
    no_main = PairReport("a-to-b", "pirate", "a", "b", 8, [rep.configs[0], worse, direct], [])
    g = no_main.figures()
    assert "a-to-b.transferred_pirate" not in g and "a-to-b.utility_delta_pts_pirate" not in g
    assert g["a-to-b.offshelf_pirate"][0] == 0.0 and g["a-to-b.direct_pirate"][0] == 1.0


def test_pair_key():
    assert pair_key("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct") == "qwen1.5b-to-qwen0.5b"


def test_profiling_set_adds_a_balanced_training_pick():
    import pytest

    from commandv.exporter.behaviors import eval_data_dir
    from commandv.exporter.eval_pair import profiling_set, report_prompts
    from commandv.profiles.prompts import load_prompt_set

    gen = load_prompt_set("general", limit=12)
    assert profiling_set("pirate", 12).sha256 == gen.sha256  # n_train=0: exactly the paper's general set
    big = profiling_set("french", 1024)  # general[940:1000] are french's reported prompts: never profiled
    assert len(big) == 1024 - 60 and not set(big.prompts) & {p.prompt for p in report_prompts("french")}
    ps = profiling_set("pirate", 12, 6)
    assert ps.prompts[:12] == gen.prompts and len(ps) == 18 and ps.sha256 != gen.sha256
    assert profiling_set("pirate", 12, 6).prompts == ps.prompts  # deterministic
    assert not set(ps.prompts[12:]) & {p.prompt for p in report_prompts("pirate")}
    if not (eval_data_dir() / "advbench.jsonl").is_file():
        pytest.skip("shared evaluation data not present")
    rs = profiling_set("refusal", 12, 40)
    beh = get_behavior("refusal")
    label = {s.prompt: s.label for s in beh.train_specs()}
    extra = [label[p] for p in rs.prompts[12:]]
    assert extra.count("harmful") == extra.count("harmless") == 20
    assert not set(rs.prompts) & {p.prompt for p in report_prompts("refusal")}


def test_combine_prompt_sets_drops_repeats_and_rejects_empty():
    import pytest

    from commandv.profiles.prompts import PromptSetError, combine_prompt_sets, prompt_hash

    ps = combine_prompt_sets("x", [(["a", "b"], ["1", "2"], "s1"), (["b", "c"], ["3", "4"], "s2")])
    assert ps.prompts == ["a", "b", "c"] and ps.ids == ["1", "2", "4"] and ps.sha256 == prompt_hash(["a", "b", "c"])
    with pytest.raises(PromptSetError, match="no prompts"):
        combine_prompt_sets("y", [([], [], "s")])
    with pytest.raises(PromptSetError, match="2 prompts but 1 ids"):
        combine_prompt_sets("z", [(["a", "b"], ["1"], "s")])


def test_best_transfer_accepts_exactly_the_limits():
    """20 prompts: one more over-refusal is exactly 5 points and two utility questions exactly 10 points, which the
    limits allow (floating-point 5.000000000000002 must not exclude them)."""
    off = ConfigResult("recipient", "m", 1.0, 2 / 20, 3 / 20, 8 / 20, 20, 20, 1.0)
    on = ConfigResult("recipient+transfer@1", "m", 1.0, 18 / 20, 4 / 20, 6 / 20, 20, 20, 1.0)
    assert 100 * (on.unexpected_rate - off.unexpected_rate) > 5 and 100 * (off.utility - on.utility) > 10
    rep = PairReport("a-to-b", "refusal", "a", "b", 8, [off, on], [])
    assert rep.best_transfer() is on
