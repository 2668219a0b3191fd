"""``cmdv packs index|pull|list|rm``: pack distribution through an index, and the local pack store
(:mod:`commandv.runtime.pack.index`).

The main CLI (``exporter/cli/main.py``) adds :data:`packs_app` as ``packs``.
"""

from pathlib import Path
from typing import Optional

import typer

from commandv.runtime.cli.errors import say, user_errors
from commandv.runtime.cli.options import SignaturesOption, TrustedOption

_STORE_HELP = "pack store folder [default: $COMMANDV_HOME/packs]"


packs_app = typer.Typer(help="Pack distribution: index a folder, pull from an index, the local pack store.",
                        no_args_is_help=True)


@packs_app.command("index")
@user_errors
def index_cmd(
    folder: Path = typer.Argument(..., help="folder of pack files (NAME.pack.gguf, with NAME.pack.gguf.sig)"),
    out: Path = typer.Option(..., "--out", "-o", help="index file to write (URLs are relative to it)"),
) -> None:
    """Write an index of FOLDER's packs: name, recipient, sha256, size, signer, created-by, URL."""
    from commandv.runtime.pack.index import build_index

    doc = build_index(folder, out)
    say(f"indexed {len(doc['packs'])} packs: {out}")


@packs_app.command("pull")
@user_errors
def pull_cmd(
    index: str = typer.Argument(..., help="index URL (http://, https://, file://) or file"),
    name: str = typer.Argument(..., help="pack name in the index"),
    store: Optional[Path] = typer.Option(None, "--store", help=_STORE_HELP),
    signatures: SignaturesOption = None,
    trusted: TrustedOption = None,
) -> None:
    """Download pack NAME, check size, sha256 and signature, install it into the store atomically
    (an interrupted download resumes on the next pull)."""
    from commandv.runtime.cli.run import _policy
    from commandv.runtime.pack.index import pull

    path = pull(index, name, store=store, policy=_policy(signatures, trusted, None))
    say(f"installed {name}: {path}")


@packs_app.command("list")
@user_errors
def list_cmd(store: Optional[Path] = typer.Option(None, "--store", help=_STORE_HELP)) -> None:
    """The packs in the store: name, size, sha256, recipient, signer."""
    from commandv.runtime.cli.models import human_size
    from commandv.runtime.pack.index import default_store, list_store

    rows = list_store(store)
    if not rows:
        say(f"no packs in {store or default_store()}")
    for r in rows:
        if r["error"]:
            say(f"{r['name']}  unreadable: {r['error']}")
            continue
        say(f"{r['name']}  {human_size(r['size'])}  sha256 {r['sha256'][:16]}…  for {r['recipient']}  "
             f"signer {r['signer'] or 'none (unsigned)'}")


@packs_app.command("rm")
@user_errors
def rm_cmd(
    name: str = typer.Argument(..., help="pack name"),
    store: Optional[Path] = typer.Option(None, "--store", help=_STORE_HELP),
) -> None:
    """Remove pack NAME (and its signature) from the store."""
    from commandv.runtime.pack.index import remove

    for p in remove(name, store):
        say(f"removed {p}")
