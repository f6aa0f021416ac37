"""
The sha256 of an upload: computed as chunks arrive, or read back from the
data store when the stream could not (after a restart).

Small chunks are hashed on the reactor thread (tens of µs, cheaper than a
thread trip); larger ones in the storage pool, where hashlib releases the
GIL and uses the second core, in order.  The backlog tells the upload when
to stop reading from the browser.
"""

from __future__ import annotations

import hashlib

from twisted.internet.defer import Deferred, inlineCallbacks, succeed

# Chunks up to this size are hashed on the reactor thread.
INLINE_HASH_BYTES = 64 * 1024
READ_BLOCK = 1 << 20


class StreamDigest:
    """sha256 of the bytes fed so far, in the order fed."""

    def __init__(self, run_blocking, on_hashed=None):
        self._run = run_blocking
        self._on_hashed = on_hashed  # called after each chunk hashed in the pool
        self._digest = hashlib.sha256()
        self._tail: Deferred = succeed(None)
        self.backlog = 0  # chunks queued for a storage thread

    def feed(self, data) -> None:
        if len(data) <= INLINE_HASH_BYTES and self.backlog == 0:
            self._digest.update(data)
            return
        self.backlog += 1
        self._tail.addCallback(lambda _: self._run(self._digest.update, data))
        self._tail.addBoth(self._hashed_one)

    def _hashed_one(self, result):
        self.backlog -= 1
        if self._on_hashed is not None:
            self._on_hashed()
        return result

    def hexdigest(self) -> Deferred:
        """Fire with the hex digest once every chunk fed is hashed."""
        return self._tail.addCallback(lambda _: self._digest.hexdigest())


@inlineCallbacks
def digest_of(reader, run_blocking):
    """Hex sha256 of everything an IDataReader gives, hashed in the pool."""
    digest = hashlib.sha256()
    try:
        while True:
            block = yield reader.read(READ_BLOCK)
            if not block:
                return digest.hexdigest()
            yield run_blocking(digest.update, block)
    finally:
        yield reader.close()
