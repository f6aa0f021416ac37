"""
``--s3-bucket``: the S3 data store of ``destType=s3``, its threads, and the
guard that checks the bucket at start (the server does not start with a
bucket it cannot use) and answers for it in /health.
"""

from __future__ import annotations

import os
import time

from twisted.internet.defer import maybeDeferred

from .config import describe
from .guards import GuardRefused
from .interfaces import StoreError
from .s3_client import S3Target, make_client
from .s3_store import S3Store
from .shared_result import SharedResult
from .storage_pool import StoragePool

# Threads for S3 calls: the parts in flight of every upload, together.
S3_THREADS = 16
# Threads for the staging folder's file work (open, close, fsync, the lead):
# quick, and never behind an S3 call or the storage pool's hashing.
STAGING_THREADS = 4
# The staging folder, inside the storage folder (its name is one of ours).
STAGING_NAME = ".incoming.s3"
# /health asks the bucket at most this often (a load balancer asks every
# few seconds; HeadBucket is a billed request on AWS).
HEALTH_SECONDS = 10.0


def s3_target(settings) -> S3Target:
    return S3Target(
        bucket=settings.s3_bucket,
        prefix=settings.s3_prefix,
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        addressing=settings.s3_addressing,
        ca=settings.s3_ca,
    )


def s3_destination(settings, reactor) -> tuple[S3Store, S3Guard]:
    """The store (its client made now: blocking, at start) and its guard,
    which starts and stops its threads."""
    pool = StoragePool(reactor, threads=S3_THREADS, name="incoming-s3")
    staging = StoragePool(reactor, threads=STAGING_THREADS, name="incoming-s3-staging")
    target = s3_target(settings)
    store = S3Store(
        make_client(target, S3_THREADS),
        target,
        os.path.join(settings.storage_dir, STAGING_NAME),
        pool.run,
        settings.s3_part_size,
        run_local=staging.run,
    )
    return store, S3Guard(store, pool, staging=staging)


class S3Guard:
    """Start: the S3 threads, and the bucket answers.  Stop: the threads
    (the S3 calls' first, then the staging folder's)."""

    def __init__(self, store: S3Store, pool: StoragePool, monotonic=time.monotonic, staging=None):
        self._store = store
        self._pool = pool
        self._staging = staging  # the staging folder's threads, if of their own
        self._monotonic = monotonic
        self._health: tuple[float, SharedResult] | None = None  # (asked at, its answer)

    def start(self):
        self._pool.startService()
        if self._staging is not None:
            self._staging.startService()
        self._store.prepare()

        def refused(failure):
            failure.trap(StoreError)
            raise GuardRefused(
                f"{describe('s3_bucket')}: {failure.value} (check {describe('s3_endpoint')}, "
                f"{describe('s3_region')} and the AWS credentials)"
            )

        return self._pool.run(self._store.check).addErrback(refused)

    def stop(self):
        d = maybeDeferred(self._pool.stopService)
        if self._staging is not None:
            d.addCallback(lambda _: self._staging.stopService())
        return d

    def health(self):
        """Fire with None if the bucket answers, else what is wrong; the
        answer of a check up to HEALTH_SECONDS old (or under way) is reused."""
        now = self._monotonic()
        if self._health is None or now - self._health[0] >= HEALTH_SECONDS:
            d = self._pool.run(self._store.check).addCallback(lambda _: None)
            d.addErrback(lambda f: f"S3 {self._store.target.describe()}: {f.value}")
            self._health = (now, SharedResult(d))
        return self._health[1].get()
