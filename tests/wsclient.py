"""
A WebSocket upload client that speaks the 0.1 protocol exactly as a 0.1
``incoming.js`` does (MsgUploadReq, MsgAck, binary chunks within SendAhead),
with hooks to misbehave: drop, pause, cancel or error at a given byte,
send an oversize frame, send past the end, send raw text.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os

import attr
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import reactor
from twisted.internet.defer import Deferred


@attr.s(auto_attribs=True)
class Outcome:
    """What the client saw on one connection."""

    messages: list = attr.Factory(list)  # (MsgType, MsgData) in order
    acked: int = 0  # bytes acknowledged on this connection
    file_pos: int | None = None  # FilePos of MsgUploadConf
    close_code: int | None = None
    close_reason: str | None = None

    def types(self) -> list[str]:
        return [t for t, _ in self.messages]

    def last(self):
        return self.messages[-1] if self.messages else (None, None)

    def first(self, msg_type):
        for t, d in self.messages:
            if t == msg_type:
                return d
        raise AssertionError(f"no {msg_type} in {self.types()}")


class DataSource:
    """File content, readable by offset: bytes in memory or a file on disk."""

    def __init__(self, data: bytes = None, path: str = None):
        self._data = data
        self._path = path
        self._f = open(path, "rb") if path else None
        self.length = len(data) if data is not None else os.path.getsize(path)

    def read(self, pos: int, size: int) -> bytes:
        if self._data is not None:
            return self._data[pos:pos + size]
        self._f.seek(pos)
        return self._f.read(size)


class ZeroOneClient(WebSocketClientProtocol):
    """Behaves like a 0.1 incoming.js, unless the script says otherwise."""

    def onOpen(self):
        f = self.factory
        self.outcome = f.outcome
        self.pos = 0
        self.in_flight = 0
        self.sent_ends = collections.deque()  # where each unacknowledged chunk ends
        self.chunk = 0
        self.ahead = 0
        self.stopped = False
        self._next_send = 0.0  # with a pace: earliest time of the next chunk
        self._pace_call = None
        if f.silent:
            return
        if f.first_text is not None:
            self.sendMessage(f.first_text)
            return
        request = {"Id": f.upload_id, "LengthBytes": f.length, "Name": f.name}
        if f.last_modified is not None:
            request["LastModified"] = f.last_modified
        features = (["byte-window"] if f.byte_window else []) + list(f.features)
        if features:
            request["Features"] = features
        self._send("MsgUploadReq", request)

    def _send(self, msg_type, data):
        self.sendMessage(json.dumps({"MsgType": msg_type, "MsgData": data}).encode())

    def onMessage(self, payload, isBinary):
        msg = json.loads(payload)
        msg_type, data = msg["MsgType"], msg.get("MsgData", {})
        self.outcome.messages.append((msg_type, data))
        if msg_type == "MsgUploadConf":
            self.outcome.file_pos = data["FilePos"]
            self.pos = data["FilePos"]
            self.chunk = data["ChunkSizeKB"] * 1024
            self.ahead = data["SendAhead"]
            if "WindowBytes" in data:  # a fixed window is enough for tests
                self.ahead = max(1, data["WindowBytes"] // self.chunk)
            f = self.factory
            ack = {"Ack": True}
            sample = data.get("Sample")
            if sample is not None and f.sample != "unanswered":  # a "fingerprint" client
                start, size = sample["Offset"], sample["Length"]
                ack["Sample"] = hashlib.sha256(f.source.read(start, size)).hexdigest()
            if f.sample == "chunks-first":
                self.pump()
            self._send("MsgAck", ack)
            self.pump()
        elif msg_type == "MsgChunkAck":
            self.outcome.acked += data["ChunkSize"]
            # a "batched-acks" ack covers the oldest chunks its size adds up to
            acked_to = self.outcome.file_pos + self.outcome.acked
            while self.sent_ends and self.sent_ends[0] <= acked_to:
                self.sent_ends.popleft()
            self.in_flight = len(self.sent_ends)
            self.pump()

    def pump(self):
        """Send chunks while the window allows; act once stop_at is acked."""
        f = self.factory
        if self.stopped:
            return
        end = f.source.length  # may differ from the declared length
        limit = end if f.stop_at is None else min(f.stop_at, end)
        while self.in_flight < self.ahead and self.pos < limit:
            if f.pace and not self._paced():
                return
            if f.oversize_frame:
                self.stopped = True
                self.sendMessage(b"y" * (self.chunk + 1), isBinary=True)
                return
            data = f.source.read(self.pos, min(self.chunk, limit - self.pos))
            self.sendMessage(data, isBinary=True)
            self.pos += len(data)
            self.sent_ends.append(self.pos)
            self.in_flight += 1
        if self.pos >= limit and (self.in_flight == 0 or f.act_at_once):
            if f.stop_at is not None:
                self.stopped = True
                self.act(f.action)
            elif f.extra_bytes:
                self.stopped = True
                self.sendMessage(b"x" * f.extra_bytes, isBinary=True)

    def _paced(self) -> bool:
        """With ``pace``: True when a chunk may go now, else pump later."""
        now = reactor.seconds()
        if now >= self._next_send:
            self._next_send = max(now, self._next_send) + self.factory.pace
            return True
        if self._pace_call is None or not self._pace_call.active():
            self._pace_call = reactor.callLater(self._next_send - now, self.pump)
        return False

    def act(self, action):
        if action == "drop":
            self.transport.abortConnection()
        elif action == "pause":
            self._send("MsgPause", {"Pause": True})
            self.sendClose(1000)
        elif action == "pause-and-listen":  # MsgPause, repeated, without closing
            for _ in range(100):
                self._send("MsgPause", {"Pause": True})
        elif action == "close":
            self.sendClose(1000)
        elif action == "cancel":
            self._send("MsgCancel", {"Reason": self.factory.reason})
        elif action == "error":
            self._send("MsgError", {"ErrorCode": 0, "Msg": self.factory.error_text})
        elif action == "idle":
            pass
        else:
            raise ValueError(action)

    def onClose(self, wasClean, code, reason):
        if getattr(self, "_pace_call", None) is not None and self._pace_call.active():
            self._pace_call.cancel()
        self.factory.outcome.close_code = code
        self.factory.outcome.close_reason = reason
        d, self.factory.done = self.factory.done, None
        if d is not None:
            d.callback(self.factory.outcome)


def upload(port: int, upload_id: str, source: DataSource = None, *, data: bytes = None,
           name: str = "file.bin", length: int = None, stop_at: int = None,
           action: str = "drop", oversize_frame=False, extra_bytes=0,
           first_text: bytes = None, silent=False, host="127.0.0.1", origin=None,
           byte_window=False, tls=None, pace: float = 0.0, features=(),
           last_modified: int = None, sample: str = "answered",
           reason: str = "user clicked cancel", error_text: str = "disk on fire",
           act_at_once: bool = False) -> Deferred:
    """Connect once and run the script; fire with the Outcome at close.

    ``tls`` (a client TLS connection creator, e.g. optionsForClientTLS)
    connects with wss: instead of ws:.  ``pace`` (seconds) sends at most
    one chunk per that time: a slow but steady link.  With the "fingerprint"
    feature, ``sample`` is how a MsgUploadConf's Sample is met: "answered"
    (the digest in MsgAck), "unanswered" (MsgAck without it) or "chunks-first"
    (chunks before the MsgAck).  ``reason`` and ``error_text``: what
    action "cancel" sends as its Reason and action "error" as its Msg.
    """
    if source is None:
        source = DataSource(data=data if data is not None else b"")
    scheme = "wss" if tls is not None else "ws"
    factory = WebSocketClientFactory(f"{scheme}://{host}:{port}/incoming/0.1/frontend/upload_ws",
                                     origin=origin)
    factory.protocol = ZeroOneClient
    factory.setProtocolOptions(maxFramePayloadSize=0, maxMessagePayloadSize=0, autoPingInterval=None)
    factory.outcome = Outcome()
    factory.source = source
    factory.upload_id = upload_id
    factory.name = name
    factory.length = source.length if length is None else length
    factory.stop_at = stop_at
    factory.act_at_once = act_at_once  # act right after the last chunk, before its ack
    factory.action = action
    factory.reason = reason
    factory.error_text = error_text
    factory.oversize_frame = oversize_frame
    factory.extra_bytes = extra_bytes
    factory.first_text = first_text
    factory.silent = silent
    factory.byte_window = byte_window
    factory.features = features
    factory.last_modified = last_modified
    factory.sample = sample
    factory.pace = pace
    factory.done = Deferred()
    done = factory.done

    def connection_failed(f):
        if factory.done is not None:
            factory.done, d = None, factory.done
            d.errback(f)

    factory.clientConnectionFailed = lambda connector, reason: connection_failed(reason)
    connectWS(factory, contextFactory=tls)
    return done
