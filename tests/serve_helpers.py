"""Starting HTTP servers as subprocesses on free ports, for the serve tests and benchmarks/serve.py.

    proc, url = start_server(["serve", "smollm2-135m-instruct", "--packs", str(folder)])   # cmdv ARGS
    ...
    stop(proc)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CMDV = [sys.executable, "-c", "import sys; from commandv.exporter.cli.main import main; sys.exit(main())"]


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0, path: str = "/health") -> None:
    """Poll ``url + path`` until it answers 200; RuntimeError with the server's log tail when the process
    exits or ``timeout`` seconds pass."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log_tail(proc)}")
        try:
            with urllib.request.urlopen(url + path, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    stop(proc)
    raise RuntimeError(f"server not ready after {timeout:.0f} s: {log_tail(proc)}")


def log_tail(proc: subprocess.Popen, n: int = 3000) -> str:
    """The last ``n`` characters of the server's combined output (kept in a temp file)."""
    try:
        return Path(proc.log_path).read_text(errors="replace")[-n:]  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return ""


def start_process(argv: list[str], port: int, env: dict | None = None, timeout: float = 180.0,
                  path: str = "/health") -> tuple[subprocess.Popen, str]:
    """Run ``argv`` (a server listening on ``port``) and wait until ``path`` answers; returns the process and
    ``http://127.0.0.1:PORT``. Its output goes to a temp file (:func:`log_tail`)."""
    log = tempfile.NamedTemporaryFile(prefix="server-", suffix=".log", delete=False)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            start_new_session=True)
    proc.log_path = log.name  # type: ignore[attr-defined]
    log.close()
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, timeout, path)
    return proc, url


