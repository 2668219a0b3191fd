"""`cmdv export` / `cmdv inspect` end to end on two tiny GGUF models of different widths."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from commandv.exporter.adapters.folder import load_adapter  # noqa: E402
from commandv.exporter.cli.main import app  # noqa: E402
from commandv.exporter.transfer.export import export_pack  # noqa: E402
from commandv.profiles.profiler import profile_model  # noqa: E402
from commandv.runtime.pack.model import BehaviorPack  # noqa: E402
from tests.tiny_models import write_tiny_llama_gguf  # noqa: E402


def _tiny_pair(tmp_path):
    """Two tiny GGUF models of different widths, a 30-prompt file, and the pyreft fixtures (skip without pyreft)."""
    pyreft_fixtures = pytest.importorskip("tests.pyreft_fixtures")
    try:
        pyreft_fixtures.import_pyreft()
    except Exception:
        pytest.skip("pyreft not importable")
    donor = write_tiny_llama_gguf(tmp_path / "donor.gguf", n_layer=4, d_model=64, seed=1)
    recip = write_tiny_llama_gguf(tmp_path / "recip.gguf", n_layer=3, d_model=48, n_head=4, n_kv_head=2, seed=2)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"Question number {i}: tell me about topic {i * 7}."})
                                 for i in range(30)) + "\n")
    return pyreft_fixtures, donor, recip, prompts


def test_export_and_inspect(tmp_home, tmp_path):
    pyreft_fixtures, donor, recip, prompts = _tiny_pair(tmp_path)
    pyreft_fixtures.save_reft_adapter(tmp_path / "ad", "NodiReFT", layers=(0, 2), rank=4, d=64)
    out = tmp_path / "pack.gguf"
    res = CliRunner().invoke(app, ["export", "--adapter", str(tmp_path / "ad"), "--type", "NodiReFT", "--donor",
                                   str(donor), "--recipient", str(recip), "--prompts", str(prompts), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "translator fit" in res.output and "R² R→D" in res.output
    assert "utility check (10 exact-answer questions" in res.output and "transferability score" in res.output
    assert "response check skipped: the adapter folder keeps no training answers" in res.output
    pack = BehaviorPack.load(out)
    assert [e.layer for e in pack.entries] == [0, 1]  # nearest, ties down: 2*3/4 = 1.5 -> 1
    ins = CliRunner().invoke(app, ["inspect", str(out)])
    assert ins.exit_code == 0 and "entry 1" in ins.output and "layer_rule: nearest" in ins.output
    # the CLI's pack equals the library call on the stored profiles (no recomputation: cached)
    d, _, cached_d = profile_model(str(donor), str(prompts))
    r, _, cached_r = profile_model(str(recip), str(prompts))
    assert cached_d and cached_r
    ref = export_pack(load_adapter(tmp_path / "ad", kind="NodiReFT"), d, r).pack
    for a, b in zip(pack.entries, ref.entries):
        assert np.array_equal(a.A, b.A) and np.array_equal(a.C, b.C)
    assert pack.recipient["d_model"] == 48 and pack.meta["donor_d_model"] == 64
    # -o naming an existing folder (one adapter): one error line, before any work (the donor is not even looked
    # up: it does not exist), naming the folder, not a temp file
    (tmp_path / "adir").mkdir()
    res = CliRunner().invoke(app, ["export", "--adapter", str(tmp_path / "ad"), "--donor", str(tmp_path / "no-such"),
                                   "--recipient", str(recip), "--prompts", str(prompts), "-o", str(tmp_path / "adir")])
    assert res.exit_code == 2 and "error:" in res.output and "is a folder; with one --adapter" in res.output
    assert "partial" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert list((tmp_path / "adir").iterdir()) == [] and not list(tmp_path.glob(".adir.partial-*"))


def test_export_several_adapters_into_a_folder(tmp_home, tmp_path):
    """Repeated --adapter: one pack per adapter folder in the --out folder, each equal to its own export;
    bad combinations fail before anything is written."""
    pyreft_fixtures, donor, recip, prompts = _tiny_pair(tmp_path)
    pyreft_fixtures.save_reft_adapter(tmp_path / "a" / "style", "NodiReFT", layers=(0, 2), rank=4, d=64, seed=3)
    pyreft_fixtures.save_reft_adapter(tmp_path / "b" / "tone", "LoReFT", layers=(1,), rank=2, d=64, seed=4)
    pyreft_fixtures.save_reft_adapter(tmp_path / "c" / "style", "LoReFT", layers=(1,), rank=2, d=64, seed=5)
    common = ["--donor", str(donor), "--recipient", str(recip), "--prompts", str(prompts)]
    packs = tmp_path / "packs"
    res = CliRunner().invoke(app, ["export", "--adapter", str(tmp_path / "a" / "style"), "--adapter",
                                   str(tmp_path / "b" / "tone"), *common, "-o", str(packs)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in packs.iterdir()) == ["style.gguf", "tone.gguf"]
    d, _, _ = profile_model(str(donor), str(prompts))
    r, _, _ = profile_model(str(recip), str(prompts))
    for folder, kind in ((tmp_path / "a" / "style", "NodiReFT"), (tmp_path / "b" / "tone", "LoReFT")):
        got = BehaviorPack.load(packs / f"{folder.name}.gguf")
        want = export_pack(load_adapter(folder), d, r).pack
        assert got.name == folder.name and got.meta["adapter_kind"] == kind
        for a, b in zip(got.entries, want.entries, strict=True):
            assert np.array_equal(a.A, b.A) and np.array_equal(a.C, b.C)
    bad = [
        (["--adapter", str(tmp_path / "a" / "style"), "--adapter", str(tmp_path / "c" / "style")], "more than once"),
        (["--adapter", str(tmp_path / "a" / "style"), "--adapter", str(tmp_path / "b" / "tone"), "--name", "x"],
         "--name names one pack"),
        (["--adapter", str(tmp_path / "a" / "style"), "--adapter", str(tmp_path / "nowhere")], "nowhere"),
    ]
    for args, msg in bad:
        res = CliRunner().invoke(app, ["export", *args, *common, "-o", str(tmp_path / "other")])
        assert res.exit_code == 2 and msg in res.output, res.output
    assert not (tmp_path / "other").exists()
    (tmp_path / "file.gguf").write_bytes(b"x")
    res = CliRunner().invoke(app, ["export", "--adapter", str(tmp_path / "a" / "style"), "--adapter",
                                   str(tmp_path / "b" / "tone"), *common, "-o", str(tmp_path / "file.gguf")])
    assert res.exit_code == 2 and "is a file" in res.output and (tmp_path / "file.gguf").read_bytes() == b"x"


def test_export_warns_when_the_pack_costs_utility(tmp_home, tmp_path, monkeypatch):
    """The quick utility check after export: its counts are printed, and a drop over 10 points is a warning
    (the check itself is stubbed to a 9/10 → 3/10 drop; the real one runs in test_export_and_inspect)."""
    from commandv.exporter.evaluation import evaluate

    monkeypatch.setattr(evaluate, "utility_check", lambda recipient, pack, n: (0.9, 0.3, 10))
    pyreft_fixtures, donor, recip, prompts = _tiny_pair(tmp_path)
    pyreft_fixtures.save_reft_adapter(tmp_path / "ad", "NodiReFT", layers=(0, 2), rank=4, d=64)
    res = CliRunner().invoke(app, ["export", "--adapter", str(tmp_path / "ad"), "--type", "NodiReFT", "--donor",
                                   str(donor), "--recipient", str(recip), "--prompts", str(prompts),
                                   "-o", str(tmp_path / "out.gguf")])
    assert res.exit_code == 0, res.output
    assert "without the pack 9/10, with it 3/10" in res.output and "costs the recipient utility (90 → 30 %" in res.output


def test_export_response_check_on_the_adapters_training_answers(tmp_home, tmp_path):
    """An adapter folder that keeps its training answers (training_metadata.json + donor_answers.jsonl, as
    ``cmdv train-demo`` writes them): export prints the response check and stores it in the pack; its recipient
    figures equal a response check of the written pack on the same answers, the donor's that of the adapter's
    self-pack on the donor."""
    from commandv.exporter.adapters.self_pack import model_adapter_pack
    from commandv.exporter.evaluation.proxy import response_check
    from commandv.exporter.training.answers import training_answers
    from commandv.exporter.training.behaviors import get_behavior
    from commandv.exporter.training.donor_gen import answer_key
    from commandv.runtime.engines.llama.engine import Recipient

    pyreft_fixtures, donor, recip, prompts = _tiny_pair(tmp_path)
    ad = tmp_path / "ad"
    pyreft_fixtures.save_reft_adapter(ad, "NodiReFT", layers=(0, 2), rank=4, d=64)
    (ad / "training_metadata.json").write_text(json.dumps({"behavior": "pirate", "donor_model_id": "m",
                                                           "max_response_tokens": 24}))
    specs = get_behavior("pirate").train_specs()[:3]
    (ad / "donor_answers.jsonl").write_text("".join(json.dumps({"key": answer_key(s.teacher_prompt, "m", 24),
                                                                "text": f"the answer is {i}", "ids": [1],
                                                                "finished": True}) + "\n"
                                                    for i, s in enumerate(specs)))
    out = tmp_path / "pack.gguf"
    res = CliRunner().invoke(app, ["export", "--adapter", str(ad), "--type", "NodiReFT", "--donor", str(donor),
                                   "--recipient", str(recip), "--prompts", str(prompts), "-o", str(out),
                                   "--utility-check", "0", "--response-check", "2"])
    assert res.exit_code == 0, res.output
    assert "recipient response: the adapter's own training answers (2, teacher-forced" in res.output
    got = BehaviorPack.load(out).meta["response_check"]
    adapter = load_adapter(ad, kind="NodiReFT")
    pairs = training_answers(adapter, 2)
    with Recipient(str(recip), n_ctx=2048) as eng:
        want = response_check(eng, pairs, BehaviorPack.load(out))[0]
    with Recipient(str(donor), n_ctx=2048) as eng:
        want_d = response_check(eng, pairs, model_adapter_pack(str(donor), adapter, "self"))[0]
    assert got["recipient"]["n"] == 2 and got["recipient"]["delta"] == pytest.approx(want.delta, abs=1e-5)
    assert got["donor"]["delta"] == pytest.approx(want_d.delta, abs=1e-5)


def test_export_pinv_tokens_equals_the_library_on_the_aligned_rows(tmp_home, tmp_path):
    """``--method pinv-tokens``: the pack equals export_pack on the profiles with both models' token rows
    (captured again here, not from the store) appended; the fit has more rows than the last-token profile."""
    from commandv.profiles.prompts import load_prompt_set
    from commandv.profiles.token_rows import aligned_rows, capture_token_rows, with_token_rows

    pyreft_fixtures, donor, recip, prompts = _tiny_pair(tmp_path)
    pyreft_fixtures.save_reft_adapter(tmp_path / "ad", "NodiReFT", layers=(0, 2), rank=4, d=64)
    out = tmp_path / "pack.gguf"
    res = CliRunner().invoke(app, ["export", "--adapter", str(tmp_path / "ad"), "--type", "NodiReFT", "--donor",
                                   str(donor), "--recipient", str(recip), "--prompts", str(prompts), "-o", str(out),
                                   "--method", "pinv-tokens", "--token-prompts", "12", "--utility-check", "0"])
    assert res.exit_code == 0, res.output
    pack = BehaviorPack.load(out)
    assert pack.meta["method"] == "pinv-tokens" and pack.meta["n_fit"] > 30
    d, _, _ = profile_model(str(donor), str(prompts))
    r, _, _ = profile_model(str(recip), str(prompts))
    general = load_prompt_set("general", limit=12).prompts
    XD, XR = aligned_rows(capture_token_rows(str(donor), general, progress=False),
                          capture_token_rows(str(recip), general, progress=False))
    d, r = with_token_rows(d, r, XD, XR)
    ref = export_pack(load_adapter(tmp_path / "ad", kind="NodiReFT"), d, r, method="pinv-tokens").pack
    assert pack.meta["n_fit"] == ref.meta["n_fit"]
    for a, b in zip(pack.entries, ref.entries):
        np.testing.assert_allclose(a.A, b.A, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.C, b.C, rtol=1e-5, atol=1e-6)
    bad = CliRunner().invoke(app, ["export", "--adapter", str(tmp_path / "ad"), "--type", "NodiReFT", "--donor",
                                   str(donor), "--recipient", str(recip), "--prompts", str(prompts), "-o",
                                   str(tmp_path / "x.gguf"), "--method", "pinv-tokens", "--token-prompts", "0"])
    assert bad.exit_code == 2 and "pinv-tokens fits token rows" in bad.output
    neg = CliRunner().invoke(app, ["export", "--adapter", str(tmp_path / "ad"), "--type", "NodiReFT", "--donor",
                                   str(donor), "--recipient", str(recip), "--prompts", str(prompts), "-o",
                                   str(tmp_path / "x.gguf"), "--method", "pinv-tokens", "--token-prompts", "-1"])
    assert neg.exit_code == 2 and "--token-prompts must be >= 0" in neg.output
    assert not (tmp_path / "x.gguf").exists()


def test_export_method_auto_on_one_family_is_the_paper_pinv_either_way(tmp_home, tmp_path):
    """The default ``--method auto`` on two models of one family (both tiny llamas): the plain pinv export, equal
    to the library's default, in both directions, and the choice is printed. (The rule's other branch, across
    families, is tested on profile metadata in test_export.py; the pinv-tokens export itself above.)"""
    pyreft_fixtures, wide, narrow, prompts = _tiny_pair(tmp_path)  # 64 wide, 48 narrow
    pyreft_fixtures.save_reft_adapter(tmp_path / "ad48", "NodiReFT", layers=(0, 2), rank=4, d=48)
    pyreft_fixtures.save_reft_adapter(tmp_path / "ad64", "NodiReFT", layers=(0, 2), rank=4, d=64)
    common = ["--type", "NodiReFT", "--prompts", str(prompts), "--utility-check", "0"]
    for adapter, donor, recipient in (("ad48", narrow, wide), ("ad64", wide, narrow)):
        out = tmp_path / f"{adapter}.gguf"
        res = CliRunner().invoke(app, ["export", "--adapter", str(tmp_path / adapter), "--donor", str(donor),
                                       "--recipient", str(recipient), "-o", str(out), *common])
        assert res.exit_code == 0, res.output
        assert "method: pinv (auto: same model family (llama))" in res.output
        pack = BehaviorPack.load(out)
        d, _, _ = profile_model(str(donor), str(prompts))
        r, _, _ = profile_model(str(recipient), str(prompts))
        ref = export_pack(load_adapter(tmp_path / adapter, kind="NodiReFT"), d, r).pack
        assert pack.meta["method"] == "pinv" and pack.meta["n_fit"] == ref.meta["n_fit"]
        for a, b in zip(pack.entries, ref.entries):
            assert np.array_equal(a.A, b.A) and np.array_equal(a.C, b.C)
    bad = CliRunner().invoke(app, ["export", "--adapter", str(tmp_path / "ad64"), "--donor", str(wide),
                                   "--recipient", str(narrow), "-o", str(tmp_path / "x.gguf"), *common,
                                   "--method", "best"])
    assert bad.exit_code == 2 and "--method: unknown method 'best'; choose auto or one of" in bad.output
    assert not (tmp_path / "x.gguf").exists()


def test_export_gated_needs_a_behavior_and_the_general_set(tmp_home, tmp_path):
    """``--method gated`` needs ``--behavior``, which brings its own profile set, and the behavior must exist: each
    misuse is refused in one line before any profiling, and no file is written."""
    pyreft_fixtures, wide, narrow, prompts = _tiny_pair(tmp_path)
    pyreft_fixtures.save_reft_adapter(tmp_path / "ad48", "NodiReFT", layers=(0, 2), rank=4, d=48)
    common = ["export", "--adapter", str(tmp_path / "ad48"), "--type", "NodiReFT", "--donor", str(narrow),
              "--recipient", str(wide), "-o", str(tmp_path / "x.gguf"), "--utility-check", "0"]
    for extra, words in ((["--method", "gated"], "--method gated needs --behavior"),
                         (["--method", "gated", "--behavior", "refusal", "--prompts", str(prompts)],
                          "drop --prompts"),
                         (["--behavior", "refusal", "--prompts", str(prompts)], "drop --prompts"),
                         (["--behavior", "no-such"], "no-such"),
                         (["--method", "gated", "--behavior", "refusal", "--backend", "hf"],
                          "--method gated needs --backend gguf"),
                         (["--anchor-texts", "8"], "--anchor-texts needs --behavior"),
                         (["--anchor-texts", "-1", "--behavior", "french"], "--anchor-texts must be >= 0"),
                         (["--anchor-texts", "8", "--behavior", "french", "--method", "pinv"],
                          "--anchor-texts: anchor texts join the token rows, which pinv does not fit"),
                         (["--response-check", "-1"], "--response-check must be >= 0")):
        bad = CliRunner().invoke(app, [*common, *extra])
        assert bad.exit_code == 2 and words in bad.output, bad.output
    assert not (tmp_path / "x.gguf").exists()


def test_the_weak_response_warning_quotes_the_measured_record(tmp_path):
    from commandv.exporter.cli.main import warned_record

    path = tmp_path / "transfer_score.json"
    path.write_text(json.dumps({"figures": {"response_warned_packs": {"value": 9.0, "unit": "packs"},
                                            "response_warned_packs_that_failed": {"value": 4.0, "unit": "packs"}}}))
    assert warned_record(path) == ": of 9 evaluated packs this weak, 4 gained under 10 points (transfer_score.json)"
    path.write_text(json.dumps({"figures": {}}))
    assert warned_record(path) == ""
    assert warned_record(tmp_path / "missing.json") == ""
    path.write_text("not json")
    assert warned_record(path) == ""


def test_the_weak_response_warning_reads_the_first_token_figure(capsys):
    from commandv.exporter.cli.main import report_response
    from commandv.exporter.evaluation.proxy import PackResponse, ResponseCheck

    # 32 answers: 2 more start as the greedy choice with the pack (under one in ten) though the log-prob rose a lot
    weak = ResponseCheck(n=32, strength=1.0, off=-2.0, on=-1.0, first_off=4 / 32, first_on=6 / 32)
    # 4 more (one in eight) with a log-prob that barely moved
    strong = ResponseCheck(n=32, strength=1.0, off=-2.0, on=-1.99, first_off=4 / 32, first_on=8 / 32)
    assert weak.weak and not strong.weak
    assert ResponseCheck(n=32, strength=1.0, off=-2.0, on=-2.0).weak  # no first-token figure: nothing known
    report_response(PackResponse(recipient=weak, donor=None))
    said = capsys.readouterr()
    assert "barely responds" in said.err and "+2 of 32" in said.err and "4 → 6 of 32" in said.out
    report_response(PackResponse(recipient=strong, donor=None))
    assert "barely responds" not in capsys.readouterr().err
