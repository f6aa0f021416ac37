"""
The life of one upload, as a state machine (Automat).

    created --connect--> uploading <--disconnect/pause--> paused
    uploading --last byte stored--> handing_over --done--> finished
                                    handing_over --wait--> waiting_for_finish
                                    waiting_for_finish --finish_upload--> finished
    created/paused/uploading --cancel, idle timeout, bad chunk--> cancelled
    any open state --a store failed--> cancelled
    handing_over/waiting_for_finish --handover failed or timed out--> cancelled
    finished/cancelled --after the retention time--> forgotten

A finished or cancelled upload stays in the state store as a tombstone for
the retention time, so a browser that reconnects, even after a crash,
learns how it ended instead of "unknown upload".

The public methods (`connect`, `receive`, `pause`, `cancel`, `finish`, ...)
check what they are given and feed inputs.  Outputs are thin calls into
the stores (`incoming.interfaces`), each returning a Deferred; a store's
result comes back as an input (`_store_failed` for any failure), so a
failing store never leaves half a transition.  Time comes from the
injected clock, HTTP from the injected backend client.
"""

from __future__ import annotations

import hashlib
from time import perf_counter
from typing import Any

import attr
from automat import MethodicalMachine
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .automat_inputs import bind_inputs_once
from .deadline import Deadline
from .hashing import InlineHashBudget, StreamDigest, digest_of
from .interfaces import (
    FILE,
    DataGone,
    IDeadlines,
    IFreeSpace,
    IKeepsDigest,
    IRemoveAfterHandover,
    LockHeld,
    NoSpace,
    Refused,
    StoreUnavailable,
    VersionConflict,
)
from .metrics import BACKEND, BROWSER, HANDOVER, IDLE, NO_METRICS, PROTOCOL, STORAGE, TOO_LARGE
from .outcome import DONE, FAILED, hand_over
from .records import LIVENESS_BYTES, LIVENESS_SECONDS, UploadRecord
from .space import SpacePromises
from .storage_pool import SerialQueue
from .wire import SAMPLE_BYTES, ErrorCode, shown

# Chunks written or hashed but not finished before reading from the browser pauses.
MAX_BACKLOG = 16
# The longest wait before sealing again in a store that did not answer.
SEAL_RETRY_MAX = 60.0


def _come_back(failure) -> tuple[str, ErrorCode] | None:
    """What to tell a browser for a store failure it should retry later."""
    if failure.check(NoSpace):
        return f"the server's disk is full ({failure.value}); try again later", ErrorCode.NO_SPACE
    if failure.check(StoreUnavailable):
        return f"{failure.value}; try again later", ErrorCode.STORE_UNAVAILABLE
    return None


@attr.s(frozen=True, auto_attribs=True)
class Ticket:
    """What the backend asked for in new_upload."""

    id: str
    signal_finish_url: str
    backend_secret: str = attr.ib(repr=False, default="")
    remove_file_when_finished: bool = True
    dest_type: str = FILE

    @classmethod
    def of(cls, record: UploadRecord) -> Ticket:
        return cls(
            record.id,
            record.signal_finish_url,
            record.backend_secret,
            record.remove_file_when_finished,
            record.dest_type,
        )


@attr.s(frozen=True, auto_attribs=True)
class Services:
    """What every upload needs from the server, shared by all uploads."""

    settings: Any
    stores: Any  # incoming.interfaces.StoreComposer
    backend: Any  # incoming.handover.BackendClient
    clock: Any  # IReactorTime: the reactor, or a Clock in tests
    run_blocking: Any  # (f, *args) -> Deferred: the storage pool
    metrics: Any = NO_METRICS
    monotonic: Any = None  # () -> seconds; time.monotonic in production, else clock.seconds
    space: SpacePromises = attr.Factory(SpacePromises)  # room promised to connected uploads
    # How many bytes of large chunks a second the reactor thread hashes itself.
    inline_hashing: InlineHashBudget = attr.Factory(
        lambda self: InlineHashBudget(self.elapsed_clock()), takes_self=True
    )

    def elapsed_clock(self):
        return self.monotonic or self.clock.seconds


class TooLate(Refused):
    """The upload is past the point where this request makes sense."""


# How the browser is told about a cancellation.
REPLY_ERROR = "error"  # MsgError(code, reason)
REPLY_CANCEL = "cancel"  # MsgCancel(reason): the backend cancelled
REPLY_CANCEL_ACK = "cancel-ack"  # MsgCancelAck: the browser asked for it


