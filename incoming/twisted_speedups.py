"""
Two pure functions of Twisted's, remembered instead of recomputed.

Each small upload costs the server a ticket request and five log lines, and
two of Twisted's helpers redo the same work for every one of them:

- ``twisted.web.http._parseContentType`` builds an ``email.message``
  message to read the media type of every request with a body (about a
  quarter of a millisecond for a ``new_upload``), though backends send the
  same two or three Content-Type lines again and again;
- ``twisted.logger._file.formatTime``, which twistd's text log calls for
  every line, works out the local time zone and formats a ``datetime``,
  though the text only changes once a second.

Both answers depend on their arguments alone, so they are kept: the last
few Content-Type lines and their media types, and the text of the current
second.  The log lines and the parsed requests are the same, byte for
byte.  Remove this when Twisted caches these itself.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

CONTENT_TYPES_KEPT = 64  # distinct Content-Type lines remembered

# A sub-second fraction above this could round up into the next second
# when datetime takes the timestamp to whole microseconds.
_SAFE_FRACTION = 0.999999


def _remembering(parse: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    remembered = lru_cache(maxsize=CONTENT_TYPES_KEPT)(parse)

    def parse_content_type(line: bytes) -> bytes:
        if len(line) > 200:  # a line no backend sends: not worth a slot
            return parse(line)
        return remembered(line)

    parse_content_type.incoming_cached = True  # type: ignore[attr-defined]
    return parse_content_type


class SecondText:
    """``format_time(when, timeFormat)`` for log lines, formatted once a
    second: the text of the last whole second is kept for each format that
    shows nothing finer than seconds."""

    def __init__(self, format_time: Callable[..., str]) -> None:
        self._format_time = format_time
        self._last: tuple[float, str, str] | None = None  # one tuple: threads log too
        self.incoming_cached = True

    def __call__(self, when: Any, timeFormat: Any = None, default: str = "-", **kw: Any) -> str:
        if (
            kw
            or type(when) is not float
            or type(timeFormat) is not str
            or "%f" in timeFormat
            or not 0 <= when - (second := float(int(when))) < _SAFE_FRACTION
        ):
            return self._format_time(when, timeFormat, default, **kw)
        last = self._last
        if last is None or last[0] != second or last[1] != timeFormat:
            last = self._last = (second, timeFormat, self._format_time(second, timeFormat, default))
        return last[2]


def remember_pure_results() -> None:
    """Idempotent: install both caches (see the module)."""
    from twisted.logger import _file
    from twisted.web import http

    if not getattr(http._parseContentType, "incoming_cached", False):
        http._parseContentType = _remembering(http._parseContentType)  # type: ignore[assignment]
    if not getattr(_file.formatTime, "incoming_cached", False):
        _file.formatTime = SecondText(_file.formatTime)
