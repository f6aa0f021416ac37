"""
The upload records of the embedded default: one line each in one
append-only file, ``.incoming.tickets`` in the storage folder.

A new ticket is a line; each change of its record appends the whole
record again as a new line, and the last line of an id wins; a deleted
record gets a ``{"deleted": id}`` line.  One file for every record costs
no file creation per change (a record of its own per upload, replaced by a
rename at each change, cost a new inode each time: most of the storage
work of a small upload) and a line costs its length (about 300 bytes, where
a file takes a 4 KiB block).  Dead lines (older versions, deleted records)
are dropped by rewriting the file (a temporary file, then a rename) at
start and whenever they outnumber the live ones (and number more than
`COMPACT_AFTER`).  ``<id>.json`` files, the records of earlier versions,
are read at start, written into the log and removed.

Appends waiting while one is being written go to disk together, in one
write (and one fsync, when durable).  A crash can tear only the last line,
which is then ignored.  Any other bad line (a damaged disk, a hand edit)
is copied aside and reported; if its ticket id can be read, that ticket is
not restored from an older line either.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable

import attr
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .fsops import remove_quietly, storage_error, sync_folder
from .ids import parse_ticket_id
from .interfaces import RecordInvalid, StoreError
from .records import SCHEMA, UploadRecord, record_from_json

TICKETS_NAME = ".incoming.tickets"
CORRUPT_NAME = ".incoming.tickets.corrupt"
TEMP_NAME = ".incoming.tickets.tmp"

# Dead lines tolerated before a rewrite, however few the live ones.
COMPACT_AFTER = 1000

_log = Logger()


_DEFAULTS = {f.name: f.default for f in attr.fields(UploadRecord) if f.default is not attr.NOTHING}
_FIELDS = tuple(f.name for f in attr.fields(UploadRecord))
_LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def ticket_line(record: UploadRecord) -> bytes:
    """One record as a log line: its JSON without the fields at their defaults."""
    fields = {}
    for name in _FIELDS:
        value = getattr(record, name)
        if name not in _DEFAULTS or value != _DEFAULTS[name]:
            fields[name] = value
    fields["schema"] = SCHEMA
    return _LINE_ENCODER.encode(fields).encode("utf-8") + b"\n"


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
            ticket = _ticket_of(line)
            if ticket is not None:  # an older line of it must not stand for it
                contents.records.pop(ticket, None)
            _log.error(
                "ticket log: line {number} (ticket {ticket}) is corrupt ({why}); copied to "
                "{aside}; not restored",
                number=number,
                ticket=ticket or "unknown",
                why=str(e),
                aside=CORRUPT_NAME,
            )
            continue
        contents.records[record.id] = record
    if corrupt:
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
            with open(os.open(os.path.join(folder, CORRUPT_NAME), flags, 0o600), "ab") as f:
                f.write(b"".join(line + b"\n" for line in corrupt))
        except OSError as e:  # a full disk: the lines are in the log still
            _log.error("ticket log: cannot keep the corrupt lines aside: {why}", why=e.strerror)
    return contents


_ID_FIELD = re.compile(rb'"(?:id|deleted)"\s*:\s*"([0-9a-fA-F-]{32,40})"')


def _ticket_of(line: bytes) -> str | None:
    """The ticket a corrupt line was written for, if its id can be read."""
    found = _ID_FIELD.search(line)
    return parse_ticket_id(found.group(1).decode("ascii")) if found else None


def cut_torn_tail(folder: str) -> None:
    """Drop an incomplete last line, so that the next append starts a line
    of its own (a truncation: it works on a full disk too)."""
    path = os.path.join(folder, TICKETS_NAME)
    with open(path, "rb+") as f:
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def open_for_appends(folder: str) -> int:
    """The log's file descriptor, to append to without opening it each time
    (blocking: it may create the file)."""
    path = os.path.join(folder, TICKETS_NAME)
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as e:
        raise StoreError(f"cannot open the ticket log {path}: {e.strerror}") from None


class AppendFailed(Exception):
    """An append to the open log failed after ``start`` (its old size)."""

    def __init__(self, start: int, error: StoreError):
        super().__init__(str(error))
        self.start = start
        self.error = error


def append_open(fd: int, lines: list[bytes]) -> int:
    """Append whole lines to the open log, without a sync: a write to the
    page cache, like a chunk's (fit for the reactor thread); return the
    log's size before them.  On failure the caller cuts the file back to
    ``AppendFailed.start`` (in a storage thread)."""
    start = os.lseek(fd, 0, os.SEEK_END)
    view = memoryview(b"".join(lines))
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as e:
        raise AppendFailed(start, storage_error(e, "cannot write the ticket log")) from None
    return start


def cut_back(fd: int, start: int) -> None:
    """Drop what a failed append left after ``start`` (blocking)."""
    try:
        os.ftruncate(fd, start)
    except OSError:
        pass  # a torn tail is cut at the next start


def append_lines(folder: str, lines: list[bytes], durable: bool) -> None:
    """Open the log, append whole lines in one write and, when durable,
    sync them (blocking).  A write that fails part way (a full disk) is cut
    back, so no half line is left for the next."""
    fd = open_for_appends(folder)
    try:
        start = append_open(fd, lines)
        if durable:
            try:
                os.fsync(fd)
                if start == 0:
                    sync_folder(folder)
            except OSError as e:
                raise AppendFailed(start, storage_error(e, "cannot sync the ticket log")) from None
    except AppendFailed as e:
        cut_back(fd, e.start)
        raise e.error from None
    finally:
        os.close(fd)


def rewrite_log(folder: str, keep: Iterable[UploadRecord]) -> None:
    """Replace the log by one with only ``keep`` (blocking, atomic); remove
    it if nothing is kept.  Always synced (the file, then the folder): a
    power loss must not take every unused ticket at once, and it is rare."""
    durable = True
    temp, path = os.path.join(folder, TEMP_NAME), os.path.join(folder, TICKETS_NAME)
    lines = b"".join(ticket_line(r) for r in keep)
    try:
        if not lines:
            remove_quietly(path)
        else:
            with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
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


def compact_log(folder: str, live: set) -> None:
    """Keep the lines of ``live`` ids only (blocking)."""
    contents = read_log(folder)
    rewrite_log(folder, [r for i, r in contents.records.items() if i in live])


class _Batch:
    """Lines asked for together, and who waits for them."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.waiting: list[Deferred] = []
        self.started = False


