"""
The processes the bench starts, each on a free loopback port: the
installed ``twistd -n incoming`` (from this interpreter's bin folder, run
outside the source tree so that the installed package is what runs), the
reference server, the latency proxy and, for ``--workers``, a
redis-server; and the backend that takes the handovers, a thread of the
bench process that answers ``done``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from bench.procstat import raise_open_files_limit

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Twisted listens with a backlog of 50 by default: 200 uploads that connect
# at the same instant would overflow it and wait for SYN retransmits (1 s,
# then 3 s), which measures the kernel.  Every server here gets this instead.
BACKLOG = 1024
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# Logged by each Incoming!! process once it takes connections.
ACCEPTING = "; accepting connections on"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server subprocess listening on 127.0.0.1:port; output in a log file."""

    def __init__(self, argv, port: int, folder: str, cwd: str, log_name="server.log",
                 accepting: int = 0):
        self.port = port
        self.log_path = os.path.join(folder, log_name)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=raise_open_files_limit)
        self._wait_ready()
        if accepting:
            self._wait_logged(ACCEPTING, accepting)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.process.args[0]} exited: {self.log_tail()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.process.args[0]} did not listen: {self.log_tail()}")

    def _wait_logged(self, text: str, count: int, timeout=30.0):
        """With --workers the parent's port takes connections (into its
        backlog) at once: wait until every worker has said it accepts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, errors="replace") as f:
                if f.read().count(text) >= count:
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.process.args[0]} exited: {self.log_tail()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{count} x {text!r} not logged in {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines=20) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_incoming(folder: str, storage: str, *options, workers: int = 1,
                   profile: str | None = None) -> ServerProcess:
    """twistd -n incoming; with workers > 1, options must hold --workers.
    profile: a file for twistd's cProfile statistics (written at stop)."""
    port = free_port()
    profiling = ["--profile", profile, "--profiler", "cprofile", "--savestats"] if profile else []
    argv = [os.path.join(BIN, "twistd"), "-n", "--pidfile=", *profiling, "incoming",
            "--port", f"tcp:{port}:interface=127.0.0.1:backlog={BACKLOG}",
            "--storage-dir", storage, *options]
    return ServerProcess(argv, port, folder, cwd=folder, accepting=workers)


def start_reference(folder: str, storage: str, fsync: str) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "bench.reference_server", "--port", str(port),
            "--backlog", str(BACKLOG), "--dir", storage, "--fsync", fsync]
    return ServerProcess(argv, port, folder, cwd=REPO)


def start_floor(folder: str, storage: str, fsync: str) -> ServerProcess:
    """bench.floor_server: the stack's own cost of an upload cycle."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.floor_server", "--port", str(port),
            "--backlog", str(BACKLOG), "--dir", storage, "--fsync", fsync]
    return ServerProcess(argv, port, folder, cwd=REPO)


def start_proxy(folder: str, target_port: int, delay_ms: float, rate_mbps: float) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "bench.latency_proxy", "--listen", str(port),
            "--target", f"127.0.0.1:{target_port}", "--delay-ms", str(delay_ms),
            "--rate-mbps", str(rate_mbps), "--backlog", str(BACKLOG)]
    return ServerProcess(argv, port, folder, cwd=REPO)


def start_redis(folder: str) -> ServerProcess:
    """A throwaway redis-server for --state: no snapshots, no append-only file."""
    if not os.path.exists(REDIS_SERVER):
        raise RuntimeError("--workers needs redis-server (Debian: apt-get install redis-server)")
    port = free_port()
    argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder,
            "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"]
    server = ServerProcess(argv, port, folder, cwd=folder, log_name="redis.log")
    server.url = f"redis://127.0.0.1:{port}/0"
    return server


class Backend:
    """The app backend's handover URL: answers ``done``, keeps each form by id."""

    def __init__(self):
        self.handovers: dict[str, dict] = {}
        handovers = self.handovers

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real backend
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall per answer

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                form = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
                if form.get("cancelled") == "no":
                    handovers[form["id"]] = form
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", "4")
                self.end_headers()
                self.wfile.write(b"done")

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # 200 handovers at once: no SYN drops
            daemon_threads = True

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_port}/handover"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
