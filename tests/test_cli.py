"""`cmdv` user errors: one clear line, exit code 2, no traceback, nothing half-written."""

import json

import pytest
from typer.testing import CliRunner

from commandv.exporter.cli import app

runner = CliRunner()


def run(*args):
    res = runner.invoke(app, list(args))
    return res.exit_code, res.output + (res.stderr if hasattr(res, "stderr") and res.stderr else "")


def assert_user_error(code, out, *needles):
    assert code == 2, out
    assert "Traceback" not in out
    for n in needles:
        assert n in out, out


def test_help_names_default_layer_rule():
    code, out = run("export", "--help")
    assert code == 0 and "nearest" in out and "floor" in out


def test_profile_missing_model(tmp_home):
    assert_user_error(*run("profile", str(tmp_home / "nope.gguf")), "model not found")


def test_profile_unknown_zoo_key_like(tmp_home):
    assert_user_error(*run("models", "fetch", "no-such-model"), "unknown")


def test_profile_corrupt_gguf(tmp_home, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    code, out = run("profile", str(bad))
    assert_user_error(code, out, "bad.gguf")
    assert not list((tmp_home / "profiles").rglob("*.safetensors")) if (tmp_home / "profiles").exists() else True


def test_profile_not_gguf(tmp_home, tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_text("hello")
    assert_user_error(*run("profile", str(bad)), "not a GGUF")


@pytest.mark.parametrize("content,needle", [("", "empty"), ('{"prompt": "a"}\n{oops\n', "malformed JSON on line 2"),
                                            ('{"text": "a"}\n', "prompt")])
def test_profile_bad_prompt_files(tmp_home, tmp_path, tiny_gguf, content, needle):
    f = tmp_path / "p.jsonl"
    f.write_text(content)
    assert_user_error(*run("profile", str(tiny_gguf), "--prompts", str(f)), needle)


def test_profile_prompt_longer_than_context(tmp_home, tmp_path, tiny_gguf):
    f = tmp_path / "long.jsonl"
    f.write_text(json.dumps({"prompt": "word " * 5000}) + "\n")
    code, out = run("profile", str(tiny_gguf), "--prompts", str(f))
    assert_user_error(code, out)
    assert "context" in out.lower() or "longer" in out.lower()
    assert not any((tmp_home / "profiles").rglob("*.safetensors")) if (tmp_home / "profiles").exists() else True


def test_profile_then_reuse(tmp_home, tmp_path, tiny_gguf):
    f = tmp_path / "ok.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": p}) for p in ["Hi", "What is 2+2?", "Tell me a joke."]) + "\n")
    code, out = run("profile", str(tiny_gguf), "--prompts", str(f))
    assert code == 0, out
    assert "4 layers × [3, 64]" in out and "computed" in out
    code, out = run("profile", str(tiny_gguf), "--prompts", str(f))
    assert code == 0 and "reused" in out


def test_inspect_bad_pack(tmp_path):
    p = tmp_path / "p.gguf"
    p.write_bytes(b"JUNK")
    assert_user_error(*run("inspect", str(p)), "not a GGUF")
