"""The handover's HTTP client against a real backend on a loopback port:
no redirects (a 303 would turn the POST into a GET without the form), no
cookie jar, only the first bytes of an answer are read, connections are
kept and reused (and replaced when the backend closed them), and an IP
literal is connected to without a name lookup."""

from __future__ import annotations

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.internet.error import ConnectionLost
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web._newclient import RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from incoming.handover import (
    DONE,
    MAX_ANSWER_BYTES,
    BackendClient,
    HandoverFailed,
    PooledThenFresh,
    backend_http,
)


CHATTY_PIECES = 160  # 10 MiB in 64 KiB pieces


def Ticket(url):  # noqa: N802 (as the class it makes)
    from incoming.upload import Ticket as RealTicket

    return RealTicket("6f1c7e2a-0000-4000-8000-000000000000", url, "s3cret")


class Backend(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []  # (method, path, Cookie header)
        self.client_ports = []  # of each request's connection
        self.chatty_sent = None  # pieces of the long answer written before the hang-up

    def render(self, request):
        self.requests.append((request.method, request.path, request.getHeader(b"cookie")))
        self.client_ports.append(request.getClientAddress().port)
        if request.path == b"/moved":
            request.setResponseCode(303)
            request.setHeader(b"location", b"/elsewhere")
            return b""
        if request.path == b"/elsewhere":
            return b"done"
        if request.path == b"/cookie":
            request.addCookie(b"session", b"abc", path=b"/")
            return b"done"
        if request.path == b"/hang":  # never answers
            return NOT_DONE_YET
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


async def with_backend(test, idle_timeout=60.0, backend=None, timeout=10.0):
    """Run ``test(client, base URL, backend)`` against a backend on a
    loopback port (a `Backend` unless given), handover timeout ``timeout``."""
    backend = backend if backend is not None else Backend()
    port = reactor.listenTCP(0, Site(backend, timeout=idle_timeout), interface="127.0.0.1")
    http = backend_http(reactor, None)
    client = BackendClient(http, reactor, timeout)
    base = f"http://127.0.0.1:{port.getHost().port}"
    try:
        await test(client, base, backend)
    finally:
        await port.stopListening()
        await http.pooled._agent._pool.closeCachedConnections()


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


@pytest_twisted.ensureDeferred
async def test_handovers_to_one_backend_share_a_connection():
    async def test(client, base, backend):
        for _ in range(3):
            assert await client.hand_over(Ticket(base + "/"), "/f", "f.bin", None) == DONE
        await client.report_cancel(Ticket(base + "/"), "f.bin", "why")
        assert len(backend.client_ports) == 4 and len(set(backend.client_ports)) == 1

    await with_backend(test)


@pytest_twisted.ensureDeferred
async def test_a_connection_the_backend_closed_is_replaced():
    """The backend closes idle connections after 0.2 s (as gunicorn or
    node close theirs after a few seconds): the next handover still
    arrives, once, on a new connection."""

    async def test(client, base, backend):
        assert await client.hand_over(Ticket(base + "/"), "/f", "f.bin", None) == DONE
        await deferLater(reactor, 0.5, lambda: None)
        assert await client.hand_over(Ticket(base + "/"), "/f", "f.bin", None) == DONE
        assert len(backend.client_ports) == 2 and len(set(backend.client_ports)) == 2

    await with_backend(test, idle_timeout=0.2)


class CountingResolver:
    """The reactor's resolver, counting the names it is asked for."""

    def __init__(self, resolver):
        self._resolver = resolver
        self.names = []

    def resolveHostName(self, receiver, hostName, *args, **kwargs):
        self.names.append(hostName)
        return self._resolver.resolveHostName(receiver, hostName, *args, **kwargs)


@pytest_twisted.ensureDeferred
async def test_an_ip_literal_backend_is_not_looked_up():
    async def test(client, base, backend):
        resolver = CountingResolver(reactor.nameResolver)
        previous = reactor.installNameResolver(resolver)
        try:
            assert await client.hand_over(Ticket(base + "/"), "/f", "f.bin", None) == DONE
            assert resolver.names == []
            by_name = base.replace("127.0.0.1", "localhost")
            assert await client.hand_over(Ticket(by_name + "/"), "/f", "f.bin", None) == DONE
            assert resolver.names == ["localhost"]
        finally:
            reactor.installNameResolver(previous)

    await with_backend(test)


class FlakyHTTP:
    """An HTTP client whose first POST fails with ``error``."""

    def __init__(self, error, http):
        self.error, self.http, self.posts = error, http, 0

    def post(self, *args, **kwargs):
        self.posts += 1
        if self.posts == 1:
            return fail(self.error)
        return self.http.post(*args, **kwargs)


class CountingHTTP:
    def __init__(self, http):
        self.http, self.posts = http, 0

    def post(self, *args, **kwargs):
        self.posts += 1
        return self.http.post(*args, **kwargs)


@pytest.mark.parametrize("error", [
    RequestNotSent(),
    RequestTransmissionFailed([Failure(ConnectionLost())]),
    ResponseNeverReceived([Failure(ConnectionLost())]),
], ids=["not-sent", "cut-while-sent", "no-answer"])
@pytest_twisted.ensureDeferred
async def test_a_post_that_got_no_answer_on_a_kept_connection_goes_again_on_a_new_one(error):
    stub = StubTreq(Backend())
    pooled, fresh = FlakyHTTP(error, stub), CountingHTTP(stub)
    client = BackendClient(PooledThenFresh(pooled, fresh), reactor, 10.0)
    assert await client.hand_over(Ticket("http://backend.example/"), "/f", "f.bin", None) == DONE
    assert (pooled.posts, fresh.posts) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_a_post_that_got_an_answer_is_not_sent_again():
    stub = StubTreq(Backend())
    pooled, fresh = CountingHTTP(stub), CountingHTTP(stub)
    client = BackendClient(PooledThenFresh(pooled, fresh), reactor, 10.0)
    with pytest.raises(HandoverFailed, match="HTTP 303"):
        await client.hand_over(Ticket("http://backend.example/moved"), "/f", "f.bin", None)
    assert (pooled.posts, fresh.posts) == (1, 0)
    again = BackendClient(PooledThenFresh(FlakyHTTP(ConnectionRefusedError(), stub), fresh),
                          reactor, 10.0)
    with pytest.raises(HandoverFailed, match="request failed"):  # never connected: an error
        await again.hand_over(Ticket("http://backend.example/"), "/f", "f.bin", None)
    assert fresh.posts == 0


class ClosingBackend(Backend):
    """Closes a kept connection when its second request comes, unanswered:
    a backend whose keep-alive timeout (or restart) met the reuse."""

    def __init__(self):
        super().__init__()
        self.seen: dict = {}  # channel -> requests on it

    def render(self, request):
        count = self.seen[id(request.channel)] = self.seen.get(id(request.channel), 0) + 1
        if count == 2:
            request.channel.transport.abortConnection()
            return NOT_DONE_YET
        return super().render(request)


@pytest_twisted.ensureDeferred
async def test_a_kept_connection_the_backend_drops_as_it_is_reused_fails_no_handover():
    async def test(client, base, backend):
        assert await client.hand_over(Ticket(base + "/"), "/f", "f.bin", None) == DONE
        assert await client.hand_over(Ticket(base + "/"), "/f", "f.bin", None) == DONE
        # the second was dropped on the kept connection, then sent on a new one
        assert sorted(backend.seen.values()) == [1, 2] and len(backend.requests) == 2

    await with_backend(test, backend=ClosingBackend())


class FormEcho(Resource):
    """Keeps what each POST carried, as a backend would see it."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def render_POST(self, request):
        self.seen.append(
            (
                request.uri,
                request.getHeader(b"content-type"),
                request.getHeader(b"cookie"),
                request.content.read(),
                request.args,
            )
        )
        return b"done"


@pytest_twisted.ensureDeferred
async def test_the_form_reaches_the_backend_as_treq_sent_it():
    """The same target, Content-Type and body bytes as treq's post."""
    import treq as real_treq
    from twisted.web.client import Agent, HTTPConnectionPool

    from incoming.form_client import FormClient

    echo = FormEcho()
    port = reactor.listenTCP(0, Site(echo), interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=False)
    base = f"http://127.0.0.1:{port.getHost().port}"
    url = base + "/hand over/ünï?x=a b&y=ä"
    fields = {"id": "t-1", "filenameFromBrowser": "ré sumé & co.pdf", "cancelReason": "a=b"}
    try:
        ours = await FormClient(Agent(reactor, pool=pool)).post(url, data=fields)
        assert ours.code == 200 and await real_treq.content(ours) == b"done"
        theirs = await real_treq.post(url, data=fields, allow_redirects=False, pool=pool)
        assert await real_treq.content(theirs) == b"done"
    finally:
        await port.stopListening()
    assert echo.seen[0] == echo.seen[1]
    uri, content_type, cookie, _, args = echo.seen[0]
    assert uri == b"/hand%20over/%C3%BCn%C3%AF?x=a%20b&y=%C3%A4"
    assert content_type == b"application/x-www-form-urlencoded" and cookie is None
    assert args[b"filenameFromBrowser"] == ["ré sumé & co.pdf".encode()]
    assert args[b"cancelReason"] == [b"a=b"]
    with pytest.raises(ValueError):
        FormClient(None).post(url, data=fields, allow_redirects=True)


@pytest_twisted.ensureDeferred
async def test_a_handover_that_timed_out_is_not_sent_again():
    """The timeout gives up on the POST; it must not go again on a fresh
    connection behind the server's back (the backend would get a file the
    server has reported as failed)."""

    async def test(client, base, backend):
        assert await client.hand_over(Ticket(base + "/ok"), "/f", "f.bin", None) == DONE
        handing_over = client.hand_over(Ticket(base + "/hang"), "/f", "f.bin", None)
        handing_over.addTimeout(3, reactor)  # a retried POST nobody times out hangs
        with pytest.raises(HandoverFailed, match="did not answer"):
            await handing_over
        await deferLater(reactor, 0.5, lambda: None)
        assert [r[1] for r in backend.requests] == [b"/ok", b"/hang"]

    await with_backend(test, timeout=0.3)
