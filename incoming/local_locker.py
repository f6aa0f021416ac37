"""
The locker of the embedded default: one holder per upload, in this process.

A new holder may ask the present one to let go (tusd's ``requestUnlock``):
the holder's ``on_release_requested`` decides, e.g. after checking that its
browser still answers, and fires with True once it has let go.
"""

from __future__ import annotations

from twisted.internet.defer import fail, maybeDeferred, succeed
from zope.interface import implementer

from .interfaces import ILock, ILocker, LockHeld, LockLost


@implementer(ILock)
class LocalLock:
    def __init__(self, locker: LocalLocker, upload_id: str, on_release_requested):
        self._locker = locker
        self.upload_id = upload_id
        self.on_release_requested = on_release_requested
        self.held = True

    def renew(self):
        if not self.held:
            return fail(LockLost(f"the lock on upload {self.upload_id} was released"))
        return succeed(None)

    def release(self):
        if self.held:
            self.held = False
            if self._locker._locks.get(self.upload_id) is self:
                del self._locker._locks[self.upload_id]
        return succeed(None)


@implementer(ILocker)
class LocalLocker:
    """Locks of one process."""

    def __init__(self):
        self._locks: dict[str, LocalLock] = {}

    def acquire(self, upload_id: str, on_release_requested, ask_holder: bool = False, on_lost=None):
        """In one process a lock is never lost: ``on_lost`` is not called."""
        holder = self._locks.get(upload_id)
        if holder is None:
            return succeed(self._take(upload_id, on_release_requested))
        if not ask_holder:
            return fail(LockHeld(f"upload {upload_id} is held by another connection"))

        def answered(let_go):
            if self._locks.get(upload_id) is holder:
                if not let_go:
                    raise LockHeld(f"upload {upload_id} is held by another connection")
                holder.release()
            if upload_id in self._locks:  # someone else was quicker
                raise LockHeld(f"upload {upload_id} is held by another connection")
            return self._take(upload_id, on_release_requested)

        return maybeDeferred(holder.on_release_requested).addCallback(answered)

    def _take(self, upload_id: str, on_release_requested) -> LocalLock:
        lock = LocalLock(self, upload_id, on_release_requested)
        self._locks[upload_id] = lock
        return lock

    def held(self, upload_id: str) -> bool:
        return upload_id in self._locks
