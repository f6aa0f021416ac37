"""
The browser <-> server wire protocol, version 0.1, as this server speaks it.

This module is the one place that knows the message format; the WebSocket
adapter (`incoming.wsproto`) parses with `parse_message` and builds replies
with the ``msg_*`` functions below.

Control messages are WebSocket *text* frames holding JSON
``{"MsgType": "<name>", "MsgData": {...}}``; file data travels in *binary*
frames, one chunk per frame.

Client -> server:
  MsgUploadReq  {Id, LengthBytes, Name,   first message on every connection
                 Features?,               extensions the client understands
                 LastModified?}           the file's date, for "fingerprint"
  MsgAck        {Ack: true, Sample?}      answers MsgUploadConf (Sample: the
                                          digest it asked for, "fingerprint")
  MsgPause      {Pause: true}             the client then closes; resumable
  MsgCancel     {Reason}                  answered by MsgCancelAck, then close
  MsgError      {ErrorCode, Msg}          cancels: "error from frontend: Msg"

Server -> client:
  MsgUploadConf {ChunkSizeKB, FilePos, SendAhead,
                 WindowBytes?,            only for a "byte-window" client
                 Sample?}                 only for a "fingerprint" client
  MsgChunkAck   {ChunkSize}               sent after the chunk is in the file
  MsgCancelAck  {Ack: true}
  MsgCancel     {Reason, ErrorCode}       the backend cancelled the upload; a
                                          client's MsgCancel after it is answered
                                          with MsgCancelAck, then close (a 0.1
                                          page counts itself cancelled only
                                          then); no answer: close after 5 s
  MsgError      {ErrorCode, Msg}          followed by a close
  MsgAllDone    {Success: true}           handover finished; normal close

Sequence: MsgUploadReq -> MsgUploadConf (FilePos = bytes already stored, so
a reconnect resumes) -> MsgAck -> binary chunks of at most ChunkSizeKB KiB,
at most SendAhead unacknowledged -> (file complete) handover to the backend
-> MsgAllDone, or MsgError when the handover failed.  A client that
reconnects while the handover runs gets FilePos == LengthBytes and waits for
the final message; one that reconnects after a successful handover gets
MsgUploadConf and MsgAllDone at once.

One connection per upload: while a connection is bound to an upload, a
second one gets MsgError(UPLOAD_BUSY) and is closed; it does not take over
(unless it announced "takeover" and the bound one no longer answers, below).
A dead connection is detected by WebSocket pings (the WebSocket timeout),
after which a reconnect is accepted.

Extensions stay 0.1-compatible: we only add fields (a 0.1 client ignores
them), e.g. ``ErrorCode`` carries a value from `ErrorCode` below, and a
change of meaning is used only with a client that announced it in
``Features`` (a list of strings a 0.1 client never sends):

  "byte-window"  The client keeps up to ``WindowBytes`` bytes in flight
                 (instead of ``SendAhead`` chunks), sized from the round-trip
                 time it measures from its acks, so long links fill up.  The
                 server answers with ``WindowBytes`` (its --window); chunks
                 stay at most ``ChunkSizeKB`` KiB.  Without the feature a
                 client gets exactly the 0.1 MsgUploadConf.
  "takeover"     When another connection is bound to the upload, the server
                 pings it and, if it does not answer within 1 s, cuts it and
                 binds this one, instead of answering ErrorCode 3 (busy) until
                 the dead connection's ping timeout.  Without the feature a
                 client gets ErrorCode 3 as from 0.1.
  "fingerprint"  The client sends its file's ``LastModified`` (ms) with
                 ``Name`` and ``LengthBytes``; a later connection whose name or
                 date differs from the first's gets ErrorCode 4.  On a resume
                 (0 < FilePos < LengthBytes) MsgUploadConf carries ``Sample:
                 {Offset, Length}`` (the SAMPLE_BYTES before FilePos, fewer if
                 FilePos is smaller); the client answers MsgAck with ``Sample``:
                 the hex SHA-256 of those bytes of its file, and sends no chunk
                 before.  A digest that differs from the stored bytes' is
                 ErrorCode 4 (nothing is appended; the upload keeps its bytes).
                 Without the feature, sizes alone are compared, as in 0.1.
  "idle-timeout" MsgUploadConf carries ``IdleTimeoutS``: the server's idle
                 timeout (seconds without progress before it cancels the
                 upload), so that a client that keeps a note of its
                 unfinished uploads (to resume after a page reload) knows
                 when the ticket is gone.  Without the feature a client
                 gets exactly the 0.1 MsgUploadConf.
  "batched-acks" One MsgChunkAck may acknowledge several chunks: its
                 ``ChunkSize`` is then their sizes added up, the chunks being
                 the oldest unacknowledged ones.  The server holds a chunk's
                 ack while the next chunk is already arriving and more waits
                 to be read (the client sends faster than the server takes
                 it in), for at most 4 chunks or 50 ms, and sends what it
                 holds before any other message.  Without the feature every
                 chunk gets its own ack, as in 0.1.
"""

import json
from enum import IntEnum


