"""Shared fixtures: a real server on a loopback port and a test backend."""

from __future__ import annotations

import os
from urllib.parse import urlencode

import attr
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource

from ceph_rgw import ceph_rgw  # noqa: F401 (fixture: one gateway for the whole session)
from twisted.web.server import NOT_DONE_YET, Site

from incoming.config import Settings
from incoming.storage_pool import StoragePool
from incoming.web import make_site


class FakeBackend(Resource):
    """Plays a web app backend: records handover POSTs, answers as told.

    ``answer`` is one of done, wait, error500, garbage, hang.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.answer = "done"
        self.calls: list[dict] = []
        self.hanging = []
        self._waiters: list[tuple[int, defer.Deferred]] = []

    def render_POST(self, request):
        call = {k.decode(): v[0].decode() for k, v in request.args.items()}
        if call.get("filename") and os.path.exists(call["filename"]):
            with open(call["filename"], "rb") as f:
                call["content"] = f.read() if os.path.getsize(call["filename"]) < 2**24 else None
            call["size_at_handover"] = os.path.getsize(call["filename"])
        self.calls.append(call)
        self._wake()
        if self.answer == "hang":
            self.hanging.append(request)
            return NOT_DONE_YET
        if self.answer == "error500":
            request.setResponseCode(500)
            return b"oops"
        if self.answer == "garbage":
            return b"<html>maybe</html>"
        return self.answer.encode()

    def wait_for_calls(self, n: int) -> defer.Deferred:
        """Fire when at least n POSTs have arrived."""
        d = defer.Deferred()
        self._waiters.append((n, d))
        self._wake()
        return d

    def _wake(self):
        for item in list(self._waiters):
            n, d = item
            if len(self.calls) >= n:
                self._waiters.remove(item)
                d.callback(self.calls)


@attr.s(auto_attribs=True)
class RunningServer:
    port: int
    registry: object
    storage_dir: str
    backend: FakeBackend
    backend_url: str
    http: HTTPClient
    site: object = None  # the server's twisted.web Site

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/incoming/0.1/backend/{path}"

    @defer.inlineCallbacks
    def call(self, path: str, **params):
        """POST to the backend API with form values; fire with (code, text)."""
        response = yield self.http.post(
            self.url(path),
            data=urlencode(params).encode(),
            headers={b"content-type": [b"application/x-www-form-urlencoded"]},
        )
        text = yield response.text()
        return response.code, text

    @defer.inlineCallbacks
    def new_upload(self, **params):
        params.setdefault("signalFinishURL", self.backend_url)
        code, text = yield self.call("new_upload", **params)
        assert code == 200, text
        return text


def make_settings(tmp_path, **overrides) -> Settings:
    values = dict(
        listen="tcp:0:interface=127.0.0.1",
        storage_dir=str(tmp_path / "storage"),
        chunk_size_kb=64,
        send_ahead=4,
        handover_timeout=5.0,
        handover_confirm_timeout=10.0,
        websocket_timeout=20.0,
    )
    values.update(overrides)
    return Settings(**values)


async def start_server(tmp_path, backend_port_number=0, **overrides):
    """A real server and test backend on loopback ports; returns (server, stop).

    A restart test passes the previous backend's port number, so that the
    signalFinishURL recorded in its tickets reaches the new backend.
    """
    backend = FakeBackend()
    backend_port = reactor.listenTCP(backend_port_number, Site(backend), interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=False)
    http = HTTPClient(Agent(reactor, pool=pool))
    settings = make_settings(tmp_path, **overrides)
    storage_pool = StoragePool(reactor)
    storage_pool.startService()
    site, registry = make_site(settings, reactor, http, run_blocking=storage_pool.run)
    await registry.restore()
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    server = RunningServer(
        port=port.getHost().port,
        registry=registry,
        storage_dir=settings.storage_dir,
        backend=backend,
        backend_url=f"http://127.0.0.1:{backend_port.getHost().port}/handover",
        http=http,
        site=site,
    )

    async def stop():
        for upload in registry:  # as a stopping server does: close connections
            if upload.channel is not None:
                upload.channel.transport.abortConnection()
        for request in backend.hanging:
            if not request.finished and not request._disconnected:
                request.finish()
        await port.stopListening()
        await backend_port.stopListening()
        await pool.closeCachedConnections()
        await registry.close_connections(reactor, timeout=1.0)  # queued storage work
        await storage_pool.stopService()

    return server, stop


@pytest_twisted.async_yield_fixture
async def server(tmp_path):
    running, stop = await start_server(tmp_path)
    yield running
    await stop()


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)
