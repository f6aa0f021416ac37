"""Stores that answer later (as any store in a thread pool or across a
network does): the machine keeps one upload's operations in order and
never tells the browser more than the store confirmed."""

from __future__ import annotations

import hashlib
import os

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from incoming.config import Settings
from incoming.embedded import embedded_stores
from incoming.registry import UploadRegistry
from test_upload_machine import FakeBackend, FakeChannel, data_of

CHUNK = 1024


class LaterThreads:
    """run_blocking whose work runs only when the test says so."""

    def __init__(self):
        self.queue = []

    def __call__(self, f, *args):
        d = Deferred()
        self.queue.append((f, args, d))
        return d

    def run_one(self):
        f, args, d = self.queue.pop(0)
        d.callback(f(*args))

    def run_all(self):
        while self.queue:
            f, args, d = self.queue.pop(0)
            d.callback(f(*args))


def build(tmp_path, **overrides):
    later = LaterThreads()
    settings = Settings(storage_dir=str(tmp_path), chunk_size_kb=1, digest="sha256", **overrides)
    stores = embedded_stores(settings, later)
    stores.data.prepare()
    backend = FakeBackend()
    registry = UploadRegistry(settings, stores, backend, Clock(), later)
    d = registry.create("http://backend.example/h", "", False)
    results = []
    d.addCallback(results.append)
    later.run_all()
    return results[0], later, backend


def test_chunks_sent_before_the_conf_wait_for_the_open_in_order(tmp_path):
    upload, later, backend = build(tmp_path)
    data = data_of(4 * CHUNK + 9)
    channel = FakeChannel()
    upload.connect(channel, len(data), "early.bin")
    for start in range(0, len(data), CHUNK):  # a client that does not wait for MsgUploadConf
        upload.receive(channel, data[start:start + CHUNK])
    assert channel.acks == []  # nothing is acknowledged before it is stored
    later.run_all()
    assert channel.file_positions == [0]
    assert sum(channel.acks) == len(data)
    later.run_all()  # sealing
    (handover,) = backend.handovers
    assert handover.sha256 == hashlib.sha256(data).hexdigest()
    assert handover.content == data


def test_a_disconnect_while_the_file_opens_closes_it_again(tmp_path):
    upload, later, backend = build(tmp_path)
    fds = len(os.listdir("/proc/self/fd"))
    channel = FakeChannel()
    upload.connect(channel, 3 * CHUNK, "gone.bin")
    later.run_one()  # the free-space check: now bound, the record and the open queued
    assert upload.state == "uploading"
    upload.disconnect(channel)  # before the store answered
    later.run_all()
    assert upload.state == "paused"
    assert channel.file_positions == []
    assert len(os.listdir("/proc/self/fd")) == fds  # the late open was closed again
    again = FakeChannel()
    upload.connect(again, 3 * CHUNK, "gone.bin")
    later.run_all()
    assert again.file_positions == [0]


def test_a_browser_gone_before_it_was_bound_is_never_bound(tmp_path):
    upload, later, backend = build(tmp_path)
    channel = FakeChannel()
    upload.connect(channel, 3 * CHUNK, "gone.bin")
    channel.still_open = False  # as the WebSocket adapter's channel after onClose
    upload.disconnect(channel)
    later.run_all()
    assert upload.state == "created" and upload.channel is None
    assert channel.calls == []
    again = FakeChannel()
    upload.connect(again, 3 * CHUNK, "back.bin")
    later.run_all()
    assert again.file_positions == [0]


def test_a_pause_with_writes_waiting_for_their_sync_keeps_them(tmp_path):
    upload, later, backend = build(tmp_path, fsync="chunk")
    data = data_of(3 * CHUNK)
    channel = FakeChannel()
    upload.connect(channel, len(data), "p.bin")
    later.run_all()
    upload.receive(channel, data[:CHUNK])
    upload.receive(channel, data[CHUNK:2 * CHUNK])  # both wait for their fsync
    upload.pause(channel)
    later.run_all()
    assert upload.state == "paused"
    assert upload.received == 2 * CHUNK
    again = FakeChannel()
    upload.connect(again, len(data), "p.bin")
    later.run_all()
    assert again.file_positions == [2 * CHUNK]
    upload.receive(again, data[2 * CHUNK:])
    later.run_all()
    later.run_all()
    assert backend.handovers[0].content == data


def test_a_quick_reconnect_gets_one_conf_from_the_bytes_held(tmp_path):
    upload, later, backend = build(tmp_path)
    data = data_of(3 * CHUNK)
    first = FakeChannel()
    upload.connect(first, len(data), "q.bin")
    later.run_one()  # bound; the record and the open still queued
    upload.disconnect(first)
    second = FakeChannel()
    upload.connect(second, len(data), "q.bin")
    later.run_all()
    assert first.file_positions == []
    assert second.file_positions == [0]  # once, not once per open
    for start in range(0, len(data), CHUNK):
        upload.receive(second, data[start:start + CHUNK])
    later.run_all()
    later.run_all()
    assert backend.handovers[0].content == data


def test_acks_go_only_to_the_connection_that_sent_the_chunk(tmp_path):
    upload, later, backend = build(tmp_path, fsync="chunk")
    data = data_of(3 * CHUNK)
    first = FakeChannel()
    upload.connect(first, len(data), "a.bin")
    later.run_all()
    upload.receive(first, data[:CHUNK])  # waits for its fsync
    upload.disconnect(first)
    second = FakeChannel()
    upload.connect(second, len(data), "a.bin")
    later.run_all()
    assert first.acks == [] and second.acks == []
    assert second.file_positions == [CHUNK]  # the stored chunk counts
