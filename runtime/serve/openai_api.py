"""The OpenAI API surface of ``cmdv serve`` without a web framework: request parsing, errors, responses.

Packs are chosen per request in two ways, combined in this order:

* the model name ``MODEL+pack1+pack2@0.5`` (``@strength`` optional, default 1), so an unmodified client can
  pick packs;
* an extra body field ``"packs": [{"name": "pack1", "strength": 1.5}, "pack2"]``.

Every user mistake is an :class:`APIError` with an HTTP status (400 bad body / strength / refused pack, 404
unknown model or pack) and the OpenAI error shape ``{"error": {"message", "type", "param", "code"}}``; its
message is one line. Request text and pack names never reach the file system: names are looked up in the
served :class:`~.pack_dir.PackDir` only.

Call as::

    req = parse_request(body, "chat", model_id, pack_dir)     # APIError on a bad request
    text, stats = generate(slot, req, job, emit=None)          # in a slot thread
    body = completion_body(req, text, stats)
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from commandv.runtime.errors import CommandVError
from commandv.runtime.serve.pack_dir import PACK_NAME, PackDir, UnknownPackError
from commandv.runtime.terminal import safe_text

DEFAULT_MAX_TOKENS = 512
MAX_STOPS = 4
FINISH = {"eog": "stop", "stop": "stop", "length": "length", "context": "length", "": "length"}


class APIError(CommandVError):
    """A request the server refuses: HTTP ``status``, one-line ``message``, OpenAI ``type`` / ``code`` /
    ``param``. :meth:`body` is the JSON to send."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.type, self.code, self.param = int(status), type, code, param
        self.message = " ".join(safe_text(message, multiline=True).split())[:2000]

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 :class:`APIError` (``invalid_request_error``)."""
    return APIError(400, message, param=param, code=code)


@dataclass
class PackUse:
    """One pack of a request: its served ``name``, the loaded pack and the strength asked for."""

    name: str
    pack: object
    strength: float


@dataclass
class GenRequest:
    """A parsed ``/v1/chat/completions`` (``messages``) or ``/v1/completions`` (``prompt``) request."""

    kind: str  # 'chat' | 'completion'
    model: str  # as the client named it (echoed in responses)
    messages: list | None = None
    prompt: str | None = None
    packs: list[PackUse] = field(default_factory=list)
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


def _number(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v > hi \
            or v < lo or (lo_open and v == lo):
        side = "(" if lo_open else "["
        raise bad(f"{key} must be a number in {side}{lo:g}, {hi:g}], got {safe_text(v)[:40]}", key)
    return float(v)


def _int(body: dict, key: str, default, lo: int, hi: int):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise bad(f"{key} must be an integer from {lo} to {hi}, got {safe_text(v)[:40]}", key)
    return int(v)


def parse_strength(value, where: str) -> float:
    """A pack strength from a request: a finite JSON number (or, in a model name, its text); else a 400."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise bad(f"{where}: strength {value[:40]!r} is not a number", code="bad_strength") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"{where}: strength must be a finite number, got {safe_text(value)[:40]}", "packs", "bad_strength")
    return float(value)


def split_model(model, model_id: str) -> list[tuple[str, float]]:
    """``MODEL+pack1+pack2@0.5`` → ``[("pack1", 1.0), ("pack2", 0.5)]``; 404 when MODEL is not ``model_id``."""
    if not isinstance(model, str) or not model:
        raise bad("model must be a non-empty string", "model")
    base, *specs = model.split("+")
    if base != model_id:
        raise APIError(404, f"model {safe_text(base)[:80]!r} does not exist; this server runs {model_id!r} "
                       f"(add +PACK to apply a pack)", param="model", code="model_not_found")
    out = []
    for spec in specs:
        name, _, s = spec.partition("@")
        out.append((name, parse_strength(s, f"model name pack {safe_text(name)[:64]!r}") if s else 1.0))
    return out


