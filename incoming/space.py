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
        # objects with .length, .received, .progress_at -> their rest when held
        self._holders: dict = {}
        # The rests when held, summed: never less than what is promised (a
        # rest only shrinks), so a check that fits beside it needs no count.
        self._bound = 0

    def promised(self, now: float, besides=None) -> int:
        """Bytes still to come of every holder but ``besides`` that made
        progress in the last STALLED_SECONDS."""
        return sum(
            max(0, (u.length or 0) - u.received)
            for u in self._holders
            if u is not besides and now - u.progress_at < STALLED_SECONDS
        )

    def fits(self, free: int, needed: int, now: float, besides=None) -> tuple[bool, int]:
        """Whether ``needed`` bytes fit in ``free`` beside the promises (and
        the bytes promised, as far as counted): at once while there is room
        beside the bound, else by counting every holder's rest."""
        bound = self._bound - self._holders.get(besides, 0)
        if free - bound >= needed:
            return True, bound
        promised = self.promised(now, besides)
        return free - promised >= needed, promised

    def hold(self, upload) -> None:
        """Hold its rest (again after its stored size was found smaller than
        recorded: the bound grows with it)."""
        rest = max(0, (upload.length or 0) - upload.received)
        held = self._holders.get(upload, 0)
        if upload not in self._holders or rest > held:
            self._holders[upload] = rest
            self._bound += rest - held

    def release(self, upload) -> None:
        self._bound -= self._holders.pop(upload, 0)
