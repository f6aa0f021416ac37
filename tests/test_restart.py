"""Uploads survive a restart of the server (in-process: a new server on the
same storage folder; the kill -9 variants run twistd in test_crash.py)."""

import hashlib
import os
from urllib.parse import urlsplit

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.logger import formatEvent, globalLogPublisher

from incoming.config import Settings
from incoming.wire import ErrorCode

from conftest import start_server
from fakes import FakeChannel, create, embedded_registry, stored_records
from test_protocol import wait_until
from wsclient import upload


def sha256(data):
    return hashlib.sha256(data).hexdigest()


async def restart(tmp_path, server, stop, **overrides):
    """Stop the server and start a new one on the same folder and backend port."""
    await stop()
    port = urlsplit(server.backend_url).port
    return await start_server(tmp_path, backend_port_number=port, **overrides)


@pytest_twisted.ensureDeferred
async def test_upload_resumes_across_a_restart_with_the_right_sha256(tmp_path):
    data = os.urandom(300 * 1024 + 3)
    server, stop = await start_server(tmp_path)
    ticket = await server.new_upload(removeFileWhenFinished="false")
    await upload(server.port, ticket, data=data, stop_at=128 * 1024, action="drop")
    await wait_until(lambda: server.registry.get(ticket).state == "paused")

    server, stop = await restart(tmp_path, server, stop)
    try:
        restored = server.registry.get(ticket)
        assert restored.state == "paused"
        assert restored.received == 128 * 1024
        outcome = await upload(server.port, ticket, data=data)
        assert outcome.first("MsgUploadConf")["FilePos"] == 128 * 1024
        assert outcome.last()[0] == "MsgAllDone"
        (call,) = server.backend.calls
        assert call["sha256"] == sha256(data)
        assert call["content"] == data
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_a_ticket_that_was_never_used_stays_valid(tmp_path):
    server, stop = await start_server(tmp_path)
    ticket = await server.new_upload(backendSecret="pw")
    server, stop = await restart(tmp_path, server, stop)
    try:
        assert server.registry.get(ticket).state == "created"
        code, _ = await server.call("cancel_upload", id=ticket, backendSecret="wrong")
        assert code == 403  # the secret survived too
        outcome = await upload(server.port, ticket, data=b"hello")
        assert outcome.last()[0] == "MsgAllDone"
        assert server.backend.calls[0]["backendSecret"] == "pw"
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_a_complete_file_is_handed_over_again_after_a_restart(tmp_path):
    data = os.urandom(100 * 1024)
    server, stop = await start_server(tmp_path)
    server.backend.answer = "hang"
    ticket = await server.new_upload()
    pending = upload(server.port, ticket, data=data)
    await server.backend.wait_for_calls(1)  # the handover is running

    server, stop = await restart(tmp_path, server, stop)
    try:
        await pending  # the old connection went away with the old server
        calls = await server.backend.wait_for_calls(1)
        assert calls[0]["cancelled"] == "no"
        assert calls[0]["sha256"] == sha256(data)
        assert calls[0]["content"] == data
        await wait_until(lambda: server.registry.get(ticket).state == "finished")
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_waiting_for_finish_upload_survives_a_restart(tmp_path):
    data = os.urandom(70 * 1024)
    server, stop = await start_server(tmp_path)
    server.backend.answer = "wait"
    ticket = await server.new_upload(removeFileWhenFinished="false")
    await upload(server.port, ticket, data=data, stop_at=len(data), action="drop")
    await wait_until(lambda: server.registry.get(ticket).state == "waiting_for_finish")

    server, stop = await restart(tmp_path, server, stop)
    try:
        assert server.registry.get(ticket).state == "waiting_for_finish"
        assert server.backend.calls == []  # not handed over twice
        code, text = await server.call("finish_upload", id=ticket)
        assert (code, text) == (200, "ok")
        outcome = await upload(server.port, ticket, data=data)
        assert outcome.last()[0] == "MsgAllDone"  # a late browser learns it
        with open(os.path.join(server.storage_dir, ticket), "rb") as f:
            assert f.read() == data
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_a_file_to_remove_is_removed_after_finish_upload_across_a_restart(tmp_path):
    data = os.urandom(70 * 1024)
    server, stop = await start_server(tmp_path)
    server.backend.answer = "wait"
    ticket = await server.new_upload(removeFileWhenFinished="true")
    await upload(server.port, ticket, data=data, stop_at=len(data), action="drop")
    await wait_until(lambda: server.registry.get(ticket).state == "waiting_for_finish")

    server, stop = await restart(tmp_path, server, stop)
    try:
        assert (await server.call("finish_upload", id=ticket)) == (200, "ok")
        await wait_until(lambda: not os.path.exists(os.path.join(server.storage_dir, ticket)))
    finally:
        await stop()


