"""
The state store of the embedded default, in the storage folder: a new
ticket's record is a line of the ticket log (`incoming.ticket_log`); from
its first change on, an upload has a small JSON file of its own,
``<ticket id>.json``, which wins over its line.

A record file is replaced atomically (write a temporary file, then rename
over the old one), so a crash leaves the old or the new one; when durable,
the file and then the folder are synced, so the rename survives a power
loss too.  Versions are checked in memory: one process owns the folder.
Writes run through ``run_blocking``, one record's writes in order.
"""

from __future__ import annotations

import errno
import os

import attr
from twisted.internet.defer import fail, gatherResults, succeed
from twisted.logger import Logger
from zope.interface import implementer

from .fsops import remove_quietly, sync_folder
from .ids import parse_ticket_id
from .interfaces import (
    IStateStore,
    NoSpace,
    RecordExists,
    RecordInvalid,
    StoreError,
    VersionConflict,
)
from .records import UploadRecord, record_from_json
from .storage_pool import SerialQueue
from .ticket_log import (
    COMPACT_AFTER,
    GroupWriter,
    append_lines,
    compact_log,
    cut_torn_tail,
    deleted_line,
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
        self._in_log: set[str] = set()  # ids whose record is their log line
        self._logged: set[str] = set()  # ids with a line in the log, live or not
        self._dead_lines = 0
        self._log_read = False  # all() has read the folder: _in_log is complete

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
            self._logged.add(record.id)
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
        return self._run(append_lines, self.folder, lines, self._durable)

    def _line_died(self, upload_id: str, lines: int = 1) -> None:
        self._in_log.discard(upload_id)
        self._dead_lines += lines
        if self._dead_lines > max(COMPACT_AFTER, len(self._in_log)):
            self._dead_lines = 0
            self._tickets.exclusive(self._compact).addErrback(
                lambda f: self._log.error("ticket log: {why}", why=str(f.value))
            )

    def _compact(self):
        live = set(self._in_log)
        dropped = self._logged - live

        def done(_):
            self._logged -= dropped

        return self._run(compact_log, self.folder, live).addCallback(done)

    def update(self, record: UploadRecord, expected_version: int):
        stored = attr.evolve(record, version=expected_version + 1)

        def step():
            current = self._versions.get(record.id)
            if current != expected_version:
                raise VersionConflict(
                    f"upload {record.id} is at version {current}, not {expected_version}"
                )
            return self._run(self._write, stored).addCallback(written)

        def written(_):
            if record.id in self._in_log:
                self._line_died(record.id)
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
            # Its line's tombstone first: if that cannot be written, the
            # record stays (a line alone would bring the ticket back).
            if upload_id not in self._logged:
                return remove()
            d = self._tickets.append(self._append, deleted_line(upload_id))
            return d.addCallback(unlogged)

        def unlogged(_):
            self._logged.discard(upload_id)
            self._line_died(upload_id, 2 if upload_id in self._in_log else 1)
            return remove()

        def remove():
            return self._run(remove_quietly, self._path(upload_id)).addCallback(forget)

        def forget(_):
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
        in_log, records = found
        self._in_log = set(in_log)
        self._logged = set(in_log)
        self._dead_lines = 0
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

    def _write(self, record: UploadRecord) -> None:
        path = self._path(record.id)
        temp = os.path.join(self.folder, record.id + TEMP_SUFFIX)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(record.to_json())
                while view:
                    view = view[os.write(fd, view) :]
                if self._durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
            if self._durable:
                sync_folder(self.folder)
        except OSError as e:
            remove_quietly(temp)
            error = NoSpace if e.errno in (errno.ENOSPC, errno.EDQUOT) else StoreError
            raise error(f"cannot write the record of upload {record.id}: {e.strerror}") from None

    def _load_all(self) -> tuple[list[str], list[UploadRecord]]:
        """The ids whose record is a log line, and every readable record; the
        log is rewritten with its live lines only.  A corrupt record file (not
        JSON, not an object, a field of the wrong type: a torn write, a disk
        error, a hand edit) is moved aside to ``<id>.json.corrupt`` and logged with the files of its
        upload, which are left alone for the operator; the server starts."""
        records = {}
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
                    records[upload_id] = record_from_json(f.read(), upload_id)
            except RecordInvalid as e:
                unread.add(upload_id)
                self._move_aside(upload_id, str(e))
            except OSError as e:
                unread.add(upload_id)
                self._log.error("cannot read upload record {name}: {why}", name=name, why=str(e))
        logged = read_log(self.folder)
        in_log = [i for i in logged.records if i not in records and i not in unread]
        if logged.torn or logged.lines != len(in_log):
            try:
                rewrite_log(self.folder, [logged.records[i] for i in in_log])
            except StoreError as e:  # a full disk: start with the log as it is
                self._log.error("ticket log: {why}; kept as it is", why=str(e))
                if logged.torn:
                    cut_torn_tail(self.folder)
        return in_log, list(records.values()) + [logged.records[i] for i in in_log]

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
