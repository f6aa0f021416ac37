"""
Drop-behind: the page cache that a big upload passes through is given back
as the upload goes on, instead of the whole file staying in it.

Chunks are written to the page cache (cheap, on the reactor thread).  Left
alone, every byte of a 10 GiB upload stays there, dirty until the kernel
gets round to it and then cached, evicting what other programs had cached,
and the fsync that seals the upload has all of it still to write.  So each
time an upload passes another `STEP`, a storage thread asks the kernel
(``posix_fadvise(POSIX_FADV_DONTNEED)``) about the new step and the two
before it: that starts writing the new one back, and drops the older ones,
written back since the calls before (pages still being written are kept,
and asked about again next time).  An upload then keeps about three steps
cached (the end of the file, where a resuming browser's sample is read)
while the disk keeps up, and has little left to write when it is sealed.

Measured on this project's 2-core VM (1 GiB in 1 MiB writes, fsync at the
end): 0.36-0.58 CPU-s and 0.5-1.1 s in all with the advice, against
1.3-4.3 CPU-s and 1.4-4.9 s without (taking page cache that was given
back to the host costs the guest a fault per page).

It is advice only: no durability rests on it (the fsyncs do that), a file
system that ignores it (tmpfs) loses nothing, and a refused call is not an
error.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from .shared_result import SharedResult

STEP = 8 * 1024 * 1024

_FADVISE = getattr(os, "posix_fadvise", None)  # not on macOS


def advise_dropped(fd: int, offset: int, length: int) -> None:
    """Blocking (a storage thread): write back and drop [offset, offset + length)."""
    if _FADVISE is None:
        return
    try:
        _FADVISE(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass  # advice: a descriptor or file system that cannot take it loses nothing


class DropBehind:
    """The advice for one open file, one call at a time; ``settled()``
    before the descriptor is closed."""

    _log = Logger()

    def __init__(
        self,
        run_blocking: Callable[..., Deferred],
        what: str,
        size: int = 0,
        advise: Callable[[int, int, int], None] = advise_dropped,
    ):
        """``size``: the bytes the file has already (a reopened upload)."""
        self._run = run_blocking
        self._what = what
        self._advise = advise
        self._advised_to = size - size % STEP
        self._pending: SharedResult | None = None

    def wrote(self, fd: int, size: int) -> None:
        """The file ``fd`` holds ``size`` bytes now."""
        end = size - size % STEP
        if self._pending is not None or end - self._advised_to < STEP:
            return  # a call is running (the next one covers this step too), or no new step
        # Two steps back: pages of the older one that were still being
        # written at the last call were skipped then, and get another chance.
        start = max(0, self._advised_to - 2 * STEP)
        self._advised_to = end
        d = self._run(self._advise, fd, start, end - start)
        d.addErrback(
            lambda f: self._log.failure(
                "{what}: dropping written bytes from the page cache", f, what=self._what
            )
        )
        pending = self._pending = SharedResult(d)
        d.addBoth(lambda _: self._clear(pending))

    def _clear(self, pending: SharedResult) -> None:
        if self._pending is pending:
            self._pending = None

    def settled(self) -> Deferred:
        """Fires (never fails) once no call is running."""
        return self._pending.get() if self._pending is not None else succeed(None)
