"""Autobahn's per-connection debug line of every protocol option: not
formatted when debug logging is off (it cost a fifth of a millisecond per
WebSocket), the same text when it is on."""

from __future__ import annotations

from pprint import pformat

import autobahn.websocket.protocol
import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher

import incoming.autobahn_debug
from incoming.autobahn_debug import PrettyWhenFormatted
from incoming.config import Settings
from incoming.wsproto import UploadFactory

PEER = IPv4Address("TCP", "127.0.0.1", 50000)


def open_connection(tmp_path):
    factory = UploadFactory(registry=None, settings=Settings(storage_dir=str(tmp_path)),
                            clock=Clock())
    protocol = factory.buildProtocol(PEER)
    protocol.makeConnection(StringTransport(peerAddress=PEER))
    return protocol


def test_the_options_are_not_formatted_without_debug_logging(tmp_path, monkeypatch):
    calls = []

    def counted(value):
        calls.append(value)
        return pformat(value)

    # Autobahn as it comes, its pformat counted; the server's factory fixes it.
    monkeypatch.setattr(autobahn.websocket.protocol, "pformat", counted)
    monkeypatch.setattr(incoming.autobahn_debug, "pformat", counted)
    txaio.set_global_log_level("info")
    open_connection(tmp_path)
    assert calls == []


def test_with_debug_logging_the_line_shows_every_option(tmp_path):
    events = []
    globalLogPublisher.addObserver(events.append)
    txaio.set_global_log_level("debug")
    try:
        protocol = open_connection(tmp_path)
    finally:
        txaio.set_global_log_level("info")
        globalLogPublisher.removeObserver(events.append)
    [text] = [formatEvent(e) for e in events if "maxFramePayloadSize" in formatEvent(e)]
    chunk = Settings().chunk_size
    assert f"('maxFramePayloadSize', {chunk}, 'UploadFactory')" in text
    assert "('autoPingInterval', " in text and "\n" in text  # pformat's one item per line
    assert protocol.maxFramePayloadSize == chunk


def test_pretty_when_formatted_is_pformat():
    value = [("a", 1, "F"), ("b", list(range(40)), "F")]
    assert str(PrettyWhenFormatted(value)) == pformat(value)
    assert f"\n{PrettyWhenFormatted(value)}" == "\n" + pformat(value)
