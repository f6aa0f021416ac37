"""Real-browser end to end: Chromium loads incoming.js from the installed
`twistd -n incoming` and uploads files from disk, as a user's page would.

Each test checks what a user of the JavaScript API (api.md) sees: the
properties, flags and callbacks of the uploader, and what the backend gets.
"""

from __future__ import annotations

import json
import os
import math
import time
import urllib.request
import uuid

import pytest

from incoming.wire import ErrorCode

from .harness import FRONTEND_JS, LIBRARY_PATH, MiB, write_test_file

# The server's default chunk size (the 0.1 one).
CHUNK = 512 * 1024


# ---------------------------------------------------------------- helpers


def make_file(tmp_path, name, size):
    path = tmp_path / name
    return path, write_test_file(path, size)


def assert_consistent(progress, size):
    """Every onprogress snapshot is self-consistent, and what has arrived
    at the server never goes back."""
    assert progress, "onprogress was never called"
    acked = 0
    for s in progress:
        where = f"in snapshot {s}"
        assert s["bytes_total"] == size, where
        frac = s["frac_complete"]
        assert isinstance(frac, (int, float)) and not math.isnan(frac), where
        assert 0 <= frac <= 1, where
        if size:
            assert frac == pytest.approx(s["bytes_acked"] / size, abs=1e-9), where
        assert 0 <= s["bytes_acked"] <= s["bytes_tx"] <= size, where
        assert s["bytes_ahead"] == s["bytes_tx"] - s["bytes_acked"], where
        assert s["chunks_ahead"] == s["chunks_tx_now"] - s["chunks_acked_now"], where
        assert s["chunks_ahead"] >= 0, where
        assert isinstance(s["state_msg"], str) and s["state_msg"], where
        assert s["bytes_acked"] >= acked, f"bytes_acked went back from {acked} {where}"
        acked = s["bytes_acked"]


def assert_finished(page, index, size):
    """The end state of a successful upload, as api.md defines it."""
    rec = page.record(index)
    end = page.now(index)
    assert end["finished"] is True
    assert end["cancelled"] is False and end["cancelling"] is False
    assert end["frac_complete"] == 1
    assert end["bytes_acked"] == end["bytes_total"] == size
    assert end["can_pause"] is False, "a finished upload cannot be paused"
    assert end["can_cancel"] is False, "a finished upload cannot be cancelled"
    assert len(rec["finished"]) == 1, "onfinished must be called exactly once"
    assert rec["cancelled"] == [] and rec["errors"] == []
    assert rec["wrong_argument"] == 0, "callbacks get the uploader as their argument"
    assert rec["finished"][0]["finished"] is True
    assert_consistent(rec["progress"], size)
    return rec


def assert_handed_over(call, ticket, name, sha256, size, storage):
    assert call["cancelled"] == "no" and call["cancelReason"] == ""
    assert call["filenameFromBrowser"] == name
    # Stored under the ticket, never under the browser's name.
    assert call["filename"] == str(storage / ticket)
    assert call["file_exists"], "the file was not there at handover time"
    assert call["size"] == size
    assert call["sha256"] == sha256, "the handed-over file differs from the source"


def conf_messages(socket_entry):
    return [json.loads(m)["MsgData"] for m in socket_entry["received"]
            if json.loads(m).get("MsgType") == "MsgUploadConf"]


# ---------------------------------------------------------------- tests


def test_the_server_serves_the_library(server):
    """api.md: pages load incoming.js from the Incoming!! server itself."""
    with urllib.request.urlopen(server.url(LIBRARY_PATH), timeout=10) as response:
        assert response.status == 200
        assert "javascript" in response.headers["Content-Type"]
        body = response.read()
    assert body == FRONTEND_JS.read_bytes(), (
        "the installed server serves a different incoming.js than frontend/incoming.js")


def test_upload_is_handed_over_with_the_same_bytes(tmp_path, server, backend, open_page):
    size = 5 * MiB + 3
    path, sha = make_file(tmp_path, "report.bin", size)
    ticket = server.new_upload(backend)
    page = open_page()
    (i,) = page.start([path], [ticket])

    page.wait_for(i, "u.finished", 30, "finished")
    rec = assert_finished(page, i, size)
    first = rec["progress"][0]
    assert first["filename"] == "report.bin"
    assert first["finished"] is False and first["frac_complete"] < 1
    # The upload really went in chunks, and progress was reported on the way
    # (an ack covers at most 4 chunks with "batched-acks", wire.py).
    acked = [s["bytes_acked"] for s in rec["progress"]]
    assert acked == sorted(acked) and len(set(acked)) >= 1 + size // (4 * CHUNK)
    (call,) = backend.calls_for(ticket)
    assert_handed_over(call, ticket, "report.bin", sha, size, server.storage)
    # The handover came first, the browser's "finished" afterwards.
    assert rec["finished"][0]["t"] >= call["received_at"] * 1000 - 50
    page.wait_for(i, "!u.connected", 2, "connection closed after the upload")


