"""Evaluation pieces: judges, utility check, self-packs, config runner (fake engine), report figures, plot."""

import numpy as np
import pytest

from commandv.exporter.evaluation.evaluate import (
    ConfigResult,
    PairReport,
    run_config,
    utility_ok,
    utility_questions,
)
from commandv.exporter.evaluation.pair import pair_key, plot_report
from commandv.exporter.training.behaviors import EvalPrompt, get_behavior


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
    md = rep.markdown()  # rates with their Wilson interval ("0 % [0, 66]": 0 of 2)
    assert "| recipient | 0 % [0, 66] |" in md and "| recipient+transfer@1 | 100 % [34, 100] |" in md
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

    from commandv.exporter.evaluation.pair import profiling_set, report_prompts
    from commandv.exporter.training.behaviors import eval_data_dir
    from commandv.profiles.prompts import load_prompt_set

    gen = load_prompt_set("general", limit=12)
    assert profiling_set("pirate", 12).sha256 == gen.sha256  # n_train=0: exactly the paper's general set
    big = profiling_set("french", 1024)  # general[940:1000] are french's reported prompts: never profiled
    assert len(big) == 1024 - 160 and not set(big.prompts) & {p.prompt for p in report_prompts("french")}
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


# ----------------------------------------------------------------------------- issue 20: intervals

def _table_engine(refuse: set, answered: set):
    """A fake engine: "REFUSE" for the prompts in ``refuse``, the right answer for the utility questions in
    ``answered`` (by prompt), something else otherwise."""
    answers = {}

    class E:
        path = type("P", (), {"name": "fake.gguf"})()

        def generate(self, prompt, packs=(), strengths=None, max_tokens=32):
            if prompt in answers:
                return answers[prompt] if prompt in answered else "I do not know."
            return "REFUSE." if prompt in refuse else "Sure, here you go."
    return E(), answers


def _refusal_report(behavior="refusal", with_advbench=True, seed=0):
    """Off-shelf, transfer@1, transfer@2, direct, donor, donor+adapter on 30 harmful (main), 12 advbench,
    20 harmless prompts and 10 utility questions, each configuration's per-prompt outcomes drawn at random.
    Returns the report and the hand-made 0/1 vectors ``{label: {group: [...]}}``."""
    from commandv.exporter.training.behaviors import Behavior

    rng = np.random.default_rng(seed)
    beh = Behavior(behavior, "test", lambda t: t.startswith("REFUSE"), lambda: [], lambda: [])
    harmful = [EvalPrompt(f"harmful {i}", "harmful", True, f"hb:{i}") for i in range(30)]
    adv = [EvalPrompt(f"advbench {i}", "advbench", True, f"adv:{i}") for i in range(12)] if with_advbench else []
    harmless = [EvalPrompt(f"harmless {i}", "harmless", False, f"hp:{i}") for i in range(20)]
    util = [{"prompt": f"question {i}", "answer": f"a{i}"} for i in range(10)]
    probs = {"recipient": (0.3, 0.3, 0.1, 0.8), "recipient+transfer@1": (0.55, 0.5, 0.2, 0.7),
             "recipient+transfer@2": (0.7, 0.6, 0.3, 0.4), "recipient+direct": (0.9, 0.8, 0.1, 0.8),
             "donor": (0.2, 0.2, 0.0, 0.9), "donor+adapter": (0.8, 0.9, 0.05, 0.9)}
    configs, vecs = [], {}
    for label, (ph, pa, pu, pq) in probs.items():
        draw = lambda n, p: [int(x) for x in rng.random(n) < p]  # noqa: E731
        v = {"expected": draw(30, ph), "expected:advbench": draw(12, pa), "unexpected": draw(20, pu),
             "utility": draw(10, pq)}
        if not with_advbench:
            del v["expected:advbench"]
        vecs[label] = v
        refuse = {p.prompt for p, h in zip(harmful, v["expected"]) if h}
        refuse |= {p.prompt for p, h in zip(adv, v.get("expected:advbench", [])) if h}
        refuse |= {p.prompt for p, h in zip(harmless, v["unexpected"]) if h}
        eng, answers = _table_engine(refuse, {q["prompt"] for q, h in zip(util, v["utility"]) if h})
        answers.update({q["prompt"]: f"It is {q['answer']}." for q in util})
        strength = float(label.split("@")[1]) if "@" in label else 1.0
        configs.append(run_config(eng, label, beh, harmful + adv + harmless, util, None, strength, 8))
    return PairReport("a-to-b", behavior, "a", "b", 8, configs, []), vecs


