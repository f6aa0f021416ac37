"""The 0.1 protocol over a real listening port, with a 0.1-style client."""

import hashlib
import json
import os
import socket

import pytest_twisted
from twisted.internet import defer, reactor, task

from conftest import start_server
from wsclient import upload
from fakes import data_files


def payload(size: int) -> bytes:
    return os.urandom(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return sha256(f.read())


async def wait_until(predicate, timeout=5.0):
    """Poll the reactor (without blocking it) until predicate() holds."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not reached in time")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_full_upload_is_handed_over_with_the_same_bytes(server):
    data = payload(300 * 1024 + 17)
    ticket = await server.new_upload(removeFileWhenFinished="false", backendSecret="s3")
    outcome = await upload(server.port, ticket, data=data, name="holiday.mov")
    assert outcome.first("MsgUploadConf") == {"ChunkSizeKB": 64, "FilePos": 0, "SendAhead": 4}
    assert outcome.types().count("MsgChunkAck") == 5
    assert outcome.last() == ("MsgAllDone", {"Success": True})
    assert outcome.close_code == 1000
    (call,) = server.backend.calls
    assert call["id"] == ticket
    assert call["backendSecret"] == "s3"
    assert call["cancelled"] == "no"
    assert call["cancelReason"] == ""
    assert call["filenameFromBrowser"] == "holiday.mov"
    assert call["filename"] == os.path.join(server.storage_dir, ticket)
    assert sha256(call["content"]) == sha256(data)
    assert call["sha256"] == sha256(data)
    # removeFileWhenFinished=false: the backend may keep using the file
    assert file_sha256(call["filename"]) == sha256(data)
    assert data_files(server.storage_dir) == [ticket]


@pytest_twisted.ensureDeferred
async def test_file_is_removed_after_handover_by_default(server):
    data = payload(70 * 1024)
    ticket = await server.new_upload()
    outcome = await upload(server.port, ticket, data=data)
    assert outcome.last()[0] == "MsgAllDone"
    (call,) = server.backend.calls
    assert sha256(call["content"]) == sha256(data)  # it was there at handover
    # removed in a storage thread, soon after the browser is told
    await wait_until(lambda: data_files(server.storage_dir) == [])


@pytest_twisted.ensureDeferred
async def test_zero_byte_file_is_handed_over_as_an_empty_file(server):
    ticket = await server.new_upload(removeFileWhenFinished="0")
    outcome = await upload(server.port, ticket, data=b"", name="empty.txt")
    assert outcome.first("MsgUploadConf")["FilePos"] == 0
    assert outcome.last()[0] == "MsgAllDone"
    (call,) = server.backend.calls
    assert call["filename"] == os.path.join(server.storage_dir, ticket)
    assert call["size_at_handover"] == 0
    assert os.path.getsize(call["filename"]) == 0


@pytest_twisted.ensureDeferred
async def test_dropped_connection_resumes_where_it_stopped(server):
    data = payload(512 * 1024)
    ticket = await server.new_upload(removeFileWhenFinished="false")
    first = await upload(server.port, ticket, data=data, stop_at=192 * 1024, action="drop")
    assert first.acked == 192 * 1024
    assert "MsgAllDone" not in first.types()
    upload_ = server.registry.get(ticket)
    await wait_until(lambda: upload_.state == "paused")
    part = os.path.join(server.storage_dir, ticket + ".part")
    assert os.path.getsize(part) == 192 * 1024
    assert server.backend.calls == []

    second = await upload(server.port, ticket, data=data)
    assert second.first("MsgUploadConf")["FilePos"] == 192 * 1024
    assert second.acked == 320 * 1024
    assert second.last()[0] == "MsgAllDone"
    assert file_sha256(os.path.join(server.storage_dir, ticket)) == sha256(data)
    assert server.backend.calls[0]["sha256"] == sha256(data)


@pytest_twisted.ensureDeferred
async def test_pause_then_resume(server):
    data = payload(200 * 1024)
    ticket = await server.new_upload(removeFileWhenFinished="false")
    first = await upload(server.port, ticket, data=data, stop_at=64 * 1024, action="pause")
    assert "MsgError" not in first.types()
    upload_ = server.registry.get(ticket)
    await wait_until(lambda: upload_.state == "paused")
    second = await upload(server.port, ticket, data=data)
    assert second.first("MsgUploadConf")["FilePos"] == 64 * 1024
    assert second.last()[0] == "MsgAllDone"
    assert file_sha256(os.path.join(server.storage_dir, ticket)) == sha256(data)


@pytest_twisted.ensureDeferred
async def test_browser_cancel_is_acknowledged_and_reported(server):
    data = payload(200 * 1024)
    ticket = await server.new_upload()
    outcome = await upload(server.port, ticket, data=data, stop_at=64 * 1024, action="cancel")
    assert outcome.last() == ("MsgCancelAck", {"Ack": True})
    assert outcome.close_code == 1000
    (call,) = await server.backend.wait_for_calls(1)
    assert call["cancelled"] == "yes"
    assert call["filename"] == ""
    assert call["cancelReason"] == "user clicked cancel"  # unchanged, as 0.1 sent it
    # removed in a storage thread, soon after the browser is told
    await wait_until(lambda: data_files(server.storage_dir) == [])
    # the ticket is dead: a reconnect is told so
    again = await upload(server.port, ticket, data=data)
    assert again.last()[0] == "MsgError"
    assert again.last()[1]["ErrorCode"] == 6


@pytest_twisted.ensureDeferred
async def test_browser_error_cancels_with_its_message(server):
    ticket = await server.new_upload()
    outcome = await upload(server.port, ticket, data=payload(100 * 1024), stop_at=0, action="error")
    assert outcome.close_code == 1000
    (call,) = await server.backend.wait_for_calls(1)
    assert call["cancelled"] == "yes"
    assert call["cancelReason"] == "error from frontend: disk on fire"


@pytest_twisted.ensureDeferred
async def test_backend_cancel_reaches_a_connected_browser_at_once(server):
    ticket = await server.new_upload(backendSecret="pw")
    pending = upload(server.port, ticket, data=payload(200 * 1024), stop_at=64 * 1024,
                     action="idle")
    upload_ = server.registry.get(ticket)
    await wait_until(lambda: upload_.received == 64 * 1024)
    code, text = await server.call("cancel_upload", id=ticket, backendSecret="pw")
    assert (code, text) == (200, "ok")
    outcome = await pending  # the browser was told without sending anything
    assert outcome.last()[0] == "MsgCancel"
    assert outcome.last()[1]["Reason"] == "cancelled by the backend"
    assert outcome.close_code == 1000
    (call,) = await server.backend.wait_for_calls(1)
    assert call["cancelled"] == "yes"
    # removed in a storage thread, soon after the browser is told
    await wait_until(lambda: data_files(server.storage_dir) == [])


@pytest_twisted.ensureDeferred
async def test_unknown_ticket_gets_an_error(server):
    outcome = await upload(server.port, "6f1c7e2a-0000-4000-8000-000000000000", data=b"abc")
    assert outcome.types() == ["MsgError"]
    assert outcome.last()[1]["ErrorCode"] == 2
    assert outcome.close_code == 1000


@pytest_twisted.ensureDeferred
async def test_second_connection_on_a_busy_ticket_is_refused(server):
    data = payload(200 * 1024)
    ticket = await server.new_upload(removeFileWhenFinished="false")
    first = upload(server.port, ticket, data=data, stop_at=64 * 1024, action="idle")
    upload_ = server.registry.get(ticket)
    await wait_until(lambda: upload_.received == 64 * 1024)
    second = await upload(server.port, ticket, data=data)
    assert second.types() == ["MsgError"]
    assert second.last()[1]["ErrorCode"] == 3
    # the first connection is unharmed and still bound
    assert upload_.state == "uploading"
    code, _ = await server.call("cancel_upload", id=ticket)
    assert code == 200
    assert (await first).last()[0] == "MsgCancel"


@pytest_twisted.ensureDeferred
async def test_changed_file_size_is_refused_on_resume(server):
    data = payload(200 * 1024)
    ticket = await server.new_upload()
    await upload(server.port, ticket, data=data, stop_at=64 * 1024, action="pause")
    changed = await upload(server.port, ticket, data=data + b"more")
    assert changed.types() == ["MsgError"]
    assert changed.last()[1]["ErrorCode"] == 4
    assert server.registry.get(ticket).state == "paused"


@pytest_twisted.ensureDeferred
async def test_oversize_frame_is_an_error_and_cancels(server):
    ticket = await server.new_upload()
    outcome = await upload(server.port, ticket, data=payload(200 * 1024), oversize_frame=True)
    assert outcome.last()[0] == "MsgError"
    assert outcome.last()[1]["ErrorCode"] == 1
    assert "larger than the chunk size" in outcome.last()[1]["Msg"]
    (call,) = await server.backend.wait_for_calls(1)
    assert call["cancelled"] == "yes"
    assert server.registry.get(ticket).state == "cancelled"
    # removed in a storage thread, soon after the browser is told
    await wait_until(lambda: data_files(server.storage_dir) == [])


@pytest_twisted.ensureDeferred
async def test_chunk_past_the_declared_length_is_an_error_and_cancels(server):
    ticket = await server.new_upload()
    data = payload(100 * 1024)
    # declare 100 KiB but send 100 KiB + 10 bytes
    outcome = await upload(server.port, ticket, data=data + b"0123456789",
                           length=len(data) + 5)
    assert outcome.last()[0] == "MsgError"
    assert outcome.last()[1]["ErrorCode"] == 1
    assert "past the file size" in outcome.last()[1]["Msg"]
    (call,) = await server.backend.wait_for_calls(1)
    assert call["cancelled"] == "yes"
    # removed in a storage thread, soon after the browser is told
    await wait_until(lambda: data_files(server.storage_dir) == [])


@pytest_twisted.ensureDeferred
async def test_malformed_json_gets_an_error_and_close(server):
    outcome = await upload(server.port, "x", first_text=b"{not json")
    assert outcome.types() == ["MsgError"]
    assert outcome.last()[1]["ErrorCode"] == 1
    assert "malformed JSON" in outcome.last()[1]["Msg"]
    assert outcome.close_code == 1000


@pytest_twisted.ensureDeferred
async def test_unknown_message_type_gets_an_error_and_close(server):
    text = json.dumps({"MsgType": "MsgTeleport", "MsgData": {}}).encode()
    outcome = await upload(server.port, "x", first_text=text)
    assert outcome.types() == ["MsgError"]
    assert "MsgTeleport" in outcome.last()[1]["Msg"]
    assert outcome.close_code == 1000


@pytest_twisted.ensureDeferred
async def test_wait_then_finish_upload(server):
    server.backend.answer = "wait"
    data = payload(100 * 1024)
    ticket = await server.new_upload(backendSecret="right")
    pending = upload(server.port, ticket, data=data)
    await server.backend.wait_for_calls(1)
    upload_ = server.registry.get(ticket)
    await wait_until(lambda: upload_.state == "waiting_for_finish")

    code, text = await server.call("finish_upload", id=ticket, backendSecret="wrong")
    assert code == 403
    assert "backendSecret" in text
    assert upload_.state == "waiting_for_finish"
    assert not pending.called

    code, text = await server.call("finish_upload", id=ticket, backendSecret="right")
    assert (code, text) == (200, "ok")
    outcome = await pending
    assert outcome.last()[0] == "MsgAllDone"
    code, text = await server.call("finish_upload", id=ticket, backendSecret="right")
    assert code == 412


@pytest_twisted.ensureDeferred
async def test_reconnect_during_handover_waits_for_the_end(server):
    server.backend.answer = "wait"
    data = payload(64 * 1024)
    ticket = await server.new_upload()
    first = await upload(server.port, ticket, data=data, stop_at=64 * 1024, action="drop")
    await server.backend.wait_for_calls(1)
    upload_ = server.registry.get(ticket)
    await wait_until(lambda: upload_.state == "waiting_for_finish" and upload_.channel is None)
    assert first.acked == 64 * 1024
    second = upload(server.port, ticket, data=data)
    await wait_until(lambda: upload_.channel is not None)
    code, _ = await server.call("finish_upload", id=ticket)
    assert code == 200
    outcome = await second
    assert outcome.first("MsgUploadConf")["FilePos"] == len(data)
    assert outcome.last()[0] == "MsgAllDone"


async def check_failed_handover(server, backend_url=None, reason_part=""):
    data = payload(64 * 1024)
    params = {"signalFinishURL": backend_url} if backend_url else {}
    ticket = await server.new_upload(**params)
    outcome = await upload(server.port, ticket, data=data)
    assert outcome.last()[0] == "MsgError"
    assert outcome.last()[1]["ErrorCode"] == 7
    assert reason_part in outcome.last()[1]["Msg"]
    assert server.registry.get(ticket).state == "cancelled"
    # removed in a storage thread, soon after the browser is told
    await wait_until(lambda: data_files(server.storage_dir) == [])
    return outcome


@pytest_twisted.ensureDeferred
async def test_handover_target_down(server):
    await check_failed_handover(server, f"http://127.0.0.1:{free_port()}/gone",
                                "handover request failed")


@pytest_twisted.ensureDeferred
async def test_handover_answered_500(server):
    server.backend.answer = "error500"
    await check_failed_handover(server, reason_part="HTTP 500")
    calls = await server.backend.wait_for_calls(2)
    assert [c["cancelled"] for c in calls] == ["no", "yes"]
    assert "HTTP 500" in calls[1]["cancelReason"]


@pytest_twisted.ensureDeferred
async def test_handover_answered_garbage(server):
    server.backend.answer = "garbage"
    await check_failed_handover(server, reason_part="not done or wait")


@pytest_twisted.ensureDeferred
async def test_handover_never_answered(tmp_path):
    server, stop = await start_server(tmp_path, handover_timeout=0.5)
    try:
        server.backend.answer = "hang"
        await check_failed_handover(server, reason_part="did not answer")
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_finish_upload_never_called(tmp_path):
    server, stop = await start_server(tmp_path, handover_confirm_timeout=0.5)
    try:
        server.backend.answer = "wait"
        await check_failed_handover(server, reason_part="finish_upload")
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_fifty_concurrent_uploads(server):
    files = [payload(20 * 1024 + i * 997) for i in range(50)]
    tickets = [await server.new_upload(removeFileWhenFinished="false") for _ in files]
    outcomes = await defer.gatherResults(
        [upload(server.port, t, data=d) for t, d in zip(tickets, files)]
    )
    assert [o.last()[0] for o in outcomes] == ["MsgAllDone"] * 50
    for ticket, data in zip(tickets, files):
        assert file_sha256(os.path.join(server.storage_dir, ticket)) == sha256(data)
    assert len(server.backend.calls) == 50


@pytest_twisted.ensureDeferred
async def test_silent_connection_is_closed_after_the_websocket_timeout(tmp_path):
    server, stop = await start_server(tmp_path, websocket_timeout=2)
    try:
        outcome = await upload(server.port, "x", silent=True)
        assert outcome.types() == ["MsgError"], outcome
        assert "no MsgUploadReq within 2 s" in outcome.last()[1]["Msg"]
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_quiet_but_alive_browser_outlives_the_websocket_timeout(tmp_path):
    """Pings, answered by the browser, keep an idle connection open."""
    server, stop = await start_server(tmp_path, websocket_timeout=2)
    try:
        ticket = await server.new_upload()
        pending = upload(server.port, ticket, data=payload(100 * 1024),
                         stop_at=64 * 1024, action="idle")
        await task.deferLater(reactor, 3.5, lambda: None)
        assert not pending.called
        assert server.registry.get(ticket).state == "uploading"
        code, _ = await server.call("cancel_upload", id=ticket)
        assert code == 200
        assert (await pending).last()[0] == "MsgCancel"
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_the_browser_file_name_never_becomes_a_path(server):
    data = payload(10 * 1024)
    ticket = await server.new_upload(removeFileWhenFinished="false")
    outcome = await upload(server.port, ticket, data=data, name="../../../tmp/evil\x00.sh")
    assert outcome.last()[0] == "MsgAllDone"
    (call,) = server.backend.calls
    assert call["filename"] == os.path.join(server.storage_dir, ticket)
    assert call["filenameFromBrowser"] == "../../../tmp/evil\x00.sh"
    assert data_files(server.storage_dir) == [ticket]


@pytest_twisted.ensureDeferred
async def test_digest_none_hands_over_without_sha256(tmp_path):
    server, stop = await start_server(tmp_path, digest="none")
    try:
        ticket = await server.new_upload()
        assert (await upload(server.port, ticket, data=payload(1000))).last()[0] == "MsgAllDone"
        (call,) = server.backend.calls
        assert "sha256" not in call
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_byte_window_client_gets_a_window_and_may_fill_it(tmp_path):
    server, stop = await start_server(tmp_path, window=1024 * 1024)
    try:
        data = payload(3 * 1024 * 1024 + 5)
        ticket = await server.new_upload(removeFileWhenFinished="false")
        outcome = await upload(server.port, ticket, data=data, byte_window=True)
        conf = outcome.first("MsgUploadConf")
        assert conf == {"ChunkSizeKB": 64, "FilePos": 0, "SendAhead": 4,
                        "WindowBytes": 1024 * 1024}
        assert outcome.last()[0] == "MsgAllDone"
        assert server.backend.calls[0]["sha256"] == sha256(data)
        # a client that announces idle-timeout learns the server's
        told = await server.new_upload()
        outcome = await upload(server.port, told, data=b"x" * 100, features=["idle-timeout"])
        assert outcome.first("MsgUploadConf") == {"ChunkSizeKB": 64, "FilePos": 0, "SendAhead": 4,
                                                  "IdleTimeoutS": 43200}  # the 0.1 default: 12 h
        # a 0.1 client on the same server still gets the 0.1 answer
        old = await server.new_upload()
        outcome = await upload(server.port, old, data=b"x" * 100)
        assert outcome.first("MsgUploadConf") == {"ChunkSizeKB": 64, "FilePos": 0, "SendAhead": 4}
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_repeated_pauses_arm_one_close_and_the_server_closes_once(server):
    data = payload(200 * 1024)
    ticket = await server.new_upload()
    pending = upload(server.port, ticket, data=data, stop_at=64 * 1024,
                     action="pause-and-listen")
    await wait_until(lambda: server.registry.get(ticket).state == "paused")
    await task.deferLater(reactor, 0.2, lambda: None)  # all 100 MsgPause arrived

    def pause_closes():
        return [c for c in reactor.getDelayedCalls()
                if getattr(c.func, "__name__", "") == "close"
                and type(getattr(c.func, "__self__", None)).__name__ == "UploadProtocol"]

    assert len(pause_closes()) == 1  # one grace timer, not one per MsgPause
    outcome = await pending  # closed by the server after its grace
    assert outcome.close_code == 1000
    assert outcome.first("MsgUploadConf")["FilePos"] == 0


@pytest_twisted.ensureDeferred
async def test_a_pause_during_the_handover_keeps_the_connection_for_the_end(server, monkeypatch):
    from incoming import wsproto

    monkeypatch.setattr(wsproto, "PAUSE_CLOSE_GRACE", 0.2)  # a close would come first
    server.backend.answer = "wait"
    data = payload(100 * 1024)
    ticket = await server.new_upload(backendSecret="k")
    pending = upload(server.port, ticket, data=data, stop_at=len(data),
                     action="pause-and-listen")
    await wait_until(lambda: server.registry.get(ticket).state == "waiting_for_finish")
    await task.deferLater(reactor, 0.6, lambda: None)
    assert (await server.call("finish_upload", id=ticket, backendSecret="k")) == (200, "ok")
    outcome = await pending
    assert outcome.last()[0] == "MsgAllDone", outcome.messages


@pytest_twisted.ensureDeferred
async def test_untrusted_values_are_echoed_short(server):
    long_id = "x" * 10_000  # within one frame (64 KiB here)
    outcome = await upload(server.port, long_id, data=b"abc")
    assert outcome.last()[0] == "MsgError"
    assert len(outcome.last()[1]["Msg"]) < 200


@pytest_twisted.ensureDeferred
async def test_a_long_message_type_is_echoed_short(server):
    ticket = await server.new_upload()
    outcome = await upload(server.port, ticket, data=b"abc",
                           first_text=json.dumps({"MsgType": "Msg" + "Z" * 10_000,
                                                  "MsgData": {}}).encode())
    assert outcome.last()[0] == "MsgError"
    assert outcome.last()[1]["ErrorCode"] == 1
    assert "unknown MsgType 'MsgZZZ" in outcome.last()[1]["Msg"]
    assert len(outcome.last()[1]["Msg"]) < 200


@pytest_twisted.ensureDeferred
async def test_cancel_reasons_and_error_texts_with_unpaired_surrogates_reach_the_backend(server):
    data = payload(200 * 1024)
    cancelled = await server.new_upload()
    outcome = await upload(server.port, cancelled, data=data, stop_at=64 * 1024,
                           action="cancel", reason="no \udc80 more")
    assert outcome.last() == ("MsgCancelAck", {"Ack": True})
    failed = await server.new_upload()
    await upload(server.port, failed, data=data, stop_at=0, action="error",
                 error_text="read \ud800 failed" + "x" * 5000)
    await wait_until(lambda: len(server.backend.calls) >= 2)  # none came: the form failed
    calls = {c["id"]: c for c in server.backend.calls}
    assert calls[cancelled]["cancelReason"] == "no \ufffd more"  # as 0.1 (Go) passed it on
    reason = calls[failed]["cancelReason"]
    assert reason.startswith("error from frontend: read \ufffd failedxxx")
    assert len(reason) < 1100  # capped


@pytest_twisted.ensureDeferred
async def test_a_name_with_an_unpaired_surrogate_is_handed_over_with_a_replacement(server):
    data = payload(10 * 1024)
    ticket = await server.new_upload()
    outcome = await upload(server.port, ticket, data=data, name="ph\ud800oto \U0001f600.jpg")
    assert outcome.last()[0] == "MsgAllDone", outcome.messages
    (call,) = server.backend.calls
    assert call["filenameFromBrowser"] == "ph\ufffdoto \U0001f600.jpg"  # valid UTF-8
