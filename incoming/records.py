"""
What the server keeps about each upload between restarts: one record, its
schema versioned and validated whenever it is read.

Progress is not in the record: the bytes the data store holds are the
truth, so a counter can never be stale.  ``touched_at`` is the last
progress time (written at least every `LIVENESS_SECONDS` or
`LIVENESS_BYTES` while streaming), so a restart continues the idle timer.
A record in an ended state is a tombstone: a browser that reconnects after
a crash learns how its upload ended.
"""

from __future__ import annotations

import json
from typing import Any

import attr

from .ids import parse_ticket_id
from .interfaces import RecordInvalid

SCHEMA = 2  # 1: the journal of 0.2 (no schema field, no tombstones)

OPEN_STATES = ("created", "uploading", "paused", "handing_over", "waiting_for_finish")
ENDED_STATES = ("finished", "cancelled")

# While streaming, the last-progress time is written at least this often.
LIVENESS_SECONDS = 30.0
LIVENESS_BYTES = 64 * 1024 * 1024


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class UploadRecord:
    """One upload as the state store keeps it."""

    id: str
    signal_finish_url: str
    backend_secret: str = attr.ib(default="", repr=False)
    remove_file_when_finished: bool = True
    dest_type: str = "file"  # new_upload's destType: which data store holds it
    state: str = "created"
    length: int | None = None
    browser_name: str = ""
    last_modified: int | None = None  # the file's date (ms), from a "fingerprint" client
    touched_at: float = 0.0
    waiting_since: float | None = None
    sha256: str | None = None
    cancel_reason: str | None = None
    keep_file: bool = False  # cancelled, but its file stays (it may be the backend's)
    ended_at: float | None = None
    version: int = 0  # set by the state store on every write

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES

    def to_json(self) -> bytes:
        fields = attr.asdict(self)
        fields["schema"] = SCHEMA
        return json.dumps(fields, sort_keys=True).encode("utf-8")


_TYPES: dict[str, Any] = {
    "signal_finish_url": str,
    "backend_secret": str,
    "remove_file_when_finished": bool,
    "dest_type": str,
    "state": str,
    "length": (int, type(None)),
    "browser_name": str,
    "last_modified": (int, type(None)),
    "touched_at": (int, float),
    "waiting_since": (int, float, type(None)),
    "sha256": (str, type(None)),
    "cancel_reason": (str, type(None)),
    "keep_file": bool,
    "ended_at": (int, float, type(None)),
    "version": int,
}


def record_from_json(data: bytes, expected_id: str | None = None) -> UploadRecord:
    """Parse and validate a stored record (schema 1 or 2); RecordInvalid if not."""
    try:
        fields = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise RecordInvalid(f"not JSON: {e}") from None
    if not isinstance(fields, dict):
        raise RecordInvalid("not a JSON object")
    schema = fields.pop("schema", 1)
    if schema not in (1, SCHEMA):
        raise RecordInvalid(f"schema {schema!r} is not one this server reads")
    upload_id = parse_ticket_id(fields.get("id"))
    if upload_id is None or (expected_id is not None and upload_id != expected_id):
        raise RecordInvalid("the record's id does not match its name")
    fields["id"] = upload_id
    known = {f.name for f in attr.fields(UploadRecord)}
    fields = {k: v for k, v in fields.items() if k in known}
    for name, types in _TYPES.items():
        if name in fields and (
            not isinstance(fields[name], types)
            or (types is not bool and isinstance(fields[name], bool))
        ):
            raise RecordInvalid(f"field {name} has a wrong type")
    if "signal_finish_url" not in fields:
        raise RecordInvalid("field signal_finish_url is missing")
    if fields.get("state", "created") not in OPEN_STATES + ENDED_STATES:
        raise RecordInvalid(f"state {fields.get('state')!r} is unknown")
    length = fields.get("length")
    if length is not None and length < 0:
        raise RecordInvalid("length is negative")
    return UploadRecord(**fields)
