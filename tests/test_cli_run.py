"""``cmdv run`` / ``cmdv chat`` on the tiny GGUF through typer's CliRunner."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

pytest.importorskip("llama_cpp")

from commandv.runtime.cli.run import chat_cmd, run_cmd  # noqa: E402
from commandv.runtime.engines.llama.engine import Recipient  # noqa: E402
from commandv.runtime.terminal import safe_text  # noqa: E402
from tests.test_llama_parity import random_pack  # noqa: E402

pytestmark = pytest.mark.llama
PROMPT = "Tell me something nice about rivers."


def run_chat_app() -> typer.Typer:
    """An app with only ``run`` and ``chat``, as the main CLI registers them."""
    a = typer.Typer()
    a.command("run")(run_cmd)
    a.command("chat")(chat_cmd)
    return a


@pytest.fixture(scope="module")
def app():
    return run_chat_app()


@pytest.fixture(scope="module")
def setup(tiny_gguf, tmp_path_factory):
    with Recipient(tiny_gguf, n_ctx=512, n_threads=1) as r:
        pack = random_pack(layers=(1, 2), seed=3, scale=2.0, act="silu", fingerprint=r.fingerprint, name="p1")
        path = pack.save(tmp_path_factory.mktemp("packs") / "p1.gguf")
        want = r.generate(PROMPT, packs=[pack], strengths=[1.5], max_tokens=8)
        plain = r.generate(PROMPT, max_tokens=8)
        reply = r.chat([{"role": "user", "content": "Hello"}], packs=[pack], max_tokens=6)
    return tiny_gguf, path, want, plain, reply


def test_run_streams_the_edited_output(app, setup):
    model, pack, want, plain, _ = setup
    assert want != plain
    res = CliRunner().invoke(app, ["run", str(model), PROMPT, "--pack", str(pack), "--strength", "1.5",
                                   "--max-tokens", "8", "--ctx", "512", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert res.stdout == safe_text(want, multiline=True) + "\n"  # the tiny model's output holds control bytes
    assert "edit callback" in res.stderr and "p1" in res.stderr


def test_run_compare_shows_both(app, setup):
    model, pack, want, plain, _ = setup
    res = CliRunner().invoke(app, ["run", str(model), PROMPT, "-p", str(pack), "-s", "1.5", "-n", "8",
                                   "--ctx", "512", "--compare", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "without packs" in res.stdout and "with packs (p1×1.5)" in res.stdout
    squash = "".join(res.stdout.split())
    assert "".join(want.split())[:10] in squash and "".join(plain.split())[:10] in squash


def test_run_errors_are_one_line(app, setup, tmp_path):
    model, pack, *_ = setup
    res = CliRunner().invoke(app, ["run", str(model), PROMPT, "--pack", str(tmp_path / "none.gguf")])
    assert res.exit_code == 2 and "pack file not found" in res.stderr
    res = CliRunner().invoke(app, ["run", str(model), PROMPT, "--pack", str(pack), "--strength", "nan"])
    assert res.exit_code == 2 and "finite" in res.stderr
    res = CliRunner().invoke(app, ["run", str(tmp_path / "nope.gguf"), PROMPT])
    assert res.exit_code == 2 and "not found" in res.stderr


def test_chat_loop(app, setup):
    model, pack, _, _, reply = setup
    args = ["chat", str(model), "--pack", str(pack), "-n", "6", "--ctx", "512", "--threads", "1"]
    res = CliRunner().invoke(app, args, input="Hello\n/reset\n\n/quit\nnever read\n")
    assert res.exit_code == 0, res.output
    assert res.stdout == safe_text(reply, multiline=True) + "\n"
    assert res.stderr.count("you>") == 4


def test_main_cli_has_run_and_chat():
    pytest.importorskip("commandv.exporter.cli.main")
    from commandv.exporter.cli.main import app as main_app

    res = CliRunner().invoke(main_app, ["run", "--help"])
    assert res.exit_code == 0 and "--compare" in res.stdout
    assert CliRunner().invoke(main_app, ["chat", "--help"]).exit_code == 0


def test_names_and_outputs_are_never_markup(app, setup, tmp_path, monkeypatch):
    """A pack named like rich markup, and model output with brackets, print as they are (no MarkupError,
    nothing swallowed) in the status lines and in --compare's table."""
    from commandv.runtime.engines.llama.engine import Recipient
    from commandv.runtime.pack.model import BehaviorPack

    model, pack, *_ = setup
    p = BehaviorPack.load(pack)
    p.name = "style[/b] [red]x"
    odd = p.save(tmp_path / "odd.gguf")
    base = ["run", str(model), PROMPT, "--pack", str(odd), "--max-tokens", "4", "--ctx", "512", "--threads", "1"]
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 0, res.output
    assert "style[/b] [red]x" in res.stderr
    monkeypatch.setattr(Recipient, "generate", lambda self, *a, **k: "print(arr[i]) see [/note]")
    res = CliRunner().invoke(app, base + ["--compare"])
    assert res.exit_code == 0, res.output
    assert res.stdout.count("print(arr[i]) see [/note]") == 2 and "style[/b] [red]x" in res.stdout


# ------------------------------------------------------------------ hostile text, bad bytes, out-of-range integers
def _main_app():
    pytest.importorskip("commandv.exporter.cli.main")
    from commandv.exporter.cli.main import app as main_app

    return main_app


