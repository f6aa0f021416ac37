"""
Where blocking storage work runs: a thread pool of its own (not the
reactor's, which DNS lookups use), and a queue that keeps one upload's
operations in order.

Every fsync, rename, unlink, record write and whole-file read goes through
a ``run_blocking(f, *args) -> Deferred``: `StoragePool.run` in the server,
`run_here` in tests that want everything to happen at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

# Threads for storage work: fsyncs of several uploads overlap, hashing
# (hashlib releases the GIL) uses the second core.
STORAGE_THREADS = 8


def run_here(f: Callable, *args: Any) -> Deferred:
    """Run blocking work right away, on this thread (unit tests)."""
    return maybeDeferred(f, *args)


class StoragePool(Service):
    """The storage threads, started and stopped with the server."""

    name = "storage-pool"

    def __init__(self, reactor, threads: int = STORAGE_THREADS, name: str = "incoming-storage"):
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=threads, name=name)

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self):
        super().stopService()
        # Work already queued still runs (a rename half-way is never cut).
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._pool.stop)

    def run(self, f: Callable, *args: Any) -> Deferred:
        return deferToThreadPool(self._reactor, self._pool, f, *args)


class SerialQueue:
    """Runs one upload's operations one after another, in the order asked.

    A failure reaches the caller of that operation only; the next one runs.
    """

    def __init__(self) -> None:
        self._tail: Deferred = succeed(None)
        self._pending = 0

    @property
    def pending(self) -> int:
        """Operations asked for that have not finished yet."""
        return self._pending

    def run(self, f: Callable, *args: Any) -> Deferred:
        self._pending += 1
        result: Deferred = Deferred()

        def step(_):
            return maybeDeferred(f, *args).addBoth(self._settle, result)

        self._tail = self._tail.addCallback(step)
        return result

    def _settle(self, outcome: Any, result: Deferred) -> None:
        self._pending -= 1
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)