def test_wait_then_finish_upload(tmp_path, server, backend, open_page):
    size = 2 * MiB + 11
    path, sha = make_file(tmp_path, "wait.bin", size)
    ticket = server.new_upload(backend)
    backend.answer(ticket, "wait")
    page = open_page()
    (i,) = page.start([path], [ticket])

    call = backend.wait_for_call(ticket, 30)
    assert_handed_over(call, ticket, "wait.bin", sha, size, server.storage)
    page.wait_for(i, "u.bytes_acked === u.bytes_total", 5, "all bytes acknowledged")
    page.sleep(0.7)  # the backend takes its time
    during = page.now(i)
    assert during["finished"] is False, "finished before the backend called finish_upload"
    assert during["frac_complete"] == 1
    assert during["can_pause"] is False, "no pause while the file is handed over"
    assert during["can_cancel"] is False, "no cancel while the file is handed over"
    assert page.record(i)["finished"] == []

    asked = time.time() * 1000
    assert server.backend_call("finish_upload", id=ticket) == (200, "ok")
    page.wait_for(i, "u.finished", 5, "finished after finish_upload")
    rec = assert_finished(page, i, size)
    assert rec["finished"][0]["t"] >= asked


def test_pause_and_unpause_resume_where_the_upload_stopped(tmp_path, server, backend, open_page):
    size = 24 * MiB + 5
    path, sha = make_file(tmp_path, "pausing.bin", size)
    ticket = server.new_upload(backend)
    page = open_page()
    (i,) = page.start([path], [ticket], [{"at_bytes_acked": 4 * MiB, "action": "pause"}])

    page.wait_for(i, "r.actions.length === 1 && u.paused && !u.connected", 10, "paused")
    (pause,) = page.record(i)["actions"]
    assert pause["before"]["can_pause"] is True and pause["before"]["paused"] is False
    assert pause["after"]["paused"] is True
    page.sleep(0.5)  # let whatever was in flight settle
    paused = page.now(i)
    part = server.storage / f"{ticket}.part"
    stored = part.stat().st_size
    assert paused["paused"] is True and paused["connected"] is False
    assert paused["finished"] is False and paused["cancelled"] is False
    assert paused["can_cancel"] is False, "api.md: a paused upload cannot be cancelled"
    assert 4 * MiB <= paused["bytes_acked"] <= stored < size
    page.sleep(0.7)
    assert page.now(i)["bytes_acked"] == paused["bytes_acked"], "progress while paused"
    assert part.stat().st_size == stored, "the server got data while paused"
    assert backend.calls_for(ticket) == []
    sockets_while_paused = len(page.sockets())

    unpause = page.act(i, "pause", "unpause")
    assert unpause["after"]["paused"] is False
    page.wait_for(i, "u.finished", 30, "finished after unpause")
    rec = assert_finished(page, i, size)  # includes: bytes_acked never went back
    after = [s for s in rec["progress"] if s["t"] >= unpause["after"]["t"]]
    assert min(s["bytes_acked"] for s in after) >= paused["bytes_acked"]
    resumed = page.sockets()[sockets_while_paused]
    assert conf_messages(resumed)[0]["FilePos"] == stored, (
        "the resumed connection must start at the bytes already stored")
    (call,) = backend.calls_for(ticket)
    assert_handed_over(call, ticket, "pausing.bin", sha, size, server.storage)


