"""
The WebSocket end of the wire protocol (see `incoming.wire`): a thin
Autobahn adapter that parses messages and hands them to the upload.

The protocol object is also the upload's *channel*: the upload calls
`send_conf`, `send_chunk_ack`, `finish_ok`, `fail`, `cancelled`,
`cancel_acked` and `close` on it.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import wildcards2patterns
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.logger import Logger

from . import wire
from .autobahn_debug import format_debug_lines_lazily
from .interfaces import LockHeld, StoreUnavailable
from .metrics import NO_METRICS
from .upload import REPLY_ERROR
from .wire import ErrorCode, ProtocolError

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001

# After MsgPause the browser closes; if it does not, we do after this long.
PAUSE_CLOSE_GRACE = 5.0
# After a backend cancel, how long a page has to echo MsgCancel (0.1 does).
CANCEL_ECHO_GRACE = 5.0
# A bound connection asked to make way must answer a ping within this long.
PROBE_TIMEOUT = 1.0


# Frames a client may send while its upload is looked up (before MsgUploadConf).
MAX_HELD_FRAMES = 16


READ_BYTES = 256 * 1024  # per recv() from a browser's socket

# A "batched-acks" client: a chunk's ack waits while the next chunk is
# already arriving, for at most this many chunks or this long (wire.py).
ACKS_HELD_MAX = 4
ACK_HOLD_SECONDS = 0.05


class UploadProtocol(WebSocketServerProtocol):
    """One browser connection; bound to at most one upload."""

    _log = Logger()

    def onConnect(self, request):
        patterns = self.factory.origin_patterns
        if patterns and not any(p.match(request.origin or "") for p in patterns):
            origin = wire.shown(request.origin)
            self._log.info("refused a WebSocket from origin {origin}", origin=origin)
            raise ConnectionDeny(403, f"origin {origin} not allowed")
        return None

    def onOpen(self):
        # Read the socket in large pieces: a chunk of 512 KiB in 64 KiB
        # reads (Twisted's default) goes through Autobahn's frame parser
        # eight times over.
        transport: Any = self.transport
        transport.bufferSize = READ_BYTES
        self._upload = None
        self._closing = False
        self._pong_waiters: list[Deferred] = []  # probes waiting for a pong
        self._echo_expected = False  # we sent MsgCancel; a 0.1 page echoes it
        self._window_bytes = None  # set for a client that announced byte-window
        self._idle_timeout = None  # set for a client that announced idle-timeout
        self._batch_acks = False  # a client that announced batched-acks
        self._held_ack_bytes = 0  # acks not sent yet (batched-acks)
        self._held_acks = 0
        self._ack_timer: Any = None
        self._read_was_full = False
        self.features: frozenset = frozenset()  # what its MsgUploadReq announced
        self._finding: list | None = None  # messages held while the upload is looked up
        self.closed: Deferred | None = Deferred()  # fires when the connection is gone
        self.factory.metrics.websocket_opened()
        self._deadline = self.factory.clock.callLater(
            self.factory.settings.websocket_timeout, self._no_request
        )

    def _no_request(self):
        self._deadline = None
        self.fail(
            ErrorCode.PROTOCOL,
            f"no MsgUploadReq within {self.factory.settings.websocket_timeout:g} s",
        )

    def _cancel_deadline(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    # ---- from the browser -------------------------------------------------

    def dataReceived(self, data):
        self._read_was_full = len(data) >= READ_BYTES  # more is waiting to be read
        super().dataReceived(data)

    def onMessageFrameBegin(self, length):
        # Autobahn refuses a frame above the limit (the chunk size) by
        # closing with 1009; first tell the browser why and cancel.
        total = self.message_data_total_length + length
        if 0 < getattr(self, "maxMessagePayloadSize", 0) < total and not self._closing:
            if self._upload is not None:
                self._upload.frame_too_large(self, total)
            else:
                self.fail(ErrorCode.PROTOCOL, f"frame of {total} bytes is too large")
        super().onMessageFrameBegin(length)

    def onMessage(self, payload, isBinary):
        if self._closing:
            return
        if self._finding is not None:  # MsgUploadReq's upload is being looked up
            if len(self._finding) >= MAX_HELD_FRAMES:
                self._finding = None
                self.fail(ErrorCode.PROTOCOL, "too much sent before MsgUploadConf")
                return
            self._finding.append((payload, isBinary))
            return
        if isBinary:
            if self._upload is None:
                self.fail(ErrorCode.PROTOCOL, "file data before MsgUploadReq")
            else:
                self._upload.receive(self, payload)
            return
        try:
            msg_type, data = wire.parse_message(payload)
            getattr(self, "_on_" + msg_type)(data)
        except ProtocolError as e:
            self.fail(ErrorCode.PROTOCOL, str(e))

    def _on_MsgUploadReq(self, data):
        if self._upload is not None:
            raise ProtocolError("a second MsgUploadReq on the same connection")
        upload_id, length, name = wire.upload_request_fields(data)
        features = self.features = wire.requested_features(data)
        if wire.BYTE_WINDOW in features:
            self._window_bytes = self.factory.settings.window
        if wire.IDLE_TIMEOUT in features:
            self._idle_timeout = self.factory.settings.idle_timeout
        self._batch_acks = wire.BATCHED_ACKS in features
        self._cancel_deadline()
        self._finding = []
        d = self.factory.registry.find(upload_id)
        d.addCallbacks(self._found, self._not_found, callbackArgs=(upload_id, length, name, data))
        d.addErrback(lambda f: self._log.failure("upload {id}: connecting", f, id=upload_id))

    def _found(self, upload, upload_id, length, name, data):
        waiting, self._finding = self._finding or [], None
        if self._closing:
            return
        if upload is None:
            self.fail(ErrorCode.UNKNOWN_UPLOAD, f"unknown upload ticket {wire.shown(upload_id)}")
            return
        self._upload = upload
        upload.connect(
            self,
            length,
            name,
            takeover=wire.TAKEOVER in self.features,
            fingerprint=wire.FINGERPRINT in self.features,
            last_modified=wire.last_modified_field(data),
        )
        for payload, is_binary in waiting:  # what came while it was looked up
            self.onMessage(payload, is_binary)

    def _not_found(self, failure):
        self._finding = None
        if failure.check(LockHeld):
            self.fail(ErrorCode.UPLOAD_BUSY, "another connection is bound to this upload")
        elif failure.check(StoreUnavailable):
            self.fail(ErrorCode.STORE_UNAVAILABLE, f"{failure.value}; try again later")
        else:
            self.fail(ErrorCode.SERVER_ERROR, "cannot open this upload; see the server's log")
            return failure
        return None

    def _on_MsgAck(self, data):
        if self._upload is None:
            raise ProtocolError("MsgAck before MsgUploadReq")
        self._upload.acknowledged(self, wire.sample_answer(data))

    def _on_MsgPause(self, data):
        if self._upload is None:
            raise ProtocolError("MsgPause before MsgUploadReq")
        self._upload.pause(self)
        if self._upload.channel is self:  # not paused (the handover runs): stay
            return
        if self._deadline is None:  # one grace, however many MsgPause arrive
            self._deadline = self.factory.clock.callLater(PAUSE_CLOSE_GRACE, self.close)

    def _on_MsgCancel(self, data):
        if self._upload is None:
            raise ProtocolError("MsgCancel before MsgUploadReq")
        if self._echo_expected:  # a 0.1 page echoing the backend's cancel
            self._echo_expected = False
            self._cancel_deadline()
            self.cancel_acked()
            return
        # As 0.1: the backend's cancelReason is the browser's reason, unchanged.
        reason = data.get("Reason")
        text = "" if reason is None else wire.browser_text(reason)
        self._upload.cancel_from_browser(self, text)

    def _on_MsgError(self, data):
        if self._upload is None:
            self.close()
            return
        text = wire.browser_text(data.get("Msg", ""))
        self._upload.cancel_from_browser(self, f"error from frontend: {text}", REPLY_ERROR)
        self.close()

    def onClose(self, wasClean, code, reason):
        self._closing = True
        closed, self.closed = getattr(self, "closed", None), None
        if closed is not None:  # opened, and closing for the first time
            self.factory.metrics.websocket_closed()
            self.factory.clock.callLater(0, closed.callback, None)
        if getattr(self, "_deadline", None) is not None:
            self._cancel_deadline()
        if getattr(self, "_ack_timer", None) is not None:
            self._send_held_acks()  # closing: only stops the timer
        upload = getattr(self, "_upload", None)
        if upload is not None:
            upload.disconnect(self)

    def onPong(self, payload):
        waiters, self._pong_waiters = self._pong_waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(True)

    # ---- the upload's channel ---------------------------------------------

    @property
    def still_open(self) -> bool:
        """False once the connection is closing or closed."""
        return not getattr(self, "_closing", True)

    def probe(self, timeout: float = PROBE_TIMEOUT) -> Deferred:
        """Ping the browser; fire with True if it answers within ``timeout`` s."""
        if not self.still_open:
            return succeed(False)
        answered: Deferred = Deferred()
        self._pong_waiters.append(answered)
        self.sendPing()
        answered.addTimeout(timeout, self.factory.clock)
        return answered.addErrback(lambda f: f.trap(TimeoutError) and False)

    def drop(self) -> None:
        """Cut a connection that no longer answers (another one takes over)."""
        self._closing = True
        transport: Any = self.transport  # a TCP or TLS transport: it can abort
        if transport is not None:
            transport.abortConnection()

    def _send_message(self, message: bytes) -> None:
        if self._held_acks:
            self._send_held_acks()  # acks go out before what follows them
        if not self._closing:
            self.sendMessage(message)

    def send_conf(self, chunk_size_kb, file_pos, send_ahead, sample=None):
        self._send_message(
            wire.msg_upload_conf(
                chunk_size_kb, file_pos, send_ahead, self._window_bytes, sample, self._idle_timeout
            )
        )

    def send_chunk_ack(self, size):
        if not self._batch_acks:
            self._send_message(wire.msg_chunk_ack(size))
            return
        # Held while the next chunk is already coming in (its bytes are in
        # Autobahn's buffer) and more is waiting to be read (the last read
        # filled its buffer: the browser sends faster than we take it in):
        # its own ack then covers both, and comes as soon as it would have.
        # On a link slower than the server, reads come up short and every
        # ack goes at once, so the browser's round-trip times stay true.  A
        # browser pays for every message it receives, and at a browser's
        # pace one ack per chunk was a few per cent of its CPU.
        self._held_ack_bytes += size
        self._held_acks += 1
        if self._held_acks >= ACKS_HELD_MAX or not (self.data and self._read_was_full):
            self._send_held_acks()
        elif self._ack_timer is None:
            self._ack_timer = self.factory.clock.callLater(ACK_HOLD_SECONDS, self._send_held_acks)

    def _send_held_acks(self) -> None:
        if self._ack_timer is not None:
            if self._ack_timer.active():
                self._ack_timer.cancel()
            self._ack_timer = None
        size, self._held_ack_bytes, self._held_acks = self._held_ack_bytes, 0, 0
        if size and not self._closing and self.state == self.STATE_OPEN:
            self.sendMessage(wire.msg_chunk_ack(size))

    def finish_ok(self):
        self._send_message(wire.msg_all_done())
        self.close()

    def fail(self, code, text):
        if not self._closing:
            self._log.info(
                "closing connection with error {code}: {text}", code=int(code), text=text
            )
        self._send_message(wire.msg_error(code, text))
        self.close()

    def cancelled(self, reason, code):
        """The backend cancelled.  A 0.1 page answers MsgCancel with its own
        MsgCancel and counts itself cancelled only at our MsgCancelAck (see
        wire.py): answer it, then close; a page that does not answer (ours
        closes at once) is closed after CANCEL_ECHO_GRACE seconds."""
        self._send_message(wire.msg_cancel(reason, code))
        self._echo_expected = True
        self._cancel_deadline()
        self._deadline = self.factory.clock.callLater(CANCEL_ECHO_GRACE, self.close)

    def cancel_acked(self):
        self._send_message(wire.msg_cancel_ack())
        self.close()

    def close(self):
        if not self._closing:
            if self._held_acks:
                self._send_held_acks()
            self._closing = True
            self.sendClose(CLOSE_NORMAL)

    def pause_reading(self):
        """Backpressure: stop reading from the browser for a while."""
        transport: Any = self.transport  # a push producer
        transport.pauseProducing()

    def resume_reading(self):
        if not self._closing:
            transport: Any = self.transport
            transport.resumeProducing()

    def going_away(self) -> Deferred:
        """The server stops: close with 1001; the browser will resume later."""
        closed = self.closed or succeed(None)
        if not self._closing:
            if self._held_acks:
                self._send_held_acks()
            self._closing = True
            # sendClose() only takes 1000 and 3000-4999; 1001 is a protocol code.
            self.sendCloseFrame(code=CLOSE_GOING_AWAY, reasonUtf8=b"server restarting")
        return closed


class UploadFactory(WebSocketServerFactory):
    """Builds UploadProtocol; holds the registry, settings, clock and metrics."""

    protocol = UploadProtocol

    def __init__(self, registry, settings, clock, metrics=NO_METRICS):
        super().__init__()
        format_debug_lines_lazily()  # see incoming.autobahn_debug
        self.registry = registry
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        # By default any origin, as 0.1 (file:// pages send "null").
        self.origin_patterns = wildcards2patterns(list(settings.allowed_origins))
        timeout = settings.websocket_timeout
        self.setProtocolOptions(
            # No client can make us buffer more than one chunk.
            maxFramePayloadSize=settings.chunk_size,
            maxMessagePayloadSize=settings.chunk_size,
            # Tell the browser why before closing; do not just drop it.
            failByDrop=False,
            webStatus=False,  # no Autobahn status page for plain GETs
            # Origins are checked in onConnect (403, not Autobahn's 400).
            allowedOrigins=["*"],
            allowNullOrigin=True,
            openHandshakeTimeout=timeout,
            closeHandshakeTimeout=min(timeout, 5.0),
            # A dead peer stops answering pings: its upload becomes resumable.
            autoPingInterval=timeout / 2,
            autoPingTimeout=timeout / 2,
            perMessageCompressionAccept=lambda offers: None,
        )
