"""
JSON lines logs, for log collectors (journald, Docker, Loki, Elastic...):

    twistd --logger incoming.logs.json_observer -n incoming ...

Each event becomes one JSON object on one line: ``time`` (ISO 8601, UTC),
``level``, ``namespace``, ``system``, ``text`` (the message as the text log
shows it), ``failure`` (a traceback, if any), then the event's own fields
whose values are plain strings, numbers, booleans or null; objects are left
out, whatever they hold.  The ticket id that our log calls pass as ``id``
is written as ``upload_id``.  Secrets never reach the log calls, so they
never reach this file either.

Without ``--logger``, twistd writes its usual human-readable text.
"""

from __future__ import annotations

import getopt
import json
import sys
from datetime import UTC, datetime

from twisted.logger import FileLogObserver, formatEvent

# Keys of our own; an event field of the same name does not replace them.
RESERVED = ("time", "level", "namespace", "system", "text", "failure", "upload_id")
# What twisted.python.log (legacy) events carry, or a legacy observer adds.
LEGACY_KEYS = {"message", "format", "isError", "system", "time", "failure"}
PLAIN = (str, int, float, bool, type(None))


def event_as_json(event: dict) -> str:
    """One event as one line of JSON (ASCII, so any file encoding works)."""
    record = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), UTC).isoformat(
            timespec="milliseconds"
        ),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "system": event.get("log_system", "-"),
        "text": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in LEGACY_KEYS or not isinstance(value, PLAIN):
            continue
        if key == "id":
            key = "upload_id"  # every "upload {id}: ..." line
        if key not in record:
            record[key] = value
    return json.dumps(record) + "\n"


def json_observer():
    """The --logger factory.  twistd calls it with no arguments and then
    ignores --logfile, so the file is taken from twistd's command line
    here, with twistd's own rules: --logfile (or -l) PATH, ``-`` for
    standard output; without it, standard output with -n, else twistd.log.
    """
    from twisted.python.logfile import LogFile

    path = _twistd_logfile(sys.argv[1:])
    if path == "-":
        out = sys.stdout  # before twistd redirects it into the log
    else:
        out = LogFile.fromFullPath(path)
    return FileLogObserver(out, event_as_json)


def _twistd_logfile(argv: list[str]) -> str:
    """--logfile as twistd reads it from its own options (before the
    subcommand); nothing is run, only parsed."""
    from twisted.scripts.twistd import ServerOptions

    options = ServerOptions()
    try:
        given, _subcommand = getopt.getopt(argv, options.shortOpt, options.longOpt)
    except getopt.GetoptError:
        return "-"
    logfile, nodaemon = None, False
    for flag, value in given:
        name = options.synonyms.get(flag.lstrip("-"), flag.lstrip("-"))
        if name == "logfile":
            logfile = value
        elif name == "nodaemon":
            nodaemon = True
    if logfile:
        return logfile
    return "-" if nodaemon else "twistd.log"
