"""The state store contract (incoming.interfaces.IStateStore), run against
every implementation in tests/stores.py."""

from __future__ import annotations

import attr
import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from incoming.ids import new_ticket_id
from incoming.interfaces import IStateStore, RecordExists, VersionConflict
from incoming.records import UploadRecord
from stores import make_state_store, redis_hub, redis_server  # noqa: F401 (fixtures)


def a_record(**fields) -> UploadRecord:
    values = dict(id=new_ticket_id(), signal_finish_url="http://backend.example/h",
                  backend_secret="s3cret", touched_at=1000.0)
    values.update(fields)
    return UploadRecord(**values)


@pytest_twisted.ensureDeferred
async def test_it_provides_the_interface(make_state_store):  # noqa: F811
    assert verifyObject(IStateStore, make_state_store())


@pytest_twisted.ensureDeferred
async def test_create_get_update_delete(make_state_store):  # noqa: F811
    store = make_state_store()
    record = a_record()
    stored = await store.create(record)
    assert stored == attr.evolve(record, version=1)
    assert await store.get(record.id) == stored
    changed = attr.evolve(stored, state="paused", length=10, browser_name="ä b.jpg")
    updated = await store.update(changed, 1)
    assert updated == attr.evolve(changed, version=2)
    assert await store.get(record.id) == updated
    await store.delete(record.id)
    assert await store.get(record.id) is None
    await store.delete(record.id)  # twice is fine


@pytest_twisted.ensureDeferred
async def test_an_id_is_created_once(make_state_store):  # noqa: F811
    store = make_state_store()
    record = a_record()
    await store.create(record)
    with pytest.raises(RecordExists):
        await store.create(attr.evolve(record, backend_secret="other"))
    assert (await store.get(record.id)).backend_secret == "s3cret"


@pytest_twisted.ensureDeferred
async def test_two_writers_of_the_same_version_cannot_both_win(make_state_store):  # noqa: F811
    store = make_state_store()
    stored = await store.create(a_record())
    first = store.update(attr.evolve(stored, state="uploading"), 1)
    second = store.update(attr.evolve(stored, state="cancelled"), 1)
    assert (await first).version == 2
    with pytest.raises(VersionConflict):
        await second
    assert (await store.get(stored.id)).state == "uploading"
    with pytest.raises(VersionConflict):
        await store.update(attr.evolve(stored, state="paused"), 7)


@pytest_twisted.ensureDeferred
async def test_records_survive_a_restart(make_state_store):  # noqa: F811
    store = make_state_store()
    one = await store.create(a_record())
    two = await store.update(attr.evolve(await store.create(a_record()), state="paused"), 1)
    assert await make_state_store().get(two.id) == two
    again = make_state_store()
    assert sorted(await again.all(), key=lambda r: r.id) == sorted([one, two], key=lambda r: r.id)
    assert (await again.update(attr.evolve(two, state="uploading"), 2)).version == 3


@pytest_twisted.ensureDeferred
async def test_tombstones_are_kept_until_swept(make_state_store):  # noqa: F811
    store = make_state_store()
    open_one = await store.create(a_record())
    old = await store.create(a_record())
    old = await store.update(attr.evolve(old, state="finished", ended_at=100.0), 1)
    new = await store.create(a_record())
    new = await store.update(attr.evolve(new, state="cancelled", cancel_reason="x",
                                         ended_at=500.0), 1)
    assert await store.sweep(50.0) == []
    assert await store.sweep(200.0) == [old.id]
    assert await store.get(old.id) is None
    assert await store.get(new.id) == new
    assert await store.get(open_one.id) == open_one
    again = make_state_store()  # after a restart too
    await again.all()
    assert await again.sweep(10_000.0) == [new.id]
    assert [r.id for r in await again.all()] == [open_one.id]