def _body_packs(raw) -> list[tuple[str, float]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad("packs must be a list of {\"name\": ..., \"strength\": ...} objects", "packs")
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise bad(f"packs[{i}] must be an object with a string \"name\"", "packs")
        extra = sorted(set(item) - {"name", "strength"})
        if extra:
            raise bad(f"packs[{i}] has unknown field {safe_text(extra[0])[:40]!r} (known: name, strength)", "packs")
        s = item.get("strength", 1.0)
        out.append((item["name"], parse_strength(s, f"packs[{i}] ({safe_text(item['name'])[:64]!r})")))
    return out


def resolve_packs(specs: list[tuple[str, float]], pack_dir: PackDir | None) -> list[PackUse]:
    """The served packs named in ``specs``: 404 for a name the folder does not have, 400 for a pack the
    server refused at load (other recipient, signature policy, edit size) with that reason."""
    out = []
    for name, strength in specs:
        if not isinstance(name, str) or not PACK_NAME.match(name):
            raise APIError(404, f"pack {safe_text(name)[:80]!r} does not exist (pack names are letters, digits, "
                           "'.', '_' and '-')", param="packs", code="pack_not_found")
        if pack_dir is None:
            raise APIError(404, f"pack {name!r} does not exist: this server has no pack folder", param="packs",
                           code="pack_not_found")
        try:
            rec = pack_dir.get(name)
        except UnknownPackError as exc:
            raise APIError(404, str(exc), param="packs", code="pack_not_found") from None
        if not rec.ok:
            raise bad(f"pack {name!r} was refused: {rec.error}", "packs", "pack_refused")
        out.append(PackUse(name, rec.pack, strength))
    return out


def _content(msg: dict, i: int) -> str:
    c = msg.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts: only text ones
        parts = []
        for part in c:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"messages[{i}].content: only text parts are supported", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise bad(f"messages[{i}].content must be a string or a list of text parts", "messages")


def _messages(raw) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise bad("messages must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad(f"messages[{i}] must be an object with a string role", "messages")
        out.append({"role": m["role"], "content": _content(m, i)})
    return out


def _prompt(raw) -> str:
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
        raw = raw[0]
    if not isinstance(raw, str):
        raise bad("prompt must be a string (one prompt per request)", "prompt")
    return raw


def _stops(raw) -> list[str]:
    if raw is None:
        return []
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise bad(f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
    return stops


def parse_request(body, kind: str, model_id: str, pack_dir: PackDir | None, n_ctx: int) -> GenRequest:
    """Check a request body (already JSON-decoded) of ``kind`` ``'chat'`` or ``'completion'`` and pick its
    packs; returns a :class:`GenRequest` or raises :class:`APIError`. Fields clients send that do not change
    the output here (``user``, ``presence_penalty`` …) are ignored; ``n`` other than 1 and ``logprobs`` are
    refused."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    specs = split_model(body.get("model"), model_id) + _body_packs(body.get("packs"))
    req = GenRequest(kind=kind, model=body["model"])
    if kind == "chat":
        req.messages = _messages(body.get("messages"))
    else:
        req.prompt = _prompt(body.get("prompt"))
    _int(body, "n", 1, 1, 1)  # one choice per request
    if body.get("logprobs") not in (None, False, 0):
        raise bad("logprobs are not supported", "logprobs")
    mt = body.get("max_completion_tokens") if body.get("max_tokens") is None else body.get("max_tokens")
    req.max_tokens = _int({"max_tokens": mt}, "max_tokens", min(DEFAULT_MAX_TOKENS, n_ctx), 0, n_ctx)
    req.temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    req.top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    req.seed = _int(body, "seed", None, 0, 2**63 - 1)
    req.stop = _stops(body.get("stop"))
    req.stream = bool(body.get("stream") or False)
    opts = body.get("stream_options")
    req.include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
    req.packs = resolve_packs(specs, pack_dir)
    return req


def error_from(exc: BaseException) -> APIError:
    """The :class:`APIError` for an exception raised while serving: the project's request / pack / sampling
    errors (the :class:`~commandv.runtime.errors.CommandVError` ones that are ``ValueError``, and a context
    overflow) → 400, a full queue → 429, a timeout → 504, anything else → 500 (its text is not shown: it is the
    server's fault, and the server logs it)."""
    from commandv.runtime.engines.llama.lowlevel import ContextOverflowError
    from commandv.runtime.serve.slots import QueueFullError, RequestTimeoutError

    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc), type="rate_limit_error", code="queue_full")
    if isinstance(exc, RequestTimeoutError):
        return APIError(504, str(exc), type="timeout_error", code="timeout")
    if isinstance(exc, UnknownPackError):
        return APIError(404, str(exc), param="packs", code="pack_not_found")
    if isinstance(exc, CommandVError) and isinstance(exc, (ValueError, ContextOverflowError)):
        return bad(str(exc), code=type(exc).__name__)
    return APIError(500, f"internal error ({type(exc).__name__}); see the server log", type="server_error",
                    code="internal_error")


@dataclass
class Outcome:
    """What a slot produced: the text, prompt / generated token counts, finish reason and phase seconds."""

    text: str
    n_prompt: int
    n_generated: int
    finish: str
    prompt_s: float
    decode_s: float


def generate(rec, req: GenRequest, job, emit: Callable[[str], None] | None = None,
             started: Callable[[], None] | None = None) -> Outcome:
    """Run ``req`` on the recipient ``rec`` (a slot) under ``job`` (checked between pieces: cancellation and
    deadline); ``started()`` is called once the prompt pass is done, ``emit(piece)`` with each text piece as it
    is made (streaming). Returns the :class:`Outcome`.

    Request errors (bad prompt, strength, edit size …) raise before ``started``."""
    kw = dict(packs=[p.pack for p in req.packs], strengths=[p.strength for p in req.packs] or None,
              max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
              stop=req.stop, stream=True)
    if req.kind == "chat":
        pieces = rec.chat(req.messages, **kw)
    else:
        pieces = rec.generate(req.prompt, template=False, **kw)
    if started is not None:
        started()
    out = []
    try:
        for piece in pieces:
            out.append(piece)
            if emit is not None:
                emit(piece)
            job.check()
    finally:
        pieces.close()
    st = rec.last_stats
    return Outcome("".join(out), st.n_prompt, st.n_generated, FINISH.get(st.finish, "length"),
                   st.prepare_s + st.prompt_s, st.decode_s)


def usage(o: Outcome) -> dict:
    return {"prompt_tokens": o.n_prompt, "completion_tokens": o.n_generated,
            "total_tokens": o.n_prompt + o.n_generated}


def completion_body(req: GenRequest, o: Outcome) -> dict:
    """The non-streamed response (``chat.completion`` or ``text_completion``)."""
    if req.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": o.text}, "logprobs": None,
                  "finish_reason": o.finish}
        return {"id": f"chatcmpl-{req.id}", "object": "chat.completion", "created": req.created, "model": req.model,
                "choices": [choice], "usage": usage(o)}
    return {"id": f"cmpl-{req.id}", "object": "text_completion", "created": req.created, "model": req.model,
            "choices": [{"index": 0, "text": o.text, "logprobs": None, "finish_reason": o.finish}], "usage": usage(o)}


def chunk_body(req: GenRequest, piece: str | None = None, finish: str | None = None, first: bool = False,
               outcome: Outcome | None = None) -> dict:
    """One streamed chunk: a text ``piece``, the ``first`` (role) chunk, the last one (``finish``), or with
    ``outcome`` the usage chunk (no choices) that ``stream_options.include_usage`` asks for."""
    if req.kind == "chat":
        base = {"id": f"chatcmpl-{req.id}", "object": "chat.completion.chunk", "created": req.created,
                "model": req.model}
        delta = {"role": "assistant", "content": ""} if first else ({"content": piece} if piece is not None else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        base = {"id": f"cmpl-{req.id}", "object": "text_completion", "created": req.created, "model": req.model}
        choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
    if outcome is not None:
        return {**base, "choices": [], "usage": usage(outcome)}
    return {**base, "choices": [choice]}