def test_cancel_in_the_browser(tmp_path, server, backend, open_page, wait_until):
    size = 32 * MiB
    path, _ = make_file(tmp_path, "cancel me.bin", size)
    ticket = server.new_upload(backend)
    reason = "user changed her mind"
    page = open_page()
    (i,) = page.start([path], [ticket],
                      [{"at_bytes_acked": 2 * MiB, "action": "cancel", "reason": reason}])

    page.wait_for(i, "r.cancelled.length > 0", 10, "oncancelled")
    page.sleep(0.3)  # no second call, nothing after
    rec = page.record(i)
    (cancel,) = rec["actions"]
    assert cancel["before"]["can_cancel"] is True
    assert cancel["after"]["cancelling"] is True, "cancelling while waiting for the server"
    assert cancel["after"]["cancelled"] is False
    end = page.now(i)
    assert end["cancelled"] is True and end["cancelling"] is False
    assert end["finished"] is False and end["connected"] is False
    assert end["can_cancel"] is False and end["can_pause"] is False
    assert reason in end["cancel_msg"]
    assert end["bytes_acked"] < size
    assert len(rec["cancelled"]) == 1 and rec["finished"] == []
    assert rec["wrong_argument"] == 0
    assert_consistent(rec["progress"], size)

    call = backend.wait_for_call(ticket, 5)
    assert call["cancelled"] == "yes" and call["filename"] == ""
    assert reason in call["cancelReason"]
    assert call["filenameFromBrowser"] == "cancel me.bin"
    wait_until(lambda: not (server.storage / f"{ticket}.part").exists(), 3,
               "the .part file is deleted")
    assert not (server.storage / ticket).exists()


def test_cancel_from_the_backend_reaches_the_browser_at_once(
        tmp_path, server, backend, open_page, proxies, wait_until):
    size = 16 * MiB
    path, _ = make_file(tmp_path, "big.bin", size)
    ticket = server.new_upload(backend)
    proxy = proxies(rate=4e6)  # slow enough that the upload is still going
    page = open_page(proxy.host)
    (i,) = page.start([path], [ticket])
    page.wait_for(i, "u.connected && u.bytes_acked >= 1048576", 10, "upload under way")
    sockets = len(page.sockets())

    asked = time.time() * 1000
    assert server.backend_call("cancel_upload", id=ticket) == (200, "ok")
    page.wait_for(i, "r.cancelled.length > 0", 3, "oncancelled")
    rec = page.record(i)
    delay = rec["cancelled"][0]["t"] - asked
    assert delay < 1000, f"oncancelled {delay:.0f} ms after the backend cancelled"
    assert len(page.sockets()) == sockets, (
        "the server's MsgCancel was not understood: the uploader only learnt of the "
        "cancellation by reconnecting")
    page.sleep(1.5)  # a cancelled upload does not come back
    rec = page.record(i)
    end = page.now(i)
    assert end["cancelled"] is True and end["finished"] is False
    assert end["connected"] is False and end["cancelling"] is False
    assert end["can_cancel"] is False and end["can_pause"] is False
    assert end["cancel_msg"]
    assert end["bytes_acked"] < size
    assert len(rec["cancelled"]) == 1 and rec["finished"] == []
    assert len(page.sockets()) == sockets, "reconnected after the cancellation"
    assert_consistent(rec["progress"], size)

    call = backend.wait_for_call(ticket, 5)
    assert call["cancelled"] == "yes" and call["filename"] == "" and call["cancelReason"]
    wait_until(lambda: not (server.storage / f"{ticket}.part").exists(), 3,
               "the .part file is deleted")


def test_error_codes_are_those_the_server_sends(open_page):
    """incoming.ERROR names every code of the server's MsgError (one
    table in incoming/wire.py) with the same number, plus the browser's
    own FILE_READ_ERROR, which must not collide with a server code."""
    exported = open_page().evaluate("() => incoming.ERROR")
    server_codes = {code.name: int(code) for code in ErrorCode}
    assert {name: exported.get(name) for name in server_codes} == server_codes
    assert isinstance(exported.get("FILE_READ_ERROR"), int)
    assert exported["FILE_READ_ERROR"] not in server_codes.values()


def test_unknown_ticket_is_an_error_without_retries(tmp_path, server, backend, open_page):
    path, _ = make_file(tmp_path, "orphan.bin", 100_000)
    ticket = str(uuid.uuid4())  # well-formed, never issued
    page = open_page()
    expected_code = page.evaluate("() => incoming.ERROR.UNKNOWN_UPLOAD")
    (i,) = page.start([path], [ticket])

    page.wait_for(i, "r.errors.length > 0", 5, "onerror")
    page.sleep(2.5)  # a retry would start within a second
    rec = page.record(i)
    end = page.now(i)
    assert len(rec["errors"]) == 1, "onerror must be called once"
    assert rec["errors"][0]["error_code"] == expected_code == 2
    assert end["error_code"] == expected_code
    assert end["error_msg"]
    assert end["finished"] is False and end["connected"] is False
    assert end["can_pause"] is False and end["can_cancel"] is False
    assert rec["finished"] == [] and rec["cancelled"] == []
    assert len(page.sockets()) == 1, "retried a ticket the server does not know"
    assert backend.calls_for(ticket) == []


