"""
The uploads this server runs, by ticket id: creates them, restores them
from the stores at start, routes the backend's cancel and finish requests
to them over the event bus, forgets them when their retention is over.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from twisted.logger import Logger

from .ids import new_ticket_id, parse_ticket_id
from .interfaces import (
    CANCEL_REQUESTED,
    FILE,
    FINISH_REQUESTED,
    ICountsOpen,
    IInventory,
    ITidiesUnclaimed,
    StoreError,
)
from .metrics import NO_METRICS
from .records import UploadRecord
from .restore import plan_restore
from .storage_pool import run_here
from .upload import REPLY_CANCEL, Services, TooLate, Upload
from .wire import ErrorCode


class UnknownUpload(Exception):
    """No upload with that ticket id (any more)."""


class UploadRegistry:
    """Creates uploads, finds them by ticket, forgets them when they end."""

    _log = Logger()

    def __init__(
        self,
        settings,
        stores,
        backend,
        clock,
        run_blocking=run_here,
        metrics=NO_METRICS,
        monotonic=None,
        inline_hashing=None,
    ):
        """``monotonic``: elapsed time for the destructive timers
        (time.monotonic in production; by default the clock's seconds).
        ``inline_hashing``: an incoming.hashing.InlineHashBudget (by default
        the standard one on that elapsed time)."""
        self._stores = stores
        budget = {} if inline_hashing is None else {"inline_hashing": inline_hashing}
        self._services = Services(
            settings, stores, backend, clock, run_blocking, metrics, monotonic, **budget
        )
        self._uploads: dict[str, Upload] = {}
        self._ended: set[str] = set()  # ids of finished and cancelled uploads
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        metrics.count_open_uploads(self.open_count)

    def create(
        self,
        signal_finish_url: str,
        backend_secret: str,
        remove_file_when_finished: bool,
        dest_type: str = FILE,
    ) -> Deferred:
        """Store a new ticket's record; fire with its Upload.  ``dest_type``
        is one of `dest_types`."""
        record = self._new_record(
            signal_finish_url, backend_secret, remove_file_when_finished, dest_type
        )

        def stored(record):
            upload = Upload.new(record, self._services, self._forget, self._ended_upload)
            self._register(upload)
            self._created(record)
            return upload

        return self._stores.state.create(record).addCallback(stored)

    def _new_record(self, url: str, secret: str, remove: bool, dest_type: str) -> UploadRecord:
        return UploadRecord(
            id=new_ticket_id(),
            signal_finish_url=url,
            backend_secret=secret,
            remove_file_when_finished=remove,
            dest_type=dest_type,
            touched_at=self._services.clock.seconds(),
        )

    def dest_types(self) -> list[str]:
        """The destTypes this server stores (new_upload refuses others)."""
        return self._stores.dest_types()

    def _data_of(self, record: UploadRecord):
        """The data store of a record's destType; StoreError if this server
        has none (an S3 upload restored without --s3-bucket)."""
        store = self._stores.data_for(record.dest_type)
        if store is None:
            raise StoreError(
                f"its destType {record.dest_type!r} has no store on this server "
                f"(it has {', '.join(self.dest_types())})"
            )
        return store

    def _created(self, record: UploadRecord) -> None:
        self._services.metrics.upload_created()
        self._log.info(
            "upload {id}: created (handover to {url}, remove when finished: {remove}, "
            "destType {dest_type})",
            id=record.id,
            url=record.signal_finish_url,
            remove=record.remove_file_when_finished,
            dest_type=record.dest_type,
        )

    @inlineCallbacks
    def restore(self):
        """Take back the uploads the stores hold (at start)."""
        state = self._stores.state
        records = yield state.all()
        expired: set = set()
        try:  # tombstones older than the retention: gone before anyone asks
            ended_before = self._services.clock.seconds() - self._services.settings.retention
            expired = set((yield state.sweep(ended_before)))
        except Exception as e:  # they stay until their timers: no reason not to start
            self._log.error("cannot sweep expired tombstones: {why}", why=str(e))
        with_files = yield self._ids_with_files()
        for record in records:
            if record.id in expired:
                continue
            try:
                if record.state == "cancelled" and not record.keep_file:
                    yield self._data_of(record).discard(record.id)  # may outlive a crash
                # A ticket no browser used has no file: one listing tells, not a
                # look per ticket (there may be 100,000).
                upload = yield self._rebuild(record, look=self._may_hold_data(record, with_files))
            except Exception as e:
                self._log.error(
                    "upload {id}: cannot restore: {why}", id=record.id, why=str(e) or repr(e)
                )
                continue
            if upload is None:
                continue
            self._register(upload)
            self._log.info(
                "upload {id}: restored, {state} at byte {pos} of {length}",
                id=upload.ticket.id,
                state=upload.state,
                pos=upload.received,
                length=upload.length,
            )
        try:
            yield self._log_foreign_files()
        except Exception as e:  # only a log: never a reason not to start
            self._log.error("storage folder: cannot list it: {why}", why=str(e))

    @inlineCallbacks
    def _rebuild(self, record: UploadRecord, look: bool = True):
        """Fire with the Upload a record and the bytes held make (timers
        continuing from the record), or None for a stale record, which is
        reported and removed.  ``look``: ask the data store what it holds."""
        state, data = self._stores.state, self._data_of(record)
        held = None
        if look and not record.ended:
            held = yield data.held(record.id, record.length)
        if record.length is None and held == (0, False):
            yield data.discard(record.id)  # an empty .part of ours: start afresh
            held = None
        elif record.length is None and held is not None:
            self._stale_record(record, held)
            yield state.delete(record.id)  # reported once; the file stays
            return None
        plan = plan_restore(record, held)
        if plan.recreate:
            created = yield data.create(record.id, record.length)
            yield created.close()
        return Upload.restore(record, plan, self._services, self._forget, self._ended_upload)

    @staticmethod
    def _may_hold_data(record: UploadRecord, with_files: set | None) -> bool:
        """Whether to ask the data store what it holds of a record's upload.
        A ticket no browser used has none, unless the folder's listing (the
        only data written before its record) says otherwise."""
        if record.length is not None:
            return True
        if record.dest_type == FILE:
            return with_files is None or record.id in with_files
        return False  # other stores take bytes only after the record has the length

    @inlineCallbacks
    def _ids_with_files(self):
        """The ids that have data in the store, if it can list them; else None."""
        inventory = self._stores.capability(IInventory)
        if inventory is None:
            return None
        try:
            names = yield inventory.unclaimed(())
        except Exception:
            return None  # each record is looked at instead
        return {name.split(".", 1)[0] for name in names}

    def _stale_record(self, record, held) -> None:
        """A ticket's record without a file, but a file: the record is older
        than the file (its later versions lost in a power loss).  Restored,
        it would end in an idle timeout that deletes a file a backend may
        have kept; it is reported instead, and the file left alone."""
        self._log.error(
            "upload {id}: its record says no browser has sent a byte, but its file "
            "holds {size} bytes (the record's later versions were lost, a power loss?); "
            "not restored, its record removed; the file is left alone",
            id=record.id,
            size=held[0],
        )

    @inlineCallbacks
    def _log_foreign_files(self):
        inventory = self._stores.capability(IInventory)
        if inventory is None:
            return
        for name in (yield inventory.unclaimed(self._uploads)):
            self._log.info(
                "storage folder: {name} belongs to no open upload; left alone", name=name
            )

    @inlineCallbacks
    def tidy_destinations(self):
        """Remove what the other data stores (S3) hold for no open upload:
        multipart uploads a crash or a cancel left unfinished (at start)."""

        def open_ids():
            d = self._stores.state.all()
            return d.addCallback(lambda records: [r.id for r in records if not r.ended])

        for dest_type, store in sorted(self._stores.destinations.items()):
            if not ITidiesUnclaimed.providedBy(store):
                continue
            try:
                removed = yield store.tidy_unclaimed(open_ids)
            except Exception as e:  # only tidying: never a reason to stop
                self._log.error(
                    "{dest_type} store: cannot tidy up: {why}", dest_type=dest_type, why=str(e)
                )
                continue
            for what in removed:
                self._log.info(
                    "{dest_type} store: removed the {what}: it belongs to no open upload",
                    dest_type=dest_type,
                    what=what,
                )

    def get(self, ticket_id: str) -> Upload | None:
        """The upload, if this server has it at hand."""
        canonical = parse_ticket_id(ticket_id)
        return self._uploads.get(canonical) if canonical else None

    def find(self, ticket_id: str) -> Deferred:
        """Fire with the upload for a browser that connects, or None if
        there is no such ticket (fails with LockHeld while another server
        keeps it busy, with StoreUnavailable while the store is away)."""
        return succeed(self.get(ticket_id))

    def ticket_of(self, ticket_id: str) -> Deferred:
        """Fire with the upload's Ticket (for the backend's secret), or None."""
        upload = self.get(ticket_id)
        return succeed(upload.ticket if upload is not None else None)

    def __iter__(self):
        return iter(list(self._uploads.values()))

    def __len__(self) -> int:
        return len(self._uploads)

    # ---- requests from the backend, over the bus ----------------------------

    def request_cancel(self, upload_id: str, reason: str) -> Deferred:
        """Fire with "ok", or fail with TooLate or UnknownUpload."""
        return self._publish(upload_id, CANCEL_REQUESTED, reason)

    def request_finish(self, upload_id: str) -> Deferred:
        return self._publish(upload_id, FINISH_REQUESTED)

    def _publish(self, upload_id: str, event: str, payload=None) -> Deferred:
        def answered(answers):
            if not answers:
                raise UnknownUpload(f"no upload with id {upload_id}")
            return answers[0]

        return self._stores.bus.publish(upload_id, event, payload).addCallback(answered)

    def _register(self, upload: Upload) -> None:
        self._uploads[upload.ticket.id] = upload

        def on_event(event, payload):
            if event == CANCEL_REQUESTED:
                return upload.cancel(payload, ErrorCode.CANCELLED, REPLY_CANCEL)
            if event == FINISH_REQUESTED:
                return upload.finish()
            raise ValueError(f"unknown event {event!r}")

        def subscribed(unsubscribe):
            if self._uploads.get(upload.ticket.id) is upload:
                self._unsubscribe[upload.ticket.id] = unsubscribe
            else:  # forgotten (or replaced by a newer object) meanwhile
                unsubscribe()

        d = self._stores.bus.subscribe(upload.ticket.id, on_event).addCallback(subscribed)
        d.addErrback(
            lambda f: self._log.failure("upload {id}: subscribing", f, id=upload.ticket.id)
        )

    def _ended_upload(self, upload: Upload) -> None:
        self._ended.add(upload.ticket.id)

    def _forget(self, upload: Upload) -> None:
        if self._uploads.get(upload.ticket.id) is not upload:
            return  # a stale object: the registry has moved on
        self._uploads.pop(upload.ticket.id, None)
        self._ended.discard(upload.ticket.id)
        unsubscribe = self._unsubscribe.pop(upload.ticket.id, None)
        if unsubscribe is not None:
            unsubscribe()

    # ---- for the server ---------------------------------------------------

    def close_connections(self, clock, timeout: float = 3.0) -> Deferred:
        """Close every browser connection with "going away" (at shutdown) and
        let queued storage work run; fire when done, or after ``timeout`` s."""
        closing = [upload.going_away() for upload in self]
        return DeferredList(closing).addTimeout(timeout, clock).addErrback(lambda f: None)

    def stop(self) -> Deferred:
        """At shutdown, once the browsers are closed (nothing to do here)."""
        return succeed(None)

    def open_count(self) -> int:
        """Uploads that have not ended yet that this server holds, tickets
        that never connected included (counted, not searched)."""
        return len(self._uploads) - len(self._ended)

    def count_open(self) -> Deferred:
        """Fire with the uploads not ended, for --max-uploads: on every
        server when the state store is shared (ICountsOpen), else here."""
        state = self._stores.state
        if ICountsOpen.providedBy(state):
            return state.count_open()
        return succeed(self.open_count())


__all__ = ["UploadRegistry", "UnknownUpload", "TooLate"]
