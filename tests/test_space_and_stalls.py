"""Room on the disk, promised and lost: a full disk when a record or a file
is made refuses the browser for now (code 10) and keeps the bytes; the
promises of connected uploads are kept through takeovers and other
connections' refusals, and lapse when an upload stalls; a fingerprint
client that never answers its Sample is cut off."""

from __future__ import annotations

import os

import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from zope.interface import directlyProvides, providedBy

from fakes import fired
from incoming.config import Settings
from incoming.embedded import embedded_stores
from incoming.handover import DONE, HandoverFailed
from incoming.interfaces import NoSpace, StoreComposer
from incoming.registry import UploadRegistry
from incoming.storage_pool import run_here
from incoming.wire import ErrorCode
from test_upload_machine import FakeBackend, FakeChannel, data_of

KiB = 1024
FILE = data_of(10 * KiB)


class Wrapped:
    """A store with some calls replaced; the rest (and its capabilities) as is."""

    def __init__(self, target, **replaced):
        self._target, self._replaced = target, replaced
        directlyProvides(self, *providedBy(target))

    def __getattr__(self, name):
        return self._replaced.get(name) or getattr(self._target, name)


class TakeoverChannel(FakeChannel):
    """A connection that the server can ping (dead: no answer) and cut."""

    def probe(self):
        return succeed(False)

    def drop(self):
        self.calls.append(("dropped",))


def registry_with(tmp_path, clock, free=None, state_update=None):
    settings = Settings(storage_dir=str(tmp_path / "storage"), chunk_size_kb=1,
                        storage_reserve=0, websocket_timeout=20.0)
    real = embedded_stores(settings, run_here)
    real.data.prepare()
    data = real.data if free is None else Wrapped(real.data, free_bytes=lambda recent=False: succeed(free))
    state = real.state if state_update is None else Wrapped(real.state, update=state_update)
    stores = StoreComposer(data=data, state=state, locker=real.locker, bus=real.bus)
    backend = FakeBackend()
    return UploadRegistry(settings, stores, backend, clock), backend, real


def send(upload, channel, data):
    for start in range(0, len(data), KiB):
        upload.receive(channel, data[start:start + KiB])


def records_fill_up(tmp_path, clock, why):
    """A registry whose record writes fail with NoSpace(why) while full[0]."""
    full = [False]

    def update(record, version):
        if full[0]:
            return fail(NoSpace(f"cannot write the record: {why}"))
        return real.state.update(record, version)

    registry, backend, real = registry_with(tmp_path, clock, state_update=update)
    return registry, backend, real, full


def test_a_full_disk_when_the_record_is_written_on_reconnect_refuses_for_now(tmp_path):
    clock = Clock()
    registry, backend, real, full = records_fill_up(tmp_path, clock, "Disk quota exceeded")
    upload = fired(registry.create("http://backend.example/h", "pw", False))
    first = FakeChannel()
    upload.connect(first, len(FILE), "f.bin")
    send(upload, first, FILE[: 4 * KiB])
    upload.pause(first)
    full[0] = True  # a quota: statvfs says there is room, the writes say not
    second = FakeChannel()
    upload.connect(second, len(FILE), "f.bin")
    assert [code for code, _ in second.failures] == [ErrorCode.NO_SPACE]
    assert upload.state == "paused"  # not cancelled
    assert backend.cancels == []
    part = os.path.join(real.data.folder, upload.ticket.id + ".part")
    with open(part, "rb") as f:
        assert f.read() == FILE[: 4 * KiB]
    full[0] = False
    third = FakeChannel()
    upload.connect(third, len(FILE), "f.bin")
    assert third.file_positions == [4 * KiB]
    send(upload, third, FILE[4 * KiB:])
    (handover,) = backend.handovers
    assert handover.content == FILE


def test_a_full_disk_for_the_sealed_records_sha256_still_hands_over(tmp_path):
    clock = Clock()
    registry, backend, real, full = records_fill_up(tmp_path, clock, "No space left on device")
    upload = fired(registry.create("http://backend.example/h", "pw", False))
    channel = FakeChannel()
    upload.connect(channel, len(FILE), "f.bin")
    send(upload, channel, FILE[:-KiB])
    full[0] = True  # the disk fills up with the last chunk's record
    send(upload, channel, FILE[-KiB:])
    (handover,) = backend.handovers  # the complete file is not deleted
    assert handover.content == FILE
    handover.deferred.callback(DONE)
    assert upload.state == "finished"


def test_promises_survive_other_connections_refusals_and_takeovers(tmp_path):
    clock = Clock()
    registry, backend, _ = registry_with(tmp_path, clock, free=15 * KiB)
    a = fired(registry.create("http://backend.example/h", "pw", True))
    b = fired(registry.create("http://backend.example/h", "pw", True))
    a_first = TakeoverChannel()
    a.connect(a_first, len(FILE), "a.bin")
    send(a, a_first, FILE[:KiB])
    refused = FakeChannel()
    b.connect(refused, len(FILE), "b.bin")  # 9 KiB promised to a, 10 KiB wanted
    assert [code for code, _ in refused.failures] == [ErrorCode.NO_SPACE]
    busy = FakeChannel()
    a.connect(busy, len(FILE), "a.bin")  # a second connection of a: refused busy
    assert [code for code, _ in busy.failures] == [ErrorCode.UPLOAD_BUSY]
    again = FakeChannel()
    b.connect(again, len(FILE), "b.bin")
    assert [code for code, _ in again.failures] == [ErrorCode.NO_SPACE], "a's promise was lost"
    a_second = TakeoverChannel()
    a.connect(a_second, len(FILE), "a.bin", takeover=True)  # a's first is dead
    assert a.channel is a_second and ("dropped",) in a_first.calls
    third = FakeChannel()
    b.connect(third, len(FILE), "b.bin")
    assert [code for code, _ in third.failures] == [ErrorCode.NO_SPACE], (
        "a took over its own upload without a promise")


