"""
The state store of the embedded default, in the storage folder: every
record is a line of the record log (`incoming.ticket_log`,
``.incoming.tickets``), each change a new line, the last one of an id
winning.

A line is appended at once, on the reactor thread, to the log kept open
(a write to the page cache, as a chunk's); when durable (``--fsync
chunk``) the appends go to a storage thread and are synced, several
together.  Versions are checked in memory: one process owns the folder.
One record's changes run in order.  Records of earlier versions,
``<id>.json`` files, are read at start, written into the log and removed.
"""

from __future__ import annotations

import os

import attr
from twisted.internet.defer import fail, gatherResults, succeed
from twisted.logger import Logger
from zope.interface import implementer

from .fsops import remove_quietly, sync_folder
from .ids import parse_ticket_id
from .interfaces import (
    IStateStore,
    RecordExists,
    RecordInvalid,
    StoreError,
    VersionConflict,
)
from .records import UploadRecord, record_from_json
from .storage_pool import SerialQueue
from .ticket_log import (
    COMPACT_AFTER,
    AppendFailed,
    GroupWriter,
    append_lines,
    append_open,
    compact_log,
    cut_back,
    cut_torn_tail,
    deleted_line,
    open_for_appends,
    read_log,
    rewrite_log,
    ticket_line,
)

RECORD_SUFFIX = ".json"
TEMP_SUFFIX = ".json.tmp"
CORRUPT_SUFFIX = ".json.corrupt"


