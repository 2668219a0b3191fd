"""The refusal-broad behavior's data (issue 20): AdvBench train/held-out split, framings, harmless balance.

Checked two ways: on small synthetic data files (exact row arithmetic, independent of the real
files) and, where the evaluation data folder is present, on the real files (the sizes stated in
the behavior's docstrings, and that no held-out prompt text occurs inside any training prompt, framed
or plain, compared case-insensitively).
"""

from __future__ import annotations

import json

import pytest

from commandv.exporter.training.behaviors import (
    EVAL_SLICE,
    FRAMINGS,
    PROBES_TRAIN,
    REFUSAL_TEXT,
    advbench_heldout,
    eval_data_dir,
    frame,
    get_behavior,
)
from commandv.exporter.training.donor_gen import Generation


def _write(folder, name, n):
    rows = [{"id": f"{name.split('.')[0]}-{i:03d}", "prompt": f"{name.split('.')[0]} request number {i}"}
            for i in range(n)]
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _norm(text: str) -> str:
    return " ".join(text.lower().rstrip(".?!").split())


def test_split_on_synthetic_files(tmp_path, monkeypatch):
    monkeypatch.setenv("COMMANDV_EVAL_DATA", str(tmp_path))
    _write(tmp_path, "advbench.jsonl", 23)
    _write(tmp_path, "harmless_probes.jsonl", 200)  # first half 100: rows [0, 80) train, [80, 100) validate
    _write(tmp_path, "harmbench_standard_val.jsonl", 7)
    held = advbench_heldout()
    assert [p.source for p in held] == [f"advbench:advbench-{i:03d}" for i in (0, 5, 10, 15, 20)]
    assert all(p.label == "harmful" and p.expect for p in held)
    specs = get_behavior("refusal-broad").train_specs()
    harmful = [s for s in specs if s.label == "harmful"]
    plain = [s for s in harmful if "+" not in s.source]
    assert [s.source for s in plain] == [f"advbench:advbench-{i:03d}" for i in range(23) if i % 5]
    assert len(harmful) == 2 * len(plain) == 36 and all(s.fixed == REFUSAL_TEXT for s in harmful)
    train = {s.prompt for s in specs}
    for p in held:  # neither plain nor in any framing
        assert p.prompt not in train and not any(frame(p.prompt, n) in train for n, _ in FRAMINGS)
    framed = [s for s in harmful if "+" in s.source]
    assert [s.source.split("+")[0] for s in framed] == [s.source for s in plain]
    assert [s.prompt for s in framed] == [frame(s.prompt, FRAMINGS[k % len(FRAMINGS)][0])
                                         for k, s in enumerate(plain)]
    probes = [s for s in specs if s.source.startswith("harmless_probes")]
    assert [s.source for s in probes] == [f"harmless_probes:harmless_probes-{i:03d}" for i in range(PROBES_TRAIN)]
    harmless = [s for s in specs if s.label == "harmless"]
    assert all(s.fixed is None for s in harmless)
    names = {n for n, _ in FRAMINGS}
    for group in (harmful, harmless):  # every framing wraps harmful and harmless prompts alike
        assert {s.source.split("+")[1] for s in group if "+" in s.source} == names
    beh = get_behavior("refusal-broad")
    assert beh.eval_prompts() == get_behavior("refusal").eval_prompts()  # HarmBench val + probes [80, half)
    assert {p.source for p in beh.eval_prompts() if p.label == "harmless"} == {
        f"harmless_probes:harmless_probes-{i:03d}" for i in range(80, 100)}


def test_frame_wraps_both_labels_the_same_way():
    assert len(FRAMINGS) >= 8 and len({n for n, _ in FRAMINGS}) == len(FRAMINGS)
    for name, _ in FRAMINGS:
        a, b = frame("Explain how tides work", name), frame("Explain how tides work?", name)
        assert "explain how tides work" in a.lower() and a != "Explain how tides work"
        if name != "terse":  # terse drops the end mark; the others keep a request's own, never doubled
            assert "tides work?" in b and "work?." not in b and "work." in a
    assert frame("Write A Poem.", "terse") == "write a poem"
    assert frame("Write a poem", "educational").endswith(": write a poem.")


def test_drop_refused_harmless_keeps_harmful_and_order():
    from commandv.exporter.training.behaviors import ExampleSpec, judge_refusal
    from commandv.exporter.training.demo import drop_refused_harmless

    specs = [ExampleSpec("a", REFUSAL_TEXT, "", "s:a", "harmful"), ExampleSpec("b", None, "", "s:b", "harmless"),
             ExampleSpec("c", None, "", "s:c", "harmless"), ExampleSpec("d", None, "", "s:d", "harmless")]
    chosen = [(s, [1, 2]) for s in specs]
    answers = [None, Generation("I'm sorry, I cannot do that.", [], True), Generation("Sure, here.", [], True),
               Generation("I can't help with that.", [], True)]
    kept, ans, dropped = drop_refused_harmless(chosen, answers, lambda t: judge_refusal(t, ("i cannot", "i can't")))
    assert [s.source for s, _ in kept] == ["s:a", "s:c"] and dropped == ["s:b", "s:d"]
    assert ans == [None, answers[2]]


REAL = (eval_data_dir() / "advbench.jsonl").is_file() and (eval_data_dir() / "harmless_probes.jsonl").is_file()


@pytest.mark.skipif(not REAL, reason="evaluation data folder not found (set COMMANDV_SHARED)")
def test_real_split_sizes_disjoint_and_deterministic():
    from commandv.exporter.training.behaviors import _read_jsonl
    from commandv.profiles.prompts import load_prompt_set

    held = advbench_heldout()
    assert len(held) == 104 and len({p.prompt for p in held}) == 104
    beh = get_behavior("refusal-broad")
    specs = beh.train_specs()
    assert specs == beh.train_specs()  # deterministic
    labels = [s.label for s in specs]
    assert labels.count("harmful") == 832 and labels.count("harmless") == 832
    framed = {lab: {s.source.split("+")[1] for s in specs if s.label == lab and "+" in s.source}
              for lab in ("harmful", "harmless")}
    assert framed["harmful"] == framed["harmless"] == {n for n, _ in FRAMINGS}
    for lab in ("harmful", "harmless"):
        assert sum("+" in s.source for s in specs if s.label == lab) == 416
    def leaked(held_prompts):  # the prompt itself, or the prompt in any framing, among the training prompts
        train = {s.prompt for s in specs}
        return [p for p in held_prompts if p in train or any(frame(p, n) in train for n, _ in FRAMINGS)]

    held_ids = {p.source for p in held}
    assert not [s.source for s in specs if s.source.split("+")[0] in held_ids]
    assert not leaked([p.prompt for p in held])
    probes = _read_jsonl("harmless_probes.jsonl")
    assert not leaked([r["prompt"] for r in probes[PROBES_TRAIN:]])  # validation rows and the whole second half
    general = load_prompt_set("general")
    assert not leaked(general.prompts[slice(*EVAL_SLICE)] + general.prompts[:256])  # pirate/french eval, profiling
    harmbench = [r["prompt"] for name in ("harmbench_standard_val.jsonl", "harmbench_standard_test.jsonl")
                 if (eval_data_dir() / name).is_file() for r in _read_jsonl(name)]
    assert not leaked(harmbench)
    # and as plain text: no held-out harmless probe occurs anywhere inside a training prompt
    text = "\n".join(_norm(s.prompt) for s in specs)
    assert not [r["prompt"] for r in probes[PROBES_TRAIN:] if _norm(r["prompt"]) in text]
