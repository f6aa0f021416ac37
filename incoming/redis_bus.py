"""
The event bus in Redis: an upload's events reach its subscribers on every
instance, and their answers come back to the publisher.

``publish`` sends ``{"event", "payload"}`` on ``<prefix>events:<id>`` with
a reply address (`RedisHub.request`); each subscriber answers ``{"answer":
...}`` or, when its handler raises, ``{"refused": class name, "message"}``.
A refusal that is a `Refused` subclass is raised again as that class on the
publisher's side (both run the same code); any other failure as
`BusError`.  Answers and payloads are JSON.
"""

from __future__ import annotations

import json

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from zope.interface import implementer

from .interfaces import BusError, IEventBus, Refused

ANSWER_TIMEOUT = 5.0

_log = Logger()


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _refusal_classes() -> dict[str, type]:
    found: dict[str, type] = {}
    pending = [Refused]
    while pending:
        cls = pending.pop()
        found[_name(cls)] = cls
        pending.extend(cls.__subclasses__())
    return found


@implementer(IEventBus)
class RedisBus:
    """Per-upload topics shared by every instance on one Redis."""

    def __init__(self, hub, timeout: float = ANSWER_TIMEOUT):
        self._hub = hub
        self._timeout = timeout

    def _channel(self, upload_id: str) -> str:
        return self._hub.key("events", upload_id)

    def publish(self, upload_id: str, event: str, payload=None):
        message = {"event": event, "payload": payload}
        d = self._hub.request(self._channel(upload_id), message, self._timeout)
        return d.addCallback(self._answers)

    def _answers(self, replies: list) -> list:
        answers = []
        for reply in replies:
            if "refused" in reply:
                cls = _refusal_classes().get(str(reply["refused"]), BusError)
                raise cls(str(reply.get("message", "")))
            answers.append(reply.get("answer"))
        return answers

    def subscribe(self, upload_id: str, handler):
        def on_message(message: str) -> None:
            try:
                request = json.loads(message)
                event, payload = request["event"], request.get("payload")
            except (ValueError, KeyError, TypeError):
                return

            def answered(answer):
                self._hub.reply(request, {"answer": answer})

            def refused(failure):
                error = failure.value
                if not isinstance(error, Refused):
                    _log.failure("upload {id}: {event}", failure, id=upload_id, event=event)
                self._hub.reply(request, {"refused": _name(type(error)), "message": str(error)})

            maybeDeferred(handler, event, payload).addCallbacks(answered, refused)

        return self._hub.subscribe(self._channel(upload_id), on_message)