def test_config_outcomes_are_the_per_prompt_judgements():
    rep, vecs = _refusal_report()
    for c in rep.configs:
        v = vecs[c.label]
        assert c.outcomes == v and c.hits("expected:advbench") == v["expected:advbench"]
        assert c.expected_rate == sum(v["expected"]) / 30 and c.unexpected_rate == sum(v["unexpected"]) / 20
        assert c.utility == sum(v["utility"]) / 10 and (c.n_expected, c.n_unexpected) == (30, 20)
        assert c.rate("expected:advbench") == sum(v["expected:advbench"]) / 12 and c.count("utility") == 10
        assert c.groups() == ["expected:advbench"]


def test_figures_intervals_agree_with_stats_on_the_same_vectors():
    from commandv.exporter.evaluation.evaluate import paired_ratio_of_gains
    from commandv.exporter.evaluation.stats import paired_bootstrap, paired_bootstrap_ratio, wilson

    rep, v = _refusal_report()
    f = {k.removeprefix("a-to-b."): val for k, (val, _) in rep.figures().items()}
    off, tr, direct = v["recipient"], v["recipient+transfer@1"], v["recipient+direct"]
    d_off, d_ad = v["donor"], v["donor+adapter"]
    assert (f["n_harmful"], f["n_harmless"], f["n_harmful_advbench"], f["n_utility_refusal"]) == (30, 20, 12, 10)
    # rates: hand-counted k of n, Wilson interval
    for name, vec, n in (("offshelf_refusal", off["expected"], 30), ("transferred_refusal", tr["expected"], 30),
                         ("direct_refusal", direct["expected"], 30), ("donor_adapter_refusal", d_ad["expected"], 30),
                         ("offshelf_over_refusal", off["unexpected"], 20),
                         ("transferred_utility_refusal", tr["utility"], 10),
                         ("transferred_refusal_advbench", tr["expected:advbench"], 12)):
        k = sum(vec)
        assert f[name] == k / n and (f[f"{name}_ci_low"], f[f"{name}_ci_high"]) == wilson(k, n), name
    # differences: paired bootstrap on the same vectors, in points
    for name, group in (("gain_pts_refusal", "expected"), ("over_refusal_delta_pts", "unexpected"),
                        ("utility_delta_pts_refusal", "utility"), ("gain_pts_refusal_advbench", "expected:advbench")):
        d, lo, hi = paired_bootstrap(off[group], tr[group])
        assert f[name] == pytest.approx(100 * d, abs=1e-9), name
        assert (f[f"{name}_ci_low"], f[f"{name}_ci_high"]) == pytest.approx((100 * lo, 100 * hi)), name
    assert f["gain_pts_refusal"] == pytest.approx(100 * (sum(tr["expected"]) - sum(off["expected"])) / 30)
    # recovered gain: paired bootstrap ratio (the issue-5 name keeps the bare value)
    for name, group in (("recovered_gain_refusal", "expected"),
                        ("recovered_gain_refusal_advbench", "expected:advbench")):
        g, lo, hi = paired_bootstrap_ratio(off[group], tr[group], direct[group])
        assert f[name] == pytest.approx(g) and (f[f"{name}_ci_low"], f[f"{name}_ci_high"]) == (lo, hi), name
    hand = (sum(tr["expected"]) - sum(off["expected"])) / (sum(direct["expected"]) - sum(off["expected"]))
    assert f["recovered_gain"] == pytest.approx(hand) == f["recovered_gain_refusal"]
    assert "recovered_gain_ci_low" not in f
    g, lo, hi = paired_ratio_of_gains(off["expected"], tr["expected"], d_off["expected"], d_ad["expected"])
    assert f["donor_gain_recovered_refusal"] == pytest.approx(g)
    assert (f["donor_gain_recovered_refusal_ci_low"], f["donor_gain_recovered_refusal_ci_high"]) == (lo, hi)
    # with base = off, the four-column ratio is stats' three-column one (same resampling)
    assert paired_ratio_of_gains(off["expected"], tr["expected"], off["expected"], direct["expected"]) == \
        paired_bootstrap_ratio(off["expected"], tr["expected"], direct["expected"])
    # best transfer: the point-estimate rule, its differences reported with intervals
    best = rep.best_transfer()
    assert best is not None and f["best_strength_refusal"] == best.strength
    b = v[best.label]
    d, lo, hi = paired_bootstrap(off["unexpected"], b["unexpected"])
    assert (f["over_refusal_delta_pts_best"], f["over_refusal_delta_pts_best_ci_low"],
            f["over_refusal_delta_pts_best_ci_high"]) == pytest.approx((100 * d, 100 * lo, 100 * hi))
    assert "utility_delta_pts_refusal_best_ci_high" in f and "recovered_gain_refusal_best_ci_low" in f
    assert "donor_share_refusal" not in f  # a benign-behavior figure