def start_server(args: list[str], env: dict | None = None, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """``cmdv ARGS --port <free>`` as a subprocess, ready; returns the process and its base URL."""
    port = free_port()
    return start_process(CMDV + list(args) + ["--port", str(port)], port, env, timeout)


def replica_pids(url: str, want: int = 2, seconds: float = 120.0) -> set[int]:
    """The process ids that answer ``url``'s ``/health``, asked 8 at a time until ``want`` of them are seen or
    ``seconds`` pass (a router may send a short burst of sequential requests to one idle replica, or a replica may
    still be warming up)."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    def pid(_) -> int:
        return json.loads(urllib.request.urlopen(url + "/health", timeout=30).read())["pid"]

    pids: set[int] = set()
    deadline = time.monotonic() + seconds
    with ThreadPoolExecutor(8) as pool:
        while len(pids) < want and time.monotonic() < deadline:
            pids |= set(pool.map(pid, range(8)))
    return pids


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Interrupt the server (its process group), then kill it if it does not exit in ``timeout`` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)


class PackHTTPServer:
    """A local HTTP server (thread) serving the files of ``root``, honest or lying, for the pull tests.

    ``mode`` (settable between requests): ``honest`` (answers ``Range`` with 206), ``ignore_range`` (always
    the whole file, 200), ``extra`` (the file plus junk bytes, Content-Length agreeing), ``lying_length``
    (Content-Length promises 1000 bytes more than it sends), ``short_length`` (Content-Length 100 bytes less than
    the file, which it sends whole), ``truncate`` (half the file, then the connection
    closes), ``swap`` (the bytes of ``swaps[path]`` instead of the file). ``ranges`` records the ``Range``
    headers received (pack and signature requests). ``.json`` files are always served honestly. Use as a context manager; ``url`` is ``http://127.0.0.1:PORT/``."""

    def __init__(self, root: Path):
        import http.server
        import threading

        self.root, self.mode, self.ranges, self.swaps = Path(root), "honest", [], {}
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = owner.root / self.path.lstrip("/").split("?")[0]
                if not path.is_file():
                    self.send_error(404)
                    return
                mode = "honest" if path.suffix == ".json" else owner.mode  # the index itself is served as is
                data = owner.swaps.get(path.name, path.read_bytes()) if mode == "swap" else path.read_bytes()
                rng = self.headers.get("Range")
                owner.ranges.append(rng)
                start = int(rng[6:].split("-")[0]) if rng and mode == "honest" else 0
                body, length = data[start:], len(data) - start
                if mode == "extra":
                    body += b"\0" * 4096
                    length = len(body)
                elif mode == "lying_length":
                    length += 1000
                elif mode == "short_length":
                    length -= 100
                elif mode == "truncate":
                    body = body[: len(body) // 2]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "PackHTTPServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _edit_index(site: Path, change) -> None:
    import json

    doc = json.loads((site / "index.json").read_text())
    change(doc["packs"][0])
    (site / "index.json").write_text(json.dumps(doc))


def tamper_cases(root: Path) -> dict[str, str | None]:
    """Pull a signed pack through :class:`PackHTTPServer` in every hostile way the pack store must refuse:
    ``{case: the refusal's message, or None when the pack was installed (a failure)}``. Each case pulls into
    a fresh store and also fails (message ``"store touched: …"``) when any pack or signature file lands there.
    Cases: the server sends extra bytes, a Content-Length below the real size, truncates, swaps the file or
    the signature; the index lies about size, sha256, recipient or points at another URL scheme or a path-like
    name; the pack is unsigned, or signed by a key that is not trusted."""
    from commandv.runtime.pack.index import build_index, pull
    from commandv.runtime.pack.policy import PackPolicy
    from commandv.runtime.pack.signing import generate_keypair, sign_pack, signature_path
    from tests.make_bad_corpus import base_pack

    root = Path(root)
    key, pub, _ = generate_keypair(root / "keys", name="good")
    _, other_pub, _ = generate_keypair(root / "keys", name="other")
    site = root / "site"
    site.mkdir()
    pack_path = base_pack().save(site / "p.pack.gguf")
    sign_pack(pack_path, key)
    data = pack_path.read_bytes()
    swapped = bytearray(data)
    swapped[-5] ^= 0x01  # same size, one bit of tensor data
    build_index(site, site / "index.json")
    original_index = (site / "index.json").read_text()

    def lie(field, value):
        return lambda e: e.__setitem__(field, value)

    cases = {  # name: (server mode, change to the index entry, trusted key)
        "server_sends_extra_bytes": ("extra", None, pub),
        "server_content_length_too_small": ("short_length", None, pub),
        "server_truncates": ("truncate", None, pub),
        "server_swaps_file": ("swap", None, pub),
        "server_swaps_signature": ("swap_sig", None, pub),
        "index_lies_about_size": ("honest", lambda e: e.__setitem__("size", e["size"] - 16), pub),
        "index_lies_about_sha256": ("honest", lie("sha256", "0" * 64), pub),
        "index_lies_about_recipient": ("honest", lambda e: e["recipient"].__setitem__("fingerprint", "f" * 64), pub),
        "index_points_at_other_scheme": ("honest", lie("url", pack_path.resolve().as_uri()), pub),
        "index_path_like_name": ("honest", lie("name", "../p"), pub),
        "unsigned_pack": ("honest", lie("signature", None), pub),
        "untrusted_signer": ("honest", None, other_pub),
    }
    out: dict[str, str | None] = {}
    with PackHTTPServer(site) as srv:
        for k, (case, (mode, change, trusted)) in enumerate(cases.items()):
            (site / "index.json").write_text(original_index)
            if change is not None:
                _edit_index(site, change)
            srv.mode = "swap" if mode == "swap_sig" else mode
            srv.swaps = {"p.pack.gguf": bytes(swapped)} if mode == "swap" else {}
            if mode == "swap_sig":
                srv.swaps = {"p.pack.gguf.sig": signature_path(pack_path).read_bytes() + b" ", "p.pack.gguf": data}
            store = root / f"store{k}"
            name = "../p" if case == "index_path_like_name" else "p"
            try:
                pull(srv.url + "index.json", name, store=store,
                     policy=PackPolicy(signatures="require", trusted=(trusted,)))
                out[case] = None
            except ValueError as exc:  # PullError, SignatureError, PackError
                out[case] = str(exc)
            landed = [p.name for p in store.glob("*") if not p.name.startswith(".")] if store.is_dir() else []
            if landed:
                out[case] = f"store touched: {landed}"
    return out
