"""`twistd incoming --s3-bucket ...` against the real Ceph RADOS Gateway:
uploads with destType=s3 land in the bucket as objects, are named in the
handover, resume after a dropped connection and after kill -9, and leave
no multipart upload nor staged bytes behind when they end otherwise."""

from __future__ import annotations

import hashlib
import os
import signal

import pytest_twisted
from twisted.internet import threads
import treq

from s3_fixtures import (  # noqa: F401 (fixtures)
    multipart_uploads,
    objects,
    s3_client,
    s3_credentials,
    s3_target,
)
from test_crash import wait_for
from test_twistd import TwistdServer, backend, new_upload  # noqa: F401 (fixture)
from wsclient import upload

MiB = 1 << 20
DATA = os.urandom(12 * MiB + 4321)  # two 5 MiB parts and a short last one
SHA = hashlib.sha256(DATA).hexdigest()


def s3_server(tmp_path, target, *args):
    return TwistdServer(
        tmp_path,
        "--s3-bucket", target.bucket,
        "--s3-endpoint", target.endpoint,
        "--s3-prefix", target.prefix,
        "--s3-addressing", "path",
        "--s3-part-size", "5M",
        *args,
    )


def staged(server) -> list:
    folder = server.storage / ".incoming.s3"
    return sorted(os.listdir(folder)) if folder.exists() else []


def read_object(client, target, ticket) -> bytes:
    return client.get_object(Bucket=target.bucket, Key=target.key(ticket))["Body"].read()


@pytest_twisted.ensureDeferred
async def test_an_upload_becomes_an_object_named_in_the_handover(
    tmp_path, backend, s3_target, s3_client  # noqa: F811
):
    server = s3_server(tmp_path, s3_target)
    try:
        await server.ready()
        ticket = await new_upload(server, backend, destType="s3", removeFileWhenFinished="false")
        outcome = await upload(server.port, ticket, data=DATA)
        assert outcome.last()[0] == "MsgAllDone", outcome.messages
        (call,) = backend.calls
        assert call["filename"] == f"s3://{s3_target.bucket}/uploads/{ticket}"
        assert call["destType"] == "s3"
        assert call["sha256"] == SHA
        assert hashlib.sha256(read_object(s3_client, s3_target, ticket)).hexdigest() == SHA
        tags = s3_client.get_object_tagging(Bucket=s3_target.bucket, Key=s3_target.key(ticket))
        assert tags["TagSet"] == [{"Key": "sha256", "Value": SHA}]
        assert multipart_uploads(s3_client, s3_target) == []
        assert staged(server) == []
        # a small file is one PutObject; a file upload beside it is unchanged
        small = await new_upload(server, backend, destType="s3", removeFileWhenFinished="false")
        assert (await upload(server.port, small, data=b"tiny")).last()[0] == "MsgAllDone"
        assert read_object(s3_client, s3_target, small) == b"tiny"
        plain = await new_upload(server, backend, removeFileWhenFinished="false")
        assert (await upload(server.port, plain, data=b"local")).last()[0] == "MsgAllDone"
        assert (server.storage / plain).read_bytes() == b"local"
        assert "destType" not in backend.calls[-1]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_remove_file_when_finished_deletes_the_object(
    tmp_path, backend, s3_target, s3_client  # noqa: F811
):
    server = s3_server(tmp_path, s3_target)
    try:
        await server.ready()
        ticket = await new_upload(server, backend, destType="s3")
        assert (await upload(server.port, ticket, data=DATA)).last()[0] == "MsgAllDone"
        assert backend.calls[0]["filename"].endswith(ticket)
        await wait_for(lambda: objects(s3_client, s3_target) == {})
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_dropped_connection_and_a_kill_9_resume_into_the_same_object(
    tmp_path, backend, s3_target, s3_client  # noqa: F811
):
    server = s3_server(tmp_path, s3_target)
    await server.ready()
    ticket = await new_upload(server, backend, destType="s3", removeFileWhenFinished="false")
    first = await upload(server.port, ticket, data=DATA, stop_at=7 * MiB, action="drop")
    assert first.acked >= 6 * MiB
    second = upload(server.port, ticket, data=DATA, stop_at=11 * MiB, action="idle")
    await wait_for(lambda: len(multipart_uploads(s3_client, s3_target)) == 1)
    await wait_for(lambda: "11534336" in os.listdir(server.storage / ".incoming.s3" / ticket)
                   or "10485760" in os.listdir(server.storage / ".incoming.s3" / ticket))
    server.process.send_signal(signal.SIGKILL)
    await server.stop()
    resumed = await second
    server = s3_server(tmp_path, s3_target)
    try:
        await server.ready()
        outcome = await upload(server.port, ticket, data=DATA)
        assert outcome.first("MsgUploadConf")["FilePos"] >= min(resumed.acked, 10 * MiB)
        assert outcome.last()[0] == "MsgAllDone", outcome.messages
        assert backend.calls[-1]["sha256"] == SHA
        assert hashlib.sha256(read_object(s3_client, s3_target, ticket)).hexdigest() == SHA
        assert multipart_uploads(s3_client, s3_target) == []
        assert staged(server) == []
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_cancel_and_a_failed_handover_leave_nothing_behind(
    tmp_path, backend, s3_target, s3_client  # noqa: F811
):
    server = s3_server(tmp_path, s3_target)
    try:
        await server.ready()
        cancelled = await new_upload(server, backend, destType="s3", backendSecret="k")
        await upload(server.port, cancelled, data=DATA, stop_at=7 * MiB, action="drop")
        await wait_for(
            lambda: multipart_uploads(s3_client, s3_target) == [s3_target.key(cancelled)]
        )
        response = await treq.post(server.url("cancel_upload"),
                                   params={"id": cancelled, "backendSecret": "k"})
        assert response.code == 200, await response.text()
        await wait_for(lambda: multipart_uploads(s3_client, s3_target) == [])
        await wait_for(lambda: staged(server) == [])
        backend.answer = "error500"
        failed = await new_upload(server, backend, destType="s3")
        outcome = await upload(server.port, failed, data=DATA)
        assert outcome.last()[0] == "MsgError", outcome.messages
        await wait_for(lambda: objects(s3_client, s3_target) == {})
        assert multipart_uploads(s3_client, s3_target) == []
        assert staged(server) == []
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_at_start_orphan_multipart_uploads_are_aborted(
    tmp_path, backend, s3_target, s3_client  # noqa: F811
):
    orphan = s3_target.key("0b0e7a2c-1111-4222-8333-444455556666")
    s3_client.create_multipart_upload(Bucket=s3_target.bucket, Key=orphan)
    other = "not-ours/x"  # outside the prefix: not ours to touch
    s3_client.create_multipart_upload(Bucket=s3_target.bucket, Key=other)
    server = s3_server(tmp_path, s3_target)
    try:
        await server.ready()
        await wait_for(lambda: multipart_uploads(s3_client, s3_target) == [other])
        await wait_for(lambda: "belongs to no open upload" in server.log())
        assert orphan in server.log()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_without_an_s3_store_dest_type_s3_is_refused_naming_the_setting(
    tmp_path, backend  # noqa: F811
):
    server = TwistdServer(tmp_path)
    try:
        await server.ready()
        response = await treq.post(server.url("new_upload"),
                                   params={"signalFinishURL": backend.url, "destType": "s3"})
        assert response.code == 400
        assert "--s3-bucket (S3Bucket)" in await response.text()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_missing_bucket_stops_start_up_naming_the_setting(
    tmp_path, s3_target  # noqa: F811
):
    server = TwistdServer(
        tmp_path, "--s3-bucket", "no-such-bucket", "--s3-endpoint", s3_target.endpoint,
        "--s3-addressing", "path",
    )
    code = server.process.wait(timeout=60)
    await server.stop()
    assert code != 0 or "stopping" in server.log()
    assert "--s3-bucket (S3Bucket)" in server.log() and "no-such-bucket" in server.log()


