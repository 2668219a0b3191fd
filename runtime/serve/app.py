"""The ``cmdv serve`` web app: OpenAI-compatible endpoints over a :class:`Server` (model, slots, packs).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both stream with ``"stream": true``, as
server-sent events ending in ``data: [DONE]``), ``GET /v1/models`` (the model and ``MODEL+PACK`` for every
pack that loaded), ``GET /health``, ``GET /metrics`` (Prometheus text). Errors are OpenAI-shaped JSON
(:class:`~.openai_api.APIError`): 400 / 404 for the client's mistakes, 429 when the queue is full, 504 at the
request timeout, 500 only for the server's own faults.

Call as::

    server = Server(ServeConfig(model="smollm2-135m-instruct", packs=Path("packs")))
    app = create_app(server)          # then uvicorn.run(app, host=..., port=...)
"""

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from commandv.runtime.pack.policy import PackPolicy, ReferenceStates
from commandv.runtime.serve import ServeError, need
from commandv.runtime.serve.metrics import Metrics
from commandv.runtime.serve.openai_api import (
    APIError,
    bad,
    chunk_body,
    completion_body,
    error_from,
    generate,
    parse_request,
)
from commandv.runtime.serve.pack_dir import PackDir, PackRecord
from commandv.runtime.serve.slots import SlotPool, open_slots
from commandv.runtime.terminal import safe_text

MAX_BODY = 4 << 20


def _log(line: str) -> None:
    sys.stderr.write(safe_text(line) + "\n")
    sys.stderr.flush()


@dataclass
class ServeConfig:
    """What one server (or one Ray replica) runs. ``packs``: the pack folder (None: no packs); ``index`` and
    ``pull``: an index URL / file to install packs from into ``packs`` at start (``pull`` empty = every pack of
    the index made for this model); ``model_id``: the name clients use (default: zoo key or file stem)."""

    model: str
    packs: Path | None = None
    slots: int = 1
    threads: int | None = None
    n_ctx: int = 4096
    max_queue: int = 16
    timeout: float = 300.0
    signatures: str | None = None
    trusted: tuple = ()
    max_delta_norm: float | None = None
    force: bool = False
    model_id: str | None = None
    index: str | None = None
    pull: tuple = ()
    log: Callable[[str], None] = field(default=_log, repr=False)

    def policy(self) -> PackPolicy:
        return PackPolicy.from_env(signatures=self.signatures, trusted=tuple(self.trusted) or None,
                                   max_delta_norm=self.max_delta_norm)


def default_model_id(model: str) -> str:
    """The id clients use for ``model``: the zoo key, else the file name without ``.gguf``; ``+`` (the pack
    separator) becomes ``-``."""
    name = Path(str(model)).name
    return (name[:-5] if name.endswith(".gguf") else name).replace("+", "-") or "model"


