"""
The Upload state machine driven directly: a Clock for time, a real Storage
folder on tmp_path, a fake browser channel and a fake backend whose handover
answer the test decides.  No network, no reactor, no sleeping.
"""

from __future__ import annotations

import os
import shutil

import attr
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from incoming.config import Settings
from incoming.handover import DONE, WAIT, HandoverFailed
from fakes import data_files, fired
from incoming.embedded import embedded_stores
from incoming.registry import UploadRegistry
from incoming.storage_pool import run_here
from incoming.upload import REPLY_ERROR, TooLate

RETENTION = Settings().retention
from incoming.wire import ErrorCode

CHUNK = 1024  # chunk_size_kb=1
IDLE = 1000.0
CONFIRM = 100.0
SEND_AHEAD = 4
FINISH_URL = "http://backend.example/handover"


# ---- fakes ------------------------------------------------------------------


class FakeChannel:
    """A browser connection: records every call the upload makes on it.

    ``part_path`` lets it note how many bytes were on disk when each chunk
    was acknowledged.
    """

    def __init__(self, part_path: str | None = None):
        self.calls: list[tuple] = []
        self.part_path = part_path
        self.on_disk_at_ack: list[int] = []

    def send_conf(self, chunk_size_kb, file_pos, send_ahead, sample=None):
        self.calls.append(("conf", chunk_size_kb, file_pos, send_ahead))
        if sample is not None:
            self.calls.append(("sample", *sample))

    def send_chunk_ack(self, size):
        self.calls.append(("ack", size))
        if self.part_path is not None:
            self.on_disk_at_ack.append(os.path.getsize(self.part_path))

    def finish_ok(self):
        self.calls.append(("finish_ok",))

    def fail(self, code, text):
        self.calls.append(("fail", code, text))

    def cancelled(self, reason, code):
        self.calls.append(("cancelled", reason, code))

    def cancel_acked(self):
        self.calls.append(("cancel_acked",))

    def close(self):
        self.calls.append(("close",))

    # what a test looks at
    def of(self, kind: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == kind]

    @property
    def file_positions(self) -> list[int]:
        return [c[2] for c in self.of("conf")]

    @property
    def acks(self) -> list[int]:
        return [c[1] for c in self.of("ack")]

    @property
    def failures(self) -> list[tuple]:
        """(code, text) of every fail() call."""
        return [c[1:] for c in self.of("fail")]

    @property
    def last(self) -> tuple:
        return self.calls[-1]


@attr.s(auto_attribs=True)
class Handover:
    """One hand_over call, with the file as it was at that moment."""

    ticket: object
    path: str
    name: str
    deferred: Deferred
    content: bytes | None
    sha256: str | None = None


class FakeBackend:
    """The web app backend: handovers wait for the test to answer them."""

    def __init__(self):
        self.handovers: list[Handover] = []
        self.cancels: list[tuple] = []  # (ticket id, browser name, reason)

    def hand_over(self, ticket, path, name, sha256):
        content = None
        if os.path.isfile(path):
            with open(path, "rb") as f:
                content = f.read()
        d = Deferred()
        self.handovers.append(Handover(ticket, path, name, d, content, sha256))
        return d

    def report_cancel(self, ticket, name, reason):
        self.cancels.append((ticket.id, name, reason))
        return succeed(None)


# ---- fixtures and helpers ---------------------------------------------------


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def settings(tmp_path):
    return Settings(
        storage_dir=str(tmp_path / "storage"),
        chunk_size_kb=1,
        send_ahead=SEND_AHEAD,
        idle_timeout=IDLE,
        handover_timeout=50.0,
        handover_confirm_timeout=CONFIRM,
    )


class Folder:
    """Where the embedded stores keep an upload's files."""

    def __init__(self, folder: str):
        self.folder = folder

    def final_path(self, upload_id: str) -> str:
        return os.path.join(self.folder, upload_id)

    def part_path(self, upload_id: str) -> str:
        return self.final_path(upload_id) + ".part"


@pytest.fixture
def stores(settings):
    stores = embedded_stores(settings, run_here)
    stores.data.prepare()
    return stores


@pytest.fixture
def storage(stores):
    return Folder(stores.data.folder)


@pytest.fixture
def backend():
    return FakeBackend()