@pytest_twisted.ensureDeferred
async def test_the_gateway_stopped_mid_upload_then_started_again(
    tmp_path, backend, s3_target, s3_client, ceph_rgw  # noqa: F811
):
    """The browser is told to come back (code 12) or, if every byte was
    staged already, waits while sealing is tried again; nothing is lost."""
    server = s3_server(tmp_path, s3_target)
    try:
        await server.ready()
        ticket = await new_upload(server, backend, destType="s3", removeFileWhenFinished="false")
        await upload(server.port, ticket, data=DATA, stop_at=3 * MiB, action="drop")
        ceph_rgw.stop_gateway()
        try:
            pending = upload(server.port, ticket, data=DATA)
            await wait_for(lambda: "does not answer" in server.log(), timeout=60)
        finally:
            await threads.deferToThread(ceph_rgw.start_gateway)
        outcome = await pending
        if outcome.last()[0] == "MsgError":
            assert outcome.last()[1]["ErrorCode"] == 12, outcome.messages
            outcome = await upload(server.port, ticket, data=DATA)
        assert outcome.last()[0] == "MsgAllDone", outcome.messages
        assert hashlib.sha256(read_object(s3_client, s3_target, ticket)).hexdigest() == SHA
        assert backend.calls[-1]["sha256"] == SHA
        assert multipart_uploads(s3_client, s3_target) == []
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_an_idle_expired_upload_leaves_nothing_behind(
    tmp_path, backend, s3_target, s3_client  # noqa: F811
):
    server = s3_server(tmp_path, s3_target, "--idle-timeout", "3", "--handover-timeout", "2")
    try:
        await server.ready()
        ticket = await new_upload(server, backend, destType="s3")
        await upload(server.port, ticket, data=DATA, stop_at=7 * MiB, action="drop")
        await wait_for(lambda: multipart_uploads(s3_client, s3_target) == [s3_target.key(ticket)])
        await wait_for(lambda: f"upload {ticket}: cancelled" in server.log(), timeout=30)
        await wait_for(lambda: multipart_uploads(s3_client, s3_target) == [] and staged(server) == [])
        assert objects(s3_client, s3_target) == {}
    finally:
        await server.stop()