class Upload:
    """One ticket, from new_upload until it is forgotten."""

    _machine = MethodicalMachine()
    _log = Logger()

    def __init__(self, record: UploadRecord, services: Services, forget, ended=None):
        """``forget(upload)`` when its retention is over; ``ended(upload)``
        when it finishes or is cancelled (the registry counts open uploads)."""
        self._stored = record  # as the state store last confirmed it
        self.ticket = Ticket.of(record)
        self._settings = services.settings
        self._stores = services.stores
        self._dest_type = record.dest_type
        self._data_store = services.stores.data_for(record.dest_type)  # checked by its creator
        self._backend = services.backend
        self._clock = services.clock
        self._monotonic = services.elapsed_clock()
        self._run_blocking = services.run_blocking
        self._inline_hashing = services.inline_hashing
        self._metrics = services.metrics
        self._space = services.space
        self._promised_to: Any = None  # the channel the space promise was made for
        self._sample_timer: Any = None
        self._writes = 0  # generation of chunk writes: a full disk drops the queued ones
        self._forget_me = forget
        self._ended_hook = ended
        self._offered_before = False  # a handover made again after a restart
        self._keep_file = record.keep_file
        # Told when nothing runs here any more (no browser, no handover): a
        # server that shares uploads lets it go then (incoming.registry).
        self.at_rest: Any = None
        self.length: int | None = record.length
        self.browser_name = record.browser_name
        self.last_modified = record.last_modified
        self._sampling: dict = {}  # channel -> announced "fingerprint", until bound
        self._sample: tuple[int, int, str] | None = None  # asked of the bound channel
        self.received = 0  # bytes the data store holds
        self._accepted = 0  # bytes taken from the browser (written or being written)
        self.sha256: str | None = record.sha256
        self.cancel_reason: str | None = record.cancel_reason
        self._location: str | None = None
        self._hasher: StreamDigest | None = None
        self._data: Any = None  # IUploadData while open
        self._io = SerialQueue()  # this upload's data operations, in order
        self._saves = SerialQueue()  # this upload's record writes, in order
        self._save_waiters: list[Deferred] = []  # asked for the write queued next
        self._channel: Any = None
        self._connecting: dict[Any, list] = {}  # channels on their way to be bound
        self._lock: Any = None
        self._throttled: Any = None
        self._touched_at = record.touched_at
        self._persisted_touch = self._touched_at
        self._unpersisted_bytes = 0
        self._waiting_since = record.waiting_since
        self._ended_at = record.ended_at
        self._idle_timer: Any = None
        self._confirm_timer: Any = None
        self._forget_timer: Any = None
        self._quiesced = False  # let go of (another server may have it): act no more
        self._seal_timer: Any = None  # sealing again, after a store that did not answer
        self._seal_failures = 0
        self._seal_failing_since: float | None = None

    @classmethod
    def restore(cls, record: UploadRecord, plan, services: Services, forget, ended=None) -> Upload:
        """Rebuild an upload from its record and a `restore.RestorePlan`;
        timers continue from the recorded times."""
        upload = cls(record, services, forget, ended)
        upload.received = upload._accepted = plan.received
        upload._restore_state(plan.state)
        now = services.clock.seconds()
        if plan.state in ("finished", "cancelled"):
            ended = min(now if record.ended_at is None else record.ended_at, now)
            upload._arm_forget(max(0.0, services.settings.retention - (now - ended)))
        elif plan.state == "waiting_for_finish":
            since = now if record.waiting_since is None else record.waiting_since
            waited = now - min(since, now)
            upload._waiting_since = now - waited
            upload._arm_confirm(max(0.0, services.settings.handover_confirm_timeout - waited))
        elif plan.state == "handing_over":
            upload._offered_before = True  # maybe answered before the restart
            services.clock.callLater(0, upload._resume_handover)
        else:
            idle = services.settings.idle_timeout - (now - min(upload._touched_at, now))
            upload._arm_idle(max(0.0, idle))
        return upload

    @classmethod
    def new(cls, record: UploadRecord, services: Services, forget, ended=None) -> Upload:
        upload = cls(record, services, forget, ended)
        upload._arm_idle(services.settings.idle_timeout)
        return upload

    @property
    def channel(self):
        """The browser connection bound to this upload, if any."""
        return self._channel

    @property
    def state(self) -> str:
        """Name of the machine's current state, for logs, status and tests."""
        return self._state_name()

    # ---- public API -------------------------------------------------------

    def connect(
        self,
        channel,
        length: int,
        name: str,
        takeover: bool = False,
        fingerprint: bool = False,
        last_modified: int | None = None,
    ) -> None:
        """A browser's MsgUploadReq for this ticket.  With ``takeover`` (a
        client that announced the feature), a bound connection that no longer
        answers is let go at once instead of after its ping timeout.  With
        ``fingerprint``, the file's name and date must be the first
        connection's, and a resume checks a sample of the bytes stored."""
        limit = self._settings.max_file_size
        if self.length is None and limit and length > limit and self.state == "created":
            reason = f"file of {length} bytes is larger than the limit of {limit} bytes"
            channel.fail(ErrorCode.FILE_TOO_LARGE, reason)
            self._cancel(reason, ErrorCode.FILE_TOO_LARGE, REPLY_ERROR, TOO_LARGE)
            return
        if self.length is None:
            self.length, self.browser_name = length, name
            self.last_modified = last_modified if fingerprint else None
        else:
            changed = self._changed_file(length, name, fingerprint, last_modified)
            if changed:
                channel.fail(ErrorCode.FILE_CHANGED, changed)
                return
        if self.state not in ("created", "paused", "uploading"):
            self._connect(channel)
            return
        self._sampling[channel] = fingerprint
        busy = self.state == "uploading"  # no space check: the lock decides
        self._connecting[channel] = []  # chunks it sends before it is bound
        d = succeed(True) if busy else self._space_for_the_rest(channel)
        d.addCallback(lambda room: room and self._take_lock(channel, takeover))
        d.addErrback(lambda f: self._log.failure("upload {id}: connect", f, id=self.ticket.id))
        d.addBoth(lambda _: self._connected_or_not(channel))

    def _connected_or_not(self, channel) -> None:
        self._connecting.pop(channel, None)
        self._sampling.pop(channel, None)
        if self._channel is not channel and self._promised_to is channel:
            self._release_space()  # refused, busy or gone: its promise too

    def _hold_space(self, channel) -> None:
        self._space.hold(self)
        self._promised_to = channel

    def _release_space(self) -> None:
        self._space.release(self)
        self._promised_to = None

    @property
    def progress_at(self) -> float:
        """When a byte was last stored (or a browser bound)."""
        return self._touched_at

    def _changed_file(
        self, length: int, name: str, fingerprint: bool, last_modified: int | None
    ) -> str | None:
        """Why this is not the file the upload started with, if it is not."""
        if length != self.length:
            return (
                f"file size {length} differs from the {self.length} bytes "
                "announced when this upload started"
            )
        if not fingerprint:
            return None  # a 0.1 client: sizes alone, as 0.1
        if self.browser_name and name != self.browser_name:
            return (
                f"file name {shown(name)} differs from {shown(self.browser_name)}, "
                "the name of the file this upload started with"
            )
        if None not in (last_modified, self.last_modified) and last_modified != self.last_modified:
            return (
                f"the file's date ({last_modified} ms) differs from that of the file "
                f"this upload started with ({self.last_modified} ms)"
            )
        return None

    def _space_for_the_rest(self, channel) -> Deferred:
        """Fire with False (and refuse, without cancelling) when the rest of
        the file cannot fit; True otherwise."""
        store = self._stores.capability(IFreeSpace, self._dest_type)
        missing = (self.length or 0) - self.received
        if store is None or not missing:
            return succeed(True)
        needed = missing + self._settings.storage_reserve

        def check(free, recent):
            fits, promised = self._space.fits(free, needed, self._clock.seconds(), besides=self)
            if fits:
                self._hold_space(channel)  # at once: the next check counts it
                return True
            if recent:  # tight, by a measurement up to a second old: measure now
                d = maybeDeferred(store.free_bytes)
                return d.addCallbacks(check, lambda _: True, callbackArgs=(False,))
            self._log.warn(
                "upload {id}: refused, {needed} bytes needed, {free} free, "
                "{promised} promised to uploads in progress",
                id=self.ticket.id,
                needed=needed,
                free=free,
                promised=promised,
            )
            channel.fail(
                ErrorCode.NO_SPACE,
                f"not enough free space on the server for the remaining "
                f"{missing} bytes; try again later",
            )
            return False

        # A store that cannot tell: the write that follows will report it.
        d = maybeDeferred(store.free_bytes, recent=True)
        return d.addCallbacks(check, lambda _: True, callbackArgs=(True,))

    def _take_lock(self, channel, takeover: bool) -> Deferred:
        def locked(lock):
            if channel not in self._connecting or not getattr(channel, "still_open", True):
                return lock.release()  # gone while we waited
            self._lock = lock
            self._connect(channel)
            if self._channel is not channel:  # refused (cancelled meanwhile): let go
                self._release_lock()
                return
            for data in self._connecting.pop(channel, ()):
                self.receive(channel, data)

        def held(failure):
            if failure.check(StoreUnavailable):
                channel.fail(ErrorCode.STORE_UNAVAILABLE, f"{failure.value}; try again later")
                return None
            failure.trap(LockHeld)
            self._refuse_busy_channel(channel)

        d = self._stores.locker.acquire(
            self.ticket.id, self._release_requested, ask_holder=takeover, on_lost=self._lock_lost
        )
        return d.addCallbacks(locked, held)

    def _release_requested(self) -> Deferred:
        """Another connection wants this upload: let go if ours is dead."""
        channel = self._channel
        if channel is None or not hasattr(channel, "probe"):
            return succeed(channel is None)

        def answered(alive):
            if alive or channel is not self._channel:
                return channel is not self._channel
            self._log.info("upload {id}: bound connection is dead; let go", id=self.ticket.id)
            channel.drop()
            self.disconnect(channel)
            return True

        return channel.probe().addCallback(answered)

    def disconnect(self, channel) -> None:
        """The channel closed, for whatever reason."""
        self._connecting.pop(channel, None)
        if channel is self._channel:
            self._disconnect()

    def receive(self, channel, data) -> None:
        """A binary frame: one chunk of the file."""
        early = self._connecting.get(channel)
        if early is not None:  # sent before MsgUploadConf: kept until it is bound
            # Unambiguous only for a new upload (FilePos will be 0); a resuming
            # client cannot know where to start before MsgUploadConf.
            if len(early) >= MAX_BACKLOG or self.state != "created":
                self._connecting.pop(channel, None)
                channel.fail(ErrorCode.PROTOCOL, "file data before MsgUploadConf")
                return
            early.append(data)
            return
        if channel is not self._channel:
            return
        if self._sample is not None:  # a fingerprint client must answer first
            channel.fail(ErrorCode.PROTOCOL, "file data before the MsgAck that answers Sample")
            return
        if len(data) > self._settings.chunk_size:  # the WebSocket layer stops these first
            self.frame_too_large(channel, len(data))
            return
        if self.state == "uploading" and self._accepted + len(data) > (self.length or 0):
            self._bad_chunk(
                f"chunk of {len(data)} bytes at {self._accepted} goes past the "
                f"file size of {self.length} bytes"
            )
            return
        self._chunk(data)

    def frame_too_large(self, channel, size: int) -> None:
        """The WebSocket layer refused a frame above the chunk size."""
        if channel is self._channel:
            self._bad_chunk(
                f"frame of {size} bytes is larger than the chunk size "
                f"of {self._settings.chunk_size} bytes"
            )

    def pause(self, channel) -> None:
        """MsgPause: keep what we have, expect a reconnect later."""
        if channel is self._channel:
            self._pause()

    def cancel_from_browser(self, channel, reason: str, reply=REPLY_CANCEL_ACK) -> None:
        """MsgCancel or MsgError from the browser."""
        if channel is not self._channel:
            return
        try:
            self.cancel(reason, ErrorCode.CANCELLED, reply, BROWSER)
        except TooLate as e:
            channel.fail(ErrorCode.TOO_LATE, str(e))

    def cancel(self, reason: str, code=ErrorCode.CANCELLED, reply=REPLY_CANCEL, kind=BACKEND):
        """Cancel unless the handover has begun (then raise TooLate)."""
        if self.state in ("handing_over", "waiting_for_finish"):
            raise TooLate("too late to cancel: the file is being handed over")
        if self.state == "finished":
            raise TooLate("too late to cancel: the upload is finished")
        self._cancel(reason, code, reply, kind)
        return "ok"

    def finish(self):
        """finish_upload from the backend, after it answered wait."""
        if self.state != "waiting_for_finish":
            raise TooLate(f"nothing waits for finish_upload: the upload is {self.state}")
        self._finish()
        return "ok"

    def _rested(self) -> None:
        if self.at_rest is not None and self._channel is None:
            self.at_rest(self)

    def quiesce(self) -> Deferred:
        """Stop this object's timers and fire once its storage work and
        record writes have run: another server may take the upload then."""
        self._quiesced = True  # nothing this object has under way may start anew
        for name in ("_idle_timer", "_confirm_timer", "_forget_timer", "_seal_timer"):
            timer = getattr(self, name)
            setattr(self, name, None)
            if timer is not None:
                timer.cancel()
        self._forget_sample()
        return gatherResults([self._io.run(lambda: None), self._saves.run(lambda: None)])

    def going_away(self) -> Deferred:
        """At shutdown: close the browser connection with "going away", and
        fire once the data operations already asked for have run."""
        closing = self._channel.going_away() if self._channel is not None else succeed(None)
        return gatherResults([closing, self._io.run(lambda: None)])

    # ---- states -----------------------------------------------------------

    @_machine.state(initial=True, serialized="created")
    def created(self):
        "A ticket exists; no browser has connected yet."

    @_machine.state(serialized="uploading")
    def uploading(self):
        "A browser is connected and sending chunks."

    @_machine.state(serialized="paused")
    def paused(self):
        "Some bytes may be stored; no browser connected."

    @_machine.state(serialized="handing_over")
    def handing_over(self):
        "The file is complete; it is being sealed and handed over."

    @_machine.state(serialized="waiting_for_finish")
    def waiting_for_finish(self):
        "The backend answered wait; finish_upload is due."

    @_machine.state(serialized="finished")
    def finished(self):
        "The backend has the file."

    @_machine.state(serialized="cancelled")
    def cancelled(self):
        "The upload ended without a handover."

    @_machine.state(serialized="forgotten")
    def forgotten(self):
        "Cleaned up: no longer known to the registry."

    @_machine.serializer()
    def _state_name(self, state):
        return state

    @_machine.unserializer()
    def _restore_state(self, state):
        return state

    # ---- inputs -----------------------------------------------------------

    @_machine.input()
    def _connect(self, channel):
        "A browser connection asks for this upload (and holds its lock)."

    @_machine.input()
    def _opened(self):
        "The data store opened the upload's data (and its record is stored)."

    @_machine.input()
    def _disconnect(self):
        "The bound connection closed."

    @_machine.input()
    def _pause(self):
        "The browser paused."

    @_machine.input()
    def _chunk(self, data):
        "A chunk arrived."

    @_machine.input()
    def _bad_chunk(self, reason, kind=PROTOCOL):
        "A chunk broke the protocol (too large, past the end)."

    @_machine.input()
    def _complete(self):
        "Every byte is stored."

    @_machine.input()
    def _resume_handover(self):
        "After a restart: hand the complete file over (again)."

    @_machine.input()
    def _store_failed(self, reason, kind=STORAGE):
        "A data or state store call failed."

    @_machine.input()
    def _store_away(self, reason, code):
        "A full disk, or a shared store that does not answer: try later."

    @_machine.input()
    def _cancel(self, reason, code, reply, kind):
        "Cancel: by the browser, the backend, a timeout or an error (kind: metrics.CANCEL_KINDS)."

    @_machine.input()
    def _handover_done(self):
        "The backend answered done."

    @_machine.input()
    def _handover_wait(self):
        "The backend answered wait."

    @_machine.input()
    def _handover_failed(self, reason, kind=HANDOVER):
        "The handover failed or timed out."

    @_machine.input()
    def _finish(self):
        "The backend called finish_upload."

    @_machine.input()
    def _forget(self):
        "Retention is over."

    # ---- helpers of the outputs -----------------------------------------------

    def _failed(self, failure) -> None:
        """Any store failure: log it and feed it to the machine.  A version
        conflict means another server has taken the upload (its lease ran
        out here): this object stops, it neither cancels nor deletes."""
        if failure.check(VersionConflict):
            return self._taken_elsewhere(failure)
        self._log.error("upload {id}: {why}", id=self.ticket.id, why=str(failure.value))
        self._store_failed(str(failure.value))
        return None

    def _taken_elsewhere(self, failure) -> None:
        self._log.warn(
            "upload {id}: another server has taken it ({why}); this one lets it be",
            id=self.ticket.id,
            why=str(failure.value),
        )
        self.quiesce()
        channel, self._channel = self._channel, None
        self._release_lock()
        if channel is not None:
            channel.fail(ErrorCode.UPLOAD_BUSY, "another server has this upload now; reconnect")

    def _logged(self, what: str):
        def log(failure):
            self._log.error(
                "upload {id}: {what}: {why}", id=self.ticket.id, what=what, why=str(failure.value)
            )

        return log

    def _snapshot(self) -> UploadRecord:
        return attr.evolve(
            self._stored,
            state=self.state,
            length=self.length,
            browser_name=self.browser_name,
            last_modified=self.last_modified,
            touched_at=self._touched_at,
            waiting_since=self._waiting_since,
            sha256=self.sha256,
            cancel_reason=self.cancel_reason,
            keep_file=self._keep_file,
            ended_at=self._ended_at,
        )

    def _persist(self) -> Deferred:
        """Ask for a write of the record as it is when the write runs; fire
        when it is stored.  Requests that arrive while a write waits its turn
        share it (one write per burst of changes); an unchanged record is not
        written again."""
        waiter: Deferred = Deferred()
        self._save_waiters.append(waiter)
        if len(self._save_waiters) == 1:  # nothing queued yet
            self._saves.run(self._write_record)
        return waiter

    def _write_record(self) -> Deferred:
        waiters, self._save_waiters = self._save_waiters, []
        record = self._snapshot()
        self._persisted_touch = record.touched_at
        self._unpersisted_bytes = 0
        if record == self._stored:
            d = succeed(record)
        else:
            d = self._stores.state.update(record, self._stored.version)
            d.addCallback(self._record_stored)

        def settle(result):
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        return d.addBoth(settle)

    def _record_stored(self, record: UploadRecord) -> UploadRecord:
        self._stored = record
        return record

    def _deadline(self, delay: float, action) -> Deadline:
        return Deadline(self._clock, self._monotonic, delay, action)

    def _arm_idle(self, delay: float) -> None:
        self._idle_timer = self._deadline(delay, self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle_timer = None
        self._cancel(
            f"upload idle for more than {self._settings.idle_timeout:g} s",
            ErrorCode.CANCELLED,
            REPLY_ERROR,
            IDLE,
        )

    def _stop_idle(self) -> None:
        timer, self._idle_timer = self._idle_timer, None
        if timer is not None:
            timer.cancel()

    def _arm_confirm(self, delay: float) -> None:
        self._confirm_timer = self._deadline(
            delay,
            lambda: self._handover_failed(
                "backend did not call finish_upload within "
                f"{self._settings.handover_confirm_timeout:g} s"
            ),
        )

    def _arm_forget(self, delay: float) -> None:
        if self._ended_hook is not None:
            self._ended_hook(self)
        self._forget_timer = self._deadline(delay, self._forget)
        self._clock.callLater(0, self._rested)  # once the ending transition is over

    def _send_to(self, channel, method: str, *args) -> None:
        if channel is not None:
            getattr(channel, method)(*args)

    def _refuse_busy_channel(self, channel) -> None:
        self._log.info("upload {id}: refused a second connection", id=self.ticket.id)
        channel.fail(ErrorCode.UPLOAD_BUSY, "another connection is bound to this upload")

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def _notify_browser(self, reason, code, reply) -> None:
        channel, self._channel = self._channel, None
        self._forget_sample()
        self._release_space()
        self._release_lock()
        if channel is None:
            return
        if reply == REPLY_CANCEL_ACK:
            channel.cancel_acked()
        elif reply == REPLY_CANCEL:
            channel.cancelled(reason, code)
        else:
            channel.fail(code, reason)

    def _throttle(self) -> None:
        """Backpressure: a bound that always holds, whatever the order of events."""
        backlog = self._io.pending + (self._hasher.backlog if self._hasher else 0)
        if backlog >= MAX_BACKLOG and self._throttled is None and self._channel is not None:
            self._throttled = self._channel
            self._throttled.pause_reading()
        elif backlog < MAX_BACKLOG // 2 and self._throttled is not None:
            self._throttled, throttled = None, self._throttled
            throttled.resume_reading()

    # ---- outputs: the browser ---------------------------------------------

    @_machine.output()
    def _bind(self, channel):
        self._channel = channel
        self._hold_space(channel)  # a takeover binds without a check of its own

    @_machine.output()
    def _log_connected(self):
        self._log.info(
            "upload {id}: browser connected, {how} at byte {pos} of {length}",
            id=self.ticket.id,
            how="resuming" if self.received else "starting",
            pos=self.received,
            length=self.length,
        )

    @_machine.output()
    def _send_conf(self):
        if self._channel is not None:
            conf = (self._settings.chunk_size_kb, self.received, self._settings.send_ahead)
            if self._sample is None:
                self._channel.send_conf(*conf)
            else:
                self._channel.send_conf(*conf, sample=self._sample[:2])
        if self.received == self.length:
            self._complete()

    @_machine.output()
    def _bind_waiter(self, channel):
        """A browser reconnects while the handover runs: let it wait."""
        if self._channel is not None:
            self._refuse_busy_channel(channel)
            return
        self._channel = channel
        channel.send_conf(self._settings.chunk_size_kb, self.length, self._settings.send_ahead)

    @_machine.output()
    def _refuse_busy(self, channel):
        self._refuse_busy_channel(channel)

    @_machine.output()
    def _refuse_cancelled(self, channel):
        channel.fail(ErrorCode.CANCELLED, f"upload was cancelled: {self.cancel_reason}")

    @_machine.output()
    def _replay_done(self, channel):
        channel.send_conf(self._settings.chunk_size_kb, self.length, self._settings.send_ahead)
        channel.finish_ok()

    @_machine.output()
    def _unbind(self):
        self._channel = None
        self._forget_sample()
        self._release_space()
        self._release_lock()
        throttled, self._throttled = self._throttled, None
        if throttled is not None:  # so that it reads the browser's close
            throttled.resume_reading()
        if self.state in ("created", "paused", "waiting_for_finish", "finished", "cancelled"):
            self._rested()

    @_machine.output()
    def _log_paused(self):
        self._log.info(
            "upload {id}: paused at byte {pos} of {length}",
            id=self.ticket.id,
            pos=self.received,
            length=self.length,
        )

    @_machine.output()
    def _log_disconnected(self):
        self._log.info(
            "upload {id}: browser disconnected at byte {pos} of {length}",
            id=self.ticket.id,
            pos=self.received,
            length=self.length,
        )

    @_machine.output()
    def _refuse_stray_chunk(self):
        self._notify_browser(
            "file data after the file was complete", ErrorCode.PROTOCOL, REPLY_ERROR
        )

    @_machine.output()
    def _tell_browser(self, reason, code, reply):
        self._notify_browser(reason, code, reply)

    @_machine.output()
    def _tell_browser_handover_failed(self, reason):
        self._notify_browser(reason, ErrorCode.HANDOVER_FAILED, REPLY_ERROR)

    @_machine.output()
    def _tell_browser_protocol_error(self, reason):
        self._notify_browser(reason, ErrorCode.PROTOCOL, REPLY_ERROR)

    @_machine.output()
    def _tell_browser_server_error(self, reason):
        self._notify_browser(reason, ErrorCode.SERVER_ERROR, REPLY_ERROR)

    @_machine.output()
    def _tell_browser_to_come_back(self, reason, code):
        self._notify_browser(reason, code, REPLY_ERROR)

    # ---- outputs: time ----------------------------------------------------

    @_machine.output()
    def _touch(self):
        self._touch_now()

    def _touch_now(self) -> None:
        self._touched_at = self._clock.seconds()
        if self._idle_timer is not None:
            self._idle_timer.reset(self._settings.idle_timeout)

    @_machine.output()
    def _stop_idle_timer(self):
        self._stop_idle()

    @_machine.output()
    def _start_confirm_timer(self):
        self._log.info("upload {id}: backend answered wait", id=self.ticket.id)
        self._waiting_since = self._clock.seconds()
        self._arm_confirm(self._settings.handover_confirm_timeout)
        self._clock.callLater(0, self._rested)

    @_machine.output()
    def _stop_confirm_timer(self):
        timer, self._confirm_timer = self._confirm_timer, None
        if timer is not None:
            timer.cancel()

    @_machine.output()
    def _schedule_forget(self):
        self._arm_forget(self._settings.retention)

    # ---- outputs: the stores ----------------------------------------------

    @_machine.output()
    def _save_record(self):
        self._persist().addErrback(self._record_not_saved)

    def _record_not_saved(self, failure) -> None:
        """A record of progress (a pause, a touch, a wait, the sha256) that a
        full disk or an unreachable store refused costs the newest timestamps
        and, after a restart, a
        second handover (a complete file is handed over again, as the
        backend must expect); the bytes stored are the truth.  Any other
        failure ends the upload."""
        if not failure.check(NoSpace, StoreUnavailable):
            return self._failed(failure)  # a version conflict included: it stops
        self._log.warn(
            "upload {id}: record not updated ({why}); the bytes stored are kept",
            id=self.ticket.id,
            why=str(failure.value),
        )
        return None

    @_machine.output()
    def _open_data(self, channel):
        """Store the record (with the file's size), open the data, take a
        sample to check (a "fingerprint" client's resume), then conf."""
        accepted_before = self._accepted
        create = False
        sampling = self._sampling.pop(channel, False)

        def opened(data):
            if self.state != "uploading" or self._channel is not channel:  # it left
                self._io.run(data.close).addErrback(self._logged("closing the file"))
                return False
            self._data = data
            if self._hasher is None or data.size != self.received:
                # after a restart, or changed behind our back: hash it from the store
                self._hasher = None
                if create and self._settings.digest == "sha256":
                    self._hasher = StreamDigest(
                        self._run_blocking, self._throttle, self._inline_hashing
                    )
            # What is held, not a counter; chunks a client sent before our
            # MsgUploadConf (as if FilePos were where it thought) stay queued.
            self._accepted = data.size + (self._accepted - accepted_before)
            self.received = data.size
            if self._promised_to is channel:
                self._space.hold(self)  # the rest may be more than the record said
            return True

        def open_data():
            nonlocal create
            create = self._stored.length is None  # no earlier connection recorded
            store = self._data_store
            opening = store.create if create else store.reopen
            return self._persist().addCallback(lambda _: opening(self.ticket.id, self.length))

        d = self._io.run(open_data)
        d.addCallback(opened)
        if sampling:
            d.addCallback(lambda bound: bound and self._take_sample(channel))
        d.addCallbacks(lambda bound: bound and self._opened(), self._not_opened)

    def _not_opened(self, failure) -> None:
        """A full disk (code 10) or a store that does not answer (code 12)
        when the record or the file is made: refused for now with the bytes
        kept; anything else ends the upload."""
        come_back = _come_back(failure)
        if come_back is None or self.state != "uploading":
            return self._failed(failure)
        self._log.warn("upload {id}: {why}", id=self.ticket.id, why=str(failure.value))
        self._store_away(*come_back)
        return None

    def _lock_lost(self) -> None:
        """The hold on this upload lapsed (Redis away longer than a lease):
        another server may take it, so stop taking bytes; the browser comes
        back."""
        if self.state == "uploading" and self._channel is not None:
            self._store_away(
                "the server lost its hold on this upload (its shared store does not "
                "answer); try again later",
                ErrorCode.STORE_UNAVAILABLE,
            )

    def _take_sample(self, channel) -> Deferred:
        """Digest the bytes just before FilePos, which the browser must match
        with its file's; fire with whether the channel is still bound."""
        pos = self.received
        if not 0 < pos < (self.length or 0):
            return succeed(True)
        size = min(pos, SAMPLE_BYTES)

        def read():
            if self._data is None:
                return None
            return self._data.read_tail(size)

        def taken(sample):
            if self.state != "uploading" or self._channel is not channel or sample is None:
                return False  # it left meanwhile
            if not sample:  # none at hand (a part in an object store): sizes alone
                return True
            count = len(sample)  # fewer if the store has fewer at hand
            self._sample = (pos - count, count, hashlib.sha256(sample).hexdigest())
            wait = self._settings.websocket_timeout
            self._sample_timer = self._clock.callLater(wait, self._sample_late, channel, wait)
            return True

        return self._io.run(read).addCallback(taken)

    def _forget_sample(self) -> None:
        self._sample = None
        timer, self._sample_timer = self._sample_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _sample_late(self, channel, wait: float) -> None:
        self._sample_timer = None
        if channel is self._channel and self._sample is not None:
            channel.fail(ErrorCode.PROTOCOL, f"no MsgAck with the Sample within {wait:g} s")

    def acknowledged(self, channel, sample: str | None) -> None:
        """The browser's MsgAck; with the Sample digest it was asked for."""
        if channel is not self._channel or self._sample is None:
            return
        (offset, size, digest) = self._sample
        self._forget_sample()
        if sample is None:
            channel.fail(ErrorCode.PROTOCOL, "MsgAck without the Sample asked for")
        elif sample != digest:
            self._log.warn(
                "upload {id}: refused a different file: its bytes {start}-{end} differ",
                id=self.ticket.id,
                start=offset,
                end=offset + size,
            )
            channel.fail(
                ErrorCode.FILE_CHANGED,
                f"this is not the file this upload started with: its {size} bytes "
                f"before byte {offset + size} differ from those stored; nothing was added",
            )

    @_machine.output()
    def _close_data(self):
        def close():  # after the writes queued before it
            data, self._data = self._data, None
            return data.close() if data is not None else None

        self._io.run(close).addErrback(self._logged("closing the file"))

    @_machine.output()
    def _store_chunk(self, data):
        channel = self._channel
        offset = self._accepted
        self._accepted += len(data)
        generation = self._writes

        def write():
            if generation != self._writes:
                return None  # after a full disk: the browser sends it again
            if self._data is None:
                return fail(RuntimeError("no file open to write to"))
            started = perf_counter()  # a duration of I/O, not reactor time
            d = self._data.write_at(offset, data)
            if self._settings.fsync == "chunk":  # acknowledged means durable
                d.addCallback(lambda _: self._data.sync())
            return d.addCallback(lambda _: perf_counter() - started)

        d = self._io.run(write)
        d.addCallbacks(lambda seconds: self._chunk_stored(data, seconds, channel), self._not_stored)
        self._throttle()

    def _not_stored(self, failure) -> None:
        """A chunk write failed.  A full disk, or a store that does not
        answer, keeps what is stored: the browser is told (code 10 or 12)
        and comes back later; the writes queued behind it are dropped, it
        sends them again."""
        come_back = _come_back(failure)
        if come_back is None:
            return self._failed(failure)
        self._writes += 1
        self._log.warn(
            "upload {id}: {why}; paused at byte {pos}, the bytes stored are kept",
            id=self.ticket.id,
            why=str(failure.value),
            pos=self.received,
        )
        self._store_away(*come_back)
        return None

    def _chunk_stored(self, data, seconds: float | None, channel) -> None:
        if seconds is None:  # dropped
            return
        self._metrics.chunk_stored(len(data), seconds)
        self.received += len(data)
        self._unpersisted_bytes += len(data)
        if self._hasher is not None:
            self._hasher.feed(data)
        self._throttle()
        if self.state != "uploading" or channel is not self._channel:
            return  # cancelled meanwhile, or sent by a connection that is gone
        self._send_to(channel, "send_chunk_ack", len(data))
        self._touch_now()
        now = self._touched_at
        if (
            now - self._persisted_touch >= LIVENESS_SECONDS
            or self._unpersisted_bytes >= LIVENESS_BYTES
        ):
            self._persisted_touch, self._unpersisted_bytes = now, 0  # asked once
            self._persist().addErrback(self._record_not_saved)
        if self.received == self.length and self.state == "uploading":
            self._complete()

    @_machine.output()
    def _seal_and_hand_over(self):
        """Seal the data, get its sha256, record both, then hand over.  A
        store that does not answer or is full: tried again later."""
        hasher = self._hasher  # kept until sealed: a retry needs it
        durable = self._settings.fsync != "none"
        if IDeadlines.providedBy(self._stores.state):  # servers share it: say so at once
            self._persist().addErrback(self._record_not_saved)
        store = self._data_store

        def seal(_):  # after the writes queued before it
            data, self._data = self._data, None
            if data is not None:
                return data.finish(durable)
            held_d = store.held(self.ticket.id, self.length)
            return held_d.addCallback(seal_existing)

        def seal_existing(held):
            if held is None and self._stored.state == "handing_over":
                # sealed and offered before a restart (recorded so), then
                # taken by the backend: offered again as it was
                return store.location(self.ticket.id)
            if held is not None and self.length is not None and held[0] < self.length:
                # never hand over less than the file (an object store lost a
                # multipart upload, say): the upload fails instead
                raise DataGone(
                    f"the store holds {held[0]} of the {self.length} bytes of upload "
                    f"{self.ticket.id}; they cannot be handed over"
                )
            return store.seal_existing(self.ticket.id, durable)

        def checksum(location):
            self._location = location
            if self._settings.digest != "sha256":
                return None
            if hasher is not None:
                return hasher.hexdigest()
            if self.sha256 is not None:
                return self.sha256
            reader = store.open_reader(self.ticket.id)
            return reader.addCallback(digest_of, self._run_blocking)

        def keep_digest(sha256):
            keeper = self._stores.capability(IKeepsDigest, self._dest_type)
            if keeper is None or sha256 is None:
                return sha256
            d = keeper.keep_digest(self.ticket.id, sha256)
            return d.addCallbacks(lambda _: sha256, self._digest_not_kept, errbackArgs=(sha256,))

        def sealed(sha256):
            self.sha256 = sha256
            self._hasher = None
            self._seal_failures = 0
            self._log.info(
                "upload {id}: complete, {length} bytes in {path}, sha256 {sha256}",
                id=self.ticket.id,
                length=self.length,
                path=self._location,
                sha256=self.sha256,
            )
            # With the sha256: a restart offers the file as it was.  A full
            # disk only costs the record: a restart finds the complete file.
            return self._persist().addErrback(self._record_not_saved)

        d = self._io.run(seal, None)
        d.addCallback(checksum).addCallback(keep_digest).addCallback(sealed)
        d.addCallbacks(lambda _: self._offer(), self._not_sealed)

    def _not_sealed(self, failure) -> None:
        """Sealing failed.  A store that does not answer (or is full) is
        asked again after 1, 2, 4 ... 60 s while the idle timeout allows:
        the browser waits for its MsgAllDone as for a slow backend; any
        other failure ends the upload."""
        if self._quiesced:  # let go meanwhile: whoever has it now seals it
            self._log.info(
                "upload {id}: sealing failed after it was let go: {why}",
                id=self.ticket.id,
                why=str(failure.value),
            )
            return None
        if self.state != "handing_over" or _come_back(failure) is None:
            return self._failed(failure)
        delay = min(SEAL_RETRY_MAX, 2.0**self._seal_failures)
        self._seal_failures += 1
        now = self._monotonic()
        if self._seal_failing_since is None:
            self._seal_failing_since = now
        if now - self._seal_failing_since + delay > self._settings.idle_timeout:
            return self._failed(failure)
        self._log.warn(
            "upload {id}: cannot complete it in the store for now ({why}); trying again in "
            "{delay:g} s",
            id=self.ticket.id,
            why=str(failure.value),
            delay=delay,
        )
        self._seal_timer = self._clock.callLater(delay, self._seal_again)
        return None

    def _seal_again(self) -> None:
        self._seal_timer = None
        if self.state == "handing_over" and not self._quiesced:
            self._resume_handover()

    def _digest_not_kept(self, failure, sha256: str) -> str:
        """The file is complete and its sha256 goes in the handover: a
        store that could not keep it as well is no reason to fail it."""
        self._log.warn(
            "upload {id}: handed over without its sha256 kept in the store: {why}",
            id=self.ticket.id,
            why=str(failure.value),
        )
        return sha256

    def _offer(self) -> None:
        if self.state != "handing_over" or self._quiesced:  # cancelled, or let go meanwhile
            return
        d = hand_over(
            self._backend,
            self.ticket,
            self._location,
            self.browser_name,
            self.sha256,
            self._clock,
            self._metrics,
        )

        def answered(outcome):
            answer, reason = outcome
            if self.state != "handing_over":
                self._log.warn("upload {id}: handover answered after it ended", id=self.ticket.id)
            elif answer == DONE:
                self._handover_done()
            elif answer == FAILED:
                self._handover_failed(reason)
            else:
                self._handover_wait()

        d.addCallback(answered)
        d.addErrback(lambda f: self._log.failure("upload {id}: handover", f, id=self.ticket.id))

    @_machine.output()
    def _record_end(self):
        self._ended_at = self._clock.seconds()
        self._release_space()  # an ended upload holds no promise (nor is held by one)

    @_machine.output()
    def _bury_announce_remove(self):
        """Record the tombstone, then tell the browser (only then is it
        finished), then remove the file if the backend asked for it (after
        the tombstone: a crash never finds an open record without its file)."""
        self._log.info("upload {id}: handed over", id=self.ticket.id)
        self._metrics.upload_finished()
        channel, self._channel = self._channel, None
        self._release_lock()
        store = self._stores.capability(IRemoveAfterHandover, self._dest_type)
        location = self._location or self._data_store.location(self.ticket.id)

        def announce(_):
            self._send_to(channel, "finish_ok")
            if self.ticket.remove_file_when_finished and store is not None:
                return store.remove(location).addErrback(self._logged("removing the file"))

        d = self._persist().addErrback(self._logged("recording the finish"))
        d.addCallback(announce)

    @_machine.output()
    def _record_cancel(self, reason, kind):
        self.cancel_reason = reason
        self._log.info(
            "upload {id}: cancelled: {reason}", id=self.ticket.id, reason=reason, cancel_kind=kind
        )
        self._metrics.upload_cancelled(kind)

    @_machine.output()
    def _bury_then_discard(self):
        self._bury_and_discard()

    def _bury_and_discard(self) -> None:
        """Record the tombstone, then delete the data (a crash in between:
        the restore deletes a cancelled upload's data)."""
        d = self._persist().addErrback(self._logged("recording the cancellation"))
        d.addCallback(lambda _: self._discard_data_now())

    @_machine.output()
    def _bury_keep_if_offered(self):
        """A failed handover: the data goes, unless the file was handed over
        before a restart.  The record of the backend's answer may be what a
        power loss took, so the backend may hold the file: it stays."""
        if not self._offered_before:
            return self._bury_and_discard()
        self._keep_file = True
        self._log.warn(
            "upload {id}: its handover, made again after a restart, failed; the file "
            "{path} is left in place (the backend may have taken it before)",
            id=self.ticket.id,
            path=self._location or self._data_store.location(self.ticket.id),
        )
        self._persist().addErrback(self._logged("recording the cancellation"))

    def _discard_data_now(self) -> None:
        def discard(_):  # after the writes queued before it
            data, self._data = self._data, None
            if data is not None:
                return data.terminate()
            return self._data_store.discard(self.ticket.id)

        def tidy(_):  # a sealed file whose handover failed, or a .part left open
            return self._data_store.discard(self.ticket.id)

        d = self._io.run(discard, None).addBoth(tidy)
        d.addErrback(self._logged("deleting the data"))

    @_machine.output()
    def _report_cancel(self, reason):
        self._backend.report_cancel(self.ticket, self.browser_name, reason)

    @_machine.output()
    def _count_handover_failure(self):
        self._metrics.handover_failed()

    @_machine.output()
    def _unregister(self):
        self._release_lock()
        self._saves.run(self._stores.state.delete, self.ticket.id).addErrback(
            self._logged("deleting the record")
        )
        self._forget_me(self)

    # ---- transitions ------------------------------------------------------

    _cancelling = [_stop_idle_timer, _record_cancel, _record_end, _bury_then_discard]
    _finishing = [_stop_confirm_timer, _record_end, _bury_announce_remove, _schedule_forget]

    created.upon(_connect, enter=uploading, outputs=[_bind, _touch, _open_data])
    paused.upon(_connect, enter=uploading, outputs=[_bind, _touch, _open_data])
    uploading.upon(_opened, enter=uploading, outputs=[_log_connected, _send_conf])
    uploading.upon(_connect, enter=uploading, outputs=[_refuse_busy])
    handing_over.upon(_connect, enter=handing_over, outputs=[_bind_waiter])
    waiting_for_finish.upon(_connect, enter=waiting_for_finish, outputs=[_bind_waiter])
    finished.upon(_connect, enter=finished, outputs=[_replay_done])
    cancelled.upon(_connect, enter=cancelled, outputs=[_refuse_cancelled])
    for _state in (paused, handing_over, waiting_for_finish, finished, cancelled):
        _state.upon(_opened, enter=_state, outputs=[])  # the browser left meanwhile

    uploading.upon(
        _disconnect,
        enter=paused,
        outputs=[_unbind, _close_data, _touch, _save_record, _log_disconnected],
    )
    for _state in (handing_over, waiting_for_finish, finished, cancelled):
        _state.upon(_disconnect, enter=_state, outputs=[_unbind])

    uploading.upon(
        _pause, enter=paused, outputs=[_unbind, _close_data, _touch, _save_record, _log_paused]
    )
    for _state in (handing_over, waiting_for_finish):
        _state.upon(_pause, enter=_state, outputs=[])

    uploading.upon(_chunk, enter=uploading, outputs=[_store_chunk])
    uploading.upon(
        _store_away,
        enter=paused,
        outputs=[_tell_browser_to_come_back, _unbind, _close_data, _touch, _save_record],
    )
    for _state in (created, paused, handing_over, waiting_for_finish, finished, cancelled):
        _state.upon(_store_away, enter=_state, outputs=[])  # the browser left already
    uploading.upon(
        _bad_chunk,
        enter=cancelled,
        outputs=_cancelling + [_tell_browser_protocol_error, _report_cancel, _schedule_forget],
    )
    for _state in (handing_over, waiting_for_finish):
        _state.upon(_bad_chunk, enter=_state, outputs=[_tell_browser_protocol_error])
        _state.upon(_chunk, enter=_state, outputs=[_refuse_stray_chunk])  # empty frame

    # Recorded once sealed (with its sha256); until then a restart finds the
    # complete .part file by its size.
    uploading.upon(_complete, enter=handing_over, outputs=[_stop_idle_timer, _seal_and_hand_over])
    handing_over.upon(_resume_handover, enter=handing_over, outputs=[_seal_and_hand_over])

    for _state in (created, paused, uploading):
        _state.upon(
            _cancel,
            enter=cancelled,
            outputs=_cancelling + [_tell_browser, _report_cancel, _schedule_forget],
        )
        _state.upon(
            _store_failed,
            enter=cancelled,
            outputs=_cancelling + [_tell_browser_server_error, _report_cancel, _schedule_forget],
        )
    cancelled.upon(_cancel, enter=cancelled, outputs=[])

    handing_over.upon(_handover_done, enter=finished, outputs=_finishing)
    handing_over.upon(
        _handover_wait, enter=waiting_for_finish, outputs=[_start_confirm_timer, _save_record]
    )
    waiting_for_finish.upon(_finish, enter=finished, outputs=_finishing)
    for _state in (handing_over, waiting_for_finish):
        _state.upon(
            _handover_failed,
            enter=cancelled,
            outputs=[
                _stop_confirm_timer,
                _record_cancel,
                _count_handover_failure,
                _record_end,
                _bury_keep_if_offered,
                _tell_browser_handover_failed,
                _report_cancel,
                _schedule_forget,
            ],
        )
        _state.upon(
            _store_failed,
            enter=cancelled,
            outputs=[
                _stop_confirm_timer,
                _record_cancel,
                _record_end,
                _bury_keep_if_offered,
                _tell_browser_server_error,
                _report_cancel,
                _schedule_forget,
            ],
        )
    for _state in (finished, cancelled):
        _state.upon(_store_failed, enter=_state, outputs=[])  # logged; nothing left to undo
        _state.upon(_forget, enter=forgotten, outputs=[_unregister])
    for _state in (created, paused, uploading, handing_over, waiting_for_finish):
        _state.upon(_forget, enter=_state, outputs=[])  # a stale timer
    for _input in (_store_failed, _opened, _disconnect, _forget, _store_away):
        forgotten.upon(_input, enter=forgotten, outputs=[])  # late results
    del _input
    del _state


bind_inputs_once(Upload)  # see incoming.automat_inputs
