"""
The state store of the embedded default: one small JSON file per upload,
``<ticket id>.json``, in the storage folder.

A record is replaced atomically (write a temporary file, then rename over
the old one), so a crash leaves the old or the new one.  Versions are
checked in memory: one process owns the folder.  Writes run through
``run_blocking``, one record's writes in order.
"""

from __future__ import annotations

import os

import attr
from twisted.internet.defer import gatherResults, succeed
from twisted.logger import Logger
from zope.interface import implementer

from .fsops import remove_quietly
from .ids import parse_ticket_id
from .interfaces import IStateStore, RecordExists, RecordInvalid, StoreError, VersionConflict
from .records import UploadRecord, record_from_json
from .storage_pool import SerialQueue

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

        def step():
            if record.id in self._versions:
                raise RecordExists(f"upload {record.id} has a record already")
            return self._run(self._write, stored, True).addCallback(lambda _: self._written(stored))

        return self._in_order(record.id, step)

    def update(self, record: UploadRecord, expected_version: int):
        stored = attr.evolve(record, version=expected_version + 1)

        def step():
            current = self._versions.get(record.id)
            if current != expected_version:
                raise VersionConflict(
                    f"upload {record.id} is at version {current}, not {expected_version}"
                )
            return self._run(self._write, stored, False).addCallback(
                lambda _: self._written(stored)
            )

        return self._in_order(record.id, step)

    def get(self, upload_id: str):
        def read():
            try:
                with open(self._path(upload_id), "rb") as f:
                    return record_from_json(f.read(), upload_id)
            except FileNotFoundError:
                return None

        def known(record):
            if record is not None:
                self._written(record)
            return record

        return self._in_order(upload_id, self._run, read).addCallback(known)

    def delete(self, upload_id: str):
        def step():
            return self._run(remove_quietly, self._path(upload_id)).addCallback(forget)

        def forget(_):
            self._versions.pop(upload_id, None)
            self._ended.pop(upload_id, None)
            queue = self._queues.get(upload_id)
            if queue is not None and queue.pending <= 1:
                del self._queues[upload_id]

        return self._in_order(upload_id, step)

    def all(self):
        return self._run(self._load_all).addCallback(self._loaded)

    def _loaded(self, records):
        for record in records:
            self._written(record)
        return records

    def sweep(self, ended_before: float):
        expired = [i for i, at in self._ended.items() if at < ended_before]
        if not expired:
            return succeed([])
        return gatherResults([self.delete(i) for i in expired]).addCallback(lambda _: expired)

    # ---- blocking, in a storage thread -------------------------------------

    def _write(self, record: UploadRecord, exclusive: bool) -> None:
        path = self._path(record.id)
        if exclusive and os.path.exists(path):
            raise RecordExists(f"upload {record.id} has a record already")
        temp = os.path.join(self.folder, record.id + TEMP_SUFFIX)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, record.to_json())
                if self._durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except OSError as e:
            remove_quietly(temp)
            raise StoreError(f"cannot write the record of upload {record.id}: {e.strerror}")

    def _load_all(self) -> list[UploadRecord]:
        """Every readable record.  A corrupt one (not JSON, not an object, a
        field of the wrong type: a torn write, a disk error, a hand edit) is
        moved aside to ``<id>.json.corrupt`` and logged with the files of its
        upload, which are left alone for the operator; the server starts."""
        records = []
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
                    records.append(record_from_json(f.read(), upload_id))
            except RecordInvalid as e:
                self._move_aside(upload_id, str(e))
            except OSError as e:
                self._log.error("cannot read upload record {name}: {why}", name=name, why=str(e))
        return records

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
