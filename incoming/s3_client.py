"""
The S3 client the object store runs on: botocore (through boto3), called
in threads of its own (`incoming.storage_pool.StoragePool` named
``incoming-s3``), never on the reactor thread.

Why boto3 in threads rather than botocore's signer with treq doing the
I/O: measured here (16 MiB parts, 4 at a time, to a local Ceph RGW over
http), boto3 in threads moved 192-195 MB/s for 1.8 CPU-s/GiB (hashing,
signing and sending release the GIL), the signer with treq 117 MB/s for
2.7 CPU-s/GiB (the sending then runs on the reactor thread).  A part's
body is its staged file (boto3 reads it; reading it whole into memory
first saved no CPU).  boto3 also brings the AWS credential chain, retries
with backoff, pagination and the error codes.  Credentials come only
from that chain (environment, shared config and credentials files,
instance roles): never from our command line, and never logged.
"""

from __future__ import annotations

from typing import Any

import attr

from .fsops import storage_error
from .interfaces import StoreError, StoreUnavailable

# Attempts botocore makes for a request before a failure reaches us.
ATTEMPTS = 4
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0

# Errors that are the store's trouble for now, not our request's: retried
# later with the bytes kept.  (Expired or skewed credentials recover too,
# once refreshed or the clock is fixed.)
UNAVAILABLE_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "RequestTimeout",
    "InternalError",
    "ExpiredToken",
    "RequestTimeTooSkewed",
    "TooManyRequests",
}


@attr.s(frozen=True, auto_attribs=True)
class S3Target:
    """Where the objects go, from the --s3-* settings."""

    bucket: str
    prefix: str = ""
    endpoint: str = ""  # empty: AWS's own, from the region
    region: str = ""
    addressing: str = "auto"  # path, virtual or auto
    ca: str = ""

    def key(self, upload_id: str) -> str:
        return self.prefix + upload_id

    def location(self, upload_id: str) -> str:
        """What the handover's filename names: s3://bucket/key."""
        return f"s3://{self.bucket}/{self.key(upload_id)}"

    def key_of_location(self, location: str) -> str | None:
        """The key a location of this bucket names, or None."""
        head = f"s3://{self.bucket}/"
        return location[len(head) :] if location.startswith(head) else None

    def describe(self) -> str:
        where = self.endpoint or f"AWS region {self.region or '(default)'}"
        return f"bucket {self.bucket!r} at {where}"


def make_client(target: S3Target, threads: int) -> Any:
    """A botocore S3 client for ``target`` (blocking: at start, not on the reactor)."""
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {
        "region_name": target.region or None,  # None: AWS_REGION, the config file, us-east-1
        "retries": {"max_attempts": ATTEMPTS, "mode": "standard"},
        "max_pool_connections": threads + 2,
        "connect_timeout": CONNECT_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
        "s3": {"addressing_style": target.addressing},
    }
    try:  # botocore >= 1.36 adds checksums (aws-chunked bodies) that Ceph RGW 16 refuses
        config = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            **options,
        )
    except TypeError:  # an older botocore sends none anyway
        config = Config(**options)
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=target.endpoint or None,
        verify=target.ca or None,
        config=config,
    )


def s3_error(error: BaseException, what: str) -> StoreError:
    """A botocore exception as our store error: StoreUnavailable when the
    store does not answer or is overloaded (the browser comes back later),
    StoreError otherwise; the text says what was asked and the store's code."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        NoRegionError,
        ParamValidationError,
    )

    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        code = info.get("Code", "?")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = info.get("Message") or code
        text = f"{what}: the object store answered {code} (HTTP {status}): {message}"
        if code in UNAVAILABLE_CODES or status >= 500 or status == 429:
            return StoreUnavailable(text)
        if code == "NoSuchUpload":  # aborted behind our back (a lifecycle rule?)
            return StoreUnavailable(
                f"{text}; its parts are gone: the browser sends the file again from "
                "what is still staged"
            )
        return StoreError(text)
    if isinstance(error, NoCredentialsError):  # checked at start: lost since (a role's?)
        return StoreUnavailable(
            f"{what}: no S3 credentials now (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "a profile in the shared AWS files, or an instance role)"
        )
    if isinstance(error, (ParamValidationError, NoRegionError)):  # ours: retrying won't help
        return StoreError(f"{what}: {error}")
    if isinstance(error, BotoCoreError):  # connection, timeouts, credential retrieval
        return StoreUnavailable(f"{what}: the object store does not answer: {error}")
    if isinstance(error, OSError):
        return storage_error(error, what)
    return StoreError(f"{what}: {error!r}")


def error_code(error: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError, else None."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None
