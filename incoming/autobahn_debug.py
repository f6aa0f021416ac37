"""
Autobahn's per-connection debug line, formatted only when it is written.

``WebSocketProtocol._connectionMade`` (autobahn.websocket.protocol) logs
every protocol option at debug level and builds that text with
``pprint.pformat`` first, whether or not debug logging is on: about a
fifth of a millisecond of every WebSocket's start, the largest part of the
handshake's cost for a small upload.  Autobahn has no setting for it, so
the module's ``pformat`` is replaced with one whose text is made when the
log line is formatted (the line itself is unchanged).  Remove this once
Autobahn guards the line itself.
"""

from __future__ import annotations

from pprint import pformat
from typing import Any


class PrettyWhenFormatted:
    """``pformat(value)``, computed when str() or format() asks for it."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def __str__(self) -> str:
        return pformat(self._value)

    def __format__(self, spec: str) -> str:
        return format(pformat(self._value), spec)

    def __repr__(self) -> str:
        return pformat(self._value)


def format_connection_options_lazily() -> None:
    """Idempotent: patch autobahn.websocket.protocol's ``pformat``."""
    from autobahn.websocket import protocol

    protocol.pformat = PrettyWhenFormatted  # type: ignore[assignment]
