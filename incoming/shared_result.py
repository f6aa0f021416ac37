"""
One Deferred's result handed to several callers, each with a Deferred of
its own (a Deferred's result goes down one chain only): the multipart
upload an S3 upload's parts wait for, the bucket check /health callers
share.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

_PENDING = object()


class SharedResult:
    """``get()`` fires with ``d``'s result (or fails with its failure),
    now if ``d`` has fired, else when it does."""

    def __init__(self, d: Deferred):
        self._result: object = _PENDING
        self._waiting: list[Deferred] = []
        d.addBoth(self._fired)

    def _fired(self, result) -> None:
        self._result = result
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def get(self) -> Deferred:
        if self._result is _PENDING:
            waiter: Deferred = Deferred()
            self._waiting.append(waiter)
            return waiter
        if isinstance(self._result, Failure):
            return fail(self._result)
        return succeed(self._result)