def test_three_concurrent_uploads(tmp_path, server, backend, open_page, proxies):
    files = [make_file(tmp_path, f"file {n}.bin", size)
             for n, size in enumerate([4 * MiB + 1, 6 * MiB + 7, 8 * MiB + 13])]
    tickets = [server.new_upload(backend) for _ in files]
    proxy = proxies(rate=24e6)  # a shared link: all three take a while
    page = open_page(proxy.host)
    indexes = page.start([p for p, _ in files], tickets)

    for i in indexes:
        page.wait_for(i, "u.finished", 30, f"upload {i} finished")
    records = [assert_finished(page, i, p.stat().st_size)
               for i, (p, _) in zip(indexes, files)]
    # They ran at the same time: each was under way before any one finished.
    first_progress = [min(s["t"] for s in r["progress"] if 0 < s["bytes_acked"]) for r in records]
    finished_at = [r["finished"][0]["t"] for r in records]
    assert max(first_progress) < min(finished_at), (first_progress, finished_at)
    for ticket, (path, sha) in zip(tickets, files):
        (call,) = backend.calls_for(ticket)
        assert_handed_over(call, ticket, path.name, sha, path.stat().st_size, server.storage)


def test_cut_connection_is_resumed_after_it_comes_back(
        tmp_path, server, backend, open_page, proxies):
    size = 24 * MiB + 3
    path, sha = make_file(tmp_path, "travelling.bin", size)
    ticket = server.new_upload(backend)
    proxy = proxies(rate=8e6)
    page = open_page(proxy.host)
    (i,) = page.start([path], [ticket])
    page.wait_for(i, "u.connected && u.bytes_acked >= 6 * 1048576", 10, "upload under way")

    sockets_before_cut = len(page.sockets())
    killed = time.time() * 1000
    proxy.kill()
    page.wait_for(i, "!u.connected", 3, "connected=false after the cut")
    cut = page.now(i)
    assert cut["finished"] is False and cut["cancelled"] is False
    page.sleep(1.2)  # the network stays down for a while
    assert page.now(i)["connected"] is False
    sockets = page.sockets()
    noticed = next((s["t"] for s in page.record(i)["progress"]
                    if s["t"] >= killed and not s["connected"]), None)
    assert noticed is not None, "onprogress was not called when connected became false"
    retries = [s["created"] - noticed for s in sockets[sockets_before_cut:]]
    assert retries, "no reconnection attempt within 1.2 s of losing the connection"
    assert retries[0] <= 1000, (
        f"first retry {retries[0]:.0f} ms after the connection was lost (at most 1 s)")
    assert len(retries) <= 5, f"no backoff: {len(retries)} attempts in 1.2 s ({retries})"

    proxy.restart()
    page.wait_for(i, f"u.connected && u.bytes_acked > {cut['bytes_acked']}", 5,
                  "upload resumed within 5 s of the network coming back")
    page.wait_for(i, "u.finished", 30, "finished after the cut")
    rec = assert_finished(page, i, size)  # includes: bytes_acked never went back
    assert rec["errors"] == [], "a lost connection is not an error for the user"
    resumed = [s for s in page.sockets()[sockets_before_cut:] if conf_messages(s)]
    assert resumed, "no connection after the cut got as far as MsgUploadConf"
    assert conf_messages(resumed[0])[0]["FilePos"] >= cut["bytes_acked"] > 0, (
        "the upload must resume where it stopped, not from the start")
    (call,) = backend.calls_for(ticket)
    assert_handed_over(call, ticket, "travelling.bin", sha, size, server.storage)


@pytest.mark.parametrize("size", [0, 1])
def test_empty_and_one_byte_files(tmp_path, server, backend, open_page, size):
    path, sha = make_file(tmp_path, f"tiny-{size}.txt", size)
    ticket = server.new_upload(backend)
    page = open_page()
    (i,) = page.start([path], [ticket])

    page.wait_for(i, "u.finished", 10, "finished")
    rec = assert_finished(page, i, size)  # includes: frac_complete never NaN
    assert rec["finished"][0]["frac_complete"] == 1
    (call,) = backend.calls_for(ticket)
    assert_handed_over(call, ticket, f"tiny-{size}.txt", sha, size, server.storage)


def test_file_name_is_preserved_exactly(tmp_path, server, backend, open_page):
    name = "Überweisung 50% & mehr + ü.txt"
    path, sha = make_file(tmp_path, name, 1000)
    ticket = server.new_upload(backend)
    page = open_page()
    (i,) = page.start([path], [ticket])

    page.wait_for(i, "u.finished", 10, "finished")
    rec = assert_finished(page, i, 1000)
    assert rec["progress"][0]["filename"] == name
    (call,) = backend.calls_for(ticket)
    assert_handed_over(call, ticket, name, sha, 1000, server.storage)


