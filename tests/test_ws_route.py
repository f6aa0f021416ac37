"""Upgrades of the upload URL go to Autobahn without twisted.web, and
everything else is served by twisted.web as before (real ports)."""

import hashlib
import os

import pytest
import pytest_twisted
from autobahn.twisted.resource import WebSocketResource
from test_protocol import wait_until
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.web.resource import Resource
from twisted.web.server import Site
from wsclient import upload

from incoming.ws_route import HEAD_LIMIT, UploadSite, is_upgrade

LINE = b"GET /incoming/0.1/frontend/upload_ws"
UPGRADE = (
    b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.mark.parametrize(
    "head, expected",
    [
        (b"", None),
        (b"GE", None),
        (LINE, None),
        (LINE + b" HTTP/1.1\r\nUpgrade: websocket\r\n", None),  # the head goes on
        (LINE + UPGRADE, True),
        (LINE + b"?x=1" + UPGRADE, True),
        (LINE + b" HTTP/1.1\r\nuPgRaDe :  WebSocket\r\n\r\n", True),
        (LINE + b" HTTP/1.1\r\nHost: h\r\n\r\n", False),  # no Upgrade header
        (LINE + b" HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", False),
        (LINE + b" HTTP/1.0\r\nUpgrade: websocket\r\n\r\n", False),
        (LINE + b"/more" + UPGRADE, False),  # another path: twisted.web's
        (LINE + b"x" + UPGRADE, False),
        (b"POST /incoming/0.1/backend/new_upload HTTP/1.1\r\n", False),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", False),
        (LINE + b" HTTP/1.1\r\nX: " + b"y" * HEAD_LIMIT, False),  # too long a head
        (LINE + b" HTTP/1.1\r\nX: " + b"y" * HEAD_LIMIT + b"\r\nUpgrade: websocket\r\n\r\n", False),
    ],
)
def test_what_counts_as_an_upgrade_of_the_upload_url(head, expected):
    assert is_upgrade(head, LINE) is expected


class Raw(protocol.Protocol):
    """A client that writes bytes and keeps what it is answered."""

    def __init__(self):
        self.received = b""
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(self.received)


async def connect(port) -> Raw:
    return await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Raw())


@pytest.fixture
def resource_renders(monkeypatch):
    """How many requests reached Autobahn's WebSocketResource."""
    calls = []
    render = WebSocketResource.render

    def counting(self, request):
        calls.append(request.path)
        return render(self, request)

    monkeypatch.setattr(WebSocketResource, "render", counting)
    return calls


@pytest_twisted.ensureDeferred
async def test_an_upload_goes_past_twisted_web_and_is_handed_over(server, resource_renders):
    data = os.urandom(200 * 1024 + 3)
    ticket = await server.new_upload()
    outcome = await upload(server.port, ticket, data=data)
    assert outcome.last() == ("MsgAllDone", {"Success": True})
    assert server.backend.calls[0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert resource_renders == []


@pytest_twisted.ensureDeferred
async def test_a_head_that_comes_a_byte_at_a_time_is_upgraded(server, resource_renders):
    client = await connect(server.port)
    for i in range(len(LINE + UPGRADE)):
        client.transport.write((LINE + UPGRADE)[i : i + 1])
        await task.deferLater(reactor, 0, lambda: None)
    await wait_until(lambda: b"\r\n\r\n" in client.received)
    assert client.received.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in client.received
    assert resource_renders == []
    client.transport.loseConnection()
    await client.closed


async def answer_of(port, request: bytes) -> bytes:
    client = await connect(port)
    client.transport.write(request)
    await wait_until(lambda: b"\r\n\r\n" in client.received)
    client.transport.loseConnection()
    await client.closed
    return client.received


@pytest_twisted.ensureDeferred
async def test_an_upgrade_of_a_longer_path_still_reaches_the_resource(server, resource_renders):
    answer = await answer_of(server.port, LINE + b"/more" + UPGRADE)
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert resource_renders == [b"/incoming/0.1/frontend/upload_ws/more"]


@pytest_twisted.ensureDeferred
async def test_what_is_not_an_upgrade_is_answered_as_twisted_web_answers_it(server):
    """The same requests through a plain Site of the same resource tree."""
    plain = reactor.listenTCP(0, Site(server.site.resource), interface="127.0.0.1")
    try:
        requests = [
            LINE + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            b"GET /incoming/0.1/frontend/incoming.js HTTP/1.1\r\n"
            b"Host: h\r\nConnection: close\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            b"GET /nowhere HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        ]
        for request in requests:
            ours = await answer_of(server.port, request)
            theirs = await answer_of(plain.getHost().port, request)
            assert ours.split(b"\r\n")[0] == theirs.split(b"\r\n")[0], request
    finally:
        await plain.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_head_over_the_limit_is_refused_as_twisted_web_refuses_it_and_the_server_goes_on(
    server,
):
    plain = reactor.listenTCP(0, Site(server.site.resource), interface="127.0.0.1")
    request = LINE + b" HTTP/1.1\r\nX: " + b"y" * (HEAD_LIMIT + 10) + b"\r\n"
    answers = []
    try:
        for port in (server.port, plain.getHost().port):
            client = await connect(port)
            client.transport.write(request)
            closing = client.closed
            closing.addTimeout(5, reactor)
            answers.append(await closing)
    finally:
        await plain.stopListening()
    assert answers[0] == answers[1]  # twisted.web hangs up without an answer
    ticket = await server.new_upload()
    outcome = await upload(server.port, ticket, data=b"still here")
    assert outcome.last() == ("MsgAllDone", {"Success": True})


@pytest_twisted.ensureDeferred
async def test_a_silent_connection_or_an_endless_head_is_timed_out(server):
    site = UploadSite(Resource(), b"/ws", None, timeout=0.3)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        silent = await connect(port.getHost().port)
        slow = await connect(port.getHost().port)
        slow.transport.write(b"GET /ws HTTP/1.1\r\nHost: h\r\n")
        for client in (silent, slow):
            closing = client.closed
            closing.addTimeout(3, reactor)
            assert await closing == b""
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_upgraded_connection_outlives_the_sites_timeout(server):
    server.site.timeOut = 0.2  # the connections made from now on
    ticket = await server.new_upload()
    slow = upload(server.port, ticket, data=os.urandom(256 * 1024), pace=0.15)
    outcome = await slow
    assert outcome.last() == ("MsgAllDone", {"Success": True})  # over 0.5 s, not cut at 0.2


class Keeper(protocol.Protocol):
    def connectionMade(self):
        self.factory.made.append(self)


@pytest_twisted.ensureDeferred
async def test_an_upgraded_connection_sends_without_waiting_for_acks(server):
    """TCP_NODELAY, as twisted.web sets it: without it a small message right
    after another waits for the peer's delayed ACK (~40 ms a handover)."""
    import socket

    keeper = protocol.Factory.forProtocol(Keeper)
    keeper.made = []
    port = reactor.listenTCP(0, UploadSite(Resource(), b"/ws", keeper), interface="127.0.0.1")
    try:
        client = await connect(port.getHost().port)
        client.transport.write(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")
        await wait_until(lambda: keeper.made)
        handle = keeper.made[0].transport.getHandle()
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        client.transport.loseConnection()
        await client.closed
    finally:
        await port.stopListening()
