"""
The records of tickets that never connected, one line each in one
append-only file, ``.incoming.tickets`` in the storage folder.

Most tickets a backend asks for are used at once, but some never are, and
a caller may ask for many: one file per ticket costs a 4 KiB block each, a
line here costs its length (about 300 bytes).  A ticket leaves the log when
its record first changes (it then gets a ``<id>.json`` of its own, which
wins over its line) or is deleted (a ``{"deleted": id}`` line says so).
Dead lines are dropped by rewriting the file (a temporary file, then a
rename) at start and whenever they outnumber the live ones.

Appends waiting while one is being written go to disk together, in one
write (and one fsync, when durable).  A crash can tear only the last line,
which is then ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable

import attr
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .fsops import remove_quietly, sync_folder
from .interfaces import RecordInvalid, StoreError
from .records import SCHEMA, UploadRecord, record_from_json

TICKETS_NAME = ".incoming.tickets"
CORRUPT_NAME = ".incoming.tickets.corrupt"
TEMP_NAME = ".incoming.tickets.tmp"

# Dead lines tolerated before a rewrite, however few the live ones.
COMPACT_AFTER = 1000

_log = Logger()


_DEFAULTS = {f.name: f.default for f in attr.fields(UploadRecord) if f.default is not attr.NOTHING}


def ticket_line(record: UploadRecord) -> bytes:
    """One record as a log line: its JSON without the fields at their defaults."""
    fields = {
        k: v
        for k, v in attr.asdict(record, recurse=False).items()
        if k not in _DEFAULTS or v != _DEFAULTS[k]
    }
    fields["schema"] = SCHEMA
    return json.dumps(fields, separators=(",", ":"), sort_keys=True).encode("utf-8") + b"\n"


def deleted_line(upload_id: str) -> bytes:
    return json.dumps({"deleted": upload_id}).encode("ascii") + b"\n"


@attr.s(auto_attribs=True)
class LogContents:
    """What a read of the log found."""

    records: dict[str, UploadRecord] = attr.Factory(dict)  # live lines, by id
    lines: int = 0  # every whole line, dead ones included
    torn: bool = False  # the last line is incomplete


def read_log(folder: str) -> LogContents:
    """Parse the log (blocking).  A corrupt line is copied to
    ``.incoming.tickets.corrupt`` and logged; a torn last line is dropped."""
    contents = LogContents()
    try:
        with open(os.path.join(folder, TICKETS_NAME), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return contents
    *whole, torn = data.split(b"\n")
    if torn:
        contents.torn = True
        _log.info("ticket log: a torn last line (a crash while it was written) is dropped")
    corrupt = []
    for number, line in enumerate(whole, 1):
        contents.lines += 1
        try:
            fields = json.loads(line)
            if isinstance(fields, dict) and set(fields) == {"deleted"}:
                contents.records.pop(str(fields["deleted"]), None)
                continue
            record = record_from_json(line)
        except (ValueError, RecordInvalid) as e:
            corrupt.append(line)
            _log.error(
                "ticket log: line {number} is corrupt ({why}); copied to {aside}; not restored",
                number=number,
                why=str(e),
                aside=CORRUPT_NAME,
            )
            continue
        contents.records[record.id] = record
    if corrupt:
        with open(os.path.join(folder, CORRUPT_NAME), "ab") as f:
            f.write(b"".join(line + b"\n" for line in corrupt))
    return contents


def append_lines(folder: str, lines: list[bytes], durable: bool) -> None:
    """Append whole lines in one write (blocking)."""
    path = os.path.join(folder, TICKETS_NAME)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            created = os.fstat(fd).st_size == 0
            view = memoryview(b"".join(lines))
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if durable and created:
            sync_folder(folder)
    except OSError as e:
        raise StoreError(f"cannot write the ticket log {path}: {e.strerror}") from None


def rewrite_log(folder: str, keep: Iterable[UploadRecord], durable: bool) -> None:
    """Replace the log by one with only ``keep`` (blocking, atomic); remove
    it if nothing is kept."""
    temp, path = os.path.join(folder, TEMP_NAME), os.path.join(folder, TICKETS_NAME)
    lines = b"".join(ticket_line(r) for r in keep)
    try:
        if not lines:
            remove_quietly(path)
        else:
            with open(temp, "wb") as f:
                f.write(lines)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(temp, path)
        if durable:
            sync_folder(folder)
    except OSError as e:
        remove_quietly(temp)
        raise StoreError(f"cannot rewrite the ticket log: {e.strerror}") from None


def compact_log(folder: str, live: set, durable: bool) -> None:
    """Keep the lines of ``live`` ids only (blocking)."""
    contents = read_log(folder)
    rewrite_log(folder, [r for i, r in contents.records.items() if i in live], durable)


class GroupWriter:
    """Runs log jobs one at a time; appends asked for meanwhile are joined
    into one job (one write, one fsync)."""

    def __init__(self, run_blocking: Callable[..., Deferred]):
        self._run = run_blocking
        self._busy = False
        self._lines: list[bytes] = []
        self._waiting: list[Deferred] = []
        self._jobs: list[tuple[Callable[[], Deferred], Deferred]] = []

    def append(self, job: Callable[[list[bytes]], Deferred], line: bytes) -> Deferred:
        """``job(lines)`` writes the lines; fire when this one is written."""
        d: Deferred = Deferred()
        self._lines.append(line)
        self._waiting.append(d)
        if len(self._lines) == 1:
            self._jobs.append((lambda: self._write_lines(job), Deferred()))
        self._next()
        return d

    def exclusive(self, job: Callable[[], Deferred]) -> Deferred:
        """Run ``job()`` alone, after what was asked before it; fire with
        its result."""
        d: Deferred = Deferred()
        self._jobs.append((job, d))
        self._next()
        return d

    def _write_lines(self, job) -> Deferred:
        lines, self._lines = self._lines, []
        waiting, self._waiting = self._waiting, []

        def settle(outcome):
            for d in waiting:
                if isinstance(outcome, Failure):
                    d.errback(outcome)
                else:
                    d.callback(None)

        return job(lines).addBoth(settle)

    def _next(self) -> None:
        if self._busy or not self._jobs:
            return
        job, done = self._jobs.pop(0)
        self._busy = True

        def finished(outcome):
            self._busy = False
            if isinstance(outcome, Failure):
                done.errback(outcome)
            else:
                done.callback(outcome)
            self._next()

        try:
            d = job()
        except Exception:
            d = Deferred()
            d.errback()
        d.addBoth(finished)
