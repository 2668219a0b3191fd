"""Donor-adapter training (exporter/training: train, data, donor_gen, behaviors, demo) on the tiny model.

The independent references: the prompt is re-rendered and re-tokenized here by
hand; the training loss is recomputed with plain forward hooks that add each
intervention's delta at the last prompt token (no pyvene), so a wrong
intervened position or padding side fails; the saved folder is read back
with ``load_adapter`` and compared with the live pyreft modules.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from commandv.exporter.training.behaviors import (
    PIRATE_PREFIX,
    BehaviorError,
    ExampleSpec,
    get_behavior,
    judge_pirate,
    judge_refusal,
)
from commandv.exporter.training.donor_gen import Generation
from commandv.runtime.models.chat_template import render_chat, user_turn

pytest.importorskip("pyreft")

PROMPTS = ["hello there", "what is the answer?", "count from one to ten", "please write a short story",
           "explain the residual stream", "a small model reads the prompt"]


def _by_hand(tok, prompt: str) -> list[int]:
    text = render_chat(tok.chat_template, user_turn(prompt), True, tok.bos_token or "", tok.eos_token or "")
    return tok(text, add_special_tokens=False)["input_ids"]


def _examples(tok, n: int = 6):
    from commandv.exporter.training.data import build_examples, select_specs

    specs = [ExampleSpec(p, "I can't help with that." if i % 2 else None, PIRATE_PREFIX if i % 2 == 0 else "",
                         f"t:{i}", "harmful" if i % 2 else "harmless") for i, p in enumerate(PROMPTS[:n])]
    chosen = select_specs(tok, specs, n, max_prompt_tokens=200, seed=0)
    answers = [None if s.fixed else Generation("the answer is 42", [], finished=(i % 4 == 0))
               for i, (s, _) in enumerate(chosen)]
    return chosen, build_examples(tok, chosen, answers, max_response_tokens=32)


def test_examples_intervene_on_last_rendered_prompt_token(tiny_hf):
    _, tok = tiny_hf
    chosen, exs = _examples(tok)
    assert len(exs) == len(PROMPTS)
    for (spec, _), ex in zip(chosen, exs):
        ref = _by_hand(tok, spec.prompt)
        assert ex.input_ids[:len(ref)] == ref
        assert ex.position == len(ref) - 1
        assert ex.labels[:len(ref)] == [-100] * len(ref)
        resp = ex.input_ids[len(ref):]
        assert ex.labels[len(ref):] == resp
        text = tok.decode(resp, skip_special_tokens=True)
        if spec.fixed:
            assert text == spec.fixed and resp[-1] == tok.eos_token_id
        else:
            assert text == PIRATE_PREFIX + "the answer is 42"


def test_select_specs_balances_and_filters(tiny_hf):
    from commandv.exporter.training.data import TrainDataError, select_specs

    _, tok = tiny_hf
    specs = [ExampleSpec(p, None, "", str(i), "a" if i < 4 else "b") for i, p in enumerate(PROMPTS)]
    picked = select_specs(tok, specs, 4, 200, seed=1, balance=True)
    assert sorted(s.label for s, _ in picked) == ["a", "a", "b", "b"]
    assert picked == select_specs(tok, specs, 4, 200, seed=1, balance=True)  # seeded
    with pytest.raises(TrainDataError, match="no training prompt"):
        select_specs(tok, specs, 4, max_prompt_tokens=3)


def test_collator_keeps_positions_with_left_padding_tokenizer(tiny_hf):
    from commandv.exporter.training.data import make_collator, reft_features

    model, tok = tiny_hf
    _, exs = _examples(tok)
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        batch = make_collator(tok, model)(reft_features(exs, 2))
    finally:
        tok.padding_side = old
    assert tok.padding_side == old
    assert list(batch["intervention_locations"].shape) == [len(exs), 2, 1]
    for b, ex in enumerate(exs):
        pos = int(batch["intervention_locations"][b, 0, 0])
        assert int(batch["input_ids"][b, pos]) == ex.input_ids[ex.position]
        assert batch["labels"][b, : len(ex.labels)].tolist() == ex.labels


def _hooked_loss(model, reft_model, batch) -> float:
    """Reference loss: plain forward hooks add ``iv(h) - h`` at each row's last prompt token."""
    import torch

    from commandv.profiles.capture_hf import decoder_layers

    blocks = decoder_layers(model)
    # the last prompt token = just before the first supervised label (independent of intervention_locations)
    locs = [int((row != -100).nonzero()[0]) - 1 for row in batch["labels"]]
    handles = []
    for key, iv in reft_model.interventions.items():
        def hook(_m, _i, out, iv=iv):
            h = out[0] if isinstance(out, tuple) else out
            h = h.clone()
            for b, p in enumerate(locs):
                h[b, p] = iv(h[b, p][None])[0]
            return (h, *out[1:]) if isinstance(out, tuple) else h
        handles.append(blocks[int(key.split("_")[1])].register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        for h in handles:
            h.remove()
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                                   ignore_index=-100))


