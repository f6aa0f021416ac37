"""What the Redis stores add to their contracts: several instances (hubs)
on one real redis-server see one another's records, locks and events; a
dead holder's lease runs out; Redis going away is a clear, quick error and
coming back is recovered from."""

from __future__ import annotations

import time

import attr
import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import succeed

from incoming.ids import new_ticket_id
from incoming.interfaces import CANCEL_REQUESTED, LockHeld, LockLost
from incoming.redis_bus import RedisBus
from incoming.redis_client import RedisHub, RedisUnavailable, parse_redis_url
from incoming.redis_locker import RedisLocker
from incoming.redis_state import RedisStateStore
from incoming.metrics import Metrics
from incoming.records import UploadRecord
from redis_server import RedisServer, redis_server, unique_prefix  # noqa: F401 (fixture)


@pytest.fixture
def instances(redis_server):  # noqa: F811
    """A factory of hubs on one Redis and one prefix: several instances."""
    prefix, hubs = unique_prefix(), []

    def make(server=redis_server, timeout=5.0, metrics=None):
        hub = RedisHub(parse_redis_url(server.url), prefix, reactor, timeout=timeout,
                       metrics=metrics)
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        pytest_twisted.blockon(hub.close())


def never():
    return succeed(False)


@pytest_twisted.ensureDeferred
async def test_a_record_written_by_one_instance_is_read_by_another(instances):
    one, two = RedisStateStore(instances()), RedisStateStore(instances())
    record = await one.create(UploadRecord(id=new_ticket_id(), signal_finish_url="http://b/h"))
    assert await two.get(record.id) == record
    assert [r.id for r in await two.all()] == [record.id]


@pytest_twisted.ensureDeferred
async def test_every_instance_counts_the_records_not_ended_of_all(instances):
    one, two = RedisStateStore(instances()), RedisStateStore(instances())
    made = [await one.create(UploadRecord(id=new_ticket_id(), signal_finish_url="http://b/h"))
            for _ in range(3)]
    await two.create(UploadRecord(id=new_ticket_id(), signal_finish_url="http://b/h"))
    assert await one.count_open() == await two.count_open() == 4
    ended = attr.evolve(made[0], state="cancelled", ended_at=time.time())
    await two.update(ended, made[0].version)
    await one.delete(made[1].id)
    assert await two.count_open() == 2


@pytest_twisted.ensureDeferred
async def test_another_instance_asks_the_holder_and_takes_over_when_it_lets_go(instances):
    holder, taker = RedisLocker(instances(), reactor), RedisLocker(instances(), reactor)
    upload_id, asked = new_ticket_id(), []

    def let_go():
        asked.append(True)
        return succeed(True)

    first = await holder.acquire(upload_id, let_go)
    with pytest.raises(LockHeld):
        await taker.acquire(upload_id, never)  # not asked: refused
    second = await taker.acquire(upload_id, never, ask_holder=True)
    assert asked == [True]
    with pytest.raises(LockLost):
        await first.renew()
    await second.release()


def sample(metrics, name) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


@pytest_twisted.ensureDeferred
async def test_round_trips_and_takeovers_are_counted(instances):
    holder_metrics, taker_metrics = Metrics(), Metrics()
    holder = RedisLocker(instances(metrics=holder_metrics), reactor)
    taker = RedisLocker(instances(metrics=taker_metrics), reactor)
    upload_id = new_ticket_id()
    first = await holder.acquire(upload_id, lambda: succeed(True))
    assert sample(holder_metrics, "incoming_redis_command_duration_seconds_count") >= 1
    second = await taker.acquire(upload_id, never, ask_holder=True)
    assert sample(taker_metrics, "incoming_lock_takeovers_total") == 1
    assert sample(holder_metrics, "incoming_lock_takeovers_total") == 0
    await second.release()


