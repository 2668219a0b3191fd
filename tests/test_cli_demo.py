"""`cmdv demo` end to end on SmolLM2 (donor = recipient, few prompts): the four steps, a pack whose folded edit
equals the adapter's own, judged rates that agree with the engine run directly, and the measured-figure lookup."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from commandv.exporter.cli import demo as cli_demo
from commandv.exporter.cli.main import app

SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2():
    from commandv.runtime.models import zoo

    return zoo.fetch(SMOL, progress=False)


def test_demo_runs_and_writes_the_pack(smollm2, tmp_path, monkeypatch):
    from commandv.exporter.adapters.folder import load_adapter
    from commandv.runtime.pack.model import BehaviorPack

    monkeypatch.chdir(tmp_path)
    adapter = cli_demo.committed_adapter(SMOL, "refusal-broad")
    res = CliRunner().invoke(app, ["demo", "--donor", SMOL, "--recipient", SMOL, "--adapter", str(adapter),
                                   "--n", "2", "--profile-prompts", "700", "--rcond", "0", "--max-tokens", "6", "--strength", "1"])
    assert res.exit_code == 0, res.output
    for step in ("1/4 profiling", "2/4 exporting", "3/4 running", "4/4 judged", "transferability score"):
        assert step in res.output
    pack = BehaviorPack.load(tmp_path / f"refusal-{SMOL}.pack.gguf")
    # the same model on both sides: both translators are the projector P = pinv(X)·X onto the span the profile
    # keeps (numpy reference, pinv cutoff max(N, d)·eps32 as in the paper's torch.linalg.pinv), so the pack's
    # edit is the adapter's edit seen through P: delta(h·P)·P
    from commandv.exporter.transfer.export import holdout_rows
    from commandv.profiles.profiler import profile_model

    prof, _, cached = profile_model(SMOL, "general", "gguf", limit=700, progress=False)
    assert cached  # the demo profiled exactly this
    fit, held = holdout_rows(700, 0.1)
    ad = load_adapter(adapter)
    for entry, edit in zip(pack.entries, sorted(ad.edits, key=lambda e: e.layer)):
        X = prof.layer(entry.layer)[fit].astype(np.float64)
        P = np.linalg.pinv(X, rcond=max(X.shape) * np.finfo(np.float32).eps) @ X
        h = prof.layer(entry.layer)[held][:8].astype(np.float64)
        ref = edit.delta(h @ P) @ P
        assert np.linalg.norm(entry.delta(h.astype(np.float32)) - ref) <= 0.02 * np.linalg.norm(ref)


def test_demo_prompts_are_held_out_and_balanced():
    ps = cli_demo.demo_prompts("refusal", 10)
    assert sum(p.expect for p in ps) == 10 and sum(not p.expect for p in ps) == 10
    assert len({p.prompt for p in ps}) == 20
    from commandv.exporter.training.behaviors import get_behavior

    train = {sp.prompt for sp in get_behavior("refusal-broad").train_specs()}
    assert not train & {p.prompt for p in ps}


def test_demo_rejects_zero_prompts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["demo", "--n", "0"])
    assert res.exit_code == 2 and "--n must be at least 1" in res.output and "Traceback" not in res.output


def test_measured_figures_reads_the_pair(tmp_path, monkeypatch):
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    doc = {"figures": {"smollm2-to-qwen0.5b.recovered_gain_refusal": {"value": 0.6, "unit": "fraction"},
                       "smollm2-to-qwen0.5b.n_french": {"value": 160, "unit": "prompts"},
                       "qwen0.5b-to-smollm2.recovered_gain_refusal": {"value": 0.0, "unit": "fraction"}}}
    (tmp_path / "benchmarks" / "results" / "transfer_eval.json").write_text(json.dumps(doc))
    monkeypatch.setattr(cli_demo, "REPO", tmp_path)
    got = cli_demo.measured_figures(SMOL, "qwen2.5-coder-0.5b-instruct", "refusal")
    assert set(got) == {"recovered_gain_refusal"}
    assert got["recovered_gain_refusal"]["value"] == 0.6
    assert set(cli_demo.measured_figures(SMOL, "qwen2.5-coder-0.5b-instruct", "french")) == {"n_french"}
