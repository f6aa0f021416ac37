"""
What the server knows about each open upload, kept in the storage folder
so that uploads survive a restart or a crash.

One small JSON file per upload, ``<ticket id>.json``, replaced atomically
(write a temporary file, then rename over the old one) whenever the upload
changes state.  Progress is not recorded here: the bytes in the ``.part``
file are the truth, so a counter can never be stale.  The record is deleted
when the upload ends (finished or cancelled).
"""

from __future__ import annotations

import json
import os

from twisted.logger import Logger

from .ids import parse_ticket_id

RECORD_SUFFIX = ".json"
TEMP_SUFFIX = ".json.tmp"


class Journal:
    """The upload records in one folder."""

    _log = Logger()

    def __init__(self, folder: str, durable: bool):
        self.folder = folder
        self._durable = durable  # fsync each record before it counts

    def _path(self, upload_id: str) -> str:
        return os.path.join(self.folder, upload_id + RECORD_SUFFIX)

    def save(self, upload_id: str, record: dict) -> None:
        """Replace the record atomically; a crash leaves the old or the new one."""
        temp = os.path.join(self.folder, upload_id + TEMP_SUFFIX)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(record, sort_keys=True).encode("utf-8"))
            if self._durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self._path(upload_id))

    def delete(self, upload_id: str) -> None:
        try:
            os.unlink(self._path(upload_id))
        except FileNotFoundError:
            pass

    def load_all(self) -> list[dict]:
        """Every readable record; unreadable ones are logged and left alone."""
        records = []
        for name in sorted(os.listdir(self.folder)):
            if name.endswith(TEMP_SUFFIX):
                upload_id = parse_ticket_id(name[: -len(TEMP_SUFFIX)])
                if upload_id is not None:
                    os.unlink(os.path.join(self.folder, name))  # ours, half-written
                continue
            if not name.endswith(RECORD_SUFFIX):
                continue
            upload_id = parse_ticket_id(name[: -len(RECORD_SUFFIX)])
            if upload_id is None:
                continue
            try:
                with open(self._path(upload_id), encoding="utf-8") as f:
                    record = json.load(f)
                if record.get("id") != upload_id:
                    raise ValueError("record does not match its file name")
            except (OSError, ValueError) as e:
                self._log.error("cannot read upload record {name}: {why}", name=name, why=str(e))
                continue
            records.append(record)
        return records
