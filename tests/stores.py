"""Implementations under contract: each contract suite runs against every
implementation listed here (the Redis and S3 ones join these lists)."""

from __future__ import annotations

import pytest
from twisted.internet import reactor

from incoming.file_state import FileStateStore
from incoming.folder_store import FolderStore
from incoming.local_bus import LocalBus
from incoming.local_locker import LocalLocker
from incoming.storage_pool import StoragePool, run_here
from redis_server import redis_hub, redis_server  # noqa: F401 (fixtures)
from s3_fixtures import s3_credentials, s3_target  # noqa: F401 (fixtures)


def storage_work(request, where: str):
    """Storage work done at once ("here"), or in a real storage pool."""
    if where == "here":
        return run_here
    pool = StoragePool(reactor, threads=4)
    pool.startService()
    request.addfinalizer(pool.stop_now)
    return pool.run


@pytest.fixture(params=["here", "threads"])
def run_blocking(request):
    """Storage work done at once, or in a real storage pool."""
    return storage_work(request, request.param)


@pytest.fixture(params=["folder", "s3"])
def make_data_store(request, tmp_path, run_blocking):
    """A factory: each call is the same store seen anew (as after a restart)."""
    folder = tmp_path / "data"
    folder.mkdir()
    if request.param == "s3":
        from incoming.s3_client import make_client
        from incoming.s3_store import S3Store

        target = request.getfixturevalue("s3_target")
        client = make_client(target, 4)

        def make_s3():
            store = S3Store(client, target, str(folder / ".incoming.s3"), run_blocking)
            store.prepare()
            return store

        return make_s3

    def make():
        return FolderStore(str(folder), run_blocking)

    return make


@pytest.fixture(params=["file-here", "file-threads", "redis"])
def make_state_store(request, tmp_path):
    """A factory: each call is the same store seen anew (as after a restart)."""
    if request.param == "redis":
        from incoming.redis_state import RedisStateStore

        hub = request.getfixturevalue("redis_hub")
        return lambda: RedisStateStore(hub)
    run_blocking = storage_work(request, request.param.removeprefix("file-"))
    folder = tmp_path / "state"
    folder.mkdir()

    def make():
        return FileStateStore(str(folder), run_blocking)

    return make


@pytest.fixture(params=["local", "redis"])
def locker(request):
    if request.param == "redis":
        from incoming.redis_locker import RedisLocker

        return RedisLocker(request.getfixturevalue("redis_hub"), reactor)
    return LocalLocker()


@pytest.fixture(params=["local", "redis"])
def bus(request):
    if request.param == "redis":
        from incoming.redis_bus import RedisBus

        return RedisBus(request.getfixturevalue("redis_hub"))
    return LocalBus()