@pytest_twisted.ensureDeferred
async def test_a_hold_that_cannot_be_renewed_for_a_lease_is_lost_and_told(tmp_path, instances):
    server = RedisServer(tmp_path)
    server.start()
    try:
        metrics, lost = Metrics(), []
        locker = RedisLocker(instances(server, timeout=0.3, metrics=metrics), reactor, lease=0.6)
        lock = await locker.acquire(new_ticket_id(), never, on_lost=lambda: lost.append(True))
        server.stop()  # Redis away: the renewals fail
        await task.deferLater(reactor, 1.5, lambda: None)
        assert lost == [True]
        assert sample(metrics, "incoming_locks_lost_total") == 1
        with pytest.raises(LockLost):
            await lock.renew()
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_a_dead_holders_lease_runs_out(instances):
    dead = RedisLocker(instances(), reactor, lease=0.6)
    upload_id = new_ticket_id()
    lock = await dead.acquire(upload_id, never)
    lock._forget()  # the process died: no renewals, nobody answers
    taker = RedisLocker(instances(), reactor)
    with pytest.raises(LockHeld):
        await taker.acquire(upload_id, never, ask_holder=True)  # asked: no answer
    await task.deferLater(reactor, 0.7, lambda: None)
    taken = await taker.acquire(upload_id, never)
    await taken.release()


@pytest_twisted.ensureDeferred
async def test_a_held_lock_outlives_its_lease_while_renewed(instances):
    locker = RedisLocker(instances(), reactor, lease=0.3)
    upload_id = new_ticket_id()
    lock = await locker.acquire(upload_id, never)
    await task.deferLater(reactor, 1.0, lambda: None)  # three leases
    with pytest.raises(LockHeld):
        await RedisLocker(instances(), reactor).acquire(upload_id, never)
    await lock.renew()
    await lock.release()


@pytest_twisted.ensureDeferred
async def test_an_event_published_on_one_instance_is_answered_on_another(instances):
    subscriber = RedisBus(instances())
    upload_id = new_ticket_id()
    await subscriber.subscribe(upload_id, lambda event, payload: f"{event}: {payload}")
    # A server just started: its replies' channel is not listened to yet.
    publisher = RedisBus(instances())
    started = time.monotonic()
    assert await publisher.publish(upload_id, CANCEL_REQUESTED, "by the backend") == [
        "cancel: by the backend"]
    assert time.monotonic() - started < 0.1  # the 100 ms of the cluster promise
    started = time.monotonic()
    assert await publisher.publish(upload_id, CANCEL_REQUESTED, "again") == ["cancel: again"]
    assert time.monotonic() - started < 0.1


@pytest_twisted.ensureDeferred
async def test_redis_away_is_a_quick_clear_error_and_its_return_is_recovered_from(
        tmp_path, instances):
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    try:
        hub = instances(server, timeout=1.0)
        store, bus = RedisStateStore(hub), RedisBus(hub)
        record = await store.create(UploadRecord(id=new_ticket_id(), signal_finish_url="http://b/h"))
        heard = []
        await bus.subscribe(record.id, lambda event, payload: heard.append(event) or "ok")
        server.stop()
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match="Redis at redis://127.0.0.1"):
            await store.get(record.id)
        assert time.monotonic() - started < 2.5
        server.start()  # same port, its append-only file kept the record
        for _ in range(100):  # txredisapi reconnects by itself, with backoff
            try:
                assert await store.get(record.id) == record
                break
            except RedisUnavailable:
                await task.deferLater(reactor, 0.2, lambda: None)
        else:
            raise AssertionError("no reconnect to Redis")
        other = RedisBus(instances(server))
        for _ in range(50):  # and the subscriber resubscribed
            if await other.publish(record.id, CANCEL_REQUESTED, "x") == ["ok"]:
                break
            await task.deferLater(reactor, 0.2, lambda: None)
        assert heard and heard[-1] == CANCEL_REQUESTED
    finally:
        server.stop()
