"""
The locker in Redis: one holder per upload across every instance.

A lock is ``<prefix>lock:<id>`` set to its holder's random token with a
lease (``SET NX PX``), renewed by the holder every third of the lease; a
holder that dies is replaced once its lease runs out.  Renew and release
check the token in a Lua script, so a holder whose lease was taken over can
neither extend nor free the new holder's lock.  A holder listens on
``<prefix>unlock:<id>`` for requests to let go (tusd's ``requestUnlock``);
its ``on_release_requested`` decides.
"""

from __future__ import annotations

import json
import os

from twisted.internet.defer import fail, inlineCallbacks, maybeDeferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from .interfaces import ILock, ILocker, LockHeld, LockLost

LEASE_SECONDS = 5.0
ASK_TIMEOUT = 2.0  # how long a holder has to answer a request to let go

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

_log = Logger()


@implementer(ILock)
class RedisLock:
    """A hold on one upload, renewed while held."""

    def __init__(
        self, locker: RedisLocker, upload_id: str, token: str, on_release_requested, on_lost=None
    ):
        self._locker = locker
        self.upload_id = upload_id
        self.token = token
        self.on_release_requested = on_release_requested
        self._on_lost = on_lost
        self.held = True
        self._renewed_at = locker._clock.seconds()  # the lease runs from here
        self._renewal = None
        self._stop_listening = lambda: None

    @property
    def _key(self) -> str:
        return self._locker._key(self.upload_id)

    def _schedule(self) -> None:
        clock = self._locker._clock
        self._renewal = clock.callLater(self._locker.lease / 3, self._renew_now)

    def _renew_now(self) -> None:
        self._renewal = None
        d = self.renew()
        d.addCallback(lambda _: self._schedule() if self.held else None)
        d.addErrback(self._renewal_failed)

    def _renewal_failed(self, failure) -> None:
        expired = self._locker._clock.seconds() - self._renewed_at >= self._locker.lease
        if failure.check(LockLost) or (self.held and expired):
            _log.warn("upload {id}: its lock was lost: {why}", id=self.upload_id, why=failure.value)
            self._locker._hub.metrics.lock_lost()
            self._forget()
            if self._on_lost is not None:
                self._on_lost()
            return
        _log.warn("upload {id}: cannot renew its lock: {why}", id=self.upload_id, why=failure.value)
        if self.held:  # Redis away: try again while the lease may still hold
            self._schedule()

    def renew(self):
        if not self.held:
            return fail(LockLost(f"the lock on upload {self.upload_id} was released"))
        hub = self._locker._hub
        lease_ms = str(int(self._locker.lease * 1000))

        asked_at = self._locker._clock.seconds()

        def renewed(result):
            if int(result) != 1:
                self._forget()
                raise LockLost(f"the lock on upload {self.upload_id} was taken over")
            self._renewed_at = asked_at

        return hub.eval(_RENEW, [self._key], [self.token, lease_ms]).addCallback(renewed)

    def _forget(self) -> None:
        self.held = False
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
        self._renewal = None
        stop, self._stop_listening = self._stop_listening, lambda: None
        stop()

    def release(self):
        if not self.held:
            return succeed(None)
        self._forget()
        d = self._locker._hub.eval(_RELEASE, [self._key], [self.token])
        return d.addCallback(lambda _: None)

    def _asked(self, message: str) -> None:
        """Another instance wants this upload: let the holder decide."""
        try:
            request = json.loads(message)
        except ValueError:
            return
        hub = self._locker._hub

        def answered(let_go):
            if let_go and self.held:
                return self.release().addCallback(lambda _: True)
            return bool(let_go) and not self.held

        d = maybeDeferred(self.on_release_requested).addCallback(answered)
        d.addErrback(lambda f: _log.failure("upload {id}: asked to let go", f, id=self.upload_id))
        d.addCallback(lambda let_go: hub.reply(request, {"let_go": bool(let_go)}))


@implementer(ILocker)
class RedisLocker:
    """Locks shared by every instance on one Redis."""

    def __init__(self, hub, clock, lease: float = LEASE_SECONDS):
        self._hub = hub
        self._clock = clock
        self.lease = lease

    def _key(self, upload_id: str) -> str:
        return self._hub.key("lock", upload_id)

    @inlineCallbacks
    def acquire(self, upload_id: str, on_release_requested, ask_holder: bool = False, on_lost=None):
        lock = yield self._try(upload_id, on_release_requested, on_lost)
        if lock is None and ask_holder:
            channel = self._hub.key("unlock", upload_id)
            answers = yield self._hub.request(channel, {"upload": upload_id}, ASK_TIMEOUT)
            if any(a.get("let_go") for a in answers):
                lock = yield self._try(upload_id, on_release_requested, on_lost)
                if lock is not None:
                    self._hub.metrics.lock_taken_over()
        if lock is None:
            raise LockHeld(f"upload {upload_id} is held by another connection")
        return lock

    @inlineCallbacks
    def _try(self, upload_id: str, on_release_requested, on_lost):
        token = os.urandom(12).hex()
        lease_ms = str(int(self.lease * 1000))
        taken = yield self._hub.command("SET", self._key(upload_id), token, "NX", "PX", lease_ms)
        if taken is None:
            return None
        lock = RedisLock(self, upload_id, token, on_release_requested, on_lost)
        channel = self._hub.key("unlock", upload_id)
        lock._stop_listening = yield self._hub.subscribe(channel, lock._asked)
        lock._schedule()
        return lock
