"""
The state store in Redis, shared by every instance: one hash per upload,
``<prefix>rec:<id>`` with the record's JSON (``r``) and its version (``v``),
a set of every id (``<prefix>ids``) and the tombstones by end time (a
sorted set, ``<prefix>ended``).

Each write is one Lua script, so the version check and the write are one
atomic step: two instances that update the same version cannot both win.
"""

from __future__ import annotations

from attr import evolve
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger
from zope.interface import implementer

from .interfaces import (
    ICountsOpen,
    IDeadlines,
    IStateStore,
    RecordExists,
    RecordInvalid,
    VersionConflict,
)
from .records import UploadRecord, record_from_json

# KEYS: record, ids, ended, due.  ARGV: id, json, ended_at ("" if open), due ("" if none).
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', '1', 'r', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1]) end
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1]) end
return 1
"""

# KEYS: record, ended, due.  ARGV: id, expected version, json, ended_at, due.
_UPDATE = """
local current = redis.call('HGET', KEYS[1], 'v')
if not current then return 'gone' end
if current ~= ARGV[2] then return current end
redis.call('HSET', KEYS[1], 'v', tostring(tonumber(ARGV[2]) + 1), 'r', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return 'ok'
"""

# KEYS: record, ids, ended, due.  ARGV: id.
_DELETE = """
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
"""

# KEYS: the records.  The JSON of each, false where there is none.
_READ_MANY = """
local found = {}
for i, key in ipairs(KEYS) do found[i] = redis.call('HGET', key, 'r') end
return found
"""

# KEYS: ids, ended.  The records that have not ended.
_COUNT_OPEN = """
return redis.call('SCARD', KEYS[1]) - redis.call('ZCARD', KEYS[2])
"""

READ_BATCH = 500


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _ended_at(record: UploadRecord) -> str:
    return repr(record.ended_at) if record.ended and record.ended_at is not None else ""


@implementer(IStateStore, IDeadlines, ICountsOpen)
class RedisStateStore:
    """Upload records in Redis, with their next deadlines indexed (``due``)."""

    _log = Logger()

    def __init__(self, hub, deadline_of=None):
        """``deadline_of(record)``: when something is due for it, or None."""
        self._hub = hub
        self._ids = hub.key("ids")
        self._ended = hub.key("ended")
        self._due = hub.key("due")
        self._deadline_of = deadline_of or (lambda record: None)

    def _due_arg(self, record: UploadRecord) -> str:
        when = self._deadline_of(record)
        return "" if when is None else repr(float(when))

    def postpone(self, upload_id: str, until: float):
        d = self._hub.command("ZADD", self._due, "XX", repr(float(until)), upload_id)
        return d.addCallback(lambda _: None)

    def due(self, before: float, limit: int):
        d = self._hub.command("ZRANGEBYSCORE", self._due, "-inf", repr(before), "LIMIT", 0, limit)
        return d.addCallback(lambda ids: [_text(i) for i in ids])

    def count_open(self):
        return self._hub.eval(_COUNT_OPEN, [self._ids, self._ended], []).addCallback(int)

    def _record_key(self, upload_id: str) -> str:
        return self._hub.key("rec", upload_id)

    def create(self, record: UploadRecord):
        stored = evolve(record, version=1)
        keys = [self._record_key(record.id), self._ids, self._ended, self._due]
        args = [
            record.id,
            stored.to_json().decode("utf-8"),
            _ended_at(stored),
            self._due_arg(stored),
        ]

        def created(result):
            if int(result) != 1:
                raise RecordExists(f"upload {record.id} has a record already")
            return stored

        return self._hub.eval(_CREATE, keys, args).addCallback(created)

    def update(self, record: UploadRecord, expected_version: int):
        stored = evolve(record, version=expected_version + 1)
        keys = [self._record_key(record.id), self._ended, self._due]
        args = [
            record.id,
            str(expected_version),
            stored.to_json().decode("utf-8"),
            _ended_at(stored),
            self._due_arg(stored),
        ]

        def updated(result):
            result = result.decode() if isinstance(result, bytes) else str(result)
            if result == "ok":
                return stored
            current = None if result == "gone" else result
            raise VersionConflict(
                f"upload {record.id} is at version {current}, not {expected_version}"
            )

        return self._hub.eval(_UPDATE, keys, args).addCallback(updated)

    def get(self, upload_id: str):
        d = self._hub.command("HGET", self._record_key(upload_id), "r")
        return d.addCallback(lambda data: None if data is None else self._parse(upload_id, data))

    def _parse(self, upload_id: str, data) -> UploadRecord:
        if isinstance(data, str):
            data = data.encode("utf-8")
        return record_from_json(data, upload_id)

    def delete(self, upload_id: str):
        keys = [self._record_key(upload_id), self._ids, self._ended, self._due]
        return self._hub.eval(_DELETE, keys, [upload_id]).addCallback(lambda _: None)

    @inlineCallbacks
    def all(self):
        """Every readable record; an unreadable one is logged and left in
        Redis for the operator (it is not restored)."""
        ids = yield self._hub.command("SMEMBERS", self._ids)
        ids = sorted(_text(i) for i in ids)
        records: list[UploadRecord] = []
        for start in range(0, len(ids), READ_BATCH):
            yield self._read_batch(ids[start : start + READ_BATCH], records)
        return records

    def _read_batch(self, ids: list[str], records: list):
        keys = [self._record_key(i) for i in ids]

        def read(found):
            for upload_id, data in zip(ids, found, strict=True):
                if data is None:
                    continue  # deleted meanwhile
                try:
                    records.append(self._parse(upload_id, data))
                except RecordInvalid as e:
                    self._log.error(
                        "upload {id}: its record in Redis is corrupt ({why}); not restored",
                        id=upload_id,
                        why=str(e),
                    )

        return self._hub.eval(_READ_MANY, keys, []).addCallback(read)

    @inlineCallbacks
    def sweep(self, ended_before: float):
        found = yield self._hub.command("ZRANGEBYSCORE", self._ended, "-inf", f"({ended_before!r}")
        ids = [_text(i) for i in found]
        for upload_id in ids:
            yield self.delete(upload_id)
        return ids
