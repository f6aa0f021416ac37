"""The takeover extension: a client that announces it replaces a bound
connection that no longer answers pings at once, instead of getting error
code 3 until the dead connection's ping timeout; a live holder keeps the
upload, and a 0.1 client sees no change."""

from __future__ import annotations

import base64
import json
import os
import time

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Protocol

from conftest import start_server
from test_protocol import wait_until
from wsclient import upload

CHUNK = 64 * 1024  # conftest's chunk size


def frame(payload: bytes, opcode: int) -> bytes:
    """One masked client frame (a client must mask)."""
    mask = os.urandom(4)
    size = len(payload)
    head = bytes([0x80 | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class Vanishing(Protocol):
    """A browser that sends MsgUploadReq and one chunk, then goes silent:
    it stops reading (no pong, no close), as a laptop that lost its link."""

    def connectionMade(self):
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (f"GET /incoming/0.1/frontend/upload_ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
             "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buffer = b""
        self.sent = False

    def dataReceived(self, data):
        self.buffer += data
        if not self.sent and b"\r\n\r\n" in self.buffer:
            self.sent = True
            f = self.factory
            request = {"MsgType": "MsgUploadReq",
                       "MsgData": {"Id": f.ticket, "LengthBytes": len(f.data), "Name": "v.bin"}}
            self.transport.write(frame(json.dumps(request).encode(), 0x1))
            self.transport.write(frame(f.data[:CHUNK], 0x2))
            reactor.callLater(0.3, self.transport.pauseProducing)  # silent from now on


async def vanishing_browser(server, ticket, data):
    factory = ClientFactory.forProtocol(Vanishing)
    factory.ticket, factory.data = ticket, data
    reactor.connectTCP("127.0.0.1", server.port, factory)
    await wait_until(lambda: server.registry.get(ticket).received == CHUNK)
    return server.registry.get(ticket).channel


@pytest_twisted.ensureDeferred
async def test_a_client_with_takeover_replaces_a_dead_connection_at_once(tmp_path):
    server, stop = await start_server(tmp_path)  # pings every 10 s, dead after 20 s
    try:
        data = os.urandom(5 * CHUNK + 3)
        ticket = await server.new_upload(removeFileWhenFinished="false")
        dead = await vanishing_browser(server, ticket, data)
        started = time.monotonic()
        outcome = await upload(server.port, ticket, data=data, features=["takeover"])
        assert outcome.last()[0] == "MsgAllDone", outcome.messages
        assert outcome.first("MsgUploadConf")["FilePos"] == CHUNK
        assert time.monotonic() - started < 3.0  # the ping probe waits 1 s
        assert not dead.still_open
        (call,) = server.backend.calls
        assert call["content"] == data
    finally:
        await stop()


@pytest_twisted.ensureDeferred
async def test_a_live_holder_keeps_the_upload_and_a_0_1_client_is_refused_as_before(tmp_path):
    server, stop = await start_server(tmp_path)
    try:
        data = os.urandom(5 * CHUNK)
        ticket = await server.new_upload()
        first = upload(server.port, ticket, data=data, stop_at=CHUNK, action="idle")
        holder = server.registry.get(ticket)
        await wait_until(lambda: holder.received == CHUNK)
        bound = holder.channel
        for features in (["takeover"], []):  # alive: answers the ping
            second = await upload(server.port, ticket, data=data, features=features)
            assert second.types() == ["MsgError"]
            assert second.last()[1]["ErrorCode"] == 3
            assert holder.channel is bound and holder.state == "uploading"
        assert (await server.call("cancel_upload", id=ticket))[0] == 200
        assert (await first).last()[0] == "MsgCancel"

        ticket = await server.new_upload()
        await vanishing_browser(server, ticket, data)
        started = time.monotonic()
        second = await upload(server.port, ticket, data=data)  # a 0.1 client: no probe
        assert second.last()[1]["ErrorCode"] == 3
        assert time.monotonic() - started < 0.5
    finally:
        await stop()
