"""``cmdv serve``: an OpenAI-compatible HTTP server applying behavior packs per request (:mod:`.serve`).

The main CLI (``exporter/cli/main.py``) registers :func:`serve_cmd`. FastAPI, uvicorn, sse-starlette (and Ray for
``--ray``) are imported when the command runs; a missing one is reported as one line naming the pip package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from commandv.runtime.cli.errors import user_errors
from commandv.runtime.cli.options import MaxDeltaOption, SignaturesOption, TrustedOption
from commandv.runtime.cli.run import check_int_options


def default_slots() -> int:
    """Two slots on a machine with two cores or more, else one."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


@user_errors
def serve_cmd(
    model: str = typer.Argument(..., help="zoo key or .gguf file"),
    packs: Optional[Path] = typer.Option(None, "--packs", help="pack folder served (NAME.pack.gguf → pack "
                                         "NAME; new files are picked up without restart) [default: the pack "
                                         "store, $COMMANDV_HOME/packs]"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="TCP port"),
    slots: Optional[int] = typer.Option(None, "--slots", help="requests generated at once (llama.cpp contexts "
                                        "sharing the model) [default: 2 with 2+ cores, else 1]"),
    threads: Optional[int] = typer.Option(None, help="CPU threads per slot (default: cores / slots)"),
    n_ctx: int = typer.Option(4096, "--ctx", help="context size of each slot, in tokens"),
    queue: int = typer.Option(16, "--queue", help="requests waiting for a slot before 429"),
    timeout: float = typer.Option(300.0, "--timeout", help="seconds a request may take, waiting included"),
    name: Optional[str] = typer.Option(None, "--name", help="model id clients use (default: zoo key / file stem)"),
    index: Optional[str] = typer.Option(None, "--index", help="pack index URL or file: pull packs from it into "
                                        "the pack folder at start"),
    pull: Optional[List[str]] = typer.Option(None, "--pull", help="with --index: pack to pull (repeatable; "
                                             "default: every pack in the index made for this model)"),
    signatures: SignaturesOption = None,
    trusted: TrustedOption = None,
    max_delta_norm: MaxDeltaOption = None,
    force: bool = typer.Option(False, "--force", help="serve packs made for another file of the same shape"),
    ray: bool = typer.Option(False, "--ray", help="run as a Ray Serve deployment (local Ray cluster, or "
                             "RAY_ADDRESS)"),
    replicas: int = typer.Option(2, "--replicas", help="with --ray: replicas, each one model with its slots"),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level (info logs each request)"),
) -> None:
    """Serve MODEL at /v1/chat/completions, /v1/completions, /v1/models, /health and /metrics; a request
    picks packs with the model name MODEL+pack1+pack2@strength or the body field "packs"."""
    from commandv.runtime.pack.index import default_store
    from commandv.runtime.serve import ServeError
    from commandv.runtime.serve.app import ServeConfig

    n_slots = slots if slots is not None else default_slots()
    check_int_options(ctx=n_ctx, threads=threads)
    if not 1 <= n_slots <= 256 or not 0 <= queue <= 1 << 20 or not 0 < port < 65536 or not timeout > 0:
        raise ServeError("--slots must be 1..256, --queue >= 0, --port 1..65535 and --timeout > 0")
    cfg = ServeConfig(model=model, packs=packs if packs is not None else default_store(), slots=n_slots,
                      threads=threads, n_ctx=n_ctx, max_queue=queue, timeout=timeout, signatures=signatures,
                      trusted=tuple(trusted or ()), max_delta_norm=max_delta_norm, force=force, model_id=name,
                      index=index, pull=tuple(pull or ()))
    cfg.policy()  # a bad policy option fails here, before any model loads
    if ray:
        from commandv.runtime.serve.ray_app import run

        run(cfg, replicas=replicas, host=host, port=port, address=os.environ.get("RAY_ADDRESS"))
        return
    _serve_here(cfg, host, port, log_level)


def _serve_here(cfg, host: str, port: int, log_level: str) -> None:
    """Load the model, build the app and run uvicorn until interrupted; the slots are freed at the end."""
    from commandv.runtime.serve import need
    from commandv.runtime.serve.app import Server, create_app
    from commandv.runtime.serve.slots import slot_threads

    uvicorn = need("uvicorn", "uvicorn")
    server = Server(cfg)
    try:
        app = create_app(server)
        g = server.gauges()
        threads = slot_threads(cfg.slots, cfg.threads)
        cfg.log(f"serving {server.model_id} at http://{host}:{port}/v1 ({cfg.slots} slots × {threads} threads, "
                f"queue {cfg.max_queue}); packs from {cfg.packs}: {g['packs_loaded']} loaded, "
                f"{g['packs_refused']} refused")
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        server.close()
