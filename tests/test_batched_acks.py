"""The "batched-acks" feature: one MsgChunkAck may cover several chunks
(its ChunkSize their sum), only for a client that announced it."""

import hashlib
import os

import pytest_twisted

from wsclient import upload

CHUNK = 64 * 1024  # the test server's chunk (conftest)


def acks(outcome):
    return [data["ChunkSize"] for kind, data in outcome.messages if kind == "MsgChunkAck"]


@pytest_twisted.ensureDeferred
async def test_a_client_sending_ahead_gets_fewer_acks_that_add_up(server):
    data = os.urandom(64 * CHUNK + 123)
    ticket = await server.new_upload()
    outcome = await upload(server.port, ticket, data=data, byte_window=True,
                           features=("batched-acks",))
    sizes = acks(outcome)
    assert sum(sizes) == len(data)
    assert len(sizes) < 65  # some acks covered several chunks
    assert max(sizes) <= 4 * CHUNK  # at most 4 chunks each
    assert all(size % CHUNK == 0 for size in sizes[:-1])  # whole chunks
    assert outcome.last() == ("MsgAllDone", {"Success": True})
    assert server.backend.calls[0]["sha256"] == hashlib.sha256(data).hexdigest()


@pytest_twisted.ensureDeferred
async def test_a_client_that_waits_for_each_ack_gets_each_at_once(server):
    """Nothing arrives while it waits: the ack is not held (no stall)."""
    data = os.urandom(6 * CHUNK)
    ticket = await server.new_upload()
    outcome = await upload(server.port, ticket, data=data, features=("batched-acks",),
                           pace=0.05)
    assert acks(outcome) == [CHUNK] * 6
    assert outcome.last() == ("MsgAllDone", {"Success": True})


@pytest_twisted.ensureDeferred
async def test_without_the_feature_every_chunk_has_its_own_ack(server):
    data = os.urandom(64 * CHUNK + 123)
    ticket = await server.new_upload()
    outcome = await upload(server.port, ticket, data=data, byte_window=True)
    assert acks(outcome) == [CHUNK] * 64 + [123]


@pytest_twisted.ensureDeferred
async def test_a_pause_right_after_the_last_chunk_resumes_where_the_acks_said(server):
    """MsgPause right after the last chunk, before its ack: every chunk
    stored is acked, and a reconnect resumes there."""
    data = os.urandom(40 * CHUNK)
    ticket = await server.new_upload()
    outcome = await upload(server.port, ticket, data=data, byte_window=True,
                           features=("batched-acks",), stop_at=20 * CHUNK, action="pause",
                           act_at_once=True)
    assert sum(acks(outcome)) == 20 * CHUNK  # every chunk stored was acked
    again = await upload(server.port, ticket, data=data, byte_window=True,
                         features=("batched-acks",))
    assert again.file_pos == 20 * CHUNK
    assert again.last() == ("MsgAllDone", {"Success": True})


class Recorded:
    """An UploadProtocol's ack logic alone: what it sends, on a Clock."""

    def __init__(self):
        import json

        from twisted.internet.task import Clock

        from incoming.wsproto import UploadProtocol

        proto = UploadProtocol.__new__(UploadProtocol)
        proto.factory = type("F", (), {"clock": Clock()})()
        proto.state = proto.STATE_OPEN
        proto._closing = False
        proto._batch_acks = True
        proto._held_acks = proto._held_ack_bytes = 0
        proto._ack_timer = None
        proto.data, proto._read_was_full = b"", False
        self.sent = []
        proto.sendMessage = lambda m: self.sent.append(json.loads(m))
        proto.sendClose = lambda code: self.sent.append(("close", code))
        self.proto, self.clock = proto, proto.factory.clock

    def acks(self):
        return [m["MsgData"]["ChunkSize"] for m in self.sent if isinstance(m, dict)
                and m["MsgType"] == "MsgChunkAck"]


def test_an_ack_is_held_only_while_more_is_arriving_and_waiting_to_be_read():
    r = Recorded()
    r.proto.data, r.proto._read_was_full = b"next", True
    r.proto.send_chunk_ack(100)
    r.proto.send_chunk_ack(100)
    assert r.sent == []  # held: the next chunk is coming in
    r.proto._read_was_full = False  # the last read came up short: the link is slower
    r.proto.send_chunk_ack(100)
    assert r.acks() == [300]
    r.proto.data = b""
    r.proto.send_chunk_ack(7)  # nothing more has come: at once
    assert r.acks() == [300, 7]


def test_at_most_four_acks_are_held_and_none_for_longer_than_50_ms():
    r = Recorded()
    r.proto.data, r.proto._read_was_full = b"next", True
    for _ in range(4):
        r.proto.send_chunk_ack(10)
    assert r.acks() == [40]
    r.proto.send_chunk_ack(10)
    r.clock.advance(0.049)
    assert r.acks() == [40]
    r.clock.advance(0.002)
    assert r.acks() == [40, 10]


def test_held_acks_go_out_before_any_other_message_and_before_a_close():
    r = Recorded()
    r.proto.data, r.proto._read_was_full = b"next", True
    r.proto.send_chunk_ack(5)
    r.proto.finish_ok()  # MsgAllDone, then close
    assert [m if isinstance(m, tuple) else m["MsgType"] for m in r.sent] == [
        "MsgChunkAck", "MsgAllDone", ("close", 1000)]
    r = Recorded()
    r.proto.data, r.proto._read_was_full = b"next", True
    r.proto.send_chunk_ack(5)
    r.proto.close()
    assert r.acks() == [5] and r.sent[-1] == ("close", 1000)
    r = Recorded()
    r.proto.data, r.proto._read_was_full = b"next", True
    r.proto.send_chunk_ack(5)
    r.proto.state = r.proto.STATE_CLOSING  # the browser's Close came first
    r.clock.advance(1)
    assert r.sent == []  # nothing is sent into a closing connection
