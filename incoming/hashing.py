"""
The sha256 of an upload: computed as chunks arrive, or read back from the
data store when the stream could not (after a restart).

Small chunks are hashed on the reactor thread (tens of µs, cheaper than a
thread trip).  Larger ones are too, up to `INLINE_HASH_RATE` bytes a second
for the whole process (a browser under Playwright sent 30-60 MB/s, which
fits; one that no driver watches sends 110-170 MB/s on loopback here, and
about half of its chunks go to the pool): a trip to an idle
storage thread and back wakes two threads and hands the GIL over, which
cost 2.4 CPU-s per GiB of 512 KiB chunks on our 2-core VM against 0.65 for
the hashing itself (one Chromium upload: the server's 6.8 CPU-s/GiB fell
to 4.2-4.6).  Beyond that rate, where the reactor thread would spend more
than a few per cent of its time hashing, chunks go to the storage pool,
where hashlib releases the GIL and uses the second core, in order; so does
a chunk larger than the burst.  The backlog tells the upload when to stop
reading from the browser.
"""

from __future__ import annotations

import hashlib

from twisted.internet.defer import Deferred, inlineCallbacks, succeed

# Chunks up to this size are always hashed on the reactor thread.
INLINE_HASH_BYTES = 64 * 1024
# Larger chunks, up to this many bytes a second per process (each --workers
# worker has its own; about 4 % of a core at sha256's 1.5 GB/s here), with a
# burst of INLINE_HASH_BURST.
INLINE_HASH_RATE = 64 * 1024 * 1024
INLINE_HASH_BURST = 4 * 1024 * 1024
READ_BLOCK = 1 << 20


class InlineHashBudget:
    """The bytes of large chunks the reactor thread may still hash itself:
    a token bucket, refilled at ``rate`` bytes a second up to ``burst``,
    shared by every upload of a process."""

    def __init__(self, seconds, rate: float = INLINE_HASH_RATE, burst: int = INLINE_HASH_BURST):
        self._seconds = seconds  # () -> elapsed seconds
        self._rate = rate
        self._burst = burst
        self._left = float(burst)
        self._at = seconds()

    def take(self, size: int) -> bool:
        """Spend ``size`` bytes of the budget if it holds them."""
        now = self._seconds()
        elapsed = max(0.0, now - self._at)  # a clock set back refills nothing
        self._left = min(self._burst, self._left + elapsed * self._rate)
        self._at = now
        if size > self._left:
            return False
        self._left -= size
        return True


NO_INLINE_BUDGET = InlineHashBudget(lambda: 0.0, rate=0, burst=0)


class StreamDigest:
    """sha256 of the bytes fed so far, in the order fed."""

    def __init__(self, run_blocking, on_hashed=None, budget: InlineHashBudget = NO_INLINE_BUDGET):
        self._run = run_blocking
        self._on_hashed = on_hashed  # called after each chunk hashed in the pool
        self._budget = budget  # large chunks hashed here while it lasts
        self._digest = hashlib.sha256()
        self._tail: Deferred = succeed(None)
        self.backlog = 0  # chunks queued for a storage thread

    def feed(self, data) -> None:
        if self.backlog == 0 and (
            len(data) <= INLINE_HASH_BYTES or self._budget.take(len(data))
        ):  # in order: nothing of this stream waits in the pool
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
