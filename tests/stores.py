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


@pytest.fixture(params=["here", "threads"])
def run_blocking(request):
    """Storage work done at once, or in a real storage pool."""
    if request.param == "here":
        yield run_here
        return
    pool = StoragePool(reactor, threads=4)
    pool.startService()
    yield pool.run
    pool._pool.stop()


@pytest.fixture(params=["folder"])
def make_data_store(request, tmp_path, run_blocking):
    """A factory: each call is the same store seen anew (as after a restart)."""
    folder = tmp_path / "data"
    folder.mkdir()

    def make():
        return FolderStore(str(folder), run_blocking)

    return make


@pytest.fixture(params=["file"])
def make_state_store(request, tmp_path, run_blocking):
    folder = tmp_path / "state"
    folder.mkdir()

    def make():
        return FileStateStore(str(folder), run_blocking)

    return make


@pytest.fixture(params=["local"])
def locker(request):
    return LocalLocker()


@pytest.fixture(params=["local"])
def bus(request):
    return LocalBus()
