"""The event bus contract (incoming.interfaces.IEventBus), run against every
implementation in tests/stores.py."""

from __future__ import annotations

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from incoming.ids import new_ticket_id
from incoming.interfaces import CANCEL_REQUESTED, FINISH_REQUESTED, IEventBus, Refused
from stores import bus, redis_hub, redis_server  # noqa: F401 (fixtures)


@pytest_twisted.ensureDeferred
async def test_nobody_listening_answers_nothing(bus):  # noqa: F811
    assert verifyObject(IEventBus, bus)
    assert await bus.publish(new_ticket_id(), CANCEL_REQUESTED, "why") == []


@pytest_twisted.ensureDeferred
async def test_subscribers_of_an_upload_get_its_events_and_answer(bus):  # noqa: F811
    upload_id, other = new_ticket_id(), new_ticket_id()
    heard = []

    def handler(event, payload):
        heard.append((event, payload))
        return "ok"

    unsubscribe = await bus.subscribe(upload_id, handler)
    await bus.subscribe(other, lambda e, p: heard.append(("other", e)))
    assert await bus.publish(upload_id, CANCEL_REQUESTED, "by the backend") == ["ok"]
    assert await bus.publish(upload_id, FINISH_REQUESTED) == ["ok"]
    assert heard == [(CANCEL_REQUESTED, "by the backend"), (FINISH_REQUESTED, None)]
    unsubscribe()
    assert await bus.publish(upload_id, FINISH_REQUESTED) == []
    unsubscribe()  # twice is fine


class TooLateForThat(Refused):
    """A refusal as the uploads make them (incoming.upload.TooLate)."""


@pytest_twisted.ensureDeferred
async def test_a_refusal_reaches_the_publisher(bus):  # noqa: F811
    upload_id = new_ticket_id()

    def handler(event, payload):
        raise TooLateForThat("too late")

    await bus.subscribe(upload_id, handler)
    with pytest.raises(TooLateForThat, match="too late"):
        await bus.publish(upload_id, CANCEL_REQUESTED, "x")
