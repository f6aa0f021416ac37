"""The locker contract (incoming.interfaces.ILocker), run against every
implementation in tests/stores.py."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import succeed
from zope.interface.verify import verifyObject

from incoming.ids import new_ticket_id
from incoming.interfaces import ILock, ILocker, LockHeld, LockLost
from stores import locker, redis_hub, redis_server  # noqa: F401 (fixtures)


def never_lets_go():
    return succeed(False)


@pytest_twisted.ensureDeferred
async def test_one_holder_at_a_time(locker):  # noqa: F811
    assert verifyObject(ILocker, locker)
    upload_id, other = new_ticket_id(), new_ticket_id()
    lock = await locker.acquire(upload_id, never_lets_go)
    assert verifyObject(ILock, lock)
    with pytest.raises(LockHeld):
        await locker.acquire(upload_id, never_lets_go)
    await (await locker.acquire(other, never_lets_go)).release()  # other uploads are free
    await lock.renew()
    await lock.release()
    with pytest.raises(LockLost):
        await lock.renew()
    again = await locker.acquire(upload_id, never_lets_go)
    await lock.release()  # a stale release does not free the new holder
    with pytest.raises(LockLost):
        await lock.renew()
    await again.renew()
    with pytest.raises(LockHeld):
        await locker.acquire(upload_id, never_lets_go)
    await again.release()


@pytest_twisted.ensureDeferred
async def test_a_holder_asked_to_let_go_may_refuse(locker):  # noqa: F811
    upload_id, asked = new_ticket_id(), []

    def refuse():
        asked.append(True)
        return succeed(False)

    lock = await locker.acquire(upload_id, refuse)
    with pytest.raises(LockHeld):
        await locker.acquire(upload_id, never_lets_go, ask_holder=True)
    assert asked == [True]
    with pytest.raises(LockHeld):  # without asking, the holder is not bothered
        await locker.acquire(upload_id, never_lets_go)
    assert asked == [True]
    await lock.release()


@pytest_twisted.ensureDeferred
async def test_a_holder_that_lets_go_hands_over_at_once(locker):  # noqa: F811
    upload_id = new_ticket_id()
    first = await locker.acquire(upload_id, lambda: succeed(True))
    second = await locker.acquire(upload_id, never_lets_go, ask_holder=True)
    with pytest.raises(LockHeld):
        await locker.acquire(upload_id, never_lets_go)
    with pytest.raises(LockLost):  # it was taken over
        await first.renew()
    await first.release()  # the old holder's release changes nothing now
    with pytest.raises(LockHeld):
        await locker.acquire(upload_id, never_lets_go)
    await second.release()
