"""The Ceph RADOS Gateway of tests/ceph_rgw.py answers S3 as boto3 speaks
it: buckets, objects, multipart uploads (listed, completed, aborted)."""

from __future__ import annotations

import hashlib
import os
import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError


MiB = 1 << 20


@pytest.fixture
def s3(ceph_rgw):  # noqa: F811
    return boto3.client("s3", endpoint_url=ceph_rgw.endpoint, region_name="us-east-1",
                        aws_access_key_id=ceph_rgw.access_key,
                        aws_secret_access_key=ceph_rgw.secret_key,
                        config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def bucket(s3):
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def test_put_and_get_an_object(s3, bucket):
    data = os.urandom(100_000)
    s3.put_object(Bucket=bucket, Key="a/b.bin", Body=data)
    assert s3.get_object(Bucket=bucket, Key="a/b.bin")["Body"].read() == data
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["a/b.bin"]
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_a_multipart_upload_is_completed_and_read_back(s3, bucket):
    parts_data = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1234)]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]
    parts = []
    for number, data in enumerate(parts_data, start=1):
        answer = s3.upload_part(Bucket=bucket, Key="big", UploadId=upload_id,
                                PartNumber=number, Body=data)
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    listed = s3.list_parts(Bucket=bucket, Key="big", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [(1, 5 * MiB), (2, 5 * MiB), (3, 1234)]
    s3.complete_multipart_upload(Bucket=bucket, Key="big", UploadId=upload_id,
                                 MultipartUpload={"Parts": parts})
    whole = b"".join(parts_data)
    got = s3.get_object(Bucket=bucket, Key="big")
    assert got["ContentLength"] == len(whole)
    assert hashlib.sha256(got["Body"].read()).hexdigest() == hashlib.sha256(whole).hexdigest()
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_an_open_multipart_upload_is_listed_until_aborted(s3, bucket):
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="open")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="open", UploadId=upload_id, PartNumber=1,
                   Body=os.urandom(5 * MiB))
    uploads = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("open", upload_id)]
    s3.abort_multipart_upload(Bucket=bucket, Key="open", UploadId=upload_id)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(ClientError) as raised:
        s3.list_parts(Bucket=bucket, Key="open", UploadId=upload_id)
    # AWS says NoSuchUpload; Pacific's RGW says NoSuchKey (a 404 either way).
    assert raised.value.response["Error"]["Code"] in ("NoSuchUpload", "NoSuchKey")
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []
