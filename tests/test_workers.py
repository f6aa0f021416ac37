"""``twistd incoming --workers 2``: worker processes share one listening
port and, through Redis, the uploads; the parent keeps them running and
stops them together."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess

import pytest_twisted
import treq
from twisted.internet import defer, reactor, task
from twisted.web.client import HTTPConnectionPool

from redis_server import redis_server, unique_prefix  # noqa: F401 (fixture)
from test_twistd import TwistdServer, backend  # noqa: F401 (fixture)
from wsclient import upload


def listening_sockets(port: int) -> int:
    """Sockets in LISTEN on 127.0.0.1:port (/proc/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return sum(1 for line in f.readlines()[1:]
                   if line.split()[1] == wanted and line.split()[3] == "0A")


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


async def eventually(check, what, timeout=30.0):
    for _ in range(int(timeout / 0.1)):
        if check():
            return
        await task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest_twisted.ensureDeferred
async def test_two_workers_share_the_port_and_the_uploads(tmp_path, redis_server, backend):  # noqa: F811
    server = TwistdServer(tmp_path, "--workers", "2", "--state", redis_server.url,
                          "--state-prefix", unique_prefix())
    fresh = HTTPConnectionPool(reactor, persistent=False)  # a connection per request
    try:
        await eventually(lambda: server.log().count("; accepting connections on") == 2,
                         "two workers accepting")
        assert "2 workers share" in server.log()
        workers = children(server.process.pid)
        assert len(workers) == 2
        # A socket each on the one port: the kernel deals the connections out.
        assert listening_sockets(server.port) == 2
        assert "a socket each (SO_REUSEPORT)" in server.log()

        files = [os.urandom(200 * 1024 + i) for i in range(16)]
        tickets = []
        for _ in files:
            response = await treq.post(server.url("new_upload"), pool=fresh,
                                       params={"signalFinishURL": backend.url,
                                               "removeFileWhenFinished": "false"})
            tickets.append(await response.text())
        outcomes = await defer.gatherResults(
            [upload(server.port, t, data=f) for t, f in zip(tickets, files, strict=True)])
        assert [o.last()[0] for o in outcomes] == ["MsgAllDone"] * len(files)
        for ticket, data in zip(tickets, files, strict=True):
            (call,) = [c for c in backend.calls if c["id"] == ticket]
            assert call["sha256"] == hashlib.sha256(data).hexdigest()

        finished_by = {}  # worker pid -> uploads it finished
        answered_by: dict[str, int] = {}  # worker pid -> connections it took
        for _ in range(64):
            response = await treq.get(f"http://127.0.0.1:{server.port}/metrics", pool=fresh)
            text = await response.text()
            pid = re.search(r'^incoming_server_info\{.*pid="(\d+)"', text, re.M).group(1)
            done = re.search(r"^incoming_uploads_finished_total (\S+)$", text, re.M).group(1)
            finished_by[pid] = float(done)
            answered_by[pid] = answered_by.get(pid, 0) + 1
        assert sorted(int(p) for p in finished_by) == sorted(workers), "both answer on one port"
        assert min(answered_by.values()) >= 16, answered_by  # about even (p < 1e-4 to fail)
        assert sum(finished_by.values()) == len(files)

        os.kill(workers[0], signal.SIGKILL)  # a worker dies: the parent starts it again
        # Meanwhile its socket is closed: new connections all go to the other.
        await eventually(lambda: listening_sockets(server.port) == 1, "its socket closed")
        await eventually(lambda: server.log().count("; accepting connections on") == 3,
                         "the worker started again")
        assert listening_sockets(server.port) == 2
        assert "ended" in server.log() and "starting it again" in server.log()
        response = await treq.post(server.url("new_upload"), pool=fresh,
                                   params={"signalFinishURL": backend.url})
        again = await upload(server.port, await response.text(), data=b"still fine")
        assert again.last()[0] == "MsgAllDone"
        workers = children(server.process.pid)
    finally:
        code = await server.stop()  # SIGTERM to the parent: every worker stops too
        await fresh.closeCachedConnections()
    assert code in (0, -signal.SIGTERM), server.log()  # twistd re-raises SIGTERM
    assert server.log().count("Server Shut Down.") == 3  # the parent and its two workers
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


@pytest_twisted.ensureDeferred
async def test_workers_whose_parent_is_killed_stop_too(tmp_path, redis_server):  # noqa: F811
    server = TwistdServer(tmp_path, "--workers", "2", "--state", redis_server.url,
                          "--state-prefix", unique_prefix())
    try:
        await eventually(lambda: server.log().count("; accepting connections on") == 2,
                         "two workers accepting")
        workers = children(server.process.pid)
        server.process.kill()  # SIGKILL: the parent cannot stop them itself
        await eventually(lambda: not [p for p in workers if os.path.exists(f"/proc/{p}")
                                      and "zombie" not in open(f"/proc/{p}/status").read()],
                         "the workers stopped")
        assert "the workers' parent is gone; this worker stops" in server.log()
    finally:
        await server.stop()


def test_workers_need_a_plain_listening_socket():
    from twisted.python import usage

    from incoming.tap import Options

    try:
        Options().parseOptions(["--workers", "2", "--state", "redis://127.0.0.1:6379/0",
                                "--port", "ssl:4443:privateKey=k.pem"])
    except usage.UsageError as e:
        assert "needs a plain --port" in str(e) and "not ssl" in str(e)
    else:
        raise AssertionError("--workers with a TLS --port was accepted")


def test_workers_need_a_shared_state(tmp_path):
    from twisted.python import usage

    from incoming.tap import Options

    try:
        Options().parseOptions(["--workers", "2"])
    except usage.UsageError as e:
        assert "--workers (Workers) 2 needs --state (State)" in str(e)
    else:
        raise AssertionError("--workers 2 without --state was accepted")


def test_workers_take_the_parents_log_observer_umask_and_reactor_not_its_pidfile():
    from incoming.workers import twistd_arguments, worker_arguments

    argv = ["/usr/bin/twistd", "-n", "--pidfile=/run/incoming.pid", "--logger",
            "incoming.logs.json_observer", "--umask=0007", "-r", "epoll", "--logfile", "x.log",
            "incoming", "--workers", "2", "--state", "redis://127.0.0.1:6379/0", "--port",
            "tcp:4000", "--workers=2"]
    assert twistd_arguments(argv) == ["--logger", "incoming.logs.json_observer",
                                      "--umask=0007", "-r", "epoll"]
    assert worker_arguments(argv) == ["--state", "redis://127.0.0.1:6379/0", "--port",
                                      "tcp:4000"]


@pytest_twisted.ensureDeferred
async def test_workers_log_as_their_parent_was_told(tmp_path, redis_server):  # noqa: F811
    """--logger incoming.logs.json_observer on the parent: the workers' lines
    are JSON too (they were plain text: the option was the parent's alone)."""
    server = TwistdServer(tmp_path, "--workers", "2", "--state", redis_server.url,
                          "--state-prefix", unique_prefix(),
                          twistd_args=("--logger", "incoming.logs.json_observer"))
    try:
        await eventually(lambda: server.log().count("accepting connections on") == 2,
                         "two workers accepting")
    finally:
        await server.stop()
    lines = [line for line in server.log().splitlines() if line.strip()]
    accepting = [line for line in lines if "accepting connections on" in line]
    assert len(accepting) == 2
    for line in accepting:
        event = json.loads(line.lstrip("\x1e"))
        assert "accepting connections on" in event["text"] and event["level"] == "info"


@pytest_twisted.ensureDeferred
async def test_a_worker_that_keeps_dying_is_started_again_ever_more_slowly(
        tmp_path, redis_server):  # noqa: F811
    server = TwistdServer(tmp_path, "--workers", "2", "--state", redis_server.url,
                          "--state-prefix", unique_prefix())
    try:
        await eventually(lambda: server.log().count("; accepting connections on") == 2,
                         "two workers accepting")
        for accepting, delay in ((3, 1), (4, 2)):
            [pid] = re.findall(r"worker 1 started \(pid (\d+)\)", server.log())[-1:]
            os.kill(int(pid), signal.SIGKILL)
            await eventually(lambda d=delay: f"starting it again in {d} s" in server.log(),
                             f"a start again in {delay} s")
            await eventually(lambda n=accepting: server.log().count(
                "; accepting connections on") == n, "the worker started again", timeout=30)
        assert len(children(server.process.pid)) == 2
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_workers_refuse_a_port_another_server_holds(tmp_path, redis_server):  # noqa: F811
    """SO_REUSEPORT must not let a second server share the port silently."""
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even one that allows it
    taken.bind(("127.0.0.1", 0))
    taken.listen(5)
    port = taken.getsockname()[1]
    try:
        server = TwistdServer(tmp_path, "--workers", "2", "--state", redis_server.url,
                              "--port", f"tcp:{port}:interface=127.0.0.1")
        await eventually(lambda: server.process.poll() is not None, "twistd stopped")
        assert "Address already in use" in server.log(), server.log()
        assert "accepting connections" not in server.log()
    finally:
        taken.close()
