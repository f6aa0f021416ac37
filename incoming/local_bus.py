"""
The event bus of the embedded default: subscribers in this process, called
at once, their answers gathered.
"""

from __future__ import annotations

from twisted.internet.defer import FirstError, gatherResults, maybeDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from .interfaces import IEventBus


def _first_failure(failure: Failure) -> Failure:
    """gatherResults wraps a subscriber's failure in FirstError: unwrap it."""
    error = failure.value
    return error.subFailure if isinstance(error, FirstError) else failure


@implementer(IEventBus)
class LocalBus:
    """Per-upload topics in one process."""

    def __init__(self):
        self._handlers: dict[str, list] = {}

    def publish(self, upload_id: str, event: str, payload=None):
        handlers = list(self._handlers.get(upload_id, ()))
        return gatherResults(
            [maybeDeferred(h, event, payload) for h in handlers], consumeErrors=True
        ).addErrback(_first_failure)

    def subscribe(self, upload_id: str, handler):
        self._handlers.setdefault(upload_id, []).append(handler)

        def unsubscribe():
            handlers = self._handlers.get(upload_id, [])
            if handler in handlers:
                handlers.remove(handler)
            if not handlers:
                self._handlers.pop(upload_id, None)

        return succeed(unsubscribe)