@pytest.fixture
def registry(settings, stores, backend, clock):
    return UploadRegistry(settings, stores, backend, clock)


@pytest.fixture
def new_upload(registry):
    def make(remove_file_when_finished=True):
        return fired(registry.create(FINISH_URL, "s3cret", remove_file_when_finished))

    return make


def data_of(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def part_path(storage, upload) -> str:
    return storage.part_path(upload.ticket.id)


def final_path(storage, upload) -> str:
    return storage.final_path(upload.ticket.id)


def connect(storage, upload, length, name="holiday.jpg") -> FakeChannel:
    channel = FakeChannel(part_path(storage, upload))
    upload.connect(channel, length, name)
    return channel


def send(upload, channel, data: bytes, chunk: int = CHUNK) -> None:
    for start in range(0, len(data), chunk):
        upload.receive(channel, data[start:start + chunk])


def uploaded(storage, upload, data, **kw) -> FakeChannel:
    """Connect and send all of ``data``: the upload is then handing over."""
    channel = connect(storage, upload, len(data), **kw)
    send(upload, channel, data)
    return channel


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def files_in(storage) -> list[str]:
    """Data files in the folder (records are checked on their own)."""
    return data_files(storage.folder)


# ---- uploading --------------------------------------------------------------


def test_first_connect_starts_at_zero_with_an_empty_part_file(storage, new_upload):
    upload = new_upload()
    channel = connect(storage, upload, 5000)
    assert upload.state == "uploading"
    assert channel.of("conf") == [("conf", 1, 0, SEND_AHEAD)]
    assert files_in(storage) == [upload.ticket.id + ".part"]
    assert os.path.getsize(part_path(storage, upload)) == 0


def test_chunks_are_acked_only_once_they_are_in_the_part_file(storage, new_upload, backend):
    upload = new_upload()
    data = data_of(3000)
    channel = connect(storage, upload, len(data))
    send(upload, channel, data[:2048])
    assert channel.acks == [1024, 1024]
    assert channel.on_disk_at_ack == [1024, 2048]
    assert read(part_path(storage, upload)) == data[:2048]
    assert upload.state == "uploading"
    assert backend.handovers == []


def test_last_byte_renames_the_file_and_hands_it_over(storage, new_upload, backend):
    upload = new_upload()
    data = data_of(2500)
    channel = uploaded(storage, upload, data, name="holiday.jpg")
    assert upload.state == "handing_over"
    assert channel.acks == [1024, 1024, 452]
    assert files_in(storage) == [upload.ticket.id]
    (handover,) = backend.handovers
    assert handover.path == final_path(storage, upload)
    assert handover.ticket.id == upload.ticket.id
    assert handover.name == "holiday.jpg"
    assert handover.content == data
    assert channel.of("finish_ok") == []  # not before the backend answers


def test_done_finishes_and_removes_the_file(storage, stores, new_upload, backend):
    upload = new_upload(remove_file_when_finished=True)
    channel = uploaded(storage, upload, data_of(2000))
    assert stores.locker.held(upload.ticket.id)  # the connection holds it while it sends
    backend.handovers[0].deferred.callback(DONE)
    assert upload.state == "finished"
    assert channel.last == ("finish_ok",)
    assert files_in(storage) == []
    assert backend.cancels == []
    assert not stores.locker.held(upload.ticket.id)  # and lets go at the end


def test_done_keeps_the_file_when_the_backend_asked_to_keep_it(storage, new_upload, backend):
    upload = new_upload(remove_file_when_finished=False)
    data = data_of(2000)
    channel = uploaded(storage, upload, data)
    backend.handovers[0].deferred.callback(DONE)
    assert upload.state == "finished"
    assert channel.last == ("finish_ok",)
    assert read(final_path(storage, upload)) == data


def test_an_answer_that_is_already_there_finishes_too(storage, new_upload, backend):
    """A backend client may answer synchronously (a fired Deferred)."""
    upload = new_upload()
    backend.hand_over = lambda ticket, path, name, sha256: succeed(DONE)
    channel = uploaded(storage, upload, data_of(1500))
    assert upload.state == "finished"
    assert channel.last == ("finish_ok",)


def test_wait_then_finish_upload(storage, new_upload, backend):
    upload = new_upload()
    channel = uploaded(storage, upload, data_of(2000))
    backend.handovers[0].deferred.callback(WAIT)
    assert upload.state == "waiting_for_finish"
    assert channel.of("finish_ok") == []
    assert files_in(storage) == [upload.ticket.id]
    upload.finish()
    assert upload.state == "finished"
    assert channel.last == ("finish_ok",)
    assert files_in(storage) == []


def test_zero_byte_upload_hands_over_an_empty_file(storage, new_upload, backend):
    upload = new_upload(remove_file_when_finished=False)
    channel = connect(storage, upload, 0, name="empty.txt")
    assert channel.file_positions == [0]
    assert upload.state == "handing_over"
    (handover,) = backend.handovers
    assert handover.path == final_path(storage, upload)
    assert handover.content == b""
    assert handover.name == "empty.txt"
    handover.deferred.callback(DONE)
    assert channel.last == ("finish_ok",)
    assert os.path.getsize(final_path(storage, upload)) == 0


# ---- finish and cancel at the wrong moment ----------------------------------


def _to_state(state, storage, upload, backend):
    """Bring a fresh upload to ``state``."""
    if state == "created":
        return
    data = data_of(2000)
    if state == "uploading":
        send(upload, connect(storage, upload, len(data)), data[:CHUNK])
    elif state == "paused":
        channel = connect(storage, upload, len(data))
        send(upload, channel, data[:CHUNK])
        upload.disconnect(channel)
    else:
        uploaded(storage, upload, data)
        if state == "waiting_for_finish":
            backend.handovers[0].deferred.callback(WAIT)
        elif state == "finished":
            backend.handovers[0].deferred.callback(DONE)
    assert upload.state == state


@pytest.mark.parametrize("state", ["created", "uploading", "paused", "handing_over", "finished"])
def test_finish_when_nothing_waits_is_too_late(state, storage, new_upload, backend):
    upload = new_upload()
    _to_state(state, storage, upload, backend)
    with pytest.raises(TooLate):
        upload.finish()
    assert upload.state == state


@pytest.mark.parametrize("state", ["handing_over", "waiting_for_finish", "finished"])
def test_cancel_once_the_handover_began_is_too_late(state, storage, new_upload, backend):
    upload = new_upload(remove_file_when_finished=False)
    _to_state(state, storage, upload, backend)
    with pytest.raises(TooLate):
        upload.cancel("cancelled by the backend")
    assert upload.state == state
    assert backend.cancels == []
    assert files_in(storage) == [upload.ticket.id]


def test_browser_cancel_during_the_handover_gets_too_late(storage, new_upload, backend):
    upload = new_upload()
    channel = uploaded(storage, upload, data_of(1500))
    upload.cancel_from_browser(channel, "cancelled by the browser: oops")
    assert channel.failures[-1][0] == ErrorCode.TOO_LATE
    assert upload.state == "handing_over"
    backend.handovers[0].deferred.callback(DONE)
    assert channel.last == ("finish_ok",)


# ---- cancel before the handover ---------------------------------------------


def test_backend_cancel_of_a_created_upload(storage, new_upload, backend):
    upload = new_upload()
    upload.cancel("cancelled by the backend")
    assert upload.state == "cancelled"
    assert backend.cancels == [(upload.ticket.id, "", "cancelled by the backend")]
    assert files_in(storage) == []


def test_backend_cancel_of_a_paused_upload_removes_the_part_file(storage, new_upload, backend):
    upload = new_upload()
    _to_state("paused", storage, upload, backend)
    upload.cancel("cancelled by the backend")
    assert upload.state == "cancelled"
    assert backend.cancels == [(upload.ticket.id, "holiday.jpg", "cancelled by the backend")]
    assert files_in(storage) == []


def test_backend_cancel_reaches_the_connected_browser_as_msg_cancel(storage, new_upload, backend):
    upload = new_upload()
    data = data_of(3000)
    channel = connect(storage, upload, len(data))
    send(upload, channel, data[:CHUNK])
    upload.cancel("cancelled by the backend")
    assert upload.state == "cancelled"
    assert channel.last == ("cancelled", "cancelled by the backend", ErrorCode.CANCELLED)
    assert backend.cancels == [(upload.ticket.id, "holiday.jpg", "cancelled by the backend")]
    assert files_in(storage) == []
    # the browser is no longer bound: what it still sends is ignored
    upload.receive(channel, data[CHUNK:2 * CHUNK])
    assert channel.acks == [CHUNK]


def test_browser_cancel_is_acknowledged_and_reported(storage, new_upload, backend):
    upload = new_upload()
    data = data_of(3000)
    channel = connect(storage, upload, len(data))
    send(upload, channel, data[:CHUNK])
    upload.cancel_from_browser(channel, "cancelled by the browser: changed my mind")
    assert upload.state == "cancelled"
    assert channel.last == ("cancel_acked",)
    assert backend.cancels == [
        (upload.ticket.id, "holiday.jpg", "cancelled by the browser: changed my mind")
    ]
    assert files_in(storage) == []


def test_browser_error_cancels_and_is_answered_with_an_error(storage, new_upload, backend):
    upload = new_upload()
    channel = connect(storage, upload, 3000)
    upload.cancel_from_browser(channel, "error from frontend: disk on fire", REPLY_ERROR)
    assert upload.state == "cancelled"
    assert channel.failures == [(ErrorCode.CANCELLED, "error from frontend: disk on fire")]
    assert backend.cancels == [(upload.ticket.id, "holiday.jpg", "error from frontend: disk on fire")]
    assert files_in(storage) == []


def test_a_cancelled_upload_ignores_a_second_cancel(storage, new_upload, backend):
    upload = new_upload()
    upload.cancel("first")
    upload.cancel("second")
    assert upload.state == "cancelled"
    assert [reason for _, _, reason in backend.cancels] == ["first"]


# ---- disconnect, pause, reconnect -------------------------------------------


def test_disconnect_pauses_and_reconnect_resumes_at_the_bytes_on_disk(storage, new_upload, backend):
    upload = new_upload(remove_file_when_finished=False)
    data = data_of(5000)
    first = connect(storage, upload, len(data))
    send(upload, first, data[:2048])
    upload.disconnect(first)
    assert upload.state == "paused"
    assert os.path.getsize(part_path(storage, upload)) == 2048
    assert backend.cancels == []

    second = connect(storage, upload, len(data))
    assert upload.state == "uploading"
    assert second.file_positions == [2048]
    send(upload, second, data[2048:])
    backend.handovers[0].deferred.callback(DONE)
    assert second.last == ("finish_ok",)
    assert read(final_path(storage, upload)) == data


def test_resume_position_comes_from_the_file_not_a_counter(storage, new_upload, backend):
    """If the .part file is shorter than what was acked (e.g. a crash lost a
    tail), the browser is told to resend from what is really on disk."""
    upload = new_upload(remove_file_when_finished=False)
    data = data_of(5000)
    first = connect(storage, upload, len(data))
    send(upload, first, data[:3072])
    upload.disconnect(first)
    os.truncate(part_path(storage, upload), 2000)

    second = connect(storage, upload, len(data))
    assert second.file_positions == [2000]
    send(upload, second, data[2000:])
    backend.handovers[0].deferred.callback(DONE)
    assert read(final_path(storage, upload)) == data


def test_pause_keeps_the_bytes_and_frees_the_upload(storage, new_upload, backend):
    """After MsgPause the browser closes; a new connection may resume at once."""
    upload = new_upload()
    data = data_of(5000)
    channel = connect(storage, upload, len(data))
    send(upload, channel, data[:CHUNK])
    upload.pause(channel)
    assert upload.state == "paused"
    upload.receive(channel, data[CHUNK:2 * CHUNK])  # no longer bound
    assert channel.acks == [CHUNK]
    assert read(part_path(storage, upload)) == data[:CHUNK]
    assert backend.cancels == []
    again = connect(storage, upload, len(data))
    assert again.failures == []
    assert again.file_positions == [CHUNK]


def test_second_connection_is_refused_and_the_first_stays_bound(storage, new_upload, backend):
    upload = new_upload()
    data = data_of(5000)
    first = connect(storage, upload, len(data))
    send(upload, first, data[:CHUNK])
    second = connect(storage, upload, len(data))
    assert [code for code, _ in second.failures] == [ErrorCode.UPLOAD_BUSY]
    assert second.of("conf") == []
    assert upload.state == "uploading"
    # chunks from the intruder are not stored; the first one goes on
    upload.receive(second, data[CHUNK:2 * CHUNK])
    assert second.acks == []
    upload.disconnect(second)
    assert upload.state == "uploading"
    send(upload, first, data[CHUNK:2 * CHUNK])
    assert first.acks == [CHUNK, CHUNK]
    assert read(part_path(storage, upload)) == data[:2 * CHUNK]


def test_reconnect_with_another_file_size_is_refused(storage, new_upload, backend):
    upload = new_upload()
    data = data_of(5000)
    first = connect(storage, upload, len(data))
    send(upload, first, data[:CHUNK])
    upload.disconnect(first)
    changed = connect(storage, upload, len(data) + 1)
    assert [code for code, _ in changed.failures] == [ErrorCode.FILE_CHANGED]
    assert changed.of("conf") == []
    assert upload.state == "paused"
    assert read(part_path(storage, upload)) == data[:CHUNK]
    # the right file still resumes
    assert connect(storage, upload, len(data)).file_positions == [CHUNK]


def test_reconnect_during_the_handover_waits_for_the_end(storage, new_upload, backend):
    upload = new_upload()
    data = data_of(2000)
    first = uploaded(storage, upload, data)
    upload.disconnect(first)
    second = connect(storage, upload, len(data))
    assert second.of("conf") == [("conf", 1, len(data), SEND_AHEAD)]
    assert second.failures == []
    assert upload.state == "handing_over"
    backend.handovers[0].deferred.callback(DONE)
    assert second.last == ("finish_ok",)
    assert first.of("finish_ok") == []


def test_reconnect_while_waiting_for_finish_upload(storage, new_upload, backend):
    upload = new_upload()
    data = data_of(2000)
    first = uploaded(storage, upload, data)
    backend.handovers[0].deferred.callback(WAIT)
    upload.disconnect(first)
    second = connect(storage, upload, len(data))
    assert second.file_positions == [len(data)]
    upload.finish()
    assert second.last == ("finish_ok",)


def test_reconnect_after_finished_replays_the_happy_end(storage, new_upload, backend):
    upload = new_upload()
    data = data_of(2000)
    uploaded(storage, upload, data)
    backend.handovers[0].deferred.callback(DONE)
    late = connect(storage, upload, len(data))
    assert late.calls == [("conf", 1, len(data), SEND_AHEAD), ("finish_ok",)]
    assert len(backend.handovers) == 1


def test_reconnect_after_cancelled_is_told_why(storage, new_upload, backend):
    upload = new_upload()
    data = data_of(2000)
    upload.cancel("cancelled by the backend")
    late = connect(storage, upload, len(data))
    assert len(late.failures) == 1
    code, text = late.failures[0]
    assert code == ErrorCode.CANCELLED
    assert "cancelled by the backend" in text
    assert late.of("conf") == []
    assert files_in(storage) == []


# ---- bad chunks -------------------------------------------------------------


@pytest.mark.parametrize(
    "chunk_sizes, why",
    [
        ([1024, 1024, 1000], "past the end of the file"),
        ([1025], "larger than the chunk size"),
    ],
    ids=["past-the-end", "oversize"],
)
def test_bad_chunk_cancels_with_a_protocol_error(chunk_sizes, why, storage, new_upload, backend):
    upload = new_upload()
    channel = connect(storage, upload, 3000)
    for size in chunk_sizes:
        upload.receive(channel, data_of(size))
    assert upload.state == "cancelled"
    (code, text), = channel.failures
    assert code == ErrorCode.PROTOCOL
    (cancel,) = backend.cancels
    assert cancel[0] == upload.ticket.id
    assert cancel[2] == text  # the backend learns the same reason
    assert files_in(storage) == []
    assert backend.handovers == []


def test_oversize_frame_reported_by_the_websocket_layer_cancels(storage, new_upload, backend):
    upload = new_upload()
    channel = connect(storage, upload, 3000)
    upload.frame_too_large(channel, 4096)
    assert upload.state == "cancelled"
    assert [code for code, _ in channel.failures] == [ErrorCode.PROTOCOL]
    assert len(backend.cancels) == 1
    assert files_in(storage) == []


@pytest.mark.parametrize("stray", [b"x", b""], ids=["one-byte", "empty"])
def test_stray_chunk_during_the_handover_does_not_break_it(stray, storage, new_upload, backend):
    """A chunk after the last byte cannot cancel the handover, and must not
    crash the server (an empty binary frame included)."""
    upload = new_upload(remove_file_when_finished=False)
    data = data_of(2000)
    channel = uploaded(storage, upload, data)
    upload.receive(channel, stray)
    assert upload.state == "handing_over"
    assert backend.cancels == []
    backend.handovers[0].deferred.callback(DONE)
    assert upload.state == "finished"
    assert read(final_path(storage, upload)) == data


# ---- the idle timeout -------------------------------------------------------


def test_idle_timeout_cancels_an_upload_nobody_started(clock, storage, new_upload, backend):
    upload = new_upload()
    clock.advance(IDLE - 1)
    assert upload.state == "created"
    clock.advance(1)
    assert upload.state == "cancelled"
    ((ticket_id, _, reason),) = backend.cancels
    assert ticket_id == upload.ticket.id
    assert "idle" in reason


def test_idle_timeout_tells_a_connected_browser_and_removes_the_part(clock, storage, new_upload, backend):
    upload = new_upload()
    channel = connect(storage, upload, 5000)
    send(upload, channel, data_of(CHUNK))
    clock.advance(IDLE)
    assert upload.state == "cancelled"
    ((code, text),) = channel.failures
    assert code == ErrorCode.CANCELLED
    assert "idle" in text
    assert "idle" in backend.cancels[0][2]
    assert files_in(storage) == []


def test_idle_timeout_of_a_paused_upload(clock, storage, new_upload, backend):
    upload = new_upload()
    _to_state("paused", storage, upload, backend)
    clock.advance(IDLE)
    assert upload.state == "cancelled"
    assert "idle" in backend.cancels[0][2]
    assert files_in(storage) == []


def test_each_chunk_resets_the_idle_timeout(clock, storage, new_upload, backend):
    upload = new_upload()
    data = data_of(5000)
    channel = connect(storage, upload, len(data))
    for i in range(3):
        clock.advance(IDLE - 1)
        send(upload, channel, data[i * CHUNK:(i + 1) * CHUNK])
    clock.advance(IDLE - 1)
    assert upload.state == "uploading"
    assert backend.cancels == []
    clock.advance(1)
    assert upload.state == "cancelled"


def test_connect_and_reconnect_reset_the_idle_timeout(clock, storage, new_upload, backend):
    upload = new_upload()
    clock.advance(IDLE - 1)
    first = connect(storage, upload, 5000)
    clock.advance(IDLE - 1)
    upload.disconnect(first)
    clock.advance(IDLE - 1)
    connect(storage, upload, 5000)
    clock.advance(IDLE - 1)
    assert upload.state == "uploading"
    assert backend.cancels == []
    clock.advance(1)
    assert upload.state == "cancelled"


def test_a_slow_handover_is_not_an_idle_upload(clock, storage, new_upload, backend):
    upload = new_upload()
    channel = uploaded(storage, upload, data_of(2000))
    clock.advance(IDLE * 3)
    assert upload.state == "handing_over"
    assert backend.cancels == []
    backend.handovers[0].deferred.callback(DONE)
    assert channel.last == ("finish_ok",)


# ---- handover failures and the confirm timeout ------------------------------


def test_confirm_timeout_fails_the_handover_and_deletes_the_file(clock, storage, new_upload, backend):
    upload = new_upload(remove_file_when_finished=False)
    channel = uploaded(storage, upload, data_of(2000))
    backend.handovers[0].deferred.callback(WAIT)
    clock.advance(CONFIRM - 1)
    assert upload.state == "waiting_for_finish"
    clock.advance(1)
    assert upload.state == "cancelled"
    ((code, text),) = channel.failures
    assert code == ErrorCode.HANDOVER_FAILED
    assert "finish_upload" in text
    assert files_in(storage) == []
    assert [reason for _, _, reason in backend.cancels] == [text]
    with pytest.raises(TooLate):
        upload.finish()


def test_finish_upload_in_time_stops_the_confirm_timeout(clock, storage, new_upload, backend):
    upload = new_upload(remove_file_when_finished=False)
    data = data_of(2000)
    channel = uploaded(storage, upload, data)
    backend.handovers[0].deferred.callback(WAIT)
    clock.advance(CONFIRM - 1)
    upload.finish()
    clock.advance(CONFIRM * 2)
    assert upload.state == "finished"
    assert channel.failures == []
    assert backend.cancels == []
    assert read(final_path(storage, upload)) == data


def test_failed_handover_cancels_and_deletes_the_file(storage, new_upload, backend):
    upload = new_upload(remove_file_when_finished=False)
    channel = uploaded(storage, upload, data_of(2000))
    backend.handovers[0].deferred.errback(
        HandoverFailed("backend answered the handover with HTTP 500")
    )
    assert upload.state == "cancelled"
    assert channel.failures == [
        (ErrorCode.HANDOVER_FAILED, "backend answered the handover with HTTP 500")
    ]
    assert files_in(storage) == []
    assert backend.cancels == [
        (upload.ticket.id, "holiday.jpg", "backend answered the handover with HTTP 500")
    ]
    late = connect(storage, upload, 2000)
    assert [code for code, _ in late.failures] == [ErrorCode.CANCELLED]


def test_unexpected_handover_crash_also_cancels(storage, new_upload, backend):
    upload = new_upload()
    channel = uploaded(storage, upload, data_of(2000))
    backend.handovers[0].deferred.errback(KeyError("bug"))
    assert upload.state == "cancelled"
    assert [code for code, _ in channel.failures] == [ErrorCode.HANDOVER_FAILED]
    assert files_in(storage) == []


# ---- retention --------------------------------------------------------------


@pytest.mark.parametrize("ending", ["finished", "cancelled"])
def test_an_ended_upload_is_forgotten_after_retention(ending, clock, registry, storage, new_upload, backend):
    upload = new_upload()
    if ending == "finished":
        _to_state("finished", storage, upload, backend)
    else:
        upload.cancel("cancelled by the backend")
    ticket_id = upload.ticket.id
    clock.advance(RETENTION - 1)
    assert registry.get(ticket_id) is upload
    clock.advance(1)
    assert registry.get(ticket_id) is None
    assert len(registry) == 0


def test_an_upload_in_progress_is_not_forgotten(clock, registry, storage, new_upload, backend):
    upload = new_upload()
    channel = connect(storage, upload, 5000)
    for _ in range(5):
        clock.advance(RETENTION / 4)
        send(upload, channel, data_of(10))
    assert registry.get(upload.ticket.id) is upload


def test_registry_lookup(registry, new_upload):
    upload = new_upload()
    assert registry.get(upload.ticket.id) is upload
    assert registry.get(upload.ticket.id.upper()) is upload
    assert registry.get("not-a-uuid") is None
    assert registry.get("") is None
    assert registry.get("../" + upload.ticket.id) is None
    assert registry.get("6f1c7e2a-0000-4000-8000-000000000000") is None


# ---- the storage folder fails -----------------------------------------------


def test_file_that_cannot_be_completed_cancels_with_a_server_error(storage, new_upload, backend):
    upload = new_upload()
    os.mkdir(final_path(storage, upload))  # the rename to the final name fails
    data = data_of(2000)
    channel = connect(storage, upload, len(data))
    send(upload, channel, data)
    assert upload.state == "cancelled"
    assert [code for code, _ in channel.failures] == [ErrorCode.SERVER_ERROR]
    assert len(backend.cancels) == 1
    assert backend.handovers == []
    assert not os.path.exists(part_path(storage, upload))


def test_first_connect_without_the_storage_folder_tells_the_browser(storage, new_upload, backend):
    upload = new_upload()
    shutil.rmtree(storage.folder)  # deleted while the server runs
    channel = connect(storage, upload, 3000)
    assert upload.state == "cancelled"
    assert [code for code, _ in channel.failures] == [ErrorCode.SERVER_ERROR]
    assert len(backend.cancels) == 1


def test_resume_without_the_part_file_tells_the_browser(storage, new_upload, backend):
    upload = new_upload()
    data = data_of(3000)
    first = connect(storage, upload, len(data))
    send(upload, first, data[:CHUNK])
    upload.disconnect(first)
    os.unlink(part_path(storage, upload))  # e.g. a cleaner of old files
    second = connect(storage, upload, len(data))
    assert upload.state == "cancelled"
    assert [code for code, _ in second.failures] == [ErrorCode.SERVER_ERROR]
    assert len(backend.cancels) == 1
