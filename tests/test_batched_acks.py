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
async def test_held_acks_go_out_before_a_pause_closes(server):
    data = os.urandom(40 * CHUNK)
    ticket = await server.new_upload()
    outcome = await upload(server.port, ticket, data=data, byte_window=True,
                           features=("batched-acks",), stop_at=20 * CHUNK, action="pause")
    assert sum(acks(outcome)) == 20 * CHUNK  # every chunk sent was acked
    again = await upload(server.port, ticket, data=data, byte_window=True,
                         features=("batched-acks",))
    assert again.file_pos == 20 * CHUNK
    assert again.last() == ("MsgAllDone", {"Success": True})
