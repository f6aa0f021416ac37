"""
Autobahn's debug lines, formatted only when they are written.

Autobahn builds the values of its debug log lines before the call, whether
or not debug logging is on: ``WebSocketProtocol._connectionMade``
(autobahn.websocket.protocol) formats every protocol option with
``pprint.pformat`` for each new connection, and ``dataReceived``,
``sendData``, ``connectionLost`` and the handshake steps name themselves
and their peer with ``hltype`` and ``hlval`` (autobahn.util) on every call:
together the largest part of the WebSocket's cost for a small upload.
Autobahn has no setting for it, so those module-level helpers are replaced,
in the two modules that use them this way, with ones whose text is made
when the log line is formatted (the lines themselves are unchanged).
Remove this once Autobahn guards its debug lines itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pprint import pformat
from typing import Any


class WhenFormatted:
    """``text_of(value)``, computed when str() or format() asks for it."""

    __slots__ = ("_text_of", "_value")

    def __init__(self, text_of: Callable[[Any], str], value: Any) -> None:
        self._text_of = text_of
        self._value = value

    def __str__(self) -> str:
        return self._text_of(self._value)

    def __format__(self, spec: str) -> str:
        return format(self._text_of(self._value), spec)

    def __repr__(self) -> str:
        return self._text_of(self._value)


def _lazy(text_of: Callable[..., str]) -> Callable[..., WhenFormatted]:
    def later(value, *args, **kwargs) -> WhenFormatted:
        if args or kwargs:
            return WhenFormatted(lambda v: text_of(v, *args, **kwargs), value)
        return WhenFormatted(text_of, value)

    later.incoming_lazy = True  # type: ignore[attr-defined]
    return later


def _patch(module: Any, name: str, text_of: Callable[..., str]) -> None:
    if not getattr(getattr(module, name), "incoming_lazy", False):
        setattr(module, name, _lazy(text_of))


def format_debug_lines_lazily() -> None:
    """Idempotent: patch autobahn's debug-line helpers (see the module)."""
    from autobahn import util
    from autobahn.twisted import websocket
    from autobahn.websocket import protocol

    _patch(protocol, "pformat", pformat)
    # the one use of that pformat that is not a log value: Timings' text
    protocol.Timings.__str__ = lambda self: pformat(self._timings)  # type: ignore[method-assign]
    for module in (protocol, websocket):
        _patch(module, "hltype", util.hltype)
        _patch(module, "hlval", util.hlval)
