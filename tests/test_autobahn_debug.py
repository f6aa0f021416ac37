"""Autobahn's debug lines (every protocol option at each connection; the
method and peer at each read, write and close): not formatted when debug
logging is off (they were most of a small upload's WebSocket cost), the
same text when it is on."""

from __future__ import annotations

from pprint import pformat

import autobahn.twisted.websocket
import autobahn.util
import autobahn.websocket.protocol
import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from incoming.autobahn_debug import WhenFormatted
from incoming.config import Settings
from incoming.wsproto import UploadFactory

PEER = IPv4Address("TCP", "127.0.0.1", 50000)
UPGRADE = (b"GET /incoming/0.1/frontend/upload_ws HTTP/1.1\r\nHost: x\r\n"
           b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def open_connection(tmp_path):
    factory = UploadFactory(registry=None, settings=Settings(storage_dir=str(tmp_path)),
                            clock=Clock())
    protocol = factory.buildProtocol(PEER)
    protocol.makeConnection(StringTransport(peerAddress=PEER))
    protocol.dataReceived(UPGRADE)
    return protocol


def test_debug_lines_are_not_formatted_without_debug_logging(tmp_path, monkeypatch):
    calls = []

    def counted(text_of):
        def call(*args, **kwargs):
            calls.append(text_of.__name__)
            return text_of(*args, **kwargs)
        return call

    # Autobahn as it comes, its helpers counted; the server's factory fixes it.
    monkeypatch.setattr(autobahn.websocket.protocol, "pformat", counted(pformat))
    for module in (autobahn.websocket.protocol, autobahn.twisted.websocket):
        monkeypatch.setattr(module, "hltype", counted(autobahn.util.hltype))
        monkeypatch.setattr(module, "hlval", counted(autobahn.util.hlval))
    monkeypatch.setattr(autobahn.util, "hltype", counted(autobahn.util.hltype))
    monkeypatch.setattr(autobahn.util, "hlval", counted(autobahn.util.hlval))
    txaio.set_global_log_level("info")
    protocol = open_connection(tmp_path)
    assert protocol.state == protocol.STATE_OPEN  # the handshake went through
    assert calls == []


def test_with_debug_logging_the_lines_show_the_options_and_the_peer(tmp_path):
    events = []
    globalLogPublisher.addObserver(events.append)
    txaio.set_global_log_level("debug")
    try:
        protocol = open_connection(tmp_path)
    finally:
        txaio.set_global_log_level("info")
        globalLogPublisher.removeObserver(events.append)
    texts = [formatEvent(e) for e in events]
    [options] = [t for t in texts if "maxFramePayloadSize" in t]
    chunk = Settings().chunk_size
    assert f"('maxFramePayloadSize', {chunk}, 'UploadFactory')" in options
    assert "('autoPingInterval', " in options and "\n" in options  # one item per line
    assert protocol.maxFramePayloadSize == chunk
    [received] = [t for t in texts if f"received {len(UPGRADE)} bytes" in t]
    assert "dataReceived" in received and "tcp4:127.0.0.1:50000" in received


def test_when_formatted_is_the_text():
    value = [("a", 1, "F"), ("b", list(range(40)), "F")]
    assert str(WhenFormatted(pformat, value)) == pformat(value)
    assert f"\n{WhenFormatted(pformat, value)}" == "\n" + pformat(value)


def test_autobahn_timings_still_read_as_text(tmp_path):
    """Timings.__str__ used the module's pformat for its own text."""
    open_connection(tmp_path)  # the factory has patched the module
    timings = autobahn.websocket.protocol.Timings()
    timings.track("onOpen")
    assert str(timings).startswith("{'onOpen': ")
