"""The sha256 is computed in storage threads beside the reactor; when hashing
falls behind, reading from the browser pauses instead of queueing chunks."""

import hashlib
import os

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from incoming.config import Settings
from incoming.embedded import embedded_stores
from incoming.hashing import INLINE_HASH_BYTES
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
    registry = UploadRegistry(settings, embedded_stores(settings, workers), backend, Clock(), workers)
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