class ErrorCode(IntEnum):
    """Numbers sent as ``ErrorCode`` in MsgError; 0 is what a 0.1 server sends."""

    GENERIC = 0
    PROTOCOL = 1  # malformed or unexpected message, chunk past the file size
    UNKNOWN_UPLOAD = 2  # no such ticket (never created, or long gone)
    UPLOAD_BUSY = 3  # another connection is bound to this upload
    FILE_CHANGED = 4  # LengthBytes differs from the first connection's
    FILE_TOO_LARGE = 5  # above the server's maximum file size
    CANCELLED = 6  # the upload was cancelled (backend, idle timeout, ...)
    HANDOVER_FAILED = 7  # the backend did not take the file
    SERVER_ERROR = 8  # the server could not store the file
    TOO_LATE = 9  # cancel or pause while the file is being handed over
    NO_SPACE = 10  # not enough free space for the rest of the file (retried)
    # 11 is the client's own FILE_READ_ERROR (incoming.js), never sent
    STORE_UNAVAILABLE = 12  # a shared store (Redis, S3) does not answer (retried)


class ProtocolError(Exception):
    """A message from the client that is not valid 0.1 protocol."""


# What of a browser's free text (a cancel reason, an error message) is kept.
MAX_BROWSER_TEXT = 1024
# What of an untrusted value is echoed in MsgError and logs.
MAX_SHOWN = 80


def capped(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (marked with an ellipsis)."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def browser_text(value) -> str:
    """A text from the browser (a cancel reason, an error's Msg) as it may
    be passed on to the backend: at most MAX_BROWSER_TEXT characters, any
    unpaired surrogate made U+FFFD (the form is UTF-8)."""
    return valid_text(capped(str(value), MAX_BROWSER_TEXT))


def shown(value) -> str:
    """repr() of an untrusted value, at most MAX_SHOWN characters."""
    return capped(repr(value), MAX_SHOWN)


CLIENT_MESSAGE_TYPES = frozenset({"MsgUploadReq", "MsgAck", "MsgPause", "MsgCancel", "MsgError"})


def parse_message(payload: bytes) -> tuple[str, dict]:
    """Decode one text frame into (MsgType, MsgData); raise ProtocolError."""
    try:
        message = json.loads(payload)
    except ValueError as e:
        raise ProtocolError(f"malformed JSON: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    msg_type = message.get("MsgType")
    if msg_type not in CLIENT_MESSAGE_TYPES:
        raise ProtocolError(f"unknown MsgType {shown(msg_type)}")
    data = message.get("MsgData", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProtocolError(f"MsgData of {msg_type} must be a JSON object")
    return msg_type, data


BYTE_WINDOW = "byte-window"
TAKEOVER = "takeover"
FINGERPRINT = "fingerprint"
IDLE_TIMEOUT = "idle-timeout"
BATCHED_ACKS = "batched-acks"

# Bytes just before FilePos that a "fingerprint" client digests on a resume.
SAMPLE_BYTES = 4096


def requested_features(data: dict) -> frozenset:
    """The extensions a MsgUploadReq announces (none for a 0.1 client)."""
    features = data.get("Features")
    if not isinstance(features, list):
        return frozenset()
    return frozenset(f for f in features if isinstance(f, str))


def upload_request_fields(data: dict) -> tuple[str, int, str]:
    """(Id, LengthBytes, Name) of a MsgUploadReq, checked for type."""
    upload_id = data.get("Id")
    length = data.get("LengthBytes")
    name = data.get("Name", "")
    if not isinstance(upload_id, str):
        raise ProtocolError("MsgUploadReq needs a string Id")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ProtocolError("MsgUploadReq needs a non-negative integer LengthBytes")
    if not isinstance(name, str):
        raise ProtocolError("MsgUploadReq Name must be a string")
    return upload_id, length, valid_text(name)


def last_modified_field(data: dict) -> int | None:
    """The ``LastModified`` of a MsgUploadReq (ms since the epoch), if valid."""
    value = data.get("LastModified")
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def sample_answer(data: dict) -> str | None:
    """The ``Sample`` digest of a MsgAck (lowercase hex), if any."""
    value = data.get("Sample")
    return value.lower() if isinstance(value, str) else None


def valid_text(text: str) -> str:
    """``text`` with each unpaired UTF-16 surrogate (valid in JSON, possible
    in NTFS names, not encodable as UTF-8) replaced by U+FFFD, so that the
    name can be sent on; everything else is kept as it was."""
    # json.loads joins valid pairs into one character: any surrogate left is unpaired.
    if not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


def _encode(msg_type: str, data: dict) -> bytes:
    return json.dumps({"MsgType": msg_type, "MsgData": data}).encode("utf-8")


def msg_upload_conf(
    chunk_size_kb: int,
    file_pos: int,
    send_ahead: int,
    window_bytes: int | None = None,
    sample: tuple[int, int] | None = None,
    idle_timeout: float | None = None,
) -> bytes:
    data: dict = {"ChunkSizeKB": chunk_size_kb, "FilePos": file_pos, "SendAhead": send_ahead}
    if window_bytes is not None:
        data["WindowBytes"] = window_bytes
    if idle_timeout is not None:  # whole seconds as an integer, as the other fields
        whole = int(idle_timeout)
        data["IdleTimeoutS"] = whole if whole == idle_timeout else idle_timeout
    if sample is not None:
        data["Sample"] = {"Offset": sample[0], "Length": sample[1]}
    return _encode("MsgUploadConf", data)


def msg_chunk_ack(size: int) -> bytes:
    return _encode("MsgChunkAck", {"ChunkSize": size})


def msg_cancel_ack() -> bytes:
    return _encode("MsgCancelAck", {"Ack": True})


def msg_cancel(reason: str, code: ErrorCode) -> bytes:
    return _encode("MsgCancel", {"Reason": reason, "ErrorCode": int(code)})


def msg_error(code: ErrorCode, text: str) -> bytes:
    return _encode("MsgError", {"ErrorCode": int(code), "Msg": text})


def msg_all_done() -> bytes:
    return _encode("MsgAllDone", {"Success": True})
