"""The S3 data store's multipart path against the real gateway: parts sent
while the next fills, resumed after a restart (here, or on a server that
does not have the staged bytes), nothing left behind."""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet.defer import succeed

from incoming.ids import new_ticket_id
from incoming.interfaces import StoreError, StoreUnavailable
from incoming.s3_client import S3Target, make_client
from incoming.s3_store import MIN_PART_SIZE, S3Store
from s3_fixtures import (  # noqa: F401 (fixtures)
    multipart_uploads,
    objects,
    s3_client,
    s3_credentials,
    s3_target,
)
from stores import run_blocking  # noqa: F401 (fixture)

MiB = 1 << 20
CHUNK = 256 * 1024


@pytest.fixture
def make_store(s3_target, tmp_path, run_blocking):  # noqa: F811
    """Each call: the store seen anew, by default with the same staging folder."""
    clients = {s3_target: make_client(s3_target, 4)}

    def make(staging="staging", target=s3_target):
        client = clients.setdefault(target, make_client(target, 4))
        store = S3Store(client, target, str(tmp_path / staging), run_blocking, MIN_PART_SIZE, 2)
        store.prepare()
        return store

    return make


async def write(data, payload, start=0):
    for offset in range(start, len(payload), CHUNK):
        assert await data.write_at(offset, payload[offset : offset + CHUNK]) == min(
            offset + CHUNK, len(payload)
        )


def stored(client, target, upload_id) -> bytes:
    return client.get_object(Bucket=target.bucket, Key=target.key(upload_id))["Body"].read()


@pytest_twisted.ensureDeferred
async def test_a_big_file_goes_up_in_parts_and_leaves_nothing_behind(
    make_store, s3_client, s3_target, tmp_path  # noqa: F811
):
    store, upload_id = make_store(), new_ticket_id()
    payload = os.urandom(3 * MIN_PART_SIZE + 1234)
    data = await store.create(upload_id)
    await write(data, payload)
    assert await data.finish(True) == f"s3://{s3_target.bucket}/uploads/{upload_id}"
    assert hashlib.sha256(stored(s3_client, s3_target, upload_id)).digest() == (
        hashlib.sha256(payload).digest()
    )
    assert multipart_uploads(s3_client, s3_target) == []
    assert os.listdir(tmp_path / "staging") == []
    assert await store.held(upload_id, len(payload)) == (len(payload), True)
    await store.keep_digest(upload_id, "ab" * 32)
    tags = s3_client.get_object_tagging(Bucket=s3_target.bucket, Key=s3_target.key(upload_id))
    assert tags["TagSet"] == [{"Key": "sha256", "Value": "ab" * 32}]


@pytest_twisted.ensureDeferred
async def test_a_restart_resumes_at_the_last_staged_byte_and_checks_the_sample(
    make_store, s3_client, s3_target  # noqa: F811
):
    upload_id = new_ticket_id()
    payload = os.urandom(2 * MIN_PART_SIZE + 3 * CHUNK)
    data = await make_store().create(upload_id)
    await write(data, payload[: MIN_PART_SIZE])  # exactly one part: nothing staged after it
    await data.close()
    again = make_store()
    assert await again.held(upload_id, len(payload)) == (MIN_PART_SIZE, False)
    data = await again.reopen(upload_id)
    assert data.size == MIN_PART_SIZE
    # the part is in S3 (unreadable until complete): the sample comes from the lead
    assert await data.read_tail(4096) == payload[MIN_PART_SIZE - 4096 : MIN_PART_SIZE]
    await write(data, payload[: MIN_PART_SIZE + CHUNK], MIN_PART_SIZE)
    await data.close()
    data = await make_store().reopen(upload_id)
    assert data.size == MIN_PART_SIZE + CHUNK
    assert await data.read_tail(4096) == payload[MIN_PART_SIZE + CHUNK - 4096 : MIN_PART_SIZE + CHUNK]
    await write(data, payload, MIN_PART_SIZE + CHUNK)
    await data.finish(False)
    assert stored(s3_client, s3_target, upload_id) == payload
    assert multipart_uploads(s3_client, s3_target) == []


