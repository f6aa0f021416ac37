"""``twistd incoming --state redis://...``: upload records, locks and events
in a real redis-server, the data in the storage folder.  What a user sees:
uploads work and survive a restart with nothing in the folder but data,
/health and new_upload tell when Redis is away and recover by themselves,
and an upload that Redis leaves mid-way resumes without loss.  Several
servers sharing uploads: tests/test_cluster.py."""

from __future__ import annotations

import hashlib
import os

import pytest_twisted
import treq
from twisted.internet import reactor, task

from redis_server import RedisServer, redis_server, unique_prefix  # noqa: F401 (fixture)
from test_twistd import TwistdServer, backend, new_upload  # noqa: F401 (fixture)
from wsclient import upload

DATA = os.urandom(300 * 1024)


def redis_args(server, prefix):
    return ("--state", server.url, "--state-prefix", prefix)


async def health(server) -> tuple[int, str]:
    response = await treq.get(f"http://127.0.0.1:{server.port}/health")
    return response.code, await response.text()


async def eventually(check, timeout=20.0):
    for _ in range(int(timeout / 0.1)):
        if await check():
            return
        await task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError("not reached in time")


@pytest_twisted.ensureDeferred
async def test_uploads_with_records_in_redis_survive_a_restart(tmp_path, redis_server, backend):  # noqa: F811
    args = redis_args(redis_server, unique_prefix())
    server = TwistdServer(tmp_path, *args)
    await server.ready()
    try:
        whole = await new_upload(server, backend, removeFileWhenFinished="false")
        assert (await upload(server.port, whole, data=DATA)).last()[0] == "MsgAllDone"
        half = await new_upload(server, backend, removeFileWhenFinished="false")
        stopped = await upload(server.port, half, data=DATA, stop_at=128 * 1024, action="drop")
        assert stopped.acked == 128 * 1024
        assert await health(server) == (200, "ok\n")
    finally:
        await server.stop()
    records = [n for n in os.listdir(server.storage) if ".json" in n or n.startswith(".incoming.t")]
    assert records == []  # the records are in Redis, not in the folder

    again = TwistdServer(tmp_path, *args)
    await again.ready()
    try:
        resumed = await upload(again.port, half, data=DATA)
        assert resumed.file_pos == 128 * 1024
        assert resumed.last()[0] == "MsgAllDone"
        call = [c for c in backend.calls if c["id"] == half][-1]
        assert call["sha256"] == hashlib.sha256(DATA).hexdigest()
        with open(again.storage / half, "rb") as f:
            assert f.read() == DATA
    finally:
        await again.stop()


@pytest_twisted.ensureDeferred
async def test_redis_away_is_told_by_health_and_new_upload_and_recovered_from(tmp_path, backend):  # noqa: F811
    redis = RedisServer(tmp_path, appendonly=True)
    redis.start()
    server = TwistdServer(tmp_path, *redis_args(redis, unique_prefix()))
    try:
        await server.ready()
        ticket = await new_upload(server, backend)
        redis.stop()
        code, text = await health(server)
        assert code == 503 and f"Redis at redis://127.0.0.1:{redis.port}/0" in text
        response = await treq.post(server.url("new_upload"), params={"signalFinishURL": backend.url})
        assert response.code == 503
        assert "cannot store the upload: Redis at" in await response.text()
        redis.start()  # the same port; its append-only file kept the ticket

        async def healthy():
            return (await health(server))[0] == 200

        await eventually(healthy)
        assert (await upload(server.port, ticket, data=DATA)).last()[0] == "MsgAllDone"
    finally:
        await server.stop()
        redis.stop()


@pytest_twisted.ensureDeferred
async def test_redis_stopped_mid_upload_pauses_it_resumably_and_nothing_is_lost(tmp_path, backend):  # noqa: F811
    """Redis away for 10 s while a file arrives: the server loses its hold
    on the upload within a lease, tells the browser (code 12) and keeps the
    bytes; once Redis is back the same upload resumes and arrives whole."""
    data = os.urandom(6 * 1024 * 1024)
    redis = RedisServer(tmp_path, appendonly=True)
    redis.start()
    server = TwistdServer(tmp_path, *redis_args(redis, unique_prefix()))
    try:
        await server.ready()
        ticket = await new_upload(server, backend, removeFileWhenFinished="false")
        sending = upload(server.port, ticket, data=data, pace=1.0)  # 512 KiB a second
        await task.deferLater(reactor, 2.0, lambda: None)
        redis.stop()
        stopped_at = reactor.seconds()
        outcome = await sending
        assert outcome.last()[0] == "MsgError", outcome.messages
        assert outcome.last()[1]["ErrorCode"] == 12
        assert "try again later" in outcome.last()[1]["Msg"]
        assert reactor.seconds() - stopped_at < 9  # within a lease and a renewal
        response = await treq.get(f"http://127.0.0.1:{server.port}/metrics")
        text = await response.text()
        assert "incoming_redis_command_duration_seconds_count" in text
        part = server.storage / f"{ticket}.part"
        kept = part.stat().st_size
        assert 0 < kept < len(data) and part.read_bytes() == data[:kept]
        await task.deferLater(reactor, max(0.0, 10 - (reactor.seconds() - stopped_at)),
                              lambda: None)
        redis.start()

        async def healthy():
            return (await health(server))[0] == 200

        await eventually(healthy)
        resumed = await upload(server.port, ticket, data=data)
        assert resumed.file_pos >= kept
        assert resumed.last()[0] == "MsgAllDone", resumed.messages
        (call,) = [c for c in backend.calls if c["id"] == ticket]
        assert call["sha256"] == hashlib.sha256(data).hexdigest()
        assert (server.storage / ticket).read_bytes() == data
    finally:
        await server.stop()
        redis.stop()