def registry_on(folder, clock, settings=None):
    settings = settings or Settings(storage_dir=str(folder), idle_timeout=1000.0,
                                    handover_timeout=10.0)
    return embedded_registry(settings, NoBackend(), clock)


class NoBackend:
    def __init__(self):
        self.cancels = []

    def report_cancel(self, ticket, name, reason):
        self.cancels.append(reason)


def test_idle_time_continues_from_the_recorded_time(tmp_path):
    clock = task.Clock()
    clock.advance(5000)
    first = registry_on(tmp_path, clock)
    created = create(first)
    clock.advance(600)  # the server dies 600 s into the 1000 s idle time

    later = task.Clock()
    later.advance(5000 + 700)  # and comes back 100 s later
    second = registry_on(tmp_path, later)
    second.restore()
    restored = second.get(created.ticket.id)
    later.advance(299)
    assert restored.state == "created"
    later.advance(2)
    assert restored.state == "cancelled"
    assert "idle" in restored.cancel_reason


def test_foreign_files_are_left_alone_and_logged(tmp_path):
    clock = task.Clock()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "0d6b1f36-5c1a-4c1e-9d5b-5f0b2f3a9a11.part").write_text("no record")
    registry = registry_on(tmp_path, clock)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        registry.restore()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert len(registry) == 0
    logged = [formatEvent(e) for e in events]
    assert any("notes.txt belongs to no open upload" in line for line in logged)
    assert sorted(os.listdir(tmp_path)) == [  # and the server's (empty) record log
        ".incoming.tickets", "0d6b1f36-5c1a-4c1e-9d5b-5f0b2f3a9a11.part", "notes.txt"]


def test_an_ended_upload_is_remembered_across_a_restart_until_its_retention_ends(tmp_path):
    clock = task.Clock()
    registry = registry_on(tmp_path, clock)
    created = create(registry)
    created.cancel("changed my mind", ErrorCode.CANCELLED)
    clock.advance(1000)

    again = registry_on(tmp_path, clock)  # a crash, then a restart
    again.restore()
    tombstone = again.get(created.ticket.id)
    assert tombstone.state == "cancelled"
    assert tombstone.cancel_reason == "changed my mind"
    clock.advance(Settings().retention - 1001)
    assert again.get(created.ticket.id) is tombstone
    clock.advance(2)
    assert again.get(created.ticket.id) is None
    assert created.ticket.id not in stored_records(tmp_path)
    third = registry_on(tmp_path, clock)
    third.restore()
    assert third.get(created.ticket.id) is None


@pytest_twisted.ensureDeferred
async def test_a_file_the_backend_took_is_offered_again_not_recreated_empty(tmp_path):
    data = os.urandom(90 * 1024)
    server, stop = await start_server(tmp_path)
    server.backend.answer = "hang"
    ticket = await server.new_upload(removeFileWhenFinished="false")
    pending = upload(server.port, ticket, data=data)
    (call,) = await server.backend.wait_for_calls(1)
    os.rename(call["filename"], tmp_path / "moved-by-backend")  # then it crashed

    server, stop = await restart(tmp_path, server, stop)
    try:
        await pending
        (again,) = await server.backend.wait_for_calls(1)
        assert again["filename"] == call["filename"]
        assert again["sha256"] == sha256(data)  # the recorded one, not an empty file's
        await wait_until(lambda: server.registry.get(ticket).state == "finished")
        assert [n for n in os.listdir(server.storage_dir) if not n.startswith(".incoming.")] == []
    finally:
        await stop()


