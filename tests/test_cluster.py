"""Several servers sharing uploads: one storage folder, one Redis prefix
(``--state``), real twistd processes and a real redis-server.  Any server
takes any connection or backend call; killing one loses nothing."""

from __future__ import annotations

import hashlib
import os

import pytest_twisted
import treq
from twisted.internet import reactor, task

from redis_server import redis_server, unique_prefix  # noqa: F401 (fixture)
from test_twistd import TwistdServer, backend, new_upload  # noqa: F401 (fixture)
from wsclient import upload as send


def cluster(tmp_path, redis, count=2, *extra):
    """``count`` servers on one folder and one prefix (not started yet)."""
    prefix, shared = unique_prefix(), tmp_path / "shared-storage"
    servers = []
    for n in range(count):
        home = tmp_path / f"server{n}"
        home.mkdir()
        servers.append(TwistdServer(home, "--storage-dir", str(shared), "--state", redis.url,
                                    "--state-prefix", prefix, *extra))
    return servers, shared


async def started(servers):
    for server in servers:
        await server.ready()


async def stop_all(servers):
    for server in servers:
        await server.stop()


async def call(server, name, **params):
    response = await treq.post(server.url(name), params=params)
    return response.code, await response.text()


async def sleep(seconds):
    await task.deferLater(reactor, seconds, lambda: None)


def upload(*args, **kwargs):
    """wsclient's upload, given up on after 60 s (a hang fails the test)."""
    return send(*args, **kwargs).addTimeout(60, reactor)


@pytest_twisted.ensureDeferred
async def test_a_server_killed_mid_upload_and_the_upload_finishes_through_another(
        tmp_path, redis_server, backend):  # noqa: F811
    (a, b), shared = cluster(tmp_path, redis_server)
    await started([a, b])
    data = os.urandom(4 * 1024 * 1024)
    try:
        ticket = await new_upload(a, backend, removeFileWhenFinished="false")
        sending = upload(a.port, ticket, data=data, pace=0.5)
        await sleep(1.6)
        a.process.kill()  # SIGKILL: no goodbye, its leases just stop
        cut = await sending
        assert cut.last() is None or cut.last()[0] != "MsgAllDone"
        for _ in range(40):  # until its lease has run out (5 s)
            resumed = await upload(b.port, ticket, data=data, features=("takeover",))
            if resumed.messages and resumed.last()[0] != "MsgError":
                break
            assert resumed.last()[1]["ErrorCode"] == 3, resumed.messages  # busy: retry
            await sleep(0.5)
        assert resumed.file_pos > 0  # resumed, not started over
        assert resumed.last()[0] == "MsgAllDone", resumed.messages
        (call_,) = [c for c in backend.calls if c["id"] == ticket]
        assert call_["sha256"] == hashlib.sha256(data).hexdigest()
        assert (shared / ticket).read_bytes() == data
    finally:
        await stop_all([a, b])


@pytest_twisted.ensureDeferred
async def test_cancel_sent_to_another_server_reaches_the_browser(tmp_path, redis_server, backend):  # noqa: F811
    (a, b), _ = cluster(tmp_path, redis_server)
    await started([a, b])
    try:
        ticket = await new_upload(b, backend, backendSecret="s3cret")
        sending = upload(a.port, ticket, data=os.urandom(2 * 1024 * 1024), pace=0.5)
        await sleep(1.0)
        started_at = reactor.seconds()
        code, text = await call(b, "cancel_upload", id=ticket, backendSecret="s3cret")
        # answered by the server that holds the browser, once it has sent MsgCancel
        assert reactor.seconds() - started_at < 0.5
        assert (code, text) == (200, "ok"), text
        outcome = await sending
        assert outcome.last()[0] == "MsgCancel"
        cancels = [c for c in backend.calls if c["id"] == ticket]
        assert [c["cancelled"] for c in cancels] == ["yes"]
        code, _ = await call(a, "cancel_upload", id=ticket, backendSecret="wrong")
        assert code == 403
    finally:
        await stop_all([a, b])


@pytest_twisted.ensureDeferred
async def test_finish_upload_sent_to_another_server_ends_the_wait(tmp_path, redis_server, backend):  # noqa: F811
    (a, b), _ = cluster(tmp_path, redis_server)
    await started([a, b])
    try:
        backend.answer = "wait"
        ticket = await new_upload(a, backend, backendSecret="pw", removeFileWhenFinished="false")
        waiting = upload(a.port, ticket, data=b"x" * 70_000)
        await backend.wait_for_calls(1)
        await sleep(0.3)
        code, text = await call(b, "finish_upload", id=ticket, backendSecret="pw")
        assert (code, text) == (200, "ok"), text
        outcome = await waiting
        assert outcome.last()[0] == "MsgAllDone"
        code, _ = await call(a, "finish_upload", id=ticket, backendSecret="pw")
        assert code == 412  # once, wherever it is asked
    finally:
        await stop_all([a, b])


@pytest_twisted.ensureDeferred
async def test_an_unused_ticket_times_out_once_whichever_servers_run(tmp_path, redis_server, backend):  # noqa: F811
    servers, _ = cluster(tmp_path, redis_server, 3, "--idle-timeout", "2",
                         "--handover-timeout", "1")
    await started(servers)
    try:
        ticket = await new_upload(servers[0], backend)
        for _ in range(60):
            if [c for c in backend.calls if c["id"] == ticket]:
                break
            await sleep(0.1)
        await sleep(2.5)  # any second cancellation would have come by now
        cancels = [c for c in backend.calls if c["id"] == ticket]
        assert [c["cancelled"] for c in cancels] == ["yes"]
        assert "idle" in cancels[0]["cancelReason"]
    finally:
        await stop_all(servers)


@pytest_twisted.ensureDeferred
async def test_max_uploads_counts_the_tickets_of_every_server(tmp_path, redis_server, backend):  # noqa: F811
    """Tickets nobody connected to count against --max-uploads on every
    server: the cap is the cluster's, not each server's."""
    (a, b), _ = cluster(tmp_path, redis_server, 2, "--max-uploads", "3")
    await started([a, b])
    try:
        first = await new_upload(a, backend, backendSecret="s3cret")
        await new_upload(a, backend)
        await new_upload(b, backend)
        code, text = await call(b, "new_upload", signalFinishURL=backend.url)
        assert code == 503 and "too many open uploads (3)" in text, text
        code, text = await call(a, "new_upload", signalFinishURL=backend.url)
        assert code == 503, text
        # one ends (cancelled through the other server): there is room again
        assert await call(b, "cancel_upload", id=first, backendSecret="s3cret") == (200, "ok")
        code, text = await call(b, "new_upload", signalFinishURL=backend.url)
        assert code == 200, text
    finally:
        await stop_all([a, b])
