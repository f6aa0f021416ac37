"""A page reloaded in the middle of an upload, in Chromium: incoming.remember
kept a note of it, so after the reload incoming.find tells which ticket the
re-picked file belongs to, and the upload resumes from the server's
FilePos; a different file of the same size is not taken for it, and the
server refuses it (FILE_CHANGED) with nothing appended.  A full
localStorage costs the note, never the upload."""

from __future__ import annotations

import os

from .harness import MiB, write_test_file
from .test_browser_uploads import assert_finished, assert_handed_over, conf_messages

PICKED = "document.getElementById('files').files[0]"


def pick(page, path):
    page.page.set_input_files("#files", [str(path)])


def test_a_reload_in_the_middle_resumes_with_the_same_file_and_refuses_another(
        tmp_path, server, backend, open_page, proxies, wait_until):
    size = 16 * MiB + 5
    path = tmp_path / "camera.raw"
    sha = write_test_file(path, size)
    other = tmp_path / "other.raw"  # same size, other bytes, same date
    write_test_file(other, size)
    os.utime(other, (path.stat().st_atime, path.stat().st_mtime))
    ticket = server.new_upload(backend)
    proxy = proxies(rate=4 * MiB)
    page = open_page(proxy.host)
    (i,) = page.start([path], [ticket])
    assert page.evaluate("i => incoming.remember(T.uploaders[i])", i) is True
    page.wait_for(i, "u.bytes_acked >= 0.4 * u.bytes_total", 60, "40 % uploaded")

    page.page.reload()
    notes = page.evaluate("() => incoming.unfinished()")
    assert [n["ticket"] for n in notes] == [ticket] and notes[0]["size"] == size
    assert "name" not in notes[0], "the file name was kept without being asked"
    part = server.storage / f"{ticket}.part"
    wait_until(lambda: f"upload {ticket}: browser disconnected" in server.log(), 10,
               "the server saw the reload")  # what was on its way has arrived
    held = part.stat().st_size
    assert held >= 0.4 * size

    pick(page, other)  # the helper does not take another file for it...
    assert page.evaluate(f"() => incoming.find({PICKED})") is None
    (j,) = page.start([other], [ticket])  # ...and the server refuses it if used anyway
    page.wait_for(j, "u.error_code !== -1", 30, "refused")
    assert page.now(j)["error_code"] == 4, page.now(j)
    assert part.stat().st_size == held, "bytes of another file were appended"
    assert [n["ticket"] for n in page.evaluate("() => incoming.unfinished()")] == [ticket]

    pick(page, path)
    found = page.evaluate(f"() => incoming.find({PICKED})")
    assert found is not None and found["ticket"] == ticket
    (k,) = page.start([path], [found["ticket"]])
    page.evaluate("i => incoming.remember(T.uploaders[i])", k)
    page.wait_for(k, "u.finished", 60, "finished after the reload")
    assert_finished(page, k, size)
    confs = [conf_messages(s) for s in page.sockets() if conf_messages(s)]
    assert confs[-1][0]["FilePos"] >= held > 0, "it did not resume where it stopped"
    (call,) = backend.calls_for(ticket)
    assert_handed_over(call, ticket, "camera.raw", sha, size, server.storage)
    assert page.evaluate("() => incoming.unfinished()") == [], "the note outlived the upload"


def test_a_full_local_storage_costs_the_note_not_the_upload(tmp_path, server, backend, open_page):
    size = 3 * MiB + 1
    path = tmp_path / "report.pdf"
    sha = write_test_file(path, size)
    ticket = server.new_upload(backend)
    page = open_page()
    filled = page.evaluate("""() => {
        localStorage.clear();
        let n = 0;
        for (let size = 256 * 1024; size >= 1; size = Math.floor(size / 2)) {
            const block = "x".repeat(size);  // to the last byte the quota allows
            try { for (;;) { localStorage.setItem("junk" + n, block); n++; } } catch (e) {}
        }
        return n;
    }""")
    assert filled > 0
    (i,) = page.start([path], [ticket])
    assert page.evaluate("i => incoming.remember(T.uploaders[i])", i) is False
    page.wait_for(i, "u.finished", 30, "finished")
    assert_finished(page, i, size)
    (call,) = backend.calls_for(ticket)
    assert_handed_over(call, ticket, "report.pdf", sha, size, server.storage)
    page.evaluate("() => localStorage.clear()")
