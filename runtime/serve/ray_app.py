"""``cmdv serve --ray``: the same app as a Ray Serve deployment, one loaded model (with its slots) per replica.

Each replica builds its own :class:`~.app.Server` from the same :class:`~.app.ServeConfig` (so the same pack
folder and policy; with ``index`` set each replica pulls the packs from that index at start, the store's
atomic installs make concurrent pulls safe) and serves :func:`~.app.create_app` through Ray's HTTP proxy;
Ray routes each request to a replica. What this is not: no tensor or pipeline parallelism, no batching
across replicas, one CPU/GPU model per replica (see README, "Serve").

Entry points::

    app = build(cfg, replicas=2)                        # a bound deployment for serve.run
    run(cfg, replicas=2, host="127.0.0.1", port=8000)   # ray.init + serve.run + wait (the CLI)
"""

from __future__ import annotations

import os
import time

from commandv.runtime.serve import ServeError, need
from commandv.runtime.serve.app import ServeConfig


def build(cfg: ServeConfig, replicas: int = 2, num_cpus: float | None = None):
    """A bound Ray Serve deployment of ``cfg`` with ``replicas`` replicas (``serve.run(build(cfg))``).

    ``num_cpus``: CPUs Ray reserves per replica (default: the machine's cores shared among the replicas, at
    most 1). Raises :class:`~.ServeError` when Ray Serve is not installed."""
    serve = need("ray.serve", "ray[serve]")
    if int(replicas) < 1:
        raise ServeError(f"--replicas must be >= 1, got {replicas}")
    cpus = num_cpus if num_cpus is not None else max(0.1, min(1.0, (os.cpu_count() or 1) / int(replicas)))

    @serve.deployment(name="cmdv", num_replicas=int(replicas), ray_actor_options={"num_cpus": cpus},
                      max_ongoing_requests=cfg.slots + cfg.max_queue)
    @serve.ingress()
    class CmdvReplica:
        def __init__(self, config: ServeConfig):
            from commandv.runtime.serve.app import Server

            self.server = Server(config)

        def __serve_build_asgi_app__(self):
            from commandv.runtime.serve.app import create_app

            return create_app(self.server)

        def __del__(self):
            server = getattr(self, "server", None)
            if server is not None:
                server.close()

    return CmdvReplica.bind(cfg)


def run(cfg: ServeConfig, replicas: int = 2, host: str = "127.0.0.1", port: int = 8000,
        address: str | None = None) -> None:
    """Start (or join, with ``address``) a Ray cluster, deploy ``cfg`` on ``replicas`` replicas behind Ray's
    HTTP proxy at ``host:port`` and block until interrupted, then shut the deployment down."""
    ray = need("ray", "ray[serve]")
    serve = need("ray.serve", "ray[serve]")
    ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        serve.start(http_options={"host": host, "port": int(port)})
        serve.run(build(cfg, replicas), name="cmdv", route_prefix="/")
        cfg.log(f"ray serve: {replicas} replicas of {cfg.model} at http://{host}:{port}/v1")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
