"""
The handover's outcome as the upload machine needs it: done, wait, or
failed with a reason for the browser and the backend.  Never fails itself.
"""

from __future__ import annotations

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from .handover import DONE, WAIT, HandoverFailed

FAILED = "failed"

_log = Logger()


def hand_over(backend, ticket, location, browser_name, sha256, clock, metrics):
    """Offer the file; fire with (DONE | WAIT | FAILED, reason)."""
    started = clock.seconds()

    def answered(answer):
        return (DONE, "") if answer == DONE else (WAIT, "")

    def failed(failure):
        if failure.check(HandoverFailed):
            return FAILED, str(failure.value)
        _log.failure("upload {id}: handover crashed", failure, id=ticket.id)
        return FAILED, "internal error during the handover"

    def timed(result):
        metrics.handover_ended(clock.seconds() - started)
        return result

    d = maybeDeferred(backend.hand_over, ticket, location, browser_name, sha256)
    return d.addCallbacks(answered, failed).addBoth(timed)


__all__ = ["DONE", "WAIT", "FAILED", "hand_over"]
