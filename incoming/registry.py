"""The uploads this server knows, by ticket id."""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

from .ids import new_ticket_id, parse_ticket_id
from .journal import RECORD_SUFFIX, Journal
from .metrics import NO_METRICS
from .storage import PART_SUFFIX
from .upload import Services, Ticket, Upload

ENDED = ("finished", "cancelled", "forgotten")


def run_here(f, *args):
    """Run blocking work right away (tests); production passes a thread pool."""
    return maybeDeferred(f, *args)


class UploadRegistry:
    """Creates uploads, finds them by ticket, forgets them when they end."""

    _log = Logger()

    def __init__(
        self, settings, storage, backend, clock, run_blocking=run_here, metrics=NO_METRICS
    ):
        # Records are synced only at --fsync chunk: a sync per state change would
        # block the reactor, and a complete file is found again from its size.
        journal = Journal(storage.folder, durable=settings.fsync == "chunk")
        self._services = Services(settings, storage, journal, backend, clock, run_blocking, metrics)
        self._uploads: dict[str, Upload] = {}
        metrics.count_open_uploads(self.open_count)

    def create(
        self, signal_finish_url: str, backend_secret: str, remove_file_when_finished: bool
    ) -> Upload:
        ticket = Ticket(
            id=new_ticket_id(),
            signal_finish_url=signal_finish_url,
            backend_secret=backend_secret,
            remove_file_when_finished=remove_file_when_finished,
        )
        upload = Upload(ticket, self._services, self._forget)
        upload.save()
        self._uploads[ticket.id] = upload
        self._services.metrics.upload_created()
        self._log.info(
            "upload {id}: created (handover to {url}, remove when finished: {remove})",
            id=ticket.id,
            url=signal_finish_url,
            remove=remove_file_when_finished,
        )
        return upload

    def restore(self) -> None:
        """Take back the uploads recorded in the storage folder (at start)."""
        journal = self._services.journal
        for record in journal.load_all():
            try:
                upload = Upload.restore(record, self._services, self._forget)
            except (KeyError, TypeError, ValueError, OSError) as e:
                self._log.error(
                    "upload {id}: cannot restore: {why}", id=record.get("id"), why=str(e)
                )
                continue
            self._uploads[upload.ticket.id] = upload
            self._log.info(
                "upload {id}: restored, {state} at byte {pos} of {length}",
                id=upload.ticket.id,
                state=upload.state,
                pos=upload.received,
                length=upload.length,
            )
        self._log_foreign_files()

    def _log_foreign_files(self) -> None:
        ours = set()
        for upload_id in self._uploads:
            ours.update({upload_id, upload_id + PART_SUFFIX, upload_id + RECORD_SUFFIX})
        for name in sorted(os.listdir(self._services.storage.folder)):
            if name not in ours:
                self._log.info(
                    "storage folder: {name} belongs to no open upload; left alone", name=name
                )

    def get(self, ticket_id: str) -> Upload | None:
        canonical = parse_ticket_id(ticket_id)
        return self._uploads.get(canonical) if canonical else None

    def __iter__(self):
        return iter(list(self._uploads.values()))

    def close_connections(self, clock, timeout: float = 3.0) -> Deferred:
        """Close every browser connection with "going away" (at shutdown);
        fire when they are closed, or after ``timeout`` seconds."""
        closing = [upload.channel.going_away() for upload in self if upload.channel is not None]
        return DeferredList(closing).addTimeout(timeout, clock).addErrback(lambda f: None)

    def open_count(self) -> int:
        """Uploads that have not ended yet."""
        return sum(1 for u in self._uploads.values() if u.state not in ENDED)

    def __len__(self) -> int:
        return len(self._uploads)

    def _forget(self, upload: Upload) -> None:
        self._uploads.pop(upload.ticket.id, None)
