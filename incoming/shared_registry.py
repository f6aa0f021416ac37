"""
The registry of a server that shares its uploads with others (``--state
redis://``): any server takes any browser connection or backend call.

An upload's object lives on one server at a time, the one that holds the
upload's *residency* (a lease lock in Redis): while a browser is connected
there, while it hands the file over, or while it acts on a due timer.
Once nothing runs for it there (`Upload.at_rest`), its storage work is
let finish and the object is let go.  Another server that needs it (a
browser connects there, a backend call finds nobody to answer it) asks the
resident to let go: it does if its browser is gone or dead, never during a
handover.  Timers of uploads nobody holds are found in the store's deadline
index by a sweep every `SWEEP_SECONDS` on every server; the first to take
the residency acts (the upload's own timers fire at once when overdue), so
each is acted on by one server.  A handover whose server died is found
the same way once its lease has run out, and made again.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall

from .interfaces import FILE, IDeadlines, LockHeld
from .redis_locker import LEASE_SECONDS
from .registry import UnknownUpload, UploadRegistry
from .upload import REPLY_CANCEL, Upload
from .wire import ErrorCode

SWEEP_SECONDS = 1.0
SWEEP_BATCH = 20
UNBOUND_GRACE = 5.0  # a loaded upload no browser binds within this is let go


def _at_rest(upload: Upload) -> bool:
    """Nothing runs for it here: no browser bound or on its way, no handover."""
    return (
        upload.channel is None
        and not upload._connecting
        and upload.state not in ("uploading", "handing_over")
    )


def _after(d: Deferred, then) -> Deferred:
    """A Deferred of ``then()`` once ``d`` has fired (``d`` itself unchanged)."""
    waiter: Deferred = Deferred()

    def fired(result):
        waiter.callback(None)
        return result

    d.addBoth(fired)
    return waiter.addCallback(lambda _: then())


class SharedRegistry(UploadRegistry):
    """Uploads at hand on this server, out of all those in the shared store."""

    def __init__(self, *args, residency, **kwargs):
        super().__init__(*args, **kwargs)
        self._residency = residency  # an ILocker shared by every server
        self._held: dict = {}  # upload id -> ILock (its residency)
        self._leaving: dict[str, Deferred] = {}  # ids being let go
        self._loading: dict[str, Deferred] = {}
        self._sweep = LoopingCall(self._sweep_due)
        self._sweep.clock = self._services.clock
        self._stopped = False

    # ---- life -------------------------------------------------------------

    def restore(self):
        """Nothing to take back: uploads are loaded when needed; start the sweep."""
        self._start_sweep()
        return succeed(None)

    def _start_sweep(self) -> None:
        if self._sweep.running or self._stopped:
            return

        def stopped(failure):  # a bug: log it and sweep on
            self._log.failure("the sweep of due uploads failed; started again", failure)
            self._services.clock.callLater(SWEEP_SECONDS, self._start_sweep)

        self._sweep.start(SWEEP_SECONDS, now=False).addErrback(stopped)

    def stop(self) -> Deferred:
        """Stop sweeping; let go of every upload not being handed over, so
        that other servers take them at once instead of after the lease."""
        self._stopped = True
        if self._sweep.running:
            self._sweep.stop()
        resting = [u for u in self if u.state != "handing_over"]
        from twisted.internet.defer import DeferredList

        return DeferredList([self._let_go(u) for u in resting])

    def create(self, signal_finish_url, backend_secret, remove_file_when_finished, dest_type=FILE):
        """A ticket in the shared store; no server holds it until it is used
        (its idle timeout is the store's deadline): not registered here."""
        record = self._new_record(
            signal_finish_url, backend_secret, remove_file_when_finished, dest_type
        )

        def stored(record):
            self._created(record)
            return Upload(record, self._services, self._forget)

        return self._stores.state.create(record).addCallback(stored)

    def _drop(self, upload: Upload) -> None:
        upload.quiesce()
        self._uploads.pop(upload.ticket.id, None)
        self._ended.discard(upload.ticket.id)
        unsubscribe = self._unsubscribe.pop(upload.ticket.id, None)
        if unsubscribe is not None:
            unsubscribe()

    # ---- finding ----------------------------------------------------------

    def find(self, ticket_id: str) -> Deferred:
        local = self.get(ticket_id)
        if local is not None and ticket_id not in self._leaving:
            return succeed(local)
        return self._load(ticket_id, ask_holder=True)

    def ticket_of(self, ticket_id: str) -> Deferred:
        local = self.get(ticket_id)
        if local is not None:
            return succeed(local.ticket)
        from .upload import Ticket

        def found(record):
            if record is None:
                return None
            return Ticket.of(record)

        return self._stores.state.get(ticket_id).addCallback(found)

    def _load(self, upload_id: str, ask_holder: bool) -> Deferred:
        """Take the residency and build the upload from its record; fire with
        it, or None if there is no such upload."""
        if upload_id in self._loading:  # joined; if that load failed, try on our own terms
            return _after(
                self._loading[upload_id],
                lambda: self.get(upload_id) or self._load(upload_id, ask_holder),
            )
        leaving = self._leaving.get(upload_id)
        if leaving is not None:  # let it go first, then take it again
            return _after(leaving, lambda: self._load(upload_id, ask_holder))
        done: Deferred = Deferred()
        self._loading[upload_id] = done
        d = self._load_now(upload_id, ask_holder)

        def settle(result):
            del self._loading[upload_id]
            done.callback(None)
            return result

        return d.addBoth(settle)

    @inlineCallbacks
    def _load_now(self, upload_id: str, ask_holder: bool):
        lock = yield self._residency.acquire(
            upload_id,
            lambda: self._asked_to_let_go(upload_id),
            ask_holder=ask_holder,
            on_lost=lambda: self._residency_lost(upload_id),
        )
        try:
            upload = yield self._build(upload_id)
        except Exception:
            yield lock.release()
            raise
        if upload is None:
            yield lock.release()
            return None
        self._held[upload_id] = lock
        upload.at_rest = self._at_rest
        self._register(upload)
        self._services.clock.callLater(UNBOUND_GRACE, self._let_go_if_at_rest, upload)
        return upload

    @inlineCallbacks
    def _build(self, upload_id: str):
        record = yield self._stores.state.get(upload_id)
        if record is None:
            return None
        return (yield self._rebuild(record))

    # ---- letting go -------------------------------------------------------

    def _at_rest(self, upload: Upload) -> None:
        self._services.clock.callLater(0, self._let_go_if_at_rest, upload)

    def _let_go_if_at_rest(self, upload: Upload) -> None:
        if self._uploads.get(upload.ticket.id) is not upload:
            return
        if _at_rest(upload):
            self._let_go(upload)

    def _let_go(self, upload: Upload) -> Deferred:
        """Finish its storage work, then give up the object and the residency."""
        upload_id = upload.ticket.id
        if upload_id in self._leaving:
            return self._leaving[upload_id]
        done: Deferred = Deferred()
        self._leaving[upload_id] = done

        def gone(_):
            self._drop(upload)
            lock = self._held.pop(upload_id, None)
            return lock.release() if lock is not None else None

        def settle(result):
            self._leaving.pop(upload_id, None)
            done.callback(None)
            return result

        d = upload.quiesce().addCallback(gone)
        d.addErrback(lambda f: self._log.failure("upload {id}: letting go", f, id=upload_id))
        d.addBoth(settle)
        return done

    def _asked_to_let_go(self, upload_id: str) -> Deferred:
        """Another server wants the upload: yes unless a live browser or a
        handover keeps it here."""
        upload = self._uploads.get(upload_id)
        if upload is None or upload_id in self._loading:
            return succeed(False)
        if upload.state == "handing_over" or upload._connecting:
            return succeed(False)  # busy here: a handover, or a browser on its way in
        if upload.channel is None:
            return self._let_go(upload).addCallback(lambda _: True)

        def probed(dead):
            if not dead:
                return False
            return self._let_go(upload).addCallback(lambda _: True)

        return upload._release_requested().addCallback(probed)

    def _forget(self, upload: Upload) -> None:
        """Its retention is over (and its record deleted): let the residency go."""
        super()._forget(upload)
        lock = self._held.pop(upload.ticket.id, None)
        if lock is not None:
            upload.quiesce().addCallback(lambda _: lock.release()).addErrback(
                lambda f: self._log.failure("upload {id}: letting go", f, id=upload.ticket.id)
            )

    def _residency_lost(self, upload_id: str) -> None:
        upload = self._uploads.get(upload_id)
        self._held.pop(upload_id, None)
        if upload is not None:
            upload._lock_lost()
            self._drop(upload)

    # ---- the backend's requests ------------------------------------------

    def _publish(self, upload_id: str, event: str, payload=None) -> Deferred:
        """Published to the server that holds the upload; if none does, this
        server takes it and acts itself."""

        def answered(answers):
            if answers:
                return answers[0]
            return self._act(upload_id, event, payload)

        return self._stores.bus.publish(upload_id, event, payload).addCallback(answered)

    @inlineCallbacks
    def _act(self, upload_id: str, event: str, payload):
        try:
            upload = yield self._load(upload_id, ask_holder=False)
        except LockHeld:  # someone took it meanwhile: it answers now
            answers = yield self._stores.bus.publish(upload_id, event, payload)
            if not answers:
                raise UnknownUpload(f"no upload with id {upload_id}") from None
            return answers[0]
        if upload is None:
            raise UnknownUpload(f"no upload with id {upload_id}")
        try:
            from .interfaces import CANCEL_REQUESTED

            if event == CANCEL_REQUESTED:
                return upload.cancel(payload, ErrorCode.CANCELLED, REPLY_CANCEL)
            return upload.finish()
        finally:
            self._let_go_if_at_rest(upload)

    # ---- timers nobody holds ----------------------------------------------

    @inlineCallbacks
    def _sweep_due(self):
        index = self._stores.state
        if not IDeadlines.providedBy(index):
            return
        try:
            due = yield index.due(self._services.clock.seconds(), SWEEP_BATCH)
        except Exception as e:
            self._log.warn("sweep of due uploads: {why}", why=str(e))
            return
        later = self._services.clock.seconds() + LEASE_SECONDS
        for upload_id in due:
            try:
                if upload_id in self._uploads or upload_id in self._loading:
                    yield index.postpone(upload_id, later)  # ours: its own timers act
                    continue
                try:
                    upload = yield self._load(upload_id, ask_holder=False)
                except LockHeld:  # another server holds it: its timers act
                    yield index.postpone(upload_id, later)  # look again if it dies
                    continue
                if upload is None:  # its record is gone: drop it from the index
                    yield self._stores.state.delete(upload_id)
            except Exception as e:
                self._log.warn("upload {id}: cannot take it: {why}", id=upload_id, why=str(e))
