"""Comma-separated CLI option values (exporter/cli/args.py) and the commands that take them."""

import pytest
from typer.testing import CliRunner

from commandv.exporter.cli.args import CliArgumentError, comma_list
from commandv.exporter.cli.main import app


def test_comma_list():
    assert comma_list("1, 2.5,,4", float, "--strengths") == [1.0, 2.5, 4.0]
    assert comma_list("0,3", int, "--layers") == [0, 3] and comma_list("", int, "--layers") == []
    with pytest.raises(CliArgumentError, match=r"--layers: 'a' is not an integer \(expected a comma-separated list\)"):
        comma_list("0,a", int, "--layers")
    with pytest.raises(CliArgumentError, match="--strengths: 'x' is not a number"):
        comma_list("1,x", float, "--strengths")


@pytest.mark.parametrize("argv,msg", [
    (["eval", "--donor", "d.gguf", "--recipient", "r.gguf", "--behavior", "pirate", "--strengths", "1,x"],
     "--strengths: 'x' is not a number"),
    (["onnx", "export", "r.gguf", "--layers", "0,a"], "--layers: 'a' is not an integer"),
    (["train-demo", "--donor", "d.gguf", "--behavior", "pirate", "--epochs", "0"], "rank, batch_size, epochs and layer_step must be >= 1"),
    (["train-demo", "--donor", "d.gguf", "--behavior", "pirate", "--threads", "0"], "--threads must be >= 1, got 0"),
])
def test_bad_lists_are_one_error_line(argv, msg):
    res = CliRunner().invoke(app, argv)
    if "No such command" in res.output:
        pytest.skip("command not registered (optional dependency missing)")
    assert res.exit_code == 2 and f"error: {msg}" in res.output, res.output


def test_demo_pack_name_from_a_model_path():
    from commandv.exporter.cli.demo import model_label

    assert model_label("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert model_label("/models/My Model.Q4_K_M.gguf") == "My_Model.Q4_K_M"
    assert "/" not in model_label("/tmp/x/recip.gguf") and model_label("/tmp/x/recip.gguf") == "recip"


def test_train_demo_out_folder_checks(tmp_path, monkeypatch):
    """train-demo replaces its --out folder: refused up front for the current folder, a file, or a folder with
    other files (before minutes of training); an earlier adapter's folder is fine."""
    from commandv.exporter.training.demo import check_out_folder
    from commandv.exporter.training.train import TrainError

    (tmp_path / "ad").mkdir()
    for name in ("config.json", "intkey_layer_0_comp_block_output_unit_pos_nunit_1#0.bin", "donor_answers.jsonl"):
        (tmp_path / "ad" / name).write_text("x")
    check_out_folder(tmp_path / "ad")
    check_out_folder(tmp_path / "new")
    (tmp_path / "ad" / "thesis.tex").write_text("mine")
    with pytest.raises(TrainError, match=r"holds other files \(thesis.tex\)"):
        check_out_folder(tmp_path / "ad")
    (tmp_path / "f").write_text("x")
    with pytest.raises(TrainError, match="is a file"):
        check_out_folder(tmp_path / "f")
    monkeypatch.chdir(tmp_path / "ad")
    with pytest.raises(TrainError, match="holds the current folder"):
        check_out_folder(tmp_path)
    res = CliRunner().invoke(app, ["train-demo", "--donor", "d.gguf", "--behavior", "pirate", "--out", "."])
    if "No such command" not in res.output:
        assert res.exit_code == 2 and "holds the current folder" in res.output, res.output


def test_eval_counts_are_checked():
    from commandv.exporter.evaluation.pair import EvalSettingsError, PairEvalSettings

    PairEvalSettings().validate()
    for bad in (dict(n_expected=0), dict(n_unexpected=-1), dict(max_tokens=0), dict(strengths=()),
                dict(method="best")):
        with pytest.raises(EvalSettingsError):
            PairEvalSettings(**bad).validate()
    res = CliRunner().invoke(app, ["eval", "--donor", "d.gguf", "--recipient", "r.gguf", "--n", "0"])
    if "No such command" not in res.output:
        assert res.exit_code == 2 and "(--n) must be >= 1, got 0" in res.output, res.output
    res = CliRunner().invoke(app, ["eval", "--donor", "d.gguf", "--recipient", "r.gguf", "--method", "best"])
    if "No such command" not in res.output:  # refused before any model is looked up
        assert res.exit_code == 2 and "unknown method 'best'; choose auto or one of" in res.output, res.output


def test_committed_adapters_are_package_data():
    """`pip install .` (no checkout) installs adapters/ as commandv/adapters, where committed_adapter looks
    (REPO = the parent of exporter/, i.e. site-packages/commandv once installed)."""
    from pathlib import Path

    import tomllib

    from commandv.exporter.cli.demo import DEMO_ADAPTER, DEMO_DONOR, REPO, committed_adapter

    root = Path(__file__).resolve().parents[1]
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"]["commandv.adapters"] == "adapters" and "commandv.adapters" in cfg["packages"]
    patterns = cfg["package-data"]["commandv.adapters"]
    files = {p.relative_to(root / "adapters") for p in (root / "adapters").rglob("*") if p.is_file()}
    covered = {p for pat in patterns for p in (q.relative_to(root / "adapters") for q in (root / "adapters").glob(pat))
               if (root / "adapters" / p).is_file()}
    assert files and files == covered  # every committed adapter file ships
    assert committed_adapter(DEMO_DONOR, DEMO_ADAPTER) == REPO / "adapters" / DEMO_DONOR / DEMO_ADAPTER
    assert (committed_adapter(DEMO_DONOR, DEMO_ADAPTER) / "config.json").is_file()