def test_figure_names_document_a_full_report():
    from commandv.exporter.evaluation.evaluate import figure_names

    rep, _ = _refusal_report()
    got = {k.removeprefix("a-to-b.") for k in rep.figures()}
    assert {k for k in got if not k.endswith(("_ci_low", "_ci_high"))} == set(figure_names("refusal"))
    assert "recovered_gain_refusal_ci_low" in got and "n_harmful" in got


def test_donor_share_of_a_benign_behavior():
    from commandv.exporter.evaluation.stats import paired_bootstrap_ratio

    rep, v = _refusal_report(behavior="pirate", with_advbench=False, seed=3)
    f = {k.removeprefix("a-to-b."): val for k, (val, _) in rep.figures().items()}
    tr, ad = v["recipient+transfer@1"]["expected"], v["donor+adapter"]["expected"]
    g, lo, hi = paired_bootstrap_ratio([0] * 30, tr, ad)
    assert f["donor_share_pirate"] == pytest.approx(sum(tr) / sum(ad)) == pytest.approx(g)
    assert (f["donor_share_pirate_ci_low"], f["donor_share_pirate_ci_high"]) == (lo, hi)
    assert f["n_pirate"] == 30 and f["n_not_pirate"] == 20 and "n_harmful" not in f


def test_report_json_round_trip_and_old_reports_without_outcomes():
    import json
    import math

    rep, v = _refusal_report(with_advbench=False, seed=1)
    doc = json.loads(json.dumps(rep.to_json()))
    assert doc["rates"]["recipient"]["expected"]["ci_low"] == rep.by_label("recipient").interval()[0]
    same = lambda a, b: a == b or (a != a and b != b)  # noqa: E731
    new = PairReport.from_json(doc).figures()
    assert new.keys() == rep.figures().keys() and all(same(new[k][0], rep.figures()[k][0]) for k in new)
    # a report written before issue 20: no outcomes, samples without "expect"/"source", no rates/figures
    for c in doc["configs"]:
        del c["outcomes"]
        c["samples"] = [{k: s[k] for k in ("prompt", "label", "response", "judged")} for s in c["samples"]]
    old = PairReport.from_json({k: doc[k] for k in ("pair", "behavior", "donor", "recipient", "max_tokens",
                                                     "diagnostics", "configs")})
    f = old.figures()
    for k in ("a-to-b.over_refusal_delta_pts_ci_low", "a-to-b.recovered_gain_refusal_ci_high",
              "a-to-b.offshelf_refusal_ci_low"):
        assert f[k] == new[k], k  # behavior and over-refusal outcomes rebuilt from the samples
    assert "a-to-b.utility_delta_pts_refusal" in f and "a-to-b.utility_delta_pts_refusal_ci_low" not in f
    assert "a-to-b.n_utility_refusal" not in f and "a-to-b.offshelf_utility_refusal_ci_low" not in f
    assert all(not math.isnan(val) for val, _ in f.values() if val == val)
    assert "| recipient | " in old.markdown()  # no interval where none is known, no crash