class GroupWriter:
    """Runs log jobs one at a time, in the order asked; appends asked for
    while the last queued job is a batch not yet started join it (one
    write, one fsync)."""

    def __init__(self, run_blocking: Callable[..., Deferred]):
        self._run = run_blocking
        self._busy = False
        self._open: _Batch | None = None  # the batch at the end of the queue
        self._jobs: list[tuple[Callable[[], Deferred], Deferred]] = []

    def append(self, job: Callable[[list[bytes]], Deferred], line: bytes) -> Deferred:
        """``job(lines)`` writes the lines; fire when this one is written."""
        d: Deferred = Deferred()
        batch = self._open
        if batch is None or batch.started:
            batch = self._open = _Batch()
            self._jobs.append((lambda: self._write(batch, job), Deferred()))
        batch.lines.append(line)
        batch.waiting.append(d)
        self._next()
        return d

    def exclusive(self, job: Callable[[], Deferred]) -> Deferred:
        """Run ``job()`` alone, after what was asked before it; fire with
        its result."""
        d: Deferred = Deferred()
        self._open = None  # later appends go after it
        self._jobs.append((job, d))
        self._next()
        return d

    def _write(self, batch: _Batch, job) -> Deferred:
        batch.started = True

        def settle(outcome):
            for d in batch.waiting:
                if isinstance(outcome, Failure):
                    d.errback(outcome)
                else:
                    d.callback(None)

        return maybeDeferred(job, batch.lines).addBoth(settle)

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

        maybeDeferred(job).addBoth(finished)