def restored_with_log(folder, clock):
    """A registry restored from `folder`, and the log lines it wrote."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        again = registry_on(folder, clock)
        again.restore()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return again, [formatEvent(e) for e in events]


# The kinds of corrupt record a damaged disk or a hand edit leaves ("ID":
# where the ticket's id stands).
corrupt_kinds = pytest.mark.parametrize("corrupt", [
    b"null", b"[]", b'{"id": "ID", "signal_finish_url": "http://b.example/h", "len',
    b'{"id": "ID", "signal_finish_url": "http://b.example/h", "length": "10"}',
    b"\x00\x00\x00\x00",
    b'{"deleted": "ID"',
], ids=["null", "list", "truncated", "wrong-type", "zeros", "torn-tombstone"])


@corrupt_kinds
def test_a_corrupt_record_is_moved_aside_reported_and_the_rest_restored(tmp_path, corrupt):
    clock = task.Clock()
    first = registry_on(tmp_path, clock)
    good = create(first)
    bad = create(first)
    bad_id = bad.ticket.id
    (tmp_path / f"{bad_id}.part").write_bytes(b"half a file")
    (tmp_path / f"{bad_id}.json").write_bytes(corrupt.replace(b"ID", bad_id.encode()))

    again, logged = restored_with_log(tmp_path, clock)
    assert again.get(good.ticket.id).state == "created"  # the server starts, the rest restored
    assert again.get(bad_id) is None
    assert (tmp_path / f"{bad_id}.json.corrupt").read_bytes() == corrupt.replace(
        b"ID", bad_id.encode())
    assert not (tmp_path / f"{bad_id}.json").exists()
    assert (tmp_path / f"{bad_id}.part").read_bytes() == b"half a file"  # left alone
    (line,) = [line for line in logged if "record is corrupt" in line]
    assert bad_id in line and f"{bad_id}.part" in line and "moved aside" in line


@corrupt_kinds
def test_a_corrupt_line_of_the_ticket_log_is_kept_aside_and_reported(tmp_path, corrupt):
    """The same kinds as a line of .incoming.tickets (where records are now),
    between good lines: the disk damaged it, no crash tore it.  A line whose
    ticket can be read stands for that ticket's latest record: the ticket is
    not restored from an older line, and its file is reported."""
    clock = task.Clock()
    first = registry_on(tmp_path, clock)
    good = create(first)
    bad = create(first)
    bad_id = bad.ticket.id
    known = b"ID" in corrupt  # its ticket can be read
    if known:
        (tmp_path / f"{bad_id}.part").write_bytes(b"half a file")
    line = corrupt.replace(b"ID", bad_id.encode()) + b"\n"
    with open(tmp_path / ".incoming.tickets", "ab") as f:
        f.write(line)
    later = create(first)  # a good line after it

    again, logged = restored_with_log(tmp_path, clock)
    assert again.get(good.ticket.id).state == "created"  # the server starts, the rest restored
    assert again.get(later.ticket.id).state == "created"
    assert (tmp_path / ".incoming.tickets.corrupt").read_bytes() == line
    (said,) = [x for x in logged if "is corrupt" in x]
    assert ".incoming.tickets.corrupt" in said and "not restored" in said
    if known:
        assert bad_id in said
        assert again.get(bad_id) is None
        assert (tmp_path / f"{bad_id}.part").read_bytes() == b"half a file"  # left alone
        assert [x for x in logged if f"{bad_id}.part belongs to no open upload" in x]
    else:  # whose line it was is unknown: the ticket's last good line stands
        assert "ticket unknown" in said
        assert again.get(bad_id).state == "created"


@pytest.mark.parametrize("loss", ["record-reverted", "record-empty", "record-gone", "log-empty"])
def test_after_a_power_loss_a_stale_record_never_deletes_a_file_the_backend_kept(tmp_path, loss):
    """The backend answered done and kept the file (removeFileWhenFinished
    false); then the power went, and the record's later versions with it.
    The server must not take the ticket back and later delete the file."""
    first = registry_on(tmp_path, task.Clock())  # its timers die with the power
    kept = create(first, remove=False)
    kept_id = kept.ticket.id
    (tmp_path / kept_id).write_bytes(b"the backend's file")  # handed over, kept
    record = tmp_path / f"{kept_id}.json"
    if loss == "record-empty":
        record.write_bytes(b"")  # the rename reached the disk, its data did not
    elif loss == "record-gone":
        (tmp_path / ".incoming.tickets").unlink()  # not even the ticket's line
    elif loss == "log-empty":  # the log's name reached the disk, none of its lines
        (tmp_path / ".incoming.tickets").write_bytes(b"")
    # record-reverted: only the ticket's line, from before any browser came

    clock = task.Clock()
    again, lines = restored_with_log(tmp_path, clock)
    assert again.get(kept_id) is None  # not a ticket again
    clock.advance(2000.0)  # past the idle timeout: nothing can delete it
    assert (tmp_path / kept_id).read_bytes() == b"the backend's file"
    logged = " ".join(lines)
    assert f"{kept_id} belongs to no open upload; left alone" in logged
    if loss == "record-reverted":
        assert f"upload {kept_id}: its record says no browser has sent a byte" in logged
    third = registry_on(tmp_path, task.Clock())
    third.restore()  # reported once: the stale record is gone, the file stays
    assert third.get(kept_id) is None
    assert (tmp_path / kept_id).read_bytes() == b"the backend's file"


def test_an_empty_part_file_beside_a_fresh_ticket_is_no_reason_to_drop_it(tmp_path):
    """A power loss right after the first connection created the .part: the
    ticket is taken back, and its browser can start."""
    first = registry_on(tmp_path, task.Clock())
    ticket = create(first).ticket.id
    (tmp_path / f"{ticket}.part").write_bytes(b"")
    again = registry_on(tmp_path, task.Clock())
    again.restore()
    upload = again.get(ticket)
    assert upload is not None and upload.state == "created"
    outcome = FakeChannel()
    upload.connect(outcome, 5, "f.bin")
    assert outcome.events[0] == ("conf", 0)


def test_a_handover_made_again_after_a_power_loss_that_fails_keeps_the_file(tmp_path):
    """The backend answered done and kept the file; a power loss took that
    record, so the restart hands the file over again; the backend fails that
    one (it is still down).  The file may be the backend's: it stays, also
    across the next restart."""
    from twisted.python.failure import Failure

    from test_upload_machine import FakeBackend

    settings = Settings(storage_dir=str(tmp_path), idle_timeout=1000.0, handover_timeout=10.0)
    first = embedded_registry(settings, FakeBackend(), task.Clock())
    upload = create(first, remove=False)
    channel = FakeChannel()
    upload.connect(channel, 5, "f.bin")
    upload.receive(channel, b"12345")  # complete: handing over, and then the power went
    assert upload.state == "handing_over"

    backend = FakeBackend()
    again = embedded_registry(settings, backend, task.Clock())
    again.restore()
    clock = again._services.clock
    clock.advance(0)  # the handover is made again
    (handover,) = backend.handovers
    handover.deferred.errback(Failure(RuntimeError("backend answered 500")))
    assert again.get(upload.ticket.id).state == "cancelled"
    assert (tmp_path / upload.ticket.id).read_bytes() == b"12345"  # left in place

    third = embedded_registry(settings, FakeBackend(), task.Clock())
    third.restore()
    assert (tmp_path / upload.ticket.id).read_bytes() == b"12345"
