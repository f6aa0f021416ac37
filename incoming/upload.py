"""
The life of one upload, as a state machine (Automat).

    created --connect--> uploading <--disconnect/pause--> paused
    uploading --last byte stored--> handing_over --done--> finished
                                    handing_over --wait--> waiting_for_finish
                                    waiting_for_finish --finish_upload--> finished
    created/paused/uploading --cancel, idle timeout, bad chunk--> cancelled
    handing_over/waiting_for_finish --handover failed or timed out--> cancelled
    finished/cancelled --after RETENTION seconds--> forgotten (cleaned up)

A finished or cancelled upload is remembered for a while so that a browser
that reconnects learns how it ended instead of "unknown upload".

The public methods (`connect`, `receive`, `pause`, `cancel`, `finish`, ...)
check the data they are given and feed inputs to the machine; the machine's
outputs talk to the browser's channel, the storage folder and the backend.
Time comes from the injected clock, HTTP from the injected backend client.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from time import perf_counter
from typing import Any

import attr
from automat import MethodicalMachine
from twisted.internet.defer import maybeDeferred, succeed
from twisted.logger import Logger

from .handover import DONE, HandoverFailed
from .metrics import BACKEND, BROWSER, HANDOVER, IDLE, NO_METRICS, PROTOCOL, STORAGE, TOO_LARGE
from .storage import StorageError, remove_quietly, sha256_of_file
from .wire import ErrorCode

# Chunks waiting to be hashed before reading from the browser pauses.
MAX_HASH_BACKLOG = 16
# Chunks up to this size are hashed on the reactor thread (tens of µs).
INLINE_HASH_BYTES = 64 * 1024

# How long a finished or cancelled upload is remembered, in seconds.
RETENTION = 3600.0


@attr.s(frozen=True, auto_attribs=True)
class Ticket:
    """What the backend asked for in new_upload."""

    id: str
    signal_finish_url: str
    backend_secret: str = attr.ib(repr=False, default="")
    remove_file_when_finished: bool = True


@attr.s(frozen=True, auto_attribs=True)
class Services:
    """What every upload needs from the server, shared by all uploads."""

    settings: Any
    storage: Any  # incoming.storage.Storage
    journal: Any  # incoming.journal.Journal
    backend: Any  # incoming.handover.BackendClient
    clock: Any  # IReactorTime: the reactor, or a Clock in tests
    run_blocking: Callable  # (f, *args) -> Deferred; a thread pool in production
    metrics: Any = NO_METRICS  # incoming.metrics.Metrics


class TooLate(Exception):
    """The upload is past the point where this request makes sense."""


# How the browser is told about a cancellation.
REPLY_ERROR = "error"  # MsgError(code, reason)
REPLY_CANCEL = "cancel"  # MsgCancel(reason): the backend cancelled
REPLY_CANCEL_ACK = "cancel-ack"  # MsgCancelAck: the browser asked for it


class Upload:
    """One ticket, from new_upload until it is forgotten."""

    _machine = MethodicalMachine()
    _log = Logger()

    def __init__(self, ticket: Ticket, services: Services, forget, idle_left=None):
        self.ticket = ticket
        self._settings = services.settings
        self._storage = services.storage
        self._journal = services.journal
        self._backend = services.backend
        self._clock = services.clock
        self._run_blocking = services.run_blocking
        self._metrics = services.metrics
        self._forget_me = forget
        self.length: int | None = None
        self.browser_name = ""
        self.received = 0  # bytes stored in the file
        self.sha256: str | None = None  # hex digest, once the file is complete
        self._digest = None  # sha256 of the bytes stored so far, if known
        self._hashing = succeed(None)  # digest updates queued for a worker thread
        self._hash_backlog = 0  # chunks queued there
        self._throttled = None  # the channel paused until hashing catches up
        self._file = None
        self._channel = None
        self.cancel_reason: str | None = None
        self._touched_at = self._clock.seconds()
        self._waiting_since: float | None = None
        if idle_left is None:
            idle_left = self._settings.idle_timeout
        self._idle_timer = self._clock.callLater(idle_left, self._idle_expired)
        self._confirm_timer = None
        self._path: str | None = None

    @classmethod
    def restore(cls, record: dict, services: Services, forget) -> Upload:
        """Rebuild an upload from its journal record and the bytes on disk.

        An upload that was uploading or paused resumes from the bytes in its
        .part file; a complete one is handed over (again); one waiting for
        finish_upload keeps waiting.  Timers continue from the recorded times.
        """
        ticket = Ticket(
            id=record["id"],
            signal_finish_url=record["signal_finish_url"],
            backend_secret=record["backend_secret"],
            remove_file_when_finished=record["remove_file_when_finished"],
        )
        now = services.clock.seconds()
        touched_at = min(record["touched_at"], now)
        idle_left = max(0.0, services.settings.idle_timeout - (now - touched_at))
        upload = cls(ticket, services, forget, idle_left=idle_left)
        upload._touched_at = touched_at
        upload.length = record["length"]
        upload.browser_name = record["browser_name"]
        state = record["state"]
        if upload.length is None:
            upload._restore_state("created")
            return upload
        stored = services.storage.stored_size(ticket.id, upload.length)
        if state == "waiting_for_finish":
            upload.received = upload.length
            upload._path = services.storage.final_path(ticket.id)
            upload.sha256 = record.get("sha256")
            upload._restore_state("waiting_for_finish")
            upload._stop_idle()
            waited = now - min(record["waiting_since"], now)
            upload._waiting_since = now - waited
            upload._arm_confirm_timer(max(0.0, services.settings.handover_confirm_timeout - waited))
        elif state == "handing_over" or stored == upload.length:
            # Handed over again; if the backend already took the file away
            # (then the record has its sha256), the same path and sha256 again.
            upload.received = upload.length
            upload.sha256 = record.get("sha256")
            upload._restore_state("handing_over")
            upload._stop_idle()
            services.clock.callLater(0, upload._resume_handover)
        else:
            if stored is None:  # nothing on disk: resume from 0
                services.storage.create(ticket.id).close()
                stored = 0
            upload.received = stored
            upload._restore_state("paused")
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

    def connect(self, channel, length: int, name: str) -> None:
        """A browser's MsgUploadReq for this ticket."""
        limit = self._settings.max_file_size
        if self.length is None and limit and length > limit and self.state == "created":
            reason = f"file of {length} bytes is larger than the limit of {limit} bytes"
            channel.fail(ErrorCode.FILE_TOO_LARGE, reason)
            self._cancel(reason, ErrorCode.FILE_TOO_LARGE, REPLY_ERROR, TOO_LARGE)
            return
        if self.length is None:
            self.length, self.browser_name = length, name
        elif length != self.length:
            channel.fail(
                ErrorCode.FILE_CHANGED,
                f"file size {length} differs from the {self.length} bytes "
                "announced when this upload started",
            )
            return
        if self.state in ("created", "paused") and not self._space_for_the_rest(channel):
            return
        try:
            self._connect(channel)
        except StorageError as e:
            self._log.error("upload {id}: {why}", id=self.ticket.id, why=str(e))
            self._cancel(str(e), ErrorCode.SERVER_ERROR, REPLY_ERROR, STORAGE)
            return
        self._complete_if_all_stored()

    def _space_for_the_rest(self, channel) -> bool:
        """Refuse (without cancelling) when the rest of the file cannot fit."""
        missing = self.length - self.received
        needed = missing + self._settings.storage_reserve
        try:
            free = self._storage.free_bytes()
        except OSError:
            return True  # the open or write that follows will report it
        if missing and free < needed:
            self._log.warn(
                "upload {id}: refused, {needed} bytes needed, {free} free",
                id=self.ticket.id,
                needed=needed,
                free=free,
            )
            channel.fail(
                ErrorCode.NO_SPACE,
                f"not enough free space on the server for the remaining "
                f"{missing} bytes; try again later",
            )
            return False
        return True

    def disconnect(self, channel) -> None:
        """The channel closed, for whatever reason."""
        if channel is self._channel:
            self._disconnect()

    def receive(self, channel, data) -> None:
        """A binary frame: one chunk of the file."""
        if channel is not self._channel:
            return
        if len(data) > self._settings.chunk_size:  # the WebSocket layer stops these first
            self.frame_too_large(channel, len(data))
            return
        if self.received + len(data) > self.length:
            self._bad_chunk(
                f"chunk of {len(data)} bytes at {self.received} goes past the "
                f"file size of {self.length} bytes"
            )
            return
        try:
            self._chunk(data)
        except StorageError as e:
            self._log.error("upload {id}: {why}", id=self.ticket.id, why=str(e))
            self._cancel(str(e), ErrorCode.SERVER_ERROR, REPLY_ERROR, STORAGE)
            return
        self._complete_if_all_stored()

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

    def cancel(
        self, reason: str, code=ErrorCode.CANCELLED, reply=REPLY_CANCEL, kind=BACKEND
    ) -> None:
        """Cancel unless the handover has begun (then raise TooLate)."""
        if self.state in ("handing_over", "waiting_for_finish"):
            raise TooLate("too late to cancel: the file is being handed over")
        if self.state == "finished":
            raise TooLate("too late to cancel: the upload is finished")
        self._cancel(reason, code, reply, kind)

    def finish(self) -> None:
        """finish_upload from the backend, after it answered wait."""
        if self.state != "waiting_for_finish":
            raise TooLate(f"nothing waits for finish_upload: the upload is {self.state}")
        self._finish()

    def _complete_if_all_stored(self) -> None:
        if self.state == "uploading" and self.received == self.length:
            self._complete()

    def _idle_expired(self) -> None:
        self._idle_timer = None
        self._cancel(
            f"upload idle for more than {self._settings.idle_timeout:g} s",
            ErrorCode.CANCELLED,
            REPLY_ERROR,
            IDLE,
        )

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
        "The file is complete; the handover POST is running."

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
        "A browser connection asks for this upload."

    @_machine.input()
    def _disconnect(self):
        "The bound connection closed."

    @_machine.input()
    def _pause(self):
        "The browser paused."

    @_machine.input()
    def _chunk(self, data):
        "A valid chunk arrived."

    @_machine.input()
    def _bad_chunk(self, reason, kind=PROTOCOL):
        "A chunk broke the protocol (too large, past the end)."

    @_machine.input()
    def _complete(self):
        "Every byte is stored."

    @_machine.input()
    def _storage_failed_at_end(self, reason, kind=STORAGE):
        "The complete file could not be synced, renamed or read."

    @_machine.input()
    def _resume_handover(self):
        "After a restart: hand the complete file over (again)."

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

    # ---- outputs ----------------------------------------------------------

    @_machine.output()
    def _create_file(self):
        self._file = self._storage.create(self.ticket.id)
        if self._settings.digest == "sha256":
            self._digest = hashlib.sha256()

    @_machine.output()
    def _reopen_file(self):
        self._file = self._storage.reopen(self.ticket.id)
        if self._file.size != self.received:  # changed behind our back
            self._digest = None
        self.received = self._file.size  # what is on disk, not a counter

    @_machine.output()
    def _close_file(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    @_machine.output()
    def _bind(self, channel):
        # Before the file is opened, so that a storage error reaches the browser.
        self._channel = channel

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
    def _send_conf(self, channel):
        channel.send_conf(self._settings.chunk_size_kb, self.received, self._settings.send_ahead)

    @_machine.output()
    def _bind_waiter(self, channel):
        """A browser reconnects while the handover runs: let it wait."""
        if self._channel is not None:
            channel.fail(ErrorCode.UPLOAD_BUSY, "another connection is bound to this upload")
            return
        self._channel = channel
        channel.send_conf(self._settings.chunk_size_kb, self.length, self._settings.send_ahead)

    @_machine.output()
    def _refuse_busy(self, channel):
        self._log.info("upload {id}: refused a second connection", id=self.ticket.id)
        channel.fail(ErrorCode.UPLOAD_BUSY, "another connection is bound to this upload")

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
    def _touch(self):
        self._touched_at = self._clock.seconds()
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self._settings.idle_timeout)

    @_machine.output()
    def _stop_idle_timer(self):
        self._stop_idle()

    def _stop_idle(self):
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None

    @_machine.output()
    def _save_record(self):
        self.save()

    def save(self) -> None:
        """Write this upload's journal record (atomically)."""
        self._journal.save(
            self.ticket.id,
            {
                "id": self.ticket.id,
                "signal_finish_url": self.ticket.signal_finish_url,
                "backend_secret": self.ticket.backend_secret,
                "remove_file_when_finished": self.ticket.remove_file_when_finished,
                "length": self.length,
                "browser_name": self.browser_name,
                "state": self.state,
                "touched_at": self._touched_at,
                "waiting_since": self._waiting_since,
                "sha256": self.sha256,
            },
        )

    @_machine.output()
    def _drop_record(self):
        self._journal.delete(self.ticket.id)

    @_machine.output()
    def _store_chunk(self, data):
        started = perf_counter()  # a duration of blocking I/O, not reactor time
        self._file.append(data)
        if self._settings.fsync == "chunk":
            self._file.sync()  # acknowledged means durable
        self._metrics.chunk_stored(len(data), perf_counter() - started)
        self.received += len(data)
        if self._digest is not None:
            self._hash_later(self._digest, data)
        self._channel.send_chunk_ack(len(data))

    @_machine.output()
    def _refuse_stray_chunk(self):
        self._notify_browser(
            "file data after the file was complete", ErrorCode.PROTOCOL, REPLY_ERROR
        )

    def _hash_later(self, digest, data):
        """Hash a chunk in a worker thread (hashlib releases the GIL, so it
        runs beside the reactor on another core), chunks of one upload in
        order.  The chunk is already written and acknowledged; if hashing
        falls behind, reading from the browser pauses until it catches up."""
        if len(data) <= INLINE_HASH_BYTES and self._hash_backlog == 0:
            digest.update(data)  # cheaper than a trip to a thread
            return
        self._hash_backlog += 1
        if self._hash_backlog == MAX_HASH_BACKLOG and self._channel is not None:
            self._throttled = self._channel
            self._throttled.pause_reading()
        self._hashing.addCallback(lambda _: self._run_blocking(digest.update, data))
        self._hashing.addCallback(self._hashed_one)

    def _hashed_one(self, _):
        self._hash_backlog -= 1
        if self._hash_backlog < MAX_HASH_BACKLOG // 2 and self._throttled is not None:
            self._throttled, throttled = None, self._throttled
            throttled.resume_reading()

    @_machine.output()
    def _seal_and_hand_over(self):
        # Last output of its transition: results may arrive synchronously.
        file, self._file = self._file, None
        digest = self._digest
        # Syncing a file or hashing one from disk takes long: a worker thread;
        # a rename alone does not.
        slow = self._settings.fsync != "none" or (
            digest is None and self._settings.digest != "none"
        )
        run = self._run_blocking if slow else maybeDeferred
        d = self._hashing.addCallback(lambda _: run(self._seal, file, digest))
        d.addCallbacks(self._hand_over, self._seal_failed)
        d.addErrback(lambda f: self._log.failure("upload {id}: handover", f, id=self.ticket.id))

    def _seal(self, file, digest):
        """In a worker thread: make the file durable, give it its final name
        and compute its sha256 if the stream did not (e.g. after a restart)."""
        sync = self._settings.fsync != "none"
        if file is not None:
            path = file.complete(sync=sync)
        elif (
            self.sha256 is not None
            and self._storage.stored_size(self.ticket.id, self.length) is None
        ):
            # sealed and offered before a restart, then moved away by the backend
            return self._storage.final_path(self.ticket.id), self.sha256
        else:
            path = self._storage.complete_existing(self.ticket.id, sync=sync)
        if self._settings.digest != "sha256":
            return path, None
        sha256 = digest.hexdigest() if digest is not None else sha256_of_file(path)
        return path, sha256

    def _seal_failed(self, failure):
        if failure.check(StorageError, OSError):
            self._log.error("upload {id}: {why}", id=self.ticket.id, why=str(failure.value))
        else:
            self._log.failure("upload {id}: completing the file", failure, id=self.ticket.id)
        self._storage_failed_at_end(f"cannot complete the file: {failure.value}")

    def _hand_over(self, sealed):
        self._path, self.sha256 = sealed
        self.save()  # with the sha256: a restart can offer the file again as it was
        self._log.info(
            "upload {id}: complete, {length} bytes in {path}, sha256 {sha256}",
            id=self.ticket.id,
            length=self.length,
            path=self._path,
            sha256=self.sha256,
        )
        started = self._clock.seconds()
        d = self._backend.hand_over(self.ticket, self._path, self.browser_name, self.sha256)

        def timed(result):
            self._metrics.handover_ended(self._clock.seconds() - started)
            return result

        def answered(answer):
            if answer == DONE:
                self._handover_done()
            else:
                self._handover_wait()

        def failed(failure):
            if failure.check(HandoverFailed):
                reason = str(failure.value)
            else:
                self._log.failure("upload {id}: handover crashed", failure, id=self.ticket.id)
                reason = "internal error during the handover"
            self._handover_failed(reason)

        d.addBoth(timed)
        d.addCallbacks(answered, failed)
        d.addErrback(lambda f: self._log.failure("upload {id}: handover", f, id=self.ticket.id))

    @_machine.output()
    def _start_confirm_timer(self):
        self._log.info("upload {id}: backend answered wait", id=self.ticket.id)
        self._waiting_since = self._clock.seconds()
        self._arm_confirm_timer(self._settings.handover_confirm_timeout)

    def _arm_confirm_timer(self, delay):
        self._confirm_timer = self._clock.callLater(
            delay,
            lambda: self._handover_failed(
                "backend did not call finish_upload within "
                f"{self._settings.handover_confirm_timeout:g} s"
            ),
        )

    @_machine.output()
    def _stop_confirm_timer(self):
        if self._confirm_timer is not None and self._confirm_timer.active():
            self._confirm_timer.cancel()
        self._confirm_timer = None

    @_machine.output()
    def _announce_done(self):
        self._log.info("upload {id}: handed over", id=self.ticket.id)
        self._metrics.upload_finished()
        if self._channel is not None:
            self._channel.finish_ok()
            self._channel = None

    @_machine.output()
    def _remove_file_if_asked(self):
        if self.ticket.remove_file_when_finished:
            remove_quietly(self._path)

    @_machine.output()
    def _record_cancel(self, reason, kind):
        self.cancel_reason = reason
        self._log.info(
            "upload {id}: cancelled: {reason}", id=self.ticket.id, reason=reason, cancel_kind=kind
        )
        self._metrics.upload_cancelled(kind)

    @_machine.output()
    def _discard_file(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        remove_quietly(self._storage.part_path(self.ticket.id))
        if self._path is not None:  # complete, but the handover failed
            remove_quietly(self._path)

    @_machine.output()
    def _tell_browser(self, reason, code, reply):
        self._notify_browser(reason, code, reply)

    def _notify_browser(self, reason, code, reply):
        channel, self._channel = self._channel, None
        if channel is None:
            return
        if reply == REPLY_CANCEL_ACK:
            channel.cancel_acked()
        elif reply == REPLY_CANCEL:
            channel.cancelled(reason, code)
        else:
            channel.fail(code, reason)

    @_machine.output()
    def _tell_browser_handover_failed(self, reason):
        self._notify_browser(reason, ErrorCode.HANDOVER_FAILED, REPLY_ERROR)

    @_machine.output()
    def _count_handover_failure(self):
        self._metrics.handover_failed()

    @_machine.output()
    def _tell_browser_protocol_error(self, reason):
        self._notify_browser(reason, ErrorCode.PROTOCOL, REPLY_ERROR)

    @_machine.output()
    def _tell_browser_server_error(self, reason):
        self._notify_browser(reason, ErrorCode.SERVER_ERROR, REPLY_ERROR)

    @_machine.output()
    def _report_cancel(self, reason):
        self._backend.report_cancel(self.ticket, self.browser_name, reason)

    @_machine.output()
    def _schedule_forget(self):
        self._clock.callLater(RETENTION, self._forget)

    @_machine.output()
    def _unregister(self):
        self._forget_me(self)

    # ---- transitions ------------------------------------------------------

    _cancelling = [_stop_idle_timer, _record_cancel, _drop_record, _discard_file]
    _finishing = [
        _stop_confirm_timer,
        _drop_record,
        _announce_done,
        _remove_file_if_asked,
        _schedule_forget,
    ]

    created.upon(
        _connect,
        enter=uploading,
        outputs=[_bind, _create_file, _log_connected, _touch, _save_record, _send_conf],
    )
    paused.upon(
        _connect, enter=uploading, outputs=[_bind, _reopen_file, _log_connected, _touch, _send_conf]
    )
    uploading.upon(_connect, enter=uploading, outputs=[_refuse_busy])
    handing_over.upon(_connect, enter=handing_over, outputs=[_bind_waiter])
    waiting_for_finish.upon(_connect, enter=waiting_for_finish, outputs=[_bind_waiter])
    finished.upon(_connect, enter=finished, outputs=[_replay_done])
    cancelled.upon(_connect, enter=cancelled, outputs=[_refuse_cancelled])

    uploading.upon(
        _disconnect,
        enter=paused,
        outputs=[_unbind, _close_file, _touch, _save_record, _log_disconnected],
    )
    for _state in (handing_over, waiting_for_finish, finished, cancelled):
        _state.upon(_disconnect, enter=_state, outputs=[_unbind])

    uploading.upon(
        _pause, enter=paused, outputs=[_unbind, _close_file, _touch, _save_record, _log_paused]
    )
    for _state in (handing_over, waiting_for_finish):
        _state.upon(_pause, enter=_state, outputs=[])

    uploading.upon(_chunk, enter=uploading, outputs=[_store_chunk, _touch])
    uploading.upon(
        _bad_chunk,
        enter=cancelled,
        outputs=_cancelling + [_tell_browser_protocol_error, _report_cancel, _schedule_forget],
    )
    for _state in (handing_over, waiting_for_finish):
        _state.upon(_bad_chunk, enter=_state, outputs=[_tell_browser_protocol_error])
        _state.upon(_chunk, enter=_state, outputs=[_refuse_stray_chunk])  # empty frame

    # recorded once sealed (with its sha256); until then a restart finds the
    # complete .part file by its size
    uploading.upon(_complete, enter=handing_over, outputs=[_stop_idle_timer, _seal_and_hand_over])
    handing_over.upon(_resume_handover, enter=handing_over, outputs=[_seal_and_hand_over])
    handing_over.upon(
        _storage_failed_at_end,
        enter=cancelled,
        outputs=_cancelling + [_tell_browser_server_error, _report_cancel, _schedule_forget],
    )

    for _state in (created, paused, uploading):
        _state.upon(
            _cancel,
            enter=cancelled,
            outputs=_cancelling + [_tell_browser, _report_cancel, _schedule_forget],
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
                _drop_record,
                _discard_file,
                _tell_browser_handover_failed,
                _report_cancel,
                _schedule_forget,
            ],
        )

    for _state in (finished, cancelled):
        _state.upon(_forget, enter=forgotten, outputs=[_unregister])
    del _state
