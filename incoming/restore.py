"""
After a restart: what each recorded upload becomes, from its record and
the bytes its data store holds.  Pure: no I/O, so every case is a unit test.

- an ended upload (tombstone) stays finished or cancelled, so a browser that
  reconnects learns how it ended;
- one that never got a MsgUploadReq is a ticket again;
- one waiting for finish_upload keeps waiting;
- a complete one, or one whose handover had begun, is handed over (again);
- anything else is paused at the bytes held (an empty file if none).
"""

from __future__ import annotations

import attr

from .records import UploadRecord


@attr.s(frozen=True, auto_attribs=True)
class RestorePlan:
    state: str
    received: int = 0
    hand_over: bool = False  # hand the complete file over again
    recreate: bool = False  # nothing is held: start an empty file


def plan_restore(record: UploadRecord, held: tuple[int, bool] | None) -> RestorePlan:
    """``held``: (bytes held, sealed?) from the data store, or None."""
    if record.ended:
        return RestorePlan(record.state, record.length or 0)
    if record.length is None:
        return RestorePlan("created")
    if record.state == "waiting_for_finish":
        return RestorePlan("waiting_for_finish", record.length)
    complete = held is not None and held[0] == record.length
    if record.state == "handing_over" or complete:
        return RestorePlan("handing_over", record.length, hand_over=True)
    if held is None:
        return RestorePlan("paused", 0, recreate=True)
    return RestorePlan("paused", held[0])


def next_deadline(record: UploadRecord, settings) -> float | None:
    """When something is due for an upload that no server is working on:
    its idle or confirm timeout, the end of its retention, or (a handover
    that began) at once, for whoever finds it unattended."""
    if record.ended:
        return (record.ended_at or record.touched_at) + settings.retention
    if record.state == "waiting_for_finish":
        since = record.waiting_since if record.waiting_since is not None else record.touched_at
        return since + settings.handover_confirm_timeout
    if record.state == "handing_over":
        return record.touched_at
    return record.touched_at + settings.idle_timeout
