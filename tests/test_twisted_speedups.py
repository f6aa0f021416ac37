"""The remembered Twisted results are the ones Twisted computes."""

import time

from twisted.logger import _format
from twisted.web import http

from incoming.twisted_speedups import SecondText, _remembering, remember_pure_results

ORIGINAL_PARSE = http._parseContentType


def test_content_types_parse_as_twisted_parses_them():
    parse = _remembering(ORIGINAL_PARSE)
    lines = [
        b"application/x-www-form-urlencoded",
        b"Application/X-WWW-Form-URLEncoded; charset=utf-8",
        b"multipart/form-data; boundary=----xyz",
        b"text/plain",
        b"",
        b"nonsense",
        b"\xff\xfe",
        b"text/html; " + b"x" * 300,
    ]
    for _ in range(3):  # from the cache the second and third time
        for line in lines:
            assert parse(line) == ORIGINAL_PARSE(line)


def test_log_times_match_twisted_at_every_fraction_of_a_second():
    fmt = SecondText(_format.formatTime)
    base = float(int(time.time()))
    fractions = [0.0, 1e-7, 0.25, 0.5, 0.9999, 0.999999, 0.9999994, 0.9999996, 0.99999999]
    formats = [_format.timeFormatRFC3339, "%H:%M:%S.%f", "%Y", None]
    for second in (base, base + 1, base + 86400 * 180, 0.0, 1e9):
        for fraction in fractions:
            when = second + fraction
            for time_format in formats:
                assert fmt(when, time_format) == _format.formatTime(when, time_format), (
                    when,
                    time_format,
                )
    assert fmt(None, _format.timeFormatRFC3339, "?") == "?"
    assert fmt(-1.5, "%S") == _format.formatTime(-1.5, "%S")
    assert fmt(int(base), "%S") == _format.formatTime(int(base), "%S")


def test_a_new_second_gives_new_text():
    calls = []

    def counting(when, timeFormat=None, default="-"):
        calls.append(when)
        return _format.formatTime(when, timeFormat, default)

    fmt = SecondText(counting)
    base = float(int(time.time()))
    texts = [fmt(base + f, "%S") for f in (0.1, 0.2, 0.3)]
    assert len(set(texts)) == 1 and len(calls) == 1  # formatted once for the second
    assert fmt(base + 1.1, "%S") != texts[0]
    assert len(calls) == 2


def _text_line(event):
    from io import StringIO

    from twisted.logger import textFileLogObserver

    out = StringIO()
    textFileLogObserver(out)(event)
    return out.getvalue()


def test_installing_twice_wraps_once_and_log_lines_are_unchanged():
    from twisted.logger import _file

    event = {
        "log_time": time.time(),
        "log_format": "upload {n}: created",
        "n": 7,
        "log_system": "-",
    }
    expected = _text_line(event)
    before_parse, before_time = http._parseContentType, _file.formatTime
    try:
        remember_pure_results()
        parse, format_time = http._parseContentType, _file.formatTime
        remember_pure_results()
        assert http._parseContentType is parse and _file.formatTime is format_time
        assert parse is not before_parse and format_time is not before_time
        assert _text_line(event) == _text_line(event) == expected
    finally:
        http._parseContentType, _file.formatTime = before_parse, before_time
