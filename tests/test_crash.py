"""Fault injection on a real `twistd incoming`: kill -9 at three points and a
graceful SIGTERM, then a restart on the same folder; every upload completes
byte for byte with the right sha256."""

import hashlib

import os
import signal

import pytest_twisted
from twisted.internet import reactor, task

from fakes import open_files, stored_records
from test_twistd import TwistdServer, backend, new_upload  # noqa: F401 (fixture)
from wsclient import upload

DATA = os.urandom(5 * 512 * 1024 + 99)  # 0.1 chunks: 512 KiB
SHA = hashlib.sha256(DATA).hexdigest()


async def wait_for(predicate, timeout=20.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("condition not reached in time")


def record_state(server, ticket):
    record = stored_records(server.storage).get(ticket)
    return None if record is None else record["state"]


async def kill(server):
    server.process.send_signal(signal.SIGKILL)
    await server.stop()


async def finish_after_restart(tmp_path, backend, ticket, expected_pos=None):  # noqa: F811
    server = TwistdServer(tmp_path)
    await server.ready()
    try:
        outcome = await upload(server.port, ticket, data=DATA)
        if expected_pos is not None:
            assert outcome.first("MsgUploadConf")["FilePos"] >= expected_pos
        assert outcome.last()[0] == "MsgAllDone", outcome.messages
        assert (server.storage / ticket).read_bytes() == DATA
    finally:
        await server.stop()
    return server


@pytest_twisted.ensureDeferred
async def test_kill_9_mid_transfer_then_resume(tmp_path, backend):  # noqa: F811
    server = TwistdServer(tmp_path)
    await server.ready()
    ticket = await new_upload(server, backend, removeFileWhenFinished="false")
    pending = upload(server.port, ticket, data=DATA, stop_at=2 * 512 * 1024, action="idle")
    await wait_for(lambda: os.path.exists(server.storage / f"{ticket}.part")
                   and os.path.getsize(server.storage / f"{ticket}.part") == 2 * 512 * 1024)
    await kill(server)
    first = await pending
    # the last ack may still sit in the killed server's send buffer; what
    # counts is that the restart resumes at or after every acknowledged byte
    assert first.acked in (512 * 1024, 2 * 512 * 1024)

    await finish_after_restart(tmp_path, backend, ticket, expected_pos=first.acked)
    (call,) = backend.calls
    assert call["sha256"] == SHA
    assert call["cancelled"] == "no"


@pytest_twisted.ensureDeferred
async def test_kill_9_after_the_last_chunk_before_the_handover_answer(tmp_path, backend):  # noqa: F811
    backend.answer = "hang"
    server = TwistdServer(tmp_path)
    await server.ready()
    ticket = await new_upload(server, backend, removeFileWhenFinished="false")
    pending = upload(server.port, ticket, data=DATA)
    await backend.wait_for_calls(1)
    await kill(server)
    await pending
    backend.answer = "done"

    await finish_after_restart(tmp_path, backend, ticket)
    # documented: the backend sees the handover again and must be idempotent
    assert [c["id"] for c in backend.calls] == [ticket, ticket]
    assert all(c["sha256"] == SHA and c["cancelled"] == "no" for c in backend.calls)


@pytest_twisted.ensureDeferred
async def test_kill_9_while_the_backend_works_after_wait(tmp_path, backend):  # noqa: F811
    backend.answer = "wait"
    server = TwistdServer(tmp_path)
    await server.ready()
    ticket = await new_upload(server, backend, removeFileWhenFinished="false", backendSecret="k")
    pending = upload(server.port, ticket, data=DATA)
    await wait_for(lambda: record_state(server, ticket) == "waiting_for_finish")
    await kill(server)
    await pending

    server = TwistdServer(tmp_path)
    await server.ready()
    try:
        import treq

        response = await treq.post(server.url("finish_upload"),
                                   params={"id": ticket, "backendSecret": "k"})
        assert (response.code, await response.text()) == (200, "ok")
        outcome = await upload(server.port, ticket, data=DATA)
        assert outcome.last()[0] == "MsgAllDone"
        assert (server.storage / ticket).read_bytes() == DATA
    finally:
        await server.stop()
    (call,) = backend.calls  # still waiting after the restart: no second handover
    assert call["sha256"] == SHA


@pytest_twisted.ensureDeferred
async def test_sigterm_mid_transfer_says_going_away_and_resumes(tmp_path, backend):  # noqa: F811
    server = TwistdServer(tmp_path)
    await server.ready()
    ticket = await new_upload(server, backend, removeFileWhenFinished="false")
    pending = upload(server.port, ticket, data=DATA, stop_at=512 * 1024, action="idle")
    await wait_for(lambda: os.path.exists(server.storage / f"{ticket}.part")
                   and os.path.getsize(server.storage / f"{ticket}.part") == 512 * 1024)
    code = await server.stop()  # SIGTERM
    assert code in (0, -signal.SIGTERM), server.log()
    first = await pending
    assert first.close_code == 1001
    assert record_state(server, ticket) == "paused"

    await finish_after_restart(tmp_path, backend, ticket, expected_pos=512 * 1024)
    assert backend.calls[0]["sha256"] == SHA


def limit_file_size():
    """In the server process: files may not grow past 1 MiB (a full disk)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


@pytest_twisted.ensureDeferred
async def test_disk_full_is_a_clear_error_and_nothing_else_suffers(tmp_path, backend):  # noqa: F811
    server = TwistdServer(tmp_path, "--storage-reserve", "0", preexec_fn=limit_file_size)
    await server.ready()
    try:
        big = await new_upload(server, backend)
        small = await new_upload(server, backend, removeFileWhenFinished="false")
        too_big = upload(server.port, big, data=DATA)  # 2.5 MiB > 1 MiB
        fits = upload(server.port, small, data=DATA[:300 * 1024])
        failed, ok = await too_big, await fits
        assert failed.last()[0] == "MsgError"
        assert failed.last()[1]["ErrorCode"] == 8
        assert "cannot write" in failed.last()[1]["Msg"]
        assert ok.last()[0] == "MsgAllDone"
        assert (server.storage / small).read_bytes() == DATA[:300 * 1024]
        assert not os.path.exists(server.storage / big)  # nothing under a final name
        await wait_for(lambda: not os.path.exists(server.storage / f"{big}.part"))
        # and its file descriptor is closed: a deleted file keeps no space
        await wait_for(lambda: not [fd for fd in open_files(server.process.pid) if big in fd])
        cancel = [c for c in backend.calls if c["id"] == big]
        assert cancel and cancel[0]["cancelled"] == "yes"
        # and the server is still up for new uploads
        again = await new_upload(server, backend)
        assert (await upload(server.port, again, data=b"fine")).last()[0] == "MsgAllDone"
    finally:
        await server.stop()
