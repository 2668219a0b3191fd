"""``cmdv keys new|trust``, ``cmdv sign`` and ``cmdv verify``: ed25519-signed behavior packs.

The main CLI (``exporter/cli/main.py``) adds :data:`keys_app` as ``keys`` and registers :func:`sign_cmd` and
:func:`verify_cmd`; see :mod:`commandv.runtime.pack.signing`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional

import typer

from commandv.runtime.cli.errors import say, user_errors

keys_app = typer.Typer(help="Pack-signing keys (ed25519).", no_args_is_help=True)


@keys_app.command("new")
@user_errors
def keys_new(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for the key pair "
                                       "(default: $COMMANDV_HOME/keys)"),
    name: str = typer.Option("signing", help="file stem: NAME.key (private, 0600) and NAME.pub"),
    overwrite: bool = typer.Option(False, help="replace an existing key pair of that name"),
) -> None:
    """Generate an ed25519 key pair for signing packs."""
    from commandv.runtime.pack.signing import generate_keypair

    priv, pub, kid = generate_keypair(out, name=name, overwrite=overwrite)
    say(f"key id {kid}", f"private key: {priv} (keep it secret)", f"public key:  {pub} (give it to users)")


@keys_app.command("trust")
@user_errors
def keys_trust(pub: Path = typer.Argument(..., help="public key file (.pub) to trust by default")) -> None:
    """Copy a public key into the default trusted-keys folder."""
    from commandv.runtime.pack.signing import default_trusted_dir, key_id, load_public_key

    kid = key_id(load_public_key(pub))
    dest = default_trusted_dir() / f"{kid}.pub"
    dest.parent.mkdir(parents=True, exist_ok=True)
    from commandv.runtime.atomic import atomic_path

    with atomic_path(dest) as tmp:
        shutil.copyfile(pub, tmp)
    say(f"trusting key {kid}: {dest}")


@user_errors
def sign_cmd(
    pack: Path = typer.Argument(..., help="behavior pack file"),
    key: Path = typer.Option(..., "--key", "-k", help="private key file (from `cmdv keys new`)"),
) -> None:
    """Sign a (valid) pack: writes PACK.sig beside it."""
    from commandv.runtime.pack.signing import key_id, load_private_key, sign_pack

    sig = sign_pack(pack, key)
    say(f"signed {pack} with key {key_id(load_private_key(key).public_key())}: {sig}")


@user_errors
def verify_cmd(
    pack: Path = typer.Argument(..., help="behavior pack file"),
    trusted: Optional[List[Path]] = typer.Option(None, "--trusted", "-t",
                                                 help="trusted public key file or folder of *.pub (repeatable; "
                                                      "default: $COMMANDV_HOME/trusted_keys)"),
) -> None:
    """Check PACK.sig against trusted keys, then validate the pack."""
    from commandv.runtime.pack.signing import default_trusted_keys, load_pack_checked, load_trusted, verify_pack

    keys_ = load_trusted(trusted) if trusted else default_trusted_keys()
    kid = verify_pack(pack, keys_)
    p = load_pack_checked(pack, "require", keys_)
    say(f"OK: {pack} is signed by trusted key {kid}", p.summary())
