"""incoming.js in Chromium uploading into the Ceph RADOS Gateway
(destType=s3): through one server, and through two servers that share
their uploads (one folder, one Redis prefix) while the one holding the
page's upload is killed."""

from __future__ import annotations

import hashlib

from redis_server import redis_server  # noqa: F401 (fixture)
from s3_fixtures import multipart_uploads, s3_client, s3_credentials, s3_target  # noqa: F401

from .harness import IncomingServer, MiB, TcpProxy, write_test_file
from .test_cluster_page import kill_the_holder_mid_upload, shared_servers


def s3_args(target) -> tuple:
    return ("--s3-bucket", target.bucket, "--s3-endpoint", target.endpoint,
            "--s3-prefix", target.prefix, "--s3-addressing", "path", "--s3-part-size", "5M")


def object_sha256(client, target, ticket) -> str:
    body = client.get_object(Bucket=target.bucket, Key=target.key(ticket))["Body"].read()
    return hashlib.sha256(body).hexdigest()


def test_a_page_uploads_into_the_gateway(tmp_path, backend, open_page, s3_target, s3_client):  # noqa: F811
    server = IncomingServer(tmp_path, *s3_args(s3_target))
    try:
        server.wait_ready()
        size = 12 * MiB + 7
        path = tmp_path / "photos.zip"
        sha = write_test_file(path, size)
        ticket = server.new_upload(backend, destType="s3", removeFileWhenFinished="false")
        page = open_page(server.host)
        (i,) = page.start([path], [ticket])
        page.wait_for(i, "u.finished", 60, "finished")
        assert page.now(i)["bytes_acked"] == size
        (call,) = backend.calls_for(ticket)
        assert call["filename"] == f"s3://{s3_target.bucket}/{s3_target.key(ticket)}"
        assert call["destType"] == "s3" and call["sha256"] == sha
        assert object_sha256(s3_client, s3_target, ticket) == sha
        assert multipart_uploads(s3_client, s3_target) == []
    finally:
        server.stop()


def test_a_page_upload_into_the_gateway_survives_the_death_of_its_server(
        tmp_path, redis_server, backend, open_page, s3_target, s3_client):  # noqa: F811
    with shared_servers(tmp_path, redis_server, 2, *s3_args(s3_target)) as servers:
        balancer = TcpProxy(servers[0].port, rate=2 * MiB, more_targets=[servers[1].port])
        try:
            ticket, sha = kill_the_holder_mid_upload(
                tmp_path, servers, backend, open_page(balancer.host),
                destType="s3", removeFileWhenFinished="false")
        finally:
            balancer.kill()
        assert object_sha256(s3_client, s3_target, ticket) == sha
        assert multipart_uploads(s3_client, s3_target) == []