def test_a_stalled_upload_keeps_no_room_from_others(tmp_path):
    clock = Clock()
    registry, _, _ = registry_with(tmp_path, clock, free=15 * KiB)
    a = fired(registry.create("http://backend.example/h", "pw", True))
    b = fired(registry.create("http://backend.example/h", "pw", True))
    silent = FakeChannel()
    a.connect(silent, len(FILE), "a.bin")  # connects, then sends nothing
    clock.advance(61)
    fine = FakeChannel()
    b.connect(fine, len(FILE), "b.bin")
    assert fine.failures == [] and fine.file_positions == [0]


def test_ended_uploads_hold_no_promise(tmp_path):
    """Finished, cancelled and failed uploads let go of their promise (the
    promises would otherwise hold every upload ever made in memory, and
    each check would count them all)."""
    clock = Clock()
    registry, backend, _ = registry_with(tmp_path, clock)
    ended = []
    for n in range(3):
        upload = fired(registry.create("http://backend.example/h", "pw", True))
        channel = FakeChannel()
        upload.connect(channel, len(FILE), "f.bin")
        if n == 0:
            send(upload, channel, FILE)
            backend.handovers[-1].deferred.callback(DONE)
        elif n == 1:
            send(upload, channel, FILE[:KiB])
            upload.cancel(channel, "changed my mind")
        else:
            send(upload, channel, FILE)
            backend.handovers[-1].deferred.errback(HandoverFailed("backend on fire"))
        ended.append(upload)
    assert [u.state for u in ended] == ["finished", "cancelled", "cancelled"]
    space = registry._services.space
    assert space.promised(clock.seconds()) == 0
    assert not any(u in space._holders for u in ended)


def test_a_fingerprint_client_that_never_answers_its_sample_is_cut_off(tmp_path):
    clock = Clock()
    registry, _, _ = registry_with(tmp_path, clock)
    upload = fired(registry.create("http://backend.example/h", "pw", True))
    first = FakeChannel()
    upload.connect(first, len(FILE), "f.bin", fingerprint=True)
    send(upload, first, FILE[: 2 * KiB])
    upload.pause(first)
    silent = FakeChannel()
    upload.connect(silent, len(FILE), "f.bin", fingerprint=True)
    assert silent.of("sample") == [("sample", 0, 2 * KiB)]
    clock.advance(19)
    assert silent.failures == []
    clock.advance(1)
    assert silent.failures == [(ErrorCode.PROTOCOL, "no MsgAck with the Sample within 20 s")]


class Holder:
    def __init__(self, length, received=0, progress_at=0.0):
        self.length, self.received, self.progress_at = length, received, progress_at


def test_promises_count_what_is_still_to_come_when_the_room_is_tight():
    from incoming.space import STALLED_SECONDS, SpacePromises

    space = SpacePromises()
    a, b, c = Holder(10 * KiB), Holder(20 * KiB), Holder(5 * KiB)
    for holder in (a, b, c):
        space.hold(holder)
    assert space.fits(100 * KiB, 60 * KiB, 1.0) == (True, 35 * KiB)  # beside all rests
    a.received = 10 * KiB  # a's bytes landed: its promise is kept no more
    assert space.fits(40 * KiB, 15 * KiB, 1.0) == (True, 25 * KiB)
    assert space.fits(40 * KiB, 16 * KiB, 1.0) == (False, 25 * KiB)
    assert space.fits(40 * KiB, 16 * KiB, 1.0, besides=c) == (True, 20 * KiB)
    c.progress_at = -STALLED_SECONDS  # stalled: it holds no room
    assert space.fits(40 * KiB, 20 * KiB, 1.0) == (True, 20 * KiB)
    space.release(b)
    space.release(b)  # twice: no harm
    assert space.fits(30 * KiB, 15 * KiB, 1.0) == (True, 15 * KiB)  # beside a's and c's rests
    assert space.fits(20 * KiB, 15 * KiB, 1.0) == (True, 0)  # counted: neither holds any
    assert space.promised(1.0) == 0


def test_a_promise_grows_when_less_was_stored_than_recorded():
    from incoming.space import SpacePromises

    space = SpacePromises()
    a = Holder(10 * KiB, received=8 * KiB)
    space.hold(a)
    assert space.fits(5 * KiB, 3 * KiB, 1.0) == (True, 2 * KiB)
    a.received = 2 * KiB  # the file held less than its record said
    space.hold(a)
    assert space.fits(10 * KiB, 3 * KiB, 1.0) == (False, 8 * KiB)
    space.release(a)
    assert space.fits(3 * KiB, 3 * KiB, 1.0) == (True, 0)