@pytest_twisted.ensureDeferred
async def test_another_server_resumes_where_the_parts_in_s3_end(
    make_store, s3_client, s3_target  # noqa: F811
):
    """One without the first's staged bytes: the browser sends them again."""
    upload_id = new_ticket_id()
    payload = os.urandom(MIN_PART_SIZE + 5 * CHUNK)
    data = await make_store("first").create(upload_id)
    await write(data, payload[: MIN_PART_SIZE + 2 * CHUNK])
    await data.close()
    other = make_store("second")
    assert await other.held(upload_id, len(payload)) == (MIN_PART_SIZE, False)
    data = await other.reopen(upload_id)
    assert data.size == MIN_PART_SIZE
    await write(data, payload, MIN_PART_SIZE)
    await data.finish(False)
    assert stored(s3_client, s3_target, upload_id) == payload
    # the first server's staged tail is an orphan now: its tidy-up removes it
    first = make_store("first")
    removed = await first.tidy_unclaimed(lambda: succeed([]))
    assert removed == [f"staged bytes of upload {upload_id}"]


@pytest_twisted.ensureDeferred
async def test_terminate_and_tidy_up_abort_the_multipart_uploads(
    make_store, s3_client, s3_target, tmp_path  # noqa: F811
):
    store = make_store()
    kept, cancelled, orphan = new_ticket_id(), new_ticket_id(), new_ticket_id()
    for upload_id in (kept, cancelled, orphan):
        data = await store.create(upload_id)
        await write(data, os.urandom(MIN_PART_SIZE + CHUNK))
        if upload_id == cancelled:
            await data.terminate()
        else:
            await data.close()
    assert sorted(multipart_uploads(s3_client, s3_target)) == sorted(
        [s3_target.key(kept), s3_target.key(orphan)]
    )
    removed = await store.tidy_unclaimed(lambda: succeed([kept]))
    assert len(removed) == 2 and all(orphan in r for r in removed)
    assert multipart_uploads(s3_client, s3_target) == [s3_target.key(kept)]
    assert sorted(os.listdir(tmp_path / "staging")) == [kept]
    await store.discard(kept)
    assert multipart_uploads(s3_client, s3_target) == []
    assert objects(s3_client, s3_target) == {}


@pytest_twisted.ensureDeferred
async def test_a_store_that_does_not_answer_is_a_resumable_error(
    make_store, s3_client, s3_target, tmp_path  # noqa: F811
):
    """Nothing listens at the endpoint: the part is kept staged, and sent
    once the store answers again."""
    from redis_server import free_port

    down = S3Target(
        bucket=s3_target.bucket,
        prefix="uploads/",
        endpoint=f"http://127.0.0.1:{free_port()}",
        addressing="path",
    )
    upload_id = new_ticket_id()
    data = await make_store("staging", down).create(upload_id)
    payload = os.urandom(MIN_PART_SIZE + CHUNK)
    with pytest.raises(StoreUnavailable, match="does not answer"):
        await write(data, payload)  # fails once the part's sending has failed
        await data.finish(False)
    await data.close()
    assert "0" in os.listdir(tmp_path / "staging" / upload_id)
    back = make_store()  # the same staging folder, the store answering
    held, sealed = await back.held(upload_id, len(payload))
    assert held >= MIN_PART_SIZE and not sealed
    data = await back.reopen(upload_id)
    await write(data, payload, held)
    await data.finish(False)
    assert stored(s3_client, s3_target, upload_id) == payload


def test_a_missing_bucket_is_named_at_start(make_store, s3_target):  # noqa: F811
    missing = S3Target(bucket="no-such-bucket", endpoint=s3_target.endpoint, addressing="path")
    with pytest.raises(StoreError, match="bucket 'no-such-bucket'.*404"):
        make_store("x", missing).check()
