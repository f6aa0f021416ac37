"""
``python -m bench --s3``: uploads into object storage.  The bench starts a
throw-away Ceph RADOS Gateway of its own (tests/ceph_rgw.py: Debian's
ceph-mon, ceph-osd and radosgw, objects in memory), makes a bucket, and
measures each load in rounds (bench/run.py: s3_plan): boto3's own
``upload_file`` of files of the same sizes (its defaults: 8 MiB parts, 10
threads per file, all files at once) as the reference, and Incoming!! with
``--s3-bucket`` taking the same load from the load client (destType=s3).
Every object Incoming!! stored is read back and its sha256 compared with
what was sent, then deleted; after each measurement the gateway's garbage
collection frees what was deleted.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from bench.servers import REPO

GIB = 1 << 30
MEMSTORE_BYTES = 8 * GIB  # the OSD's objects, in memory; deletes free them late (RGW's GC)


def start_gateway(folder: str):
    """A Ceph RGW on free loopback ports (tests/ceph_rgw.py)."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from ceph_rgw import CephRGW

    gateway = CephRGW(folder, memstore_bytes=MEMSTORE_BYTES)
    gateway.start()
    return gateway


class S3Bench:
    """The gateway, one bucket, and the credentials in this process's
    environment (the servers the bench starts inherit them: the AWS chain)."""

    def __init__(self, gateway):
        import boto3
        from botocore.config import Config

        self.gateway = gateway
        os.environ["AWS_ACCESS_KEY_ID"] = gateway.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = gateway.secret_key
        self.bucket = f"bench-{uuid.uuid4().hex[:12]}"
        config = Config(s3={"addressing_style": "path"}, max_pool_connections=100,
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
        self.client = boto3.client("s3", endpoint_url=gateway.endpoint, region_name="us-east-1",
                                   config=config)
        self.client.create_bucket(Bucket=self.bucket)

    def options(self) -> tuple:
        """twistd incoming options that send destType=s3 uploads to the bucket."""
        return ("--s3-bucket", self.bucket, "--s3-endpoint", self.gateway.endpoint,
                "--s3-addressing", "path", "--s3-prefix", f"incoming-{uuid.uuid4().hex[:8]}/")

    def sha256_of(self, location: str) -> str:
        """Read an object back (s3://bucket/key), hash it, delete it."""
        key = location.split("/", 3)[3]
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        digest = hashlib.sha256()
        while block := body.read(1 << 20):
            digest.update(block)
        self.client.delete_object(Bucket=self.bucket, Key=key)
        return digest.hexdigest()

    def upload_file(self, count: int, size: int) -> dict:
        """boto3's upload_file of ``count`` files of ``size`` bytes at once:
        MB/s and this process's CPU (boto3 runs here) per GiB."""
        folder = tempfile.mkdtemp(prefix="incoming-bench-s3-")
        paths = [os.path.join(folder, f"file-{i}") for i in range(count)]
        try:
            block = os.urandom(1 << 20)
            for path in paths:
                with open(path, "wb") as f:
                    for offset in range(0, size, len(block)):
                        f.write(block[: min(len(block), size - offset)])
            keys = [f"boto3-{uuid.uuid4().hex[:8]}/{i}" for i in range(count)]
            cpu_before, started = sum(os.times()[:2]), time.monotonic()
            with ThreadPoolExecutor(count) as pool:
                list(pool.map(lambda pk: self.client.upload_file(pk[0], self.bucket, pk[1]),
                              zip(paths, keys)))
            elapsed = time.monotonic() - started
            cpu = sum(os.times()[:2]) - cpu_before
            for key in keys:
                head = self.client.head_object(Bucket=self.bucket, Key=key)
                if head["ContentLength"] != size:
                    raise RuntimeError(f"boto3 stored {head['ContentLength']} bytes of {size}")
                self.client.delete_object(Bucket=self.bucket, Key=key)
        finally:
            for path in paths:
                if os.path.exists(path):
                    os.unlink(path)
            os.rmdir(folder)
        total = count * size
        return {"mbps": total / elapsed / 1e6, "elapsed_s": elapsed,
                "client_cpu_s_per_gib": cpu / (total / GIB), "verified": count}

    def collect_garbage(self) -> None:
        self.gateway.collect_garbage()

    def stop(self) -> None:
        self.gateway.stop()
