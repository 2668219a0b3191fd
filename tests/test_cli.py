"""`cmdv` user errors: one clear line, exit code 2, no traceback, nothing half-written."""

import json

import pytest
from typer.testing import CliRunner

from commandv.exporter.cli.main import app

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


# ------------------------------------------------------------------ text from files never drives the terminal
HOSTILE = "\x1b[1A\x1b[2K\r signed by trusted key \x9b2K \u202egnp.exe \u200b\x07\x08"
RAW = ("\x1b", "\x9b", "\r", "\u202e", "\u200b", "\x07", "\x08")  # what a terminal would act on
SHOWN = ("\\x1b[1A\\x1b[2K\\x0d", "\\x9b2K", "\\u202egnp.exe", "\\u200b\\x07\\x08")


def hostile_pack(path, d=8, n_layer=4, fingerprint="0" * 64):
    """A valid pack whose name, recipient name, metadata (keys and values) and diagnostics carry escape sequences."""
    import numpy as np

    from commandv.runtime.pack.model import BehaviorPack, PackEntry

    rng = np.random.default_rng(0)
    e = PackEntry(layer=1, A=(rng.standard_normal((d, 2)) / d).astype(np.float32), b=np.ones(2, np.float32),
                  C=(0.1 * rng.standard_normal((2, d))).astype(np.float32), act="relu", positions="l1")
    p = BehaviorPack(entries=[e], name=HOSTILE, meta={"donor": HOSTILE, HOSTILE: "key", "nested": {"x": HOSTILE}},
                     recipient=dict(fingerprint=fingerprint, arch="llama", n_layer=n_layer, d_model=d, name=HOSTILE),
                     diagnostics=[{"donor_layer": 0, "recipient_layer": 1, "r2_r2d": 0.5, "note": HOSTILE}])
    return p.save(path)


def assert_no_raw_controls(text):
    assert not any(c in text for c in RAW), repr(text)
    for s in SHOWN:
        assert s in text, (s, text)


def test_inspect_shows_escape_sequences_as_text(tmp_path):
    code, out = run("inspect", str(hostile_pack(tmp_path / "h.gguf")))
    assert code == 0, out
    assert_no_raw_controls(out)
    assert out.count("\\x1b[1A") >= 4  # name, recipient name, meta key, meta value


def test_error_messages_show_escape_sequences_as_text(tmp_path):
    """A file-derived name inside an error message (here the path) is escaped too: still one line."""
    bad = tmp_path / f"x{HOSTILE.replace('/', '')}.gguf"
    bad.write_bytes(b"JUNK")
    res = runner.invoke(app, ["inspect", str(bad)])
    assert_user_error(res.exit_code, res.stderr, "not a GGUF")
    assert_no_raw_controls(res.stderr)
    assert res.stderr.startswith("error:") and res.stderr.strip().count("\n") == 0  # one line: \r or \n shown too


def test_models_info_shows_model_names_as_escapes(tmp_path, tiny_gguf):
    """A GGUF's general.name carrying escape sequences (same byte length, patched in place) is printed escaped."""
    data = tiny_gguf.read_bytes()
    name = "\x1b[1A\x1b[2K\r\u202e\x9bok!".encode()
    assert data.count(b"tiny-llama-random") == 1 and len(name) == len(b"tiny-llama-random")
    odd = tmp_path / "odd.gguf"
    odd.write_bytes(data.replace(b"tiny-llama-random", name))
    res = runner.invoke(app, ["models", "info", str(odd)], env={"COLUMNS": "400"})  # no folding of long cells
    assert res.exit_code == 0, res.output
    assert not any(c in res.stdout for c in RAW) and "\\x1b[1A\\x1b[2K\\x0d\\u202e\\x9bok!" in res.stdout


def test_python_warnings_print_as_one_escaped_line(capsys):
    """`cmdv` (main) shows Python warnings, e.g. an unsigned pack's path, through this hook: one line, escaped."""
    from commandv.exporter.cli.main import _show_warning

    _show_warning(UserWarning(f"{HOSTILE}\nsecond line"), UserWarning, "x.py", 1)
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and err.count("\n") == 1 and "\\x0asecond line" in err
    assert_no_raw_controls(err)