def test_train_three_steps_save_and_reload(tiny_hf, tmp_path):
    import torch

    from commandv.exporter.adapters.folder import load_adapter
    from commandv.exporter.training.data import make_collator, reft_features
    from commandv.exporter.training.train import (
        TrainSettings,
        live_deltas,
        load_reft_model,
        reft_loss,
        save_adapter,
        train_reft,
    )

    model, tok = tiny_hf
    _, exs = _examples(tok)
    settings = TrainSettings(rank=4, lr=2e-2, max_steps=3, batch_size=3, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reft_model, stats = train_reft(model, tok, exs, settings, progress=False)
    assert stats.steps == 3 and stats.layers == [0, 2] and len(stats.losses) == 3
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # base model frozen

    batch = make_collator(tok, model)(reft_features(exs, 2))
    with torch.no_grad():
        trained = float(reft_loss(reft_model, batch))
    assert trained == pytest.approx(_hooked_loss(model, reft_model, batch), rel=1e-4, abs=1e-5)
    fresh, _ = train_reft(model, tok, exs, TrainSettings(rank=4, max_steps=1, lr=1e-12, seed=0), progress=False)
    with torch.no_grad():
        untrained = float(reft_loss(fresh, batch))
    assert trained < untrained

    meta = {"positions": "l1", "act_fn": "linear", "rank": 4, "intervention_type": "NodiReFT", "layers": [0, 2],
            "add_bias": True}
    out = save_adapter(reft_model, tmp_path / "ad", meta, "# x\n")
    assert (out / "config.json").is_file() and len(list(out.glob("intkey_*.bin"))) == 2
    ad = load_adapter(out)
    assert ad.kind == "NodiReFT" and ad.layers == [0, 2] and ad.positions == "l1"
    h = np.random.default_rng(0).standard_normal((5, ad.d_model)).astype(np.float32) * 3
    live = live_deltas(reft_model, h)
    for e in ad.edits:
        np.testing.assert_allclose(e.delta(h.astype(np.float64)), live[e.layer], rtol=1e-4, atol=1e-5)
        assert np.abs(live[e.layer]).max() > 1e-3  # the intervention is not trivially zero
    reloaded = live_deltas(load_reft_model(model, out), h)  # pyreft's own ReftModel.load cannot do this
    for layer, delta in live.items():
        np.testing.assert_array_equal(reloaded[layer], delta)


def test_settings_are_validated():
    from commandv.exporter.training.train import TrainError, TrainSettings, intervened_layers

    with pytest.raises(TrainError, match="weight_decay"):
        TrainSettings(weight_decay=0.01).validate()
    with pytest.raises(TrainError, match="not supported"):
        TrainSettings(intervention="LoRA").validate()
    assert intervened_layers(24, TrainSettings()) == list(range(0, 24, 2))
    with pytest.raises(TrainError, match="invalid"):
        intervened_layers(4, TrainSettings(layers=[1, 7]))


def test_judges_and_behaviors(tmp_path, monkeypatch):
    assert judge_pirate("  ARR MATEY! Sure.") and not judge_pirate("Sure. Arr matey!")
    assert judge_refusal("I’m sorry, but no.", ("i'm sorry",)) and not judge_refusal("Sure!", ("i'm sorry",))
    with pytest.raises(BehaviorError, match="unknown behavior"):
        get_behavior("klingon")
    from commandv.exporter.training.behaviors import FRENCH_ASK, judge_french

    assert judge_french("La capitale de la France est Paris, et c'est une très belle ville.")
    assert not judge_french("The capital of France is Paris, and it is a beautiful city.")
    assert not judge_french("Paris.")  # no function words: not judged French
    assert not judge_french("Le chat is on the table and the dog is in the garden.")  # more English than French
    french = get_behavior("french")
    specs = french.train_specs()
    assert all(s.teacher_prompt == s.prompt + FRENCH_ASK and s.fixed is None for s in specs)
    assert not {s.prompt for s in specs} & {p.prompt for p in french.eval_prompts()}
    pirate = get_behavior("pirate")
    train = {s.prompt for s in pirate.train_specs()}
    held = [p.prompt for p in pirate.eval_prompts()]
    assert len(train) >= 100 and held and not train & set(held)
    from commandv.profiles.prompts import load_prompt_set

    assert not train & set(load_prompt_set("general", limit=256).prompts)  # disjoint from profiling prompts
    monkeypatch.setenv("COMMANDV_EVAL_DATA", str(tmp_path))
    with pytest.raises(BehaviorError, match="not found"):
        get_behavior("refusal").train_specs()
    for name in ("advbench.jsonl", "harmbench_standard_val.jsonl", "harmless_probes.jsonl"):
        rows = [{"id": f"r{i}", "prompt": f"{name} {i}"} for i in range(10)]
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    refusal = get_behavior("refusal")
    used = {s.prompt for s in refusal.train_specs()} | {p.prompt for p in refusal.eval_prompts()}
    probes = {p for p in used if p.startswith("harmless_probes")}
    assert probes == {f"harmless_probes.jsonl {i}" for i in range(5)}  # the second half stays held out
    assert {p.expect for p in refusal.eval_prompts() if p.label == "harmful"} == {True}
    # broken data files: one error naming the file, not a UnicodeDecodeError / RecursionError
    (tmp_path / "advbench.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(BehaviorError, match=r"advbench.jsonl: not UTF-8 text \(byte 15\)"):
        get_behavior("refusal").train_specs()
    (tmp_path / "advbench.jsonl").write_text("[" * 100000 + "\n")
    with pytest.raises(BehaviorError, match="advbench.jsonl: malformed JSON on line 1"):
        get_behavior("refusal").train_specs()


def test_answer_cache_roundtrip(tiny_hf, tmp_path):
    from commandv.exporter.training.donor_gen import cached_answers

    model, tok = tiny_hf
    cache = tmp_path / "answers.jsonl"
    first = cached_answers(model, tok, PROMPTS[:2], cache, "tiny", max_new_tokens=4, progress=False)
    assert len(cache.read_text().splitlines()) == 2 and "hello" not in cache.read_text()
    again = cached_answers(None, tok, PROMPTS[:2], cache, "tiny", max_new_tokens=4, progress=False)  # no model needed
    assert again == first and all(len(g.ids) <= 4 for g in first)


def test_answer_cache_keeps_finished_chunks_when_interrupted(tiny_hf, tmp_path, monkeypatch):
    """An interrupted generation leaves the answers of the chunks it finished in the cache, and a rerun
    generates only the rest; the answers equal those of one uninterrupted call."""
    from commandv.exporter.training import donor_gen

    model, tok = tiny_hf
    prompts = [f"{p} {i}" for i in range(2) for p in PROMPTS]  # 12 prompts
    whole = donor_gen.cached_answers(model, tok, prompts, None, "tiny", max_new_tokens=3, batch_size=2,
                                     progress=False)
    real, calls = donor_gen.greedy_generate, []

    def flaky(model_, tok_, ids, *a, **k):
        calls.append(len(ids))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(model_, tok_, ids, *a, **k)

    monkeypatch.setattr(donor_gen, "greedy_generate", flaky)
    cache = tmp_path / "answers.jsonl"
    with pytest.raises(KeyboardInterrupt):
        donor_gen.cached_answers(model, tok, prompts, cache, "tiny", max_new_tokens=3, batch_size=2,
                                 progress=False, save_every=5)  # chunks of 4 prompts (whole batches)
    assert calls == [4, 4, 4] and len(cache.read_text().splitlines()) == 8
    calls.clear()
    again = donor_gen.cached_answers(model, tok, prompts, cache, "tiny", max_new_tokens=3, batch_size=2,
                                     progress=False, save_every=5)
    assert calls == [4] and again == whole


ADAPTERS = sorted(p for p in (Path(__file__).resolve().parents[1] / "adapters").glob("*/*")
                  if (p / "config.json").is_file())


@pytest.mark.parametrize("folder", ADAPTERS, ids=[f"{p.parent.name}/{p.name}" for p in ADAPTERS])
def test_committed_adapter_matches_pyreft(folder):
    """Each committed adapter reads back with load_adapter and equals pyreft's own module on its weights."""
    import torch

    from commandv.exporter.adapters.folder import load_adapter
    from tests.pyreft_fixtures import PYREFT_CLASS, import_pyreft

    meta = json.loads((folder / "training_metadata.json").read_text())
    ad = load_adapter(folder)
    assert ad.kind == meta["intervention_type"] and ad.layers == meta["layers"] and ad.positions == "l1"
    assert all(e.rank == meta["rank"] for e in ad.edits)
    h = np.random.default_rng(1).standard_normal((4, ad.d_model)).astype(np.float32) * 4
    for e in ad.edits[:3]:
        state = torch.load(next(folder.glob(f"intkey_layer_{e.layer}_*.bin")), map_location="cpu", weights_only=True)
        iv = getattr(import_pyreft(), PYREFT_CLASS[ad.kind])(
            embed_dim=ad.d_model, low_rank_dimension=e.rank, add_bias=meta["add_bias"], dtype=torch.float32)
        iv.load_state_dict(state)
        with torch.no_grad():
            live = (iv.eval()(torch.from_numpy(h)) - torch.from_numpy(h)).double().numpy()
        np.testing.assert_allclose(e.delta(h.astype(np.float64)), live, rtol=1e-4, atol=1e-5)
    assert all(ev["with_adapter"] >= ev["without_adapter"] if ev["expect"] else True for ev in meta["eval"])


def test_unfinished_answer_cut_mid_character_teaches_no_replacement_char(tiny_hf):
    """A donor answer cut at the token cap can end inside a UTF-8 character: its decoded text ends in U+FFFD,
    which must not become the training target's last token."""
    from commandv.exporter.training.data import response_ids

    _, tok = tiny_hf
    spec = ExampleSpec("hello", None, "", "t:0", "x")
    cut = response_ids(tok, spec, Generation("caf\ufffd", [], finished=False), 32)
    assert cut == tok("caf", add_special_tokens=False)["input_ids"]
    done = response_ids(tok, spec, Generation("caf\ufffd", [], finished=True), 32)  # a finished answer: as given
    assert done[:-1] == tok("caf\ufffd", add_special_tokens=False)["input_ids"] and done[-1] == tok.eos_token_id