class Server:
    """A loaded model with its slots, pack folder and counters: what the endpoints serve."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.policy = cfg.policy()
        self.model_id = cfg.model_id or default_model_id(cfg.model)
        if "+" in self.model_id or not self.model_id:
            raise ServeError(f"model id {self.model_id!r} must be non-empty and hold no '+'")
        self.slots = open_slots(cfg.model, n=cfg.slots, n_threads=cfg.threads, n_ctx=cfg.n_ctx, policy=self.policy,
                                force=cfg.force)
        first = self.slots[0]
        self.first = first
        self.n_ctx = first.n_ctx
        # the load-time size check has its own measurement cache (requests measure in their slot)
        self._ref = ReferenceStates(first._reference.prompts) if first._reference is not None else None
        if cfg.index and cfg.packs is not None:
            self._pull(cfg.index, list(cfg.pull))
        self.pack_dir = PackDir(cfg.packs, self._load_pack, on_change=self._pack_log) if cfg.packs else None
        if self.pack_dir is not None:
            self.pack_dir.scan(force=True)
        self.metrics = Metrics()
        self.pool = SlotPool(self.slots, max_queue=cfg.max_queue)
        self.created = int(time.time())

    def _pull(self, index: str, names: list[str]) -> None:
        from commandv.runtime.pack.index import PullError, load_index, pull

        idx = load_index(index)
        names = names or [e["name"] for e in idx.entries if e["recipient"].get("fingerprint") == self.first.fingerprint]
        for name in names:
            try:
                path = pull(index, name, store=self.cfg.packs, policy=self.policy, index=idx)
                self.cfg.log(f"pulled pack {name} into {path}")
            except (PullError, ValueError) as exc:
                self.cfg.log(f"pack {name}: not pulled: {exc}")

    def _load_pack(self, path: Path):
        pack = self.first.load_packs([path])[0]
        if self._ref is not None:
            self.policy.check_size([pack], [1.0], lambda: self._ref)
        return pack

    def _pack_log(self, rec: PackRecord) -> None:
        for w in rec.warnings:
            self.cfg.log(f"warning: {w}")
        self.cfg.log(f"pack {rec.name}: " + ("loaded" if rec.ok else f"refused: {rec.error}"))

    def model_ids(self) -> list[str]:
        """The model and ``MODEL+PACK`` for every pack that loaded."""
        packs = self.pack_dir.loaded() if self.pack_dir is not None else []
        return [self.model_id] + [f"{self.model_id}+{r.name}" for r in packs]

    def gauges(self) -> dict:
        recs = self.pack_dir.scan().values() if self.pack_dir is not None else []
        return {"queue_depth": self.pool.waiting, "slots_busy": self.pool.running, "slots": self.pool.n_slots,
                "packs_loaded": sum(r.ok for r in recs), "packs_refused": sum(not r.ok for r in recs)}

    def close(self) -> None:
        self.pool.close()


def _error_response(err: APIError):
    from starlette.responses import JSONResponse

    return JSONResponse(err.body(), status_code=err.status)


async def _json_body(request) -> object:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY:
        raise APIError(413, f"request body larger than {MAX_BODY} bytes")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise APIError(413, f"request body larger than {MAX_BODY} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"the request body is not JSON ({type(exc).__name__})") from None


def create_app(server: Server):
    """The FastAPI app serving ``server`` (the caller closes ``server`` when the app stops). Raises
    :class:`~.ServeError` when FastAPI / sse-starlette are not installed. (No ``from __future__ import
    annotations`` in this module: FastAPI reads the endpoints' annotations at definition time.)"""
    fastapi = need("fastapi", "fastapi")
    need("sse_starlette", "sse-starlette")
    from sse_starlette.sse import EventSourceResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import JSONResponse, PlainTextResponse

    app = fastapi.FastAPI(title="cmdv serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    m = server.metrics

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        m.request(request.url.path, exc.status)
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                        code=code))

    @app.exception_handler(Exception)
    async def _crash(request, exc):
        server.cfg.log(f"error serving {request.url.path}: {type(exc).__name__}: {exc}")
        err = error_from(exc)
        m.request(request.url.path, err.status)
        return _error_response(err)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": server.model_id, "slots": server.pool.n_slots,
                "busy": server.pool.running, "queued": server.pool.waiting, "pid": os.getpid()}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(m.render(**server.gauges()), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        data = [{"id": i, "object": "model", "created": server.created, "owned_by": "commandv"}
                for i in server.model_ids()]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id not in server.model_ids():
            raise APIError(404, f"model {model_id[:120]!r} does not exist", param="model", code="model_not_found")
        return {"id": model_id, "object": "model", "created": server.created, "owned_by": "commandv"}

    async def run(request, kind: str, endpoint: str):
        t0 = time.perf_counter()
        req = parse_request(await _json_body(request), kind, server.model_id, server.pack_dir, server.n_ctx)
        names = [p.name for p in req.packs]
        if not req.stream:
            fut, job = server.pool.submit(lambda rec, job: generate(rec, req, job), server.cfg.timeout)
            try:
                o = await asyncio.wrap_future(fut)
            except asyncio.CancelledError:
                job.cancel.set()
                raise
            except Exception as exc:
                raise error_from(exc) from None
            m.request(endpoint, 200, names, o.n_prompt, o.n_generated, o.prompt_s, o.decode_s,
                      time.perf_counter() - t0)
            return JSONResponse(completion_body(req, o))

        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def put(ev) -> None:
            loop.call_soon_threadsafe(q.put_nowait, ev)

        fut, job = server.pool.submit(
            lambda rec, job: generate(rec, req, job, emit=lambda p: put(("piece", p)),
                                      started=lambda: put(("start", None))), server.cfg.timeout)
        fut.add_done_callback(lambda f: put(("done", f)))
        try:
            first = await q.get()
        except asyncio.CancelledError:
            job.cancel.set()
            raise
        if first[0] == "done" and first[1].exception() is not None:  # refused before the first token
            raise error_from(first[1].exception())

        async def events():
            status = 499  # the client went away
            try:
                if req.kind == "chat":
                    yield json.dumps(chunk_body(req, first=True))
                ev = first
                while True:
                    if ev[0] == "piece":
                        yield json.dumps(chunk_body(req, piece=ev[1]))
                    elif ev[0] == "done":
                        exc = ev[1].exception()
                        if exc is not None:
                            err = error_from(exc)
                            status = err.status
                            yield json.dumps(err.body())
                            break
                        o = ev[1].result()
                        yield json.dumps(chunk_body(req, finish=o.finish))
                        if req.include_usage:
                            yield json.dumps(chunk_body(req, outcome=o))
                        status = 200
                        m.request(endpoint, 200, names, o.n_prompt, o.n_generated, o.prompt_s, o.decode_s,
                                  time.perf_counter() - t0)
                        break
                    ev = await q.get()
                yield "[DONE]"
            finally:
                job.cancel.set()  # stops the slot at its next token when the client disconnected
                if status != 200:
                    m.request(endpoint, status, names)

        return EventSourceResponse(events(), sep="\n", ping=15)

    @app.post("/v1/chat/completions")
    async def chat(request: fastapi.Request):
        return await run(request, "chat", "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: fastapi.Request):
        return await run(request, "completion", "/v1/completions")

    return app