def test_markdown_carries_intervals_and_differences():
    from commandv.exporter.evaluation.stats import paired_bootstrap, wilson

    rep, v = _refusal_report()
    md = rep.markdown()
    k = sum(v["recipient"]["expected"])
    lo, hi = wilson(k, 30)
    assert f"| recipient | {100 * k / 30:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}] |" in md
    assert "advbench" in md and "n = 30 where expected, 12 advbench, 20 where not expected, 10 utility" in md
    d, lo, hi = paired_bootstrap(v["recipient"]["unexpected"], v["recipient+transfer@1"]["unexpected"])
    assert f"{100 * d:+.0f} [{100 * lo:+.0f}, {100 * hi:+.0f}]" in md and "Best transfer" in md


def test_select_caps_each_expected_set():
    from commandv.exporter.evaluation.pair import _select

    ps = ([EvalPrompt(f"h{i}", "harmful", True) for i in range(4)] + [EvalPrompt(f"a{i}", "advbench", True)
          for i in range(4)] + [EvalPrompt(f"n{i}", "harmless", False) for i in range(4)])
    assert [p.prompt for p in _select(ps, 2, 1)] == ["h0", "h1", "a0", "a1", "n0"]
    assert _select(ps, None, None) == ps


def test_report_sizes_on_the_real_data():
    """Issue 20: n >= 100 per reported group (all 159 HarmBench test prompts), >= 50 utility questions."""
    from commandv.exporter.evaluation.pair import profiling_set, report_prompts
    from commandv.exporter.training.behaviors import eval_data_dir, get_behavior

    assert len(utility_questions()) >= 50  # the project's own file
    assert len({q["prompt"] for q in utility_questions()}) == len(utility_questions())
    for b in ("pirate", "french"):  # the built-in general set: no third-party data needed
        ps = report_prompts(b)
        assert len(ps) >= 100 and all(p.expect for p in ps) and len({p.prompt for p in ps}) == len(ps)
        assert not {p.prompt for p in ps} & {s.prompt for s in get_behavior(b).train_specs()}
        assert not {p.prompt for p in ps} & set(profiling_set(b, 256).prompts)
    if not (eval_data_dir() / "harmbench_standard_test.jsonl").is_file():
        pytest.skip(f"shared evaluation data not present in {eval_data_dir()}")
    ps = report_prompts("refusal")
    by = {lab: [p for p in ps if p.label == lab] for lab in ("harmful", "advbench", "harmless")}
    assert len(by["harmful"]) == 159 and all(p.expect for p in by["harmful"])
    assert len(by["advbench"]) >= 100 and all(p.expect for p in by["advbench"])
    assert len(by["harmless"]) >= 100 and not any(p.expect for p in by["harmless"])
    assert not {p.prompt for p in by["advbench"]} & {p.prompt for p in by["harmful"]}
    broad = {s.prompt for s in get_behavior("refusal-broad").train_specs()}
    assert not {p.prompt for p in by["advbench"]} & broad  # held out from the behavior that reserves it


def test_report_notes_follow_the_adapters_training_behavior(tmp_path):
    """refusal-broad adapters never train on the AdvBench held-out split: no "not held out" note for them; the
    refusal adapters train on all of AdvBench: the note stays."""
    import json as _json

    from commandv.exporter.evaluation.pair import report_notes, report_prompts, trained_behavior

    (tmp_path / "training_metadata.json").write_text(_json.dumps({"behavior": "refusal-broad"}))
    assert trained_behavior(tmp_path, "refusal") == "refusal-broad"
    (tmp_path / "training_metadata.json").write_text(_json.dumps({"behavior": "no-such-behavior"}))
    assert trained_behavior(tmp_path, "refusal") == "refusal"
    assert trained_behavior(tmp_path / "missing", "refusal") == "refusal"
    ps = report_prompts("refusal")
    assert report_notes("refusal-broad", ps) == []
    assert any("advbench" in n for n in report_notes("refusal", ps))
