"""
What a server checks before it restores its uploads and undoes after it
stops: each shared store (Redis, S3) has a guard with ``start`` (fails with
`GuardRefused`, naming the setting, if the server must not start),
``stop`` and ``health`` (for /health).
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks


class GuardRefused(Exception):
    """The server must not start; str() says why, naming the setting."""


class Guards:
    """Several guards as one: started in order, stopped in reverse."""

    def __init__(self, guards):
        self._guards = list(guards)

    @inlineCallbacks
    def start(self):
        for guard in self._guards:
            yield guard.start()

    @inlineCallbacks
    def stop(self):
        for guard in reversed(self._guards):
            yield guard.stop()

    def health_checks(self) -> list:
        return [guard.health for guard in self._guards]
