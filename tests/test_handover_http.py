"""The handover's HTTP client against a real backend on a loopback port:
no redirects (a 303 would turn the POST into a GET without the form), no
cookie jar, and only the first bytes of an answer are read."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.internet.task import deferLater
from twisted.web.server import NOT_DONE_YET, Site

from incoming.handover import DONE, MAX_ANSWER_BYTES, BackendClient, HandoverFailed, backend_http


CHATTY_PIECES = 160  # 10 MiB in 64 KiB pieces


class Ticket:
    id, backend_secret = "6f1c7e2a-0000-4000-8000-000000000000", "s3cret"

    def __init__(self, url):
        self.signal_finish_url = url


class Backend(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []  # (method, path, Cookie header)
        self.chatty_sent = None  # pieces of the long answer written before the hang-up

    def render(self, request):
        self.requests.append((request.method, request.path, request.getHeader(b"cookie")))
        if request.path == b"/moved":
            request.setResponseCode(303)
            request.setHeader(b"location", b"/elsewhere")
            return b""
        if request.path == b"/elsewhere":
            return b"done"
        if request.path == b"/cookie":
            request.addCookie(b"session", b"abc", path=b"/")
            return b"done"
        if request.path == b"/chatty":  # "done", then 10 MiB more, slowly
            request.write(b"done")
            self._more(request, 0)
            return NOT_DONE_YET
        return b"done"

    def _more(self, request, pieces):
        if request._disconnected or pieces == CHATTY_PIECES:
            self.chatty_sent = pieces
            if not request._disconnected:
                request.finish()
            return
        request.write(b"x" * 65536)
        reactor.callLater(0.005, self._more, request, pieces + 1)


async def with_backend(test):
    backend = Backend()
    port = reactor.listenTCP(0, Site(backend), interface="127.0.0.1")
    http = backend_http(reactor, None)
    client = BackendClient(http, reactor, 10.0)
    base = f"http://127.0.0.1:{port.getHost().port}"
    try:
        await test(client, base, backend)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_redirect_is_a_failed_handover_not_a_get():
    async def test(client, base, backend):
        try:
            await client.hand_over(Ticket(base + "/moved"), "/f", "f.bin", None)
        except HandoverFailed as e:
            assert "HTTP 303" in str(e)
        else:
            raise AssertionError("a 303 was taken for an answer")
        assert [r[:2] for r in backend.requests] == [(b"POST", b"/moved")]

    await with_backend(test)


@pytest_twisted.ensureDeferred
async def test_a_backend_cookie_is_never_sent_back():
    async def test(client, base, backend):
        assert await client.hand_over(Ticket(base + "/cookie"), "/f", "f.bin", None) == DONE
        await client.report_cancel(Ticket(base + "/cookie"), "f.bin", "why")
        assert [r[2] for r in backend.requests] == [None, None]

    await with_backend(test)


@pytest_twisted.ensureDeferred
async def test_only_the_first_bytes_of_an_answer_are_read():
    async def test(client, base, backend):
        assert await client.hand_over(Ticket(base + "/chatty"), "/f", "f.bin", None) == DONE
        for _ in range(200):
            if backend.chatty_sent is not None:
                break
            await deferLater(reactor, 0.01, lambda: None)
        # the client hung up after MAX_ANSWER_BYTES: the rest was never sent
        assert backend.chatty_sent is not None and backend.chatty_sent < CHATTY_PIECES // 4
        assert MAX_ANSWER_BYTES < 65536

    await with_backend(test)
