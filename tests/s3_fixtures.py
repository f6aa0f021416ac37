"""S3 stores on the test session's Ceph RADOS Gateway (tests/ceph_rgw.py):
a bucket per test, credentials through the environment (the AWS chain
the server uses), a client made as the server makes it."""

from __future__ import annotations

import uuid

import pytest

from incoming.s3_client import S3Target, make_client


@pytest.fixture
def s3_credentials(ceph_rgw, monkeypatch):  # noqa: F811
    """The gateway's user in the environment, as an operator would set it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ceph_rgw.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ceph_rgw.secret_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    return {
        "AWS_ACCESS_KEY_ID": ceph_rgw.access_key,
        "AWS_SECRET_ACCESS_KEY": ceph_rgw.secret_key,
    }


@pytest.fixture
def s3_target(ceph_rgw, s3_credentials):  # noqa: F811
    """A new bucket on the gateway, with a key prefix."""
    target = S3Target(
        bucket=f"test-{uuid.uuid4().hex[:12]}",
        prefix="uploads/",
        endpoint=ceph_rgw.endpoint,
        addressing="path",
    )
    make_client(target, 1).create_bucket(Bucket=target.bucket)
    return target


@pytest.fixture
def s3_client(s3_target):
    """A client of the test's bucket (to look at what the server left there)."""
    return make_client(s3_target, 4)


def objects(client, target) -> dict:
    """Key -> size of every object in the bucket."""
    listing = client.list_objects_v2(Bucket=target.bucket)
    return {o["Key"]: o["Size"] for o in listing.get("Contents", [])}


def multipart_uploads(client, target) -> list:
    """Keys of the multipart uploads not completed nor aborted."""
    listing = client.list_multipart_uploads(Bucket=target.bucket)
    return [u["Key"] for u in listing.get("Uploads", [])]
