"""
Where blocking storage work runs: a thread pool of its own (not the
reactor's, which DNS lookups use), and a queue that keeps one upload's
operations in order.

Every fsync, rename, unlink, record write and whole-file read goes through
a ``run_blocking(f, *args) -> Deferred``: `StoragePool.run` in the server,
`run_here` in tests that want everything to happen at once.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

# Threads for storage work: fsyncs of several uploads overlap, hashing
# (hashlib releases the GIL) uses the second core.
STORAGE_THREADS = 8


def run_here(f: Callable, *args: Any) -> Deferred:
    """Run blocking work right away, on this thread (unit tests)."""
    return maybeDeferred(f, *args)


class StoragePool(Service):
    """The storage threads, started and stopped with the server.

    Twisted's ThreadPool hands each call to a coordinator and then to one
    worker's queue, and each result back with a reactor wake-up of its own:
    about 120 us of CPU per call when many uploads open or seal files at
    once (50 calls at a time, measured against this pool's 16 us).  Here
    the calls wait in one queue that every idle thread takes from, and the
    results that finish while the reactor has not yet collected the last
    ones go back with them, in one wake-up.  Threads start as work comes,
    up to ``threads``.
    """

    name = "storage-pool"
    _log = Logger()

    def __init__(self, reactor, threads: int = STORAGE_THREADS, name: str = "incoming-storage"):
        self._reactor = reactor
        self._max_threads = threads
        self._thread_name = name
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._jobs: deque[tuple[Callable, tuple, Deferred]] = deque()
        self._threads = 0  # alive
        self._idle = 0  # waiting for a job
        self._finished: list[tuple[Deferred, bool, Any]] = []  # for the reactor
        self._collecting = False  # a callFromThread to collect them is on its way
        self._stopping = False
        self._stopped: Deferred | None = None
        self._started: list[threading.Thread] = []

    def startService(self) -> None:
        with self._lock:
            if self._stopped is not None:
                raise RuntimeError(f"{self._thread_name}: still stopping")
            self._stopping = False
        super().startService()

    def stopService(self):
        """Fire once every call asked for has run (a rename half-way is
        never cut) and the threads are gone."""
        super().stopService()
        with self._lock:
            self._stopping = True
            self._work_ready.notify_all()
            if self._threads == 0 and not self._jobs:
                return succeed(None)
            if self._stopped is None:
                self._stopped = Deferred()
            return self._stopped

    def run(self, f: Callable, *args: Any) -> Deferred:
        d: Deferred = Deferred()
        with self._lock:
            self._jobs.append((f, args, d))
            if self._idle:
                self._work_ready.notify()
            # An idle thread counts as idle until it has the lock again: a
            # second call before then needs a thread of its own.
            if len(self._jobs) > self._idle and self._threads < self._max_threads:
                self._threads += 1
                thread = threading.Thread(
                    target=self._work, name=f"{self._thread_name}-{next(self._numbers)}"
                )
                self._started = [t for t in self._started if t.is_alive()] + [thread]
                thread.start()
        return d

    def _work(self) -> None:
        """A storage thread: run calls until stopping leaves none."""
        while True:
            with self._lock:
                while not self._jobs and not self._stopping:
                    self._idle += 1
                    self._work_ready.wait()
                    self._idle -= 1
                if not self._jobs:
                    self._threads -= 1
                    last = self._threads == 0
                    break
                f, args, d = self._jobs.popleft()
            try:
                outcome = (d, True, f(*args))
            except BaseException:
                outcome = (d, False, Failure())
            with self._lock:
                self._finished.append(outcome)
                if self._collecting:
                    continue
                self._collecting = True
            self._reactor.callFromThread(self._collect)
        if last:
            self._reactor.callFromThread(self._gone)

    def _collect(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
            self._collecting = False
        for d, ok, value in finished:
            try:
                if ok:
                    d.callback(value)
                else:
                    d.errback(value)
            except Exception:  # one caller's trouble (say, a cancelled call)
                self._log.failure("storage call result not delivered")

    def _gone(self) -> None:
        with self._lock:
            if self._threads or self._jobs:  # work came after the stop
                return
            stopped, self._stopped = self._stopped, None
        if stopped is not None:
            stopped.callback(None)

    def stop_now(self) -> None:
        """Stop and wait here for the threads (tests, outside the reactor's
        turn): the calls still queued run first, their results are dropped."""
        with self._lock:
            self._stopping = True
            self._work_ready.notify_all()
            started = list(self._started)
        for thread in started:
            thread.join()


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
