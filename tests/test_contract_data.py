"""The data store contract (incoming.interfaces.IDataStore), run against
every implementation in tests/stores.py."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from incoming.ids import new_ticket_id
from incoming.interfaces import (
    DataGone,
    IDataReader,
    IDataStore,
    IFreeSpace,
    IInventory,
    IRemoveAfterHandover,
    IUploadData,
    StoreError,
    WrongOffset,
)
from s3_fixtures import s3_credentials, s3_target  # noqa: F401 (fixtures)
from stores import make_data_store, run_blocking  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("run_blocking")


async def read_all(store, upload_id):
    reader = await store.open_reader(upload_id)
    assert verifyObject(IDataReader, reader)
    blocks = []
    while block := await reader.read(7):
        blocks.append(block)
    await reader.close()
    return b"".join(blocks)


@pytest_twisted.ensureDeferred
async def test_it_provides_the_interfaces_it_declares(make_data_store):  # noqa: F811
    store = make_data_store()
    assert verifyObject(IDataStore, store)
    for capability in (IFreeSpace, IRemoveAfterHandover, IInventory):
        if capability.providedBy(store):
            assert verifyObject(capability, store)
    data = await store.create(new_ticket_id())
    assert verifyObject(IUploadData, data)
    await data.close()


@pytest_twisted.ensureDeferred
async def test_writes_at_the_end_then_seals_under_its_location(make_data_store):  # noqa: F811
    store, upload_id = make_data_store(), new_ticket_id()
    data = await store.create(upload_id)
    assert data.size == 0 and data.upload_id == upload_id
    assert await data.write_at(0, b"hello ") == 6
    assert await data.write_at(6, memoryview(b"world")) == 11
    await data.sync()
    assert await store.held(upload_id, 11) == (11, False)
    location = await data.finish(True)
    assert location == store.location(upload_id)
    assert await store.held(upload_id, 11) == (11, True)
    assert await read_all(store, upload_id) == b"hello world"


@pytest_twisted.ensureDeferred
async def test_a_write_at_the_wrong_offset_is_refused_and_changes_nothing(make_data_store):  # noqa: F811
    store, upload_id = make_data_store(), new_ticket_id()
    data = await store.create(upload_id)
    await data.write_at(0, b"abc")
    for offset in (0, 2, 4):
        with pytest.raises(WrongOffset):
            await data.write_at(offset, b"zz")
    assert data.size == 3
    await data.close()
    assert await read_all(store, upload_id) == b"abc"


@pytest_twisted.ensureDeferred
async def test_an_existing_upload_cannot_be_created_again(make_data_store):  # noqa: F811
    store, upload_id = make_data_store(), new_ticket_id()
    await (await store.create(upload_id)).close()
    with pytest.raises(StoreError):
        await store.create(upload_id)


@pytest_twisted.ensureDeferred
async def test_reopen_resumes_at_what_is_held_even_after_a_restart(make_data_store):  # noqa: F811
    store, upload_id = make_data_store(), new_ticket_id()
    data = await store.create(upload_id)
    await data.write_at(0, b"12345")
    await data.close()
    again = make_data_store()
    assert await again.held(upload_id, 10) == (5, False)
    data = await again.reopen(upload_id)
    assert data.size == 5
    await data.write_at(5, b"67890")
    assert await data.finish(False) == again.location(upload_id)
    assert await read_all(again, upload_id) == b"1234567890"


@pytest_twisted.ensureDeferred
async def test_the_tail_read_back_is_the_last_bytes_stored(make_data_store):  # noqa: F811
    store, upload_id = make_data_store(), new_ticket_id()
    data = await store.create(upload_id)
    await data.write_at(0, b"0123456789")
    assert await data.read_tail(4) == b"6789"
    assert await data.read_tail(50) == b"0123456789"  # never more than is stored
    await data.close()
    data = await make_data_store().reopen(upload_id)  # after a restart too
    assert await data.read_tail(3) == b"789"
    await data.write_at(10, b"ab")
    assert await data.read_tail(3) == b"9ab"
    await data.close()


@pytest_twisted.ensureDeferred
async def test_held_never_reports_more_than_the_announced_length(make_data_store):  # noqa: F811
    store, upload_id = make_data_store(), new_ticket_id()
    data = await store.create(upload_id)
    await data.write_at(0, b"0123456789")
    await data.close()
    assert await store.held(upload_id, 4) == (4, False)
    assert await read_all(store, upload_id) == b"0123"


@pytest_twisted.ensureDeferred
async def test_nothing_held_is_none_and_gone_is_an_error(make_data_store):  # noqa: F811
    store, upload_id = make_data_store(), new_ticket_id()
    assert await store.held(upload_id, 10) is None
    for call in (store.reopen, store.open_reader):
        with pytest.raises(DataGone):
            await call(upload_id)
    with pytest.raises(DataGone):
        await store.seal_existing(upload_id, False)


@pytest_twisted.ensureDeferred
async def test_seal_existing_after_a_restart(make_data_store):  # noqa: F811
    store, upload_id = make_data_store(), new_ticket_id()
    data = await store.create(upload_id)
    await data.write_at(0, b"complete")
    await data.close()
    again = make_data_store()
    assert await again.seal_existing(upload_id, True) == again.location(upload_id)
    assert await again.held(upload_id, 8) == (8, True)
    # sealing twice (a restart during the handover) is harmless
    assert await again.seal_existing(upload_id, True) == again.location(upload_id)


@pytest_twisted.ensureDeferred
async def test_terminate_and_discard_leave_nothing(make_data_store):  # noqa: F811
    store = make_data_store()
    open_one, sealed_one = new_ticket_id(), new_ticket_id()
    data = await store.create(open_one)
    await data.write_at(0, b"part")
    await data.terminate()
    assert await store.held(open_one, 4) is None
    data = await store.create(sealed_one)
    await data.write_at(0, b"whole")
    await data.finish(False)
    await store.discard(sealed_one)
    assert await store.held(sealed_one, 5) is None
    await store.discard(sealed_one)  # twice is fine


@pytest_twisted.ensureDeferred
async def test_optional_capabilities_do_what_they_say(make_data_store):  # noqa: F811
    store, upload_id = make_data_store(), new_ticket_id()
    free = None
    if IFreeSpace.providedBy(store):
        free = await store.free_bytes()
        assert free > 0
    data = await store.create(upload_id)
    await data.write_at(0, b"x" * 8192)
    if free is not None:  # a recent answer counts what was written since
        assert await store.free_bytes(recent=True) <= free - 8192
        assert await store.free_bytes() > 0
    location = await data.finish(False)
    if IInventory.providedBy(store):
        assert await store.unclaimed([upload_id]) == []
        assert await store.unclaimed([]) != []
    if IRemoveAfterHandover.providedBy(store):
        assert await store.remove(location) is True
        assert await store.held(upload_id, 1) is None
        assert await store.remove(location) is False


@pytest_twisted.ensureDeferred
async def test_a_folder_shared_with_other_servers_is_measured_at_each_check(tmp_path):
    """Other servers' writes are not counted by this one: no recent answer."""
    from incoming.folder_store import FolderStore
    from incoming.storage_pool import run_here

    now = [100.0]
    mine = FolderStore(str(tmp_path), run_here, monotonic=lambda: now[0])
    shared = FolderStore(str(tmp_path), run_here, monotonic=lambda: now[0], shared=True)
    first_mine, first_shared = await mine.free_bytes(), await shared.free_bytes()
    (tmp_path / "elsewhere").write_bytes(os.urandom(4 << 20))  # another server's file
    os.sync()
    assert await mine.free_bytes(recent=True) == first_mine  # from its recent measurement
    assert await shared.free_bytes(recent=True) <= first_shared - (4 << 20) + (1 << 20)
    now[0] += 2  # older than a second: measured again
    assert await mine.free_bytes(recent=True) <= first_mine - (4 << 20) + (1 << 20)
