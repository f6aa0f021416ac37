"""
WebSocket upgrades of the upload URL, handed to Autobahn as they came.

Served the usual way, an upgrade is parsed twice: twisted.web makes a
``Request`` of it (headers, arguments, the resource tree), then Autobahn's
``WebSocketResource`` writes those headers out again and Autobahn parses
them once more.  For a small upload that is a good part of the server's
work.  So the head of each connection's first request is looked at before
twisted.web sees it: ``GET <upload path>`` (with or without a query) and an
``Upgrade: websocket`` header go straight to a protocol of the WebSocket
factory, which parses the bytes itself, as it does behind the resource.
Every other connection, and anything that is not plainly such an upgrade
(another path, a head over `HEAD_LIMIT`, HTTP/2), goes to twisted.web
unchanged, and the resource still serves upgrades that come there.

Until the head has come the connection is timed out as twisted.web's
channel would time it out (the site's timeout), so a connection that sends
nothing, or a head that never ends, is not kept for ever.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

HEAD_LIMIT = 16384  # twisted.web's own limit on a request's headers
_END_OF_HEAD = b"\r\n\r\n"


def is_upgrade(head: bytes, request_line_start: bytes) -> bool | None:
    """Whether ``head`` (a connection's first bytes) is a WebSocket upgrade
    of the path in ``request_line_start`` (``GET /path``): None while too
    little has come to say."""
    start = len(request_line_start)
    if len(head) <= start:
        return None if request_line_start.startswith(head) else False
    if not head.startswith(request_line_start) or head[start] not in b" ?":
        return False
    end = head.find(_END_OF_HEAD)
    if end < 0:
        return None if len(head) < HEAD_LIMIT else False
    if end > HEAD_LIMIT:
        return False
    lines = head[:end].split(b"\r\n")
    if not lines[0].endswith(b" HTTP/1.1"):
        return False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"upgrade":
            return b"websocket" in value.lower()
    return False


class FirstRequestRouter(Protocol):
    """A connection's protocol until its first request's head has come:
    then the WebSocket protocol or the HTTP channel, which it passes
    everything on to.  Until then it times the connection out as the
    channel would (the site's timeout)."""

    _log = Logger()

    def __init__(self, site: UploadSite, address):
        self._site = site
        self._address = address
        self._head = b""
        self._to: Any = None  # the protocol chosen
        self._idle: Any = None  # the timeout's IDelayedCall

    def connectionMade(self):
        if ITCPTransport.providedBy(self.transport):
            # As twisted.web's channel does for every connection.  Autobahn
            # means to as well, but before its protocol has the option, so
            # the error is swallowed: a small message right after another
            # (MsgAllDone after the last MsgChunkAck) then waited ~40 ms
            # for the browser's delayed ACK.
            self.transport.setTcpNoDelay(True)
        if self._site.timeOut is not None:
            self._idle = self._site.reactor.callLater(self._site.timeOut, self._time_out)

    def _time_out(self):
        self._idle = None
        transport: Any = self.transport
        self._log.info("Timing out client: {peer}", peer=str(transport.getPeer()))
        transport.abortConnection()  # nothing was written to it

    def dataReceived(self, data):
        if self._to is not None:
            self._to.dataReceived(data)
            return
        head = self._head + data
        upgrade = is_upgrade(head, self._site.upgrade_request_line)
        if upgrade is None:
            self._head = head
            return
        self._head = b""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        protocol = self._site.websocket_factory.buildProtocol(self._address) if upgrade else None
        if protocol is None:  # not an upgrade, or the factory would not have it
            protocol = self._site.http_channel(self._address)
        self._to = protocol
        protocol.makeConnection(self.transport)
        protocol.dataReceived(head)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._to is not None:
            to, self._to = self._to, None
            to.connectionLost(reason)


class UploadSite(Site):
    """A Site whose connections start with a `FirstRequestRouter`:
    upgrades of ``websocket_path`` go to ``websocket_factory`` directly."""

    def __init__(self, resource, websocket_path: bytes, websocket_factory, **kwargs):
        super().__init__(resource, **kwargs)
        self.upgrade_request_line = b"GET " + websocket_path
        self.websocket_factory = websocket_factory

    def buildProtocol(self, addr):
        return FirstRequestRouter(self, addr)

    def http_channel(self, addr):
        """What Site.buildProtocol makes: twisted.web's channel."""
        return super().buildProtocol(addr)
