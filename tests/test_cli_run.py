"""``cmdv run`` / ``cmdv chat`` on the tiny GGUF through typer's CliRunner."""

from __future__ import annotations

import functools

import pytest
import typer
from typer.testing import CliRunner

pytest.importorskip("llama_cpp")

from commandv.runtime.cli_run import register  # noqa: E402
from commandv.runtime.llama_engine import Recipient  # noqa: E402
from tests.test_llama_parity import random_pack  # noqa: E402

pytestmark = pytest.mark.llama
PROMPT = "Tell me something nice about rivers."


def _user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        try:
            return fn(*a, **k)
        except (ValueError, RuntimeError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    register(a, _user_errors)
    return a


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
    assert res.stdout == want + "\n"
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
    assert res.stdout == reply + "\n"
    assert res.stderr.count("you>") == 4


def test_main_cli_has_run_and_chat():
    pytest.importorskip("commandv.exporter.cli")
    from commandv.exporter.cli import app as main_app

    res = CliRunner().invoke(main_app, ["run", "--help"])
    assert res.exit_code == 0 and "--compare" in res.stdout
    assert CliRunner().invoke(main_app, ["chat", "--help"]).exit_code == 0


def test_names_and_outputs_are_never_markup(app, setup, tmp_path, monkeypatch):
    """A pack named like rich markup, and model output with brackets, print as they are (no MarkupError,
    nothing swallowed) in the status lines and in --compare's table."""
    from commandv.runtime.llama_engine import Recipient
    from commandv.runtime.pack import BehaviorPack

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