def test_large_upload(tmp_path, server, backend, open_page):
    """256 MiB from disk; the benchmark mode sets the size, e.g.
    INCOMING_BROWSER_BENCH_MIB=1024 python -m pytest -s tests/browser -k large_upload"""
    mib = int(os.environ.get("INCOMING_BROWSER_BENCH_MIB", "256"))
    size = mib * MiB
    path, sha = make_file(tmp_path, "large.bin", size)
    ticket = server.new_upload(backend)
    try:
        page = open_page()
        (i,) = page.start([path], [ticket])

        page.wait_for(i, "u.finished", max(90, mib), "finished")
        rec = assert_finished(page, i, size)
        elapsed = (rec["finished"][0]["t"] - rec["started"]) / 1000
        print(f"\n{mib} MiB through Chromium: {size / elapsed / 1e6:.1f} MB/s ({elapsed:.1f} s)")
        (call,) = backend.calls_for(ticket)
        assert_handed_over(call, ticket, "large.bin", sha, size, server.storage)
    finally:
        path.unlink()


def settled(path) -> bytes:
    """The file's content once it stops growing."""
    content = path.read_bytes()
    for _ in range(50):
        time.sleep(0.2)
        now = path.read_bytes()
        if now == content:
            return now
        content = now
    raise AssertionError(f"{path} keeps changing")


def test_a_different_file_picked_again_for_a_ticket_is_refused_and_the_right_one_resumes(
        tmp_path, server, backend, open_page, proxies):
    """A user reloads the page and re-picks a file for the same ticket: one
    of the same name, size and date but other bytes gets FILE_CHANGED and
    adds nothing; the right one resumes where the first stopped."""
    size = 12 * MiB
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, sha = make_file(tmp_path / "a", "IMG_0001.CR3", size)
    other, _ = make_file(tmp_path / "b", "IMG_0001.CR3", size)
    stamp = time.time() - 3600
    for path in (first, other):
        os.utime(path, (stamp, stamp))
    ticket = server.new_upload(backend)
    proxy = proxies(rate=8e6)  # slow enough that the pause comes before the end
    page = open_page(proxy.host)
    (i,) = page.start([first], [ticket], [{"at_bytes_acked": 2 * MiB, "action": "pause"}])
    page.wait_for(i, "r.actions.length === 1 && u.paused && !u.connected", 10, "paused")
    part = server.storage / f"{ticket}.part"
    stored = settled(part)  # chunks in flight at the pause are written still
    assert 2 * MiB <= len(stored) < size
    assert stored == first.read_bytes()[:len(stored)]

    (j,) = page.start([other], [ticket])
    page.wait_for(j, "r.errors.length > 0", 10, "the other file refused")
    refused = page.now(j)
    assert refused["error_code"] == ErrorCode.FILE_CHANGED
    assert "not the file this upload started with" in refused["error_msg"]
    assert part.read_bytes() == stored, "bytes of the other file were appended"
    assert backend.calls_for(ticket) == []

    (k,) = page.start([first], [ticket])
    page.wait_for(k, "u.finished", 30, "the right file finished")
    (call,) = backend.calls_for(ticket)
    assert_handed_over(call, ticket, "IMG_0001.CR3", sha, size, server.storage)


def test_a_page_of_another_origin_imports_the_module_entry_and_uploads(
        tmp_path, server, backend, open_page):
    """incoming.mjs from the server, by a page of another origin (a module
    script is fetched with CORS): the same API, and an upload through it."""
    size = MiB + 5
    path, sha = make_file(tmp_path, "module.bin", size)
    ticket = server.new_upload(backend)
    page = open_page()
    names = page.evaluate("""async ([url, host]) => {
        const m = await import(url);
        m.set_server_hostname(host);
        return {names: Object.keys(m).sort(), same: m.default === window.incoming,
                uploader: typeof m.Uploader, code: m.ERROR.FILE_CHANGED};
    }""", [server.url("/incoming/0.1/frontend/incoming.mjs"), server.host])
    assert names == {"names": ["ERROR", "Uploader", "default", "find", "forget", "remember",
                               "set_server_hostname", "unfinished", "version"],
                     "same": True, "uploader": "function", "code": 4}
    (i,) = page.start([path], [ticket])  # the page's global is now the module's library
    page.wait_for(i, "u.finished", 30, "finished")
    assert_finished(page, i, size)
    (call,) = backend.calls_for(ticket)
    assert_handed_over(call, ticket, "module.bin", sha, size, server.storage)
