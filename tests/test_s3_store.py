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


@pytest_twisted.ensureDeferred
async def test_a_second_multipart_upload_of_the_key_never_replaces_the_one_with_the_parts(
    make_store, s3_client, s3_target  # noqa: F811
):
    """A retried CreateMultipartUpload can leave an empty one beside ours,
    older or newer: the reopen keeps ours (its parts) and aborts the other."""
    upload_id = new_ticket_id()
    key = s3_target.key(upload_id)
    s3_client.create_multipart_upload(Bucket=s3_target.bucket, Key=key)  # older, empty
    payload = os.urandom(2 * MIN_PART_SIZE + CHUNK)
    data = await make_store().create(upload_id)
    await write(data, payload[: MIN_PART_SIZE + CHUNK])
    await data.close()
    s3_client.create_multipart_upload(Bucket=s3_target.bucket, Key=key)  # newer, empty
    for staging in ("staging", "elsewhere"):  # recorded in the staging, or by its parts
        store = make_store(staging)
        held, _ = await store.held(upload_id, len(payload))
        assert held >= MIN_PART_SIZE, staging
    assert len(multipart_uploads(s3_client, s3_target)) == 1
    data = await make_store().reopen(upload_id)
    assert data.size == MIN_PART_SIZE + CHUNK
    await write(data, payload, data.size)
    await data.finish(False)
    assert stored(s3_client, s3_target, upload_id) == payload
    assert multipart_uploads(s3_client, s3_target) == []


@pytest_twisted.ensureDeferred
async def test_a_file_just_over_a_part_is_one_multipart_object_and_nothing_else(
    make_store, s3_client, s3_target  # noqa: F811
):
    """finish() right after the write that filled a part, while that part
    is on its way: no PutObject beside an orphan multipart upload."""
    store, upload_id = make_store(), new_ticket_id()
    payload = os.urandom(MIN_PART_SIZE + 100)
    data = await store.create(upload_id)
    await data.write_at(0, payload[:MIN_PART_SIZE])
    await data.write_at(MIN_PART_SIZE, payload[MIN_PART_SIZE:])
    await data.finish(False)
    assert stored(s3_client, s3_target, upload_id) == payload
    assert multipart_uploads(s3_client, s3_target) == []


@pytest_twisted.ensureDeferred
async def test_a_part_of_another_size_is_never_joined_in_but_sent_over(
    make_store, s3_client, s3_target  # noqa: F811
):
    """Another server (with another --s3-part-size) sent part 3 but not part
    2: its part 3 begins elsewhere.  This one resumes after part 1, sends
    parts of part 1's size, and part 3 is sent over, never joined in."""
    upload_id = new_ticket_id()
    key = s3_target.key(upload_id)
    payload = os.urandom(3 * MIN_PART_SIZE + CHUNK)
    multipart = s3_client.create_multipart_upload(Bucket=s3_target.bucket, Key=key)["UploadId"]
    for number, body in ((1, payload[:MIN_PART_SIZE]), (3, os.urandom(MIN_PART_SIZE + 7))):
        s3_client.upload_part(Bucket=s3_target.bucket, Key=key, UploadId=multipart,
                              PartNumber=number, Body=body)
    store = make_store("here")
    assert await store.held(upload_id, len(payload)) == (MIN_PART_SIZE, False)
    data = await store.reopen(upload_id)
    await write(data, payload[: 2 * MIN_PART_SIZE + CHUNK], MIN_PART_SIZE)  # part 2, then staged
    await data.close()
    elsewhere = make_store("elsewhere")  # parts 1 and 2 of one size: trusted; 3 is not
    assert await elsewhere.held(upload_id, len(payload)) == (2 * MIN_PART_SIZE, False)
    data = await make_store("here").reopen(upload_id)
    assert data.size == 2 * MIN_PART_SIZE + CHUNK
    await write(data, payload, data.size)
    await data.finish(False)
    assert stored(s3_client, s3_target, upload_id) == payload


@pytest_twisted.ensureDeferred
async def test_chunks_that_cross_a_part_boundary_are_split_so_parts_have_one_size(
    make_store, s3_client, s3_target  # noqa: F811
):
    store, upload_id = make_store(), new_ticket_id()
    payload = os.urandom(2 * MIN_PART_SIZE + 5000)
    data = await store.create(upload_id)
    step = 300_001  # never lands on a part boundary
    for offset in range(0, len(payload), step):
        await data.write_at(offset, payload[offset : offset + step])
    await data.close()
    listing = s3_client.list_parts(Bucket=s3_target.bucket, Key=s3_target.key(upload_id),
                                   UploadId=s3_client.list_multipart_uploads(
                                       Bucket=s3_target.bucket)["Uploads"][0]["UploadId"])
    assert [p["Size"] for p in listing["Parts"]] == [MIN_PART_SIZE, MIN_PART_SIZE]
    data = await make_store("elsewhere").reopen(upload_id)
    assert data.size == 2 * MIN_PART_SIZE
    await write(data, payload, data.size)
    await data.finish(False)
    assert stored(s3_client, s3_target, upload_id) == payload


