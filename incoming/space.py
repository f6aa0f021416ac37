"""
The free space promised to the uploads that are sending now.

A free-space check at ``MsgUploadReq`` alone lets N browsers that connect
together each see the same free bytes and overcommit the disk.  Each
connected upload holds a promise of the rest of its file (its length minus
what is stored, so the promise shrinks as the bytes land); a new one is let
in only if its own rest fits beside every promise.  In memory: the store's
free bytes are measured afresh at each check.  An upload that has stored
nothing for `STALLED_SECONDS` holds no promise (a browser that connects
and sends nothing cannot keep the room from others).
"""

from __future__ import annotations

STALLED_SECONDS = 60.0


class SpacePromises:
    """Uploads that were promised room for the rest of their file."""

    def __init__(self) -> None:
        self._holders: set = set()  # objects with .length, .received, .progress_at

    def promised(self, now: float, besides=None) -> int:
        """Bytes still to come of every holder but ``besides`` that made
        progress in the last STALLED_SECONDS."""
        return sum(
            max(0, (u.length or 0) - u.received)
            for u in self._holders
            if u is not besides and now - u.progress_at < STALLED_SECONDS
        )

    def hold(self, upload) -> None:
        self._holders.add(upload)

    def release(self, upload) -> None:
        self._holders.discard(upload)
