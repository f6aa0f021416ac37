"""
Timers that cancel or fail an upload fire only once their time has really
passed.

The reactor's clock is the wall clock: when it jumps forward (an NTP step, a
VM resumed) every pending ``callLater`` fires at once.  A `Deadline` is armed
on the reactor clock but, when it fires, checks the elapsed *monotonic*
time and re-arms itself for what is left.  Tests pass the same fake for both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Firing this much early counts as on time (timer granularity).
SLACK = 0.001


class Deadline:
    """Call ``action`` once ``delay`` seconds of monotonic time have passed."""

    def __init__(self, clock: Any, monotonic: Callable[[], float], delay: float, action):
        self._clock = clock
        self._monotonic = monotonic
        self._action = action
        self._due = monotonic() + delay
        self._call: Any = clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        left = self._due - self._monotonic()
        if left > SLACK:  # the wall clock jumped: not yet
            self._call = self._clock.callLater(left, self._fire)
            return
        self._call = None
        self._action()

    def active(self) -> bool:
        return self._call is not None and self._call.active()

    def reset(self, delay: float) -> None:
        """Due ``delay`` seconds from now (if still pending)."""
        if self.active():
            self._due = self._monotonic() + delay
            self._call.reset(delay)

    def cancel(self) -> None:
        if self.active():
            self._call.cancel()
        self._call = None