@implementer(IStateStore)
class FileStateStore:
    """The upload records in one folder."""

    _log = Logger()

    def __init__(self, folder: str, run_blocking, durable: bool = False):
        self.folder = folder
        self._run = run_blocking
        self._durable = durable  # fsync each record before it counts
        self._versions: dict[str, int] = {}  # what is on disk, as far as we know
        self._ended: dict[str, float] = {}  # tombstones: id -> ended_at
        self._queues: dict[str, SerialQueue] = {}
        self._tickets = GroupWriter(run_blocking)
        self._in_log: set[str] = set()  # ids whose record is a live line of the log
        self._dead_lines = 0  # older versions and deleted records, still in the file
        self._log_read = False  # all() has read the folder: _in_log is complete
        self._fd: int | None = None  # the log, open for appends (from all() on)

    def _path(self, upload_id: str) -> str:
        return os.path.join(self.folder, upload_id + RECORD_SUFFIX)

    def _in_order(self, upload_id: str, f, *args):
        queue = self._queues.setdefault(upload_id, SerialQueue())
        return queue.run(f, *args)

    def _written(self, record: UploadRecord) -> UploadRecord:
        self._versions[record.id] = record.version
        if record.ended_at is not None and record.ended:
            self._ended[record.id] = record.ended_at
        else:
            self._ended.pop(record.id, None)
        return record

    def create(self, record: UploadRecord):
        stored = attr.evolve(record, version=1)

        def logged(_):
            self._in_log.add(record.id)
            return self._written(stored)

        def failed(failure):
            del self._versions[record.id]
            return failure

        # A new id has nothing in flight to wait for: no per-id queue.
        if record.id in self._versions:
            return fail(RecordExists(f"upload {record.id} has a record already"))
        self._versions[record.id] = 0  # taken, while its line is written
        d = self._tickets.append(self._append, ticket_line(stored))
        return d.addCallbacks(logged, failed)

    def _append(self, lines: list[bytes]):
        if self._durable or self._fd is None:
            return self._run(append_lines, self.folder, lines, self._durable)
        fd = self._fd
        try:
            append_open(fd, lines)
        except AppendFailed as e:
            error = e.error
            return self._run(cut_back, fd, e.start).addBoth(lambda _: fail(error))
        return succeed(None)

    def _lines_died(self, lines: int) -> None:
        self._dead_lines += lines
        if self._dead_lines > max(COMPACT_AFTER, len(self._in_log)):
            self._dead_lines = 0
            self._tickets.exclusive(self._compact).addErrback(
                lambda f: self._log.error("ticket log: {why}", why=str(f.value))
            )

    def _compact(self):
        live = set(self._in_log)
        old = self._fd

        def compact():
            """Rewrite the log, then open whichever file it now names: the
            new one, or the old one if the rewrite failed before its rename
            (an fd still on a replaced file would take appends into a file
            with no name).  If even that open fails, appends open the log by
            name in a storage thread, as before the start."""
            try:
                compact_log(self.folder, live)
            finally:
                fd = None
                if old is not None:
                    os.close(old)
                    try:
                        fd = open_for_appends(self.folder)
                    except StoreError as e:
                        self._log.error("ticket log: {why}", why=str(e))
                self._fd = fd

        self._fd = None  # appends wait behind this job anyway (exclusive)
        return self._run(compact)

    def update(self, record: UploadRecord, expected_version: int):
        stored = attr.evolve(record, version=expected_version + 1)

        def step():
            current = self._versions.get(record.id)
            if current != expected_version:
                raise VersionConflict(
                    f"upload {record.id} is at version {current}, not {expected_version}"
                )
            d = self._tickets.append(self._append, ticket_line(stored))
            return d.addCallback(written)

        def written(_):
            had_line = record.id in self._in_log
            self._in_log.add(record.id)
            if had_line:
                self._lines_died(1)  # its previous version
            return self._written(stored)

        return self._in_order(record.id, step)

    def get(self, upload_id: str):
        def read():
            try:
                with open(self._path(upload_id), "rb") as f:
                    return record_from_json(f.read(), upload_id)
            except FileNotFoundError:
                pass
            if self._log_read and upload_id not in self._in_log:
                return None
            return read_log(self.folder).records.get(upload_id)

        def known(record):
            if record is not None:
                self._written(record)
            return record

        return self._in_order(upload_id, self._run, read).addCallback(known)

    def delete(self, upload_id: str):
        def step():
            # The deletion's line first: if that cannot be written, the
            # record stays (its line would bring the upload back).
            d = self._tickets.append(self._append, deleted_line(upload_id))
            return d.addCallback(unlogged)

        def unlogged(_):
            self._lines_died(2 if upload_id in self._in_log else 1)
            self._in_log.discard(upload_id)
            self._versions.pop(upload_id, None)
            self._ended.pop(upload_id, None)
            queue = self._queues.get(upload_id)
            if queue is not None and queue.pending <= 1:
                del self._queues[upload_id]

        return self._in_order(upload_id, step)

    def all(self):
        """Every record (at start: the log is rewritten with its live lines)."""
        return self._tickets.exclusive(self._load)

    def _load(self):
        return self._run(self._load_all).addCallback(self._loaded)

    def _loaded(self, found):
        in_log, records, fd = found
        self._in_log = set(in_log)
        self._dead_lines = 0
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._log_read = True
        for record in records:
            self._written(record)
        return records

    def sweep(self, ended_before: float):
        expired = [i for i, at in self._ended.items() if at < ended_before]
        if not expired:
            return succeed([])
        return gatherResults([self.delete(i) for i in expired]).addCallback(lambda _: expired)

    # ---- blocking, in a storage thread -------------------------------------

    def _load_all(self) -> tuple[list[str], list[UploadRecord], int]:
        """The ids of the live records, the records, and the log open for
        appends; the log is rewritten with its live lines only (and with
        the ``<id>.json`` records of an earlier version, which win over
        their lines and are then removed).  A corrupt record file (not
        JSON, not an object, a field of the wrong type: a torn write, a disk
        error, a hand edit) is moved aside to ``<id>.json.corrupt`` and
        logged with the files of its upload, which are left alone for the
        operator; the server starts."""
        files = {}
        unread = set()  # ids whose own file is unreadable: their line is older
        for name in sorted(os.listdir(self.folder)):
            if name.endswith(TEMP_SUFFIX):
                if parse_ticket_id(name[: -len(TEMP_SUFFIX)]) is not None:
                    remove_quietly(os.path.join(self.folder, name))  # ours, half-written
                continue
            upload_id = parse_ticket_id(name.removesuffix(RECORD_SUFFIX))
            if not name.endswith(RECORD_SUFFIX) or upload_id is None:
                continue
            try:
                with open(self._path(upload_id), "rb") as f:
                    files[upload_id] = record_from_json(f.read(), upload_id)
            except RecordInvalid as e:
                unread.add(upload_id)
                self._move_aside(upload_id, str(e))
            except OSError as e:
                unread.add(upload_id)
                self._log.error("cannot read upload record {name}: {why}", name=name, why=str(e))
        logged = read_log(self.folder)
        records = {i: r for i, r in logged.records.items() if i not in unread}
        records.update(files)
        if files or logged.torn or logged.lines != len(records):
            try:
                rewrite_log(self.folder, records.values())
            except StoreError as e:  # a full disk: start with the log as it is
                self._log.error("ticket log: {why}; kept as it is", why=str(e))
                if logged.torn:
                    cut_torn_tail(self.folder)
                if files:  # they still win over their lines: keep them as they are
                    raise StoreError(f"{e}; cannot take in the records of an earlier version")
            else:
                for upload_id in files:
                    remove_quietly(self._path(upload_id))
                if files:  # or a power loss brings them back, to win over newer lines
                    sync_folder(self.folder)
        return list(records), list(records.values()), open_for_appends(self.folder)

    def _move_aside(self, upload_id: str, why: str) -> None:
        aside = upload_id + CORRUPT_SUFFIX
        try:
            os.replace(self._path(upload_id), os.path.join(self.folder, aside))
        except OSError as e:
            aside = f"(not moved: {e.strerror})"
        files = sorted(
            n
            for n in os.listdir(self.folder)
            if n.startswith(upload_id) and n.split(".")[-1] not in ("json", "corrupt")
        )
        self._log.error(
            "upload {id}: its record is corrupt ({why}); moved aside to {aside}; "
            "not restored; its files, left alone: {files}",
            id=upload_id,
            why=why,
            aside=aside,
            files=", ".join(files) or "none",
        )
