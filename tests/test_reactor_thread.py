"""
No fsync, rename, unlink, stat or record write runs on the reactor thread: a
real in-process server with its storage pool, the blocking calls of `os`
watched while uploads go through every path (fsync per chunk, pause and
resume, wait and finish_upload, done with removal, a browser cancel, a
backend cancel, /health, a restart that restores and re-hands over); nor
a stat of the library files that browsers load.
"""

from __future__ import annotations

import os
import sys
import threading
from urllib.parse import urlsplit

import pytest_twisted
import treq

from conftest import start_server
from test_protocol import wait_until
from wsclient import upload

# stat and access too: on a lost network mount they hang as well.
WATCHED = ("fsync", "rename", "replace", "unlink", "truncate", "statvfs", "stat", "access")


def _excused() -> bool:
    """Called by the in-process test backend (tests/conftest.py), which reads
    the handed-over file on the reactor thread, or by the folder store's
    prepare() while a server is built (twistd runs it before the reactor):
    not the running server's doing."""
    frame = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            return False
        code = frame.f_code
        if code.co_filename.endswith(os.path.join("tests", "conftest.py")) or (
            code.co_name == "prepare" and code.co_filename.endswith("folder_store.py")
        ):
            return True
        frame = frame.f_back
    return False


class Watch:
    """Wraps os functions; notes every call on the reactor (main) thread
    that touches the storage folder."""

    def __init__(self, monkeypatch, folder):
        self.folder = str(folder)
        self.on_reactor: list[tuple] = []
        self.elsewhere = 0
        for name in WATCHED:
            self._wrap(monkeypatch, name)
        real_open = os.open

        def watched_open(path, flags, *args, **kw):
            if flags & os.O_CREAT:
                self._note("open(O_CREAT)", path)
            return real_open(path, flags, *args, **kw)

        monkeypatch.setattr(os, "open", watched_open)

    def _wrap(self, monkeypatch, name):
        real = getattr(os, name)

        def watched(*args, **kw):
            if not _excused():
                self._note(name, args[0] if args else None)
            return real(*args, **kw)

        monkeypatch.setattr(os, name, watched)

    def _note(self, name, target):
        if isinstance(target, int) or self.folder in str(target):
            if threading.current_thread() is threading.main_thread():
                self.on_reactor.append((name, target))
            else:
                self.elsewhere += 1


@pytest_twisted.ensureDeferred
async def test_no_blocking_file_call_on_the_reactor_thread(tmp_path, monkeypatch):
    server, stop = await start_server(tmp_path, fsync="chunk")
    watch = Watch(monkeypatch, server.storage_dir)
    data = os.urandom(200 * 1024 + 5)
    try:
        done = await server.new_upload(removeFileWhenFinished="true")
        outcome = await upload(server.port, done, data=data)
        assert outcome.last()[0] == "MsgAllDone"

        paused = await server.new_upload(removeFileWhenFinished="false", backendSecret="k")
        await upload(server.port, paused, data=data, stop_at=64 * 1024, action="pause")
        await wait_until(lambda: server.registry.get(paused).state == "paused")
        server.backend.answer = "wait"
        pending = upload(server.port, paused, data=data)
        await wait_until(lambda: server.registry.get(paused).state == "waiting_for_finish")
        assert (await server.call("finish_upload", id=paused, backendSecret="k")) == (200, "ok")
        await wait_until(lambda: server.registry.get(paused).state == "finished")
        assert (await pending).last()[0] == "MsgAllDone"

        by_browser = await server.new_upload()
        await upload(server.port, by_browser, data=data, stop_at=64 * 1024, action="cancel")
        by_backend = await server.new_upload(backendSecret="k")
        await upload(server.port, by_backend, data=data, stop_at=64 * 1024, action="drop")
        await wait_until(lambda: server.registry.get(by_backend).state == "paused")
        assert (await server.call("cancel_upload", id=by_backend, backendSecret="k"))[0] == 200

        health = await treq.get(f"http://127.0.0.1:{server.port}/health")
        assert health.code == 200, await health.text()  # the folder asked in a thread

        server.backend.answer = "hang"
        again = await server.new_upload(removeFileWhenFinished="false")
        pending = upload(server.port, again, data=data)
        await server.backend.wait_for_calls(len(server.backend.calls) + 1)
        await wait_until(lambda: server.registry.get(again).state == "handing_over")
    finally:
        await stop()
    await pending
    port = urlsplit(server.backend_url).port
    server.backend.answer = "done"
    server, stop = await start_server(tmp_path, backend_port_number=port, fsync="chunk")
    try:  # restored: handed over again
        restored = server.registry.get(again)
        await wait_until(lambda: restored.state == "finished", timeout=10)
    finally:
        await stop()

    assert watch.on_reactor == []
    assert watch.elsewhere > 20  # the watch saw the storage work, in storage threads


@pytest_twisted.ensureDeferred
async def test_the_library_files_are_read_off_the_reactor_thread(tmp_path, monkeypatch):
    from incoming.static import frontend_dir

    server, stop = await start_server(tmp_path)
    watch = Watch(monkeypatch, frontend_dir())
    try:
        for name in ("incoming.js", "incoming.mjs", "incoming.d.ts"):
            response = await treq.get(
                f"http://127.0.0.1:{server.port}/incoming/0.1/frontend/{name}")
            assert response.code == 200
            assert len(await response.content()) > 100
    finally:
        await stop()
    assert watch.on_reactor == []
    assert watch.elsewhere >= 3  # each request stats its file, in a storage thread
