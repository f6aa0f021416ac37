"""Pieces of the real-browser end-to-end tests.

Everything here runs outside the Twisted reactor: the tests are plain
synchronous pytest tests that drive Chromium through Playwright's sync API
(the benchmark through bare_chromium.py), so the Incoming!! server runs as a `twistd -n incoming` subprocess, and the
test backend and the TCP proxy are stdlib servers on threads.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FRONTEND_JS = REPO / "frontend" / "incoming.js"
LIBRARY_PATH = "/incoming/0.1/frontend/incoming.js"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]

MiB = 1 << 20
# True on the test page once incoming.js and the page's own script have run.
PAGE_LOADED = "typeof incoming === 'object' && typeof T === 'object'"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_test_file(path: Path, size: int) -> str:
    """Pseudo-random content whose repeats never line up with chunks; sha256."""
    block = os.urandom(min(size, 1048583))  # a prime number of bytes
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


# ---------------------------------------------------------------- server


class IncomingServer:
    """The installed `twistd -n incoming` on a free loopback port."""

    def __init__(self, workdir: Path, *args: str):
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = workdir / "storage"
        self.log_path = workdir / "twistd.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "incoming",
             "--port", f"tcp:{self.port}:interface=127.0.0.1",
             "--storage-dir", str(self.storage), *args],
            cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited:\n{self.log()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"twistd did not listen within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def backend_call(self, name: str, **params) -> tuple[int, str]:
        """POST form values to /incoming/0.1/backend/<name>; (status, body)."""
        request = urllib.request.Request(
            self.url(f"/incoming/0.1/backend/{name}"),
            data=urllib.parse.urlencode(params).encode(), method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def new_upload(self, backend: "Backend", **params) -> str:
        params.setdefault("signalFinishURL", backend.url("/handover"))
        status, body = self.backend_call("new_upload", **params)
        assert status == 200, (status, body)
        return body.strip()


# ---------------------------------------------------------------- backend


class _BackendHandler(BaseHTTPRequestHandler):
    server: "_BackendHTTPServer"

    def log_message(self, format, *args):  # quiet
        pass

    def _reply(self, status: int, body: bytes, content_type: str):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        backend = self.server.backend
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/page.html":
            server = query["server"][0]
            library = query["library"][0]
            body = backend.page_html(server, library).encode()
            self._reply(200, body, "text/html; charset=utf-8")
        else:
            self._reply(404, b"not found", "text/plain")

    def do_POST(self):
        backend = self.server.backend
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8")
        if urllib.parse.urlsplit(self.path).path != "/handover":
            self._reply(404, b"not found", "text/plain")
            return
        values = {k: v[0] for k, v in urllib.parse.parse_qs(body, keep_blank_values=True).items()}
        call = dict(values, received_at=time.time(), file_exists=None, sha256=None, size=None)
        if values.get("filename", "").startswith("s3://"):  # the test reads the object back
            call["sha256"] = values.get("sha256")
        elif values.get("filename"):
            path = values["filename"]
            call["file_exists"] = os.path.isfile(path)
            if call["file_exists"]:
                call["size"] = os.path.getsize(path)
                call["sha256"] = sha256_of(path)
        answer = backend.answer_for(values.get("id", ""))
        backend.record(call)
        self._reply(200, answer.encode(), "text/plain")


class _BackendHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Backend:
    """A web app backend in a thread: records handover POSTs (with the
    sha256 of the file as it is at handover time), answers `done` or, for
    tickets told so, `wait`; also serves the test page."""

    def __init__(self, tls: tuple[str, str] | None = None):
        """`tls`: (certificate, key) PEM files to serve https instead."""
        self._httpd = _BackendHTTPServer(("127.0.0.1", 0), _BackendHandler)
        self._httpd.backend = self
        self.port = self._httpd.server_address[1]
        self.scheme = "https" if tls else "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.calls: list[dict] = []
        self._answers: dict[str, str] = {}
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="test-backend")
        self._thread.start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def test_page(self, host: str) -> tuple[str, str]:
        """(URL of the test page, URL of the incoming.js it loads): the page
        loads the library from `host` and uploads there, as api.md tells
        web apps (over https when this backend serves https)."""
        library = f"{self.scheme}://{host}{LIBRARY_PATH}"
        query = urllib.parse.urlencode({"server": host, "library": library})
        return self.url(f"/page.html?{query}"), library

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()

    def answer(self, ticket: str, answer: str):
        with self._cond:
            self._answers[ticket] = answer

    def answer_for(self, ticket: str) -> str:
        with self._cond:
            return self._answers.get(ticket, "done")

    def record(self, call: dict):
        with self._cond:
            self.calls.append(call)
            self._cond.notify_all()

    def calls_for(self, ticket: str) -> list[dict]:
        with self._cond:
            return [c for c in self.calls if c.get("id") == ticket]

    def wait_for_call(self, ticket: str, timeout: float) -> dict:
        """The first handover POST for `ticket`, waiting up to `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                calls = [c for c in self.calls if c.get("id") == ticket]
                if calls:
                    return calls[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no handover POST for {ticket} within {timeout} s")
                self._cond.wait(left)

    @staticmethod
    def page_html(server: str, library: str) -> str:
        page = (Path(__file__).parent / "page.html").read_text(encoding="utf-8")
        return (page.replace("{{LIBRARY_URL}}", html.escape(library, quote=True))
                    .replace("{{SERVER_JSON}}", json.dumps(server)))


# ---------------------------------------------------------------- TCP proxy


class TcpProxy:
    """A userspace TCP proxy between the browser and the server.

    `kill()` stops listening and closes every connection (both sides);
    `restart()` listens again on the same port. `rate` (bytes per second,
    shared by all connections) throttles the browser -> server direction so
    that uploads last long enough to be interrupted.
    """

    def __init__(self, target_port: int, rate: float | None = None, more_targets=()):
        """``more_targets``: further ports; each connection goes to the next
        one in turn that accepts it (a round-robin balancer)."""
        self.targets = [target_port, *more_targets]
        self._turn = 0
        self.target_port = target_port
        self.rate = rate
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.connections_accepted = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._next_slot = 0.0
        self._listener = None
        self._stop = None
        self.restart()

    # -- lifecycle

    def restart(self):
        assert self._listener is None, "proxy is already running"
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._stop = threading.Event()
        threading.Thread(target=self._accept_loop, args=(listener, self._stop),
                         daemon=True, name="proxy-accept").start()

    def kill(self):
        """Stop listening and cut every open connection."""
        if self._listener is None:
            return
        self._stop.set()
        self._listener.close()
        self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            _close_hard(s)

    # -- internals

    def _accept_loop(self, listener, stop):
        while not stop.is_set():
            try:
                ready, _, _ = select.select([listener], [], [], 0.05)
                if not ready or stop.is_set():
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):
                return
            upstream = self._connect_upstream()
            if upstream is None:
                _close_hard(client)
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if stop.is_set():
                    _close_hard(client)
                    _close_hard(upstream)
                    return
                self._sockets.update((client, upstream))
                self.connections_accepted += 1
            pair = _Pair(self, client, upstream)
            threading.Thread(target=self._pump, args=(pair, client, upstream, True),
                             daemon=True, name="proxy-up").start()
            threading.Thread(target=self._pump, args=(pair, upstream, client, False),
                             daemon=True, name="proxy-down").start()

    def _connect_upstream(self):
        for _ in self.targets:
            port = self.targets[self._turn % len(self.targets)]
            self._turn += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                continue  # that one is down: the next
            upstream.settimeout(None)
            return upstream
        return None

    def _throttle(self, n: int):
        rate = self.rate
        if not rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(self._next_slot, now)
            self._next_slot = start + n / rate
            wake = self._next_slot
        delay = wake - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _pump(self, pair: "_Pair", src: socket.socket, dst: socket.socket, upstream: bool):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)  # pass the half-close on
                    break
                if upstream:
                    self._throttle(len(data))
                dst.sendall(data)
        except OSError:
            pair.abort()
        pair.pump_done()

    def _forget(self, *sockets):
        with self._lock:
            self._sockets.difference_update(sockets)


class _Pair:
    """One proxied connection; closed when both directions have ended."""

    def __init__(self, proxy, client, upstream):
        self._proxy = proxy
        self._sockets = (client, upstream)
        self._running = 2
        self._lock = threading.Lock()

    def abort(self):
        for s in self._sockets:
            _close_hard(s)

    def pump_done(self):
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            self.abort()
            self._proxy._forget(*self._sockets)


def _close_hard(s: socket.socket):
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
