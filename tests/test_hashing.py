"""The sha256 is computed as chunks arrive: on the reactor thread while the
server hashes slowly, past that in storage threads beside the reactor; when
hashing falls behind, reading from the browser pauses instead of queueing
chunks."""

import hashlib
import os

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from incoming.config import Settings
from incoming.embedded import embedded_stores
from incoming.hashing import (
    INLINE_HASH_BYTES,
    NO_INLINE_BUDGET,
    InlineHashBudget,
    StreamDigest,
)
from incoming.registry import UploadRegistry
from incoming.upload import MAX_BACKLOG

CHUNK = 2 * INLINE_HASH_BYTES  # large enough to go to a worker thread


class Channel:
    def __init__(self):
        self.acked = 0
        self.paused = self.resumed = 0
        self.done = False

    def send_conf(self, *args):
        pass

    def send_chunk_ack(self, size):
        self.acked += size

    def pause_reading(self):
        self.paused += 1

    def resume_reading(self):
        self.resumed += 1

    def finish_ok(self):
        self.done = True


class Backend:
    def __init__(self):
        self.handovers = []

    def hand_over(self, ticket, path, name, sha256):
        self.handovers.append(sha256)
        return succeed("done")


class WorkerThreads:
    """run_blocking that queues hashing until the test runs it; other
    storage work (open, rename) runs at once."""

    def __init__(self):
        self.queue = []

    def __call__(self, f, *args):
        if getattr(f, "__name__", "") != "update":
            return succeed(f(*args))
        d = Deferred()
        self.queue.append((f, args, d))
        return d

    def run_all(self):
        while self.queue:
            f, args, d = self.queue.pop(0)
            d.callback(f(*args))


def created(registry):
    results = []
    registry.create("http://backend.example/h", "", True).addCallback(results.append)
    return results[0]


def test_slow_hashing_pauses_reading_and_the_digest_stays_right(tmp_path):
    workers, backend = WorkerThreads(), Backend()
    settings = Settings(storage_dir=str(tmp_path), chunk_size_kb=CHUNK // 1024)
    stores = embedded_stores(settings, workers)
    registry = UploadRegistry(settings, stores, backend, Clock(), workers,
                              inline_hashing=NO_INLINE_BUDGET)  # a busy server
    upload = created(registry)
    data = os.urandom(40 * CHUNK)
    channel = Channel()
    upload.connect(channel, len(data), "f.bin")

    for i in range(MAX_BACKLOG + 4):  # the browser is faster than hashing
        upload.receive(channel, data[i * CHUNK:(i + 1) * CHUNK])
    assert channel.acked == (MAX_BACKLOG + 4) * CHUNK  # acks wait only for the write
    assert (channel.paused, channel.resumed) == (1, 0)

    workers.run_all()
    assert channel.resumed == 1
    for i in range(MAX_BACKLOG + 4, 40):
        upload.receive(channel, data[i * CHUNK:(i + 1) * CHUNK])
    workers.run_all()  # the remaining hashes, then sealing the file
    assert backend.handovers == [hashlib.sha256(data).hexdigest()]
    assert channel.done


def test_small_chunks_are_hashed_right_away(tmp_path):
    workers, backend = WorkerThreads(), Backend()
    settings = Settings(storage_dir=str(tmp_path), chunk_size_kb=64, fsync="none")
    registry = UploadRegistry(settings, embedded_stores(settings, workers), backend, Clock(), workers)
    upload = created(registry)
    data = os.urandom(3 * INLINE_HASH_BYTES)
    channel = Channel()
    upload.connect(channel, len(data), "small.bin")
    for i in range(3):
        upload.receive(channel, data[i * INLINE_HASH_BYTES:(i + 1) * INLINE_HASH_BYTES])
    assert workers.queue == []  # no trip to a thread for hashing
    assert backend.handovers == [hashlib.sha256(data).hexdigest()]


def test_large_chunks_are_hashed_right_away_while_the_server_hashes_slowly(tmp_path):
    """A browser's pace (a 512 KiB chunk every 10 ms: ~52 MB/s) stays on the
    reactor thread; no trip to a storage thread."""
    workers, backend, clock = WorkerThreads(), Backend(), Clock()
    settings = Settings(storage_dir=str(tmp_path), chunk_size_kb=512, fsync="none")
    registry = UploadRegistry(settings, embedded_stores(settings, workers), backend, clock, workers)
    upload = created(registry)
    chunk = 512 * 1024
    data = os.urandom(40 * chunk)
    channel = Channel()
    upload.connect(channel, len(data), "browser.bin")
    for i in range(40):
        clock.advance(0.01)
        upload.receive(channel, data[i * chunk:(i + 1) * chunk])
    assert workers.queue == []
    assert backend.handovers == [hashlib.sha256(data).hexdigest()]


class Seconds:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_budget_refills_at_its_rate_up_to_its_burst():
    seconds = Seconds()
    budget = InlineHashBudget(seconds, rate=1000, burst=300)
    assert budget.take(200) and budget.take(100)
    assert not budget.take(1)  # spent
    seconds.now += 0.25  # 250 bytes back
    assert not budget.take(251)
    assert budget.take(250)
    seconds.now += 60  # an idle minute refills no more than the burst
    assert budget.take(300) and not budget.take(1)
    seconds.now -= 10  # a clock set back: nothing refilled, nothing owed
    assert not budget.take(1)
    seconds.now += 0.25
    assert budget.take(250)


def test_past_the_budget_chunks_go_to_a_thread_in_order():
    """Once a chunk waits in the pool, the next ones queue behind it even when
    the budget is back: the digest is of the bytes in the order fed."""
    workers, seconds = WorkerThreads(), Seconds()
    chunk = 2 * INLINE_HASH_BYTES
    digest = StreamDigest(workers, budget=InlineHashBudget(seconds, rate=chunk, burst=chunk))
    pieces = [os.urandom(chunk) for _ in range(4)]
    digest.feed(pieces[0])  # the burst
    digest.feed(pieces[1])  # over: to a thread
    seconds.now += 10  # the budget is back, but piece 1 waits in the pool
    digest.feed(pieces[2])
    assert (len(workers.queue), digest.backlog) == (1, 2)
    workers.run_all()
    assert digest.backlog == 0
    digest.feed(pieces[3])  # nothing waits: here again
    assert workers.queue == []
    result = []
    digest.hexdigest().addCallback(result.append)
    assert result == [hashlib.sha256(b"".join(pieces)).hexdigest()]