def test_a_tail_whose_staged_file_was_sent_meanwhile_comes_from_its_lead(tmp_path):
    from incoming.s3_staging import Staging

    staging = Staging(str(tmp_path))
    staging.prepare()
    staging.make("u")
    first = os.urandom(10_000)
    (tmp_path / "u" / "0").write_bytes(first)
    staging.keep_lead("u", 0, len(first))  # sent: its last 4 KiB kept, the file gone
    assert not (tmp_path / "u" / "0").exists()
    # a reader that listed the file before it went
    assert staging.tail("u", [(0, len(first))], len(first), 4096) == first[-4096:]


@pytest_twisted.ensureDeferred
async def test_a_multipart_upload_aborted_behind_our_back_starts_the_file_again(
    make_store, s3_client, s3_target  # noqa: F811
):
    """A lifecycle rule aborted it while the upload was paused: what is
    held is what is still staged from byte 0 (here nothing), never a hole."""
    upload_id = new_ticket_id()
    key = s3_target.key(upload_id)
    payload = os.urandom(MIN_PART_SIZE + 3 * CHUNK)
    data = await make_store().create(upload_id)
    await write(data, payload[: MIN_PART_SIZE + CHUNK])
    await data.close()
    (upload,) = s3_client.list_multipart_uploads(Bucket=s3_target.bucket)["Uploads"]
    s3_client.abort_multipart_upload(Bucket=s3_target.bucket, Key=key, UploadId=upload["UploadId"])
    store = make_store()
    assert await store.held(upload_id, len(payload)) == (0, False)
    data = await store.reopen(upload_id)
    assert data.size == 0
    await write(data, payload)
    await data.finish(False)
    assert stored(s3_client, s3_target, upload_id) == payload


@pytest_twisted.ensureDeferred
async def test_a_part_sent_to_an_aborted_multipart_upload_is_a_resumable_error(
    make_store, s3_client, s3_target  # noqa: F811
):
    upload_id = new_ticket_id()
    key = s3_target.key(upload_id)
    data = await make_store().create(upload_id)
    await write(data, os.urandom(MIN_PART_SIZE))  # part 1: the multipart upload exists
    await data.close()
    data = await make_store().reopen(upload_id)
    assert data.size == MIN_PART_SIZE
    (upload,) = s3_client.list_multipart_uploads(Bucket=s3_target.bucket)["Uploads"]
    s3_client.abort_multipart_upload(Bucket=s3_target.bucket, Key=key, UploadId=upload["UploadId"])
    rest = os.urandom(MIN_PART_SIZE)
    # AWS answers the next part NoSuchUpload; Ceph RGW 16 takes it and then
    # refuses the completion (InternalError): either way, to be tried again
    with pytest.raises(StoreUnavailable):
        for offset in range(0, len(rest), CHUNK):
            await data.write_at(MIN_PART_SIZE + offset, rest[offset : offset + CHUNK])
        await data.finish(False)
    await data.close()
    again = await make_store().reopen(upload_id)  # what is held starts at byte 0
    assert again.size == 0
    await again.close()


@pytest_twisted.ensureDeferred
async def test_a_file_too_large_for_ten_thousand_parts_gets_larger_parts(
    make_store, s3_target  # noqa: F811
):
    """The part size is chosen from the announced length (whole MiB) when
    --s3-part-size would need more than S3's 10,000 parts."""
    store = make_store()
    assert store.part_size_for(None) == store.part_size_for(10_000 * MIN_PART_SIZE) == MIN_PART_SIZE
    huge = 10_000 * MIN_PART_SIZE + 1
    assert store.part_size_for(huge) == 6 * MiB
    assert store.part_size_for(5 * 1024**4) == 525 * MiB  # 5 TiB, S3's largest object
    for opening in ("create", "reopen"):
        upload_id = new_ticket_id()
        data = await store.create(upload_id, huge)
        if opening == "reopen":
            await data.write_at(0, b"x")  # staged only: the size is still to choose
            await data.close()
            data = await make_store().reopen(upload_id, huge)
        assert data.part_size == 6 * MiB, opening
        await data.terminate()