def test_names_and_output_never_drive_the_terminal(setup, tmp_path, monkeypatch):
    """A pack (name, recipient name, file name) and a model file name carrying escape sequences, and generated text
    carrying them: stderr and stdout hold none raw, they are shown as escapes; the unsigned-pack warning stays."""
    from commandv.runtime.engines.llama.engine import Recipient
    from commandv.runtime.models.fingerprint import model_info_from_gguf
    from tests.test_cli import HOSTILE, assert_no_raw_controls, hostile_pack

    model, pack, *_ = setup
    data = model.read_bytes()  # the model's general.name patched in place (same byte length)
    odd_model = tmp_path / "odd.gguf"
    odd_model.write_bytes(data.replace(b"tiny-llama-random", "\x1b[1A\x1b[2K\r\u202e\x9bok!".encode()))
    fp = model_info_from_gguf(odd_model).fingerprint
    h = hostile_pack(tmp_path / f"{HOSTILE.replace('/', '')}.pack.gguf", d=64, n_layer=4, fingerprint=fp)
    base = ["run", str(odd_model), PROMPT, "--pack", str(h), "-n", "4", "--ctx", "512", "--threads", "1",
            "--signatures", "warn"]
    res = CliRunner().invoke(_main_app(), base)
    assert res.exit_code == 0, res.output
    assert_no_raw_controls(res.stderr)
    assert "warning:" in res.stderr and res.stderr.count("\\x1b[1A") >= 4  # warning's path, pack name ×2, model
    assert "\\x1b[1A\\x1b[2K\\x0d\\u202e\\x9bok!" in res.stderr
    evil = ["\x1b[2J\x1b[H", "signed by trusted key\r", "\x9b31m", "\u202eevil\n", "tab\tok"]
    monkeypatch.setattr(Recipient, "generate", lambda self, *a, stream=False, **k: iter(evil) if stream
                        else "".join(evil))
    res = CliRunner().invoke(_main_app(), base)
    assert res.exit_code == 0, res.output
    assert res.stdout == "\\x1b[2J\\x1b[Hsigned by trusted key\\x0d\\x9b31m\\u202eevil\ntab\tok\n"
    res = CliRunner().invoke(_main_app(), base + ["--compare"])
    assert res.exit_code == 0, res.output
    assert not any(c in res.stdout for c in "\x1b\x9b\r\u202e") and res.stdout.count("\\x1b[2J") == 2
    assert "\\x1b[1A" in res.stdout  # the pack name in the column header


def test_invalid_utf8_prompt_is_one_line(setup):
    """argv bytes that are not UTF-8 (Python holds them as lone surrogates): one line naming the byte, exit 2."""
    import subprocess
    import sys

    model, *_ = setup
    res = CliRunner().invoke(_main_app(), ["run", str(model), "ok \udcff there"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.stderr.strip() == "error: prompt is not valid UTF-8: byte 0xff at byte offset 3"
    p = subprocess.run([sys.executable, "-c", "from commandv.exporter.cli.main import main; main()", "run", str(model),
                        b"caf\xc3 \xff", "--ctx", "512"], capture_output=True, timeout=120)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert "prompt is not valid UTF-8: byte 0xc3 at byte offset 3" in err


def test_chat_reports_invalid_utf8_lines_and_goes_on(app, setup):
    model, pack, _, _, reply = setup
    args = ["chat", str(model), "--pack", str(pack), "-n", "6", "--ctx", "512", "--threads", "1"]
    res = CliRunner().invoke(app, args, input=b"bad \xfe\xff line\nHello\n/quit\n")
    assert res.exit_code == 0, res.output
    assert "input line is not valid UTF-8: byte 0xfe at byte offset 4" in res.stderr and "Traceback" not in res.output
    assert res.stdout == safe_text(reply, multiline=True) + "\n"  # the bad line was dropped, "Hello" answered
    res = CliRunner().invoke(_main_app(), ["chat", str(model), "--system", "be \udc80"], input="Hello\n")
    assert res.exit_code == 2 and "--system is not valid UTF-8: byte 0x80 at byte offset 3" in res.stderr


@pytest.mark.parametrize("args,msg", [
    (["--ctx", "4294967297"], "--ctx must be an integer from 1 to 2147483647, got 4294967297"),
    (["--ctx", "0"], "--ctx must be an integer from 1 to 2147483647, got 0"),
    (["--threads", "4294967297"], "--threads must be an integer from 1 to 512, got 4294967297"),
    (["--threads", "0"], "--threads must be an integer from 1 to 512, got 0"),
    (["--max-tokens", "-1"], "--max-tokens must be an integer from 0 to 2147483647, got -1"),
    (["--max-tokens", "2147483648"], "--max-tokens must be an integer from 0 to 2147483647, got 2147483648"),
    (["--seed", "-1"], "--seed must be an integer from 0 to 18446744073709551615, got -1"),
    (["--seed", str(2**64)], f"--seed must be an integer from 0 to 18446744073709551615, got {2**64}"),
])
@pytest.mark.parametrize("cmd", ["run", "chat"])
def test_integer_options_that_reach_c_are_range_checked(setup, cmd, args, msg):
    model, *_ = setup
    argv = [cmd, str(model)] + ([PROMPT] if cmd == "run" else []) + args
    res = CliRunner().invoke(_main_app(), argv, input="Hello\n")
    assert res.exit_code == 2 and res.stderr.strip() == f"error: {msg}", res.output
