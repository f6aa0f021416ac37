"""What a page holds after its uploads end: 100 finished uploads on one
page leave no file data alive (the library drops its read blocks when an
upload ends), measured by Chromium itself after a garbage collection."""

from __future__ import annotations

from .harness import MiB, write_test_file

COUNT = 100
SIZE = MiB + 3  # each upload's whole file is one read block of the library


def heap_bytes(page) -> int:
    """JS heap in use plus ArrayBuffer backing stores, after a full GC."""
    cdp = page.page.context.new_cdp_session(page.page)
    try:
        cdp.send("HeapProfiler.collectGarbage")
        usage = cdp.send("Runtime.getHeapUsage")
    finally:
        cdp.detach()
    return usage["usedSize"] + usage.get("backingStorageSize", 0)


def test_a_hundred_finished_uploads_hold_no_file_data(tmp_path, server, backend, open_page):
    paths = []
    for n in range(COUNT):
        paths.append(tmp_path / f"photo-{n:03}.jpg")
        write_test_file(paths[-1], SIZE)
    tickets = [server.new_upload(backend) for _ in paths]
    page = open_page()
    before = heap_bytes(page)
    first = page.start(paths, tickets)[0]
    for i in range(first, first + COUNT):
        page.wait_for(i, "u.finished", 120, f"upload {i} finished")
    held = heap_bytes(page) - before
    # The uploaders are still referenced by the page (T.uploaders): each
    # kept its last read block before, COUNT x SIZE in all.
    assert held < 0.2 * COUNT * SIZE, f"{held / MiB:.1f} MiB still held after {COUNT} uploads"
    print(f"\n{COUNT} finished uploads of {SIZE / MiB:.0f} MiB hold {held / MiB:.1f} MiB")
