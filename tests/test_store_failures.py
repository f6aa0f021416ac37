"""
Failure injection: every store call of an upload's life fails once, in
turn; wherever it happens, the upload ends in a defined state (finished or
cancelled, never stuck half-way), the browser and the backend are told,
no open-upload slot is lost, and nothing is left under a final name that
the backend did not take.

The stores are the embedded ones, doing their work at once, wrapped so that
call number N fails with a StoreError.  A clean run of each scenario lists
the calls; the test is parametrised over them.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from twisted.internet.defer import fail
from twisted.internet.task import Clock

from zope.interface import directlyProvides, providedBy

from fakes import fired, stored_records
from incoming.config import Settings
from incoming.embedded import embedded_stores
from incoming.registry import UploadRegistry
from incoming.storage_pool import run_here
from incoming.handover import DONE, WAIT
from incoming.interfaces import StoreComposer, StoreError, StoreUnavailable
from incoming.upload import TooLate
from incoming.wire import ErrorCode
from test_upload_machine import FakeBackend, FakeChannel, data_of

CHUNK = 1024
FILE = data_of(5 * CHUNK + 17)


class Injector:
    """Counts store calls; the one numbered ``fail_at`` fails."""

    def __init__(self, fail_at: int | None = None):
        self.fail_at = fail_at
        self.calls: list[str] = []

    def wrap(self, target, prefix: str):
        return Flaky(target, prefix, self)


class Flaky:
    """A store (or an upload's data, or a reader) whose calls may fail."""

    def __init__(self, target, prefix, injector):
        self._target, self._prefix, self._injector = target, prefix, injector
        directlyProvides(self, *providedBy(target))  # the same optional capabilities

    def __getattr__(self, name):
        value = getattr(self._target, name)
        if not callable(value) or name in ("location", "prepare"):
            return value

        def call(*args, **kwargs):
            injector = self._injector
            injector.calls.append(f"{self._prefix}.{name}")
            if len(injector.calls) - 1 == injector.fail_at:
                return fail(StoreError(f"injected failure of {self._prefix}.{name}"))
            result = value(*args, **kwargs)
            if name in ("create", "reopen", "open_reader") and self._prefix == "data":
                return result.addCallback(
                    lambda r: self._injector.wrap(r, "upload" if name != "open_reader" else "reader")
                )
            return result

        return call


def build(tmp_path, injector, **overrides):
    settings = Settings(**{"storage_dir": str(tmp_path / "storage"), "chunk_size_kb": 1,
                           "idle_timeout": 1000.0, "handover_confirm_timeout": 100.0,
                           **overrides})
    backend, clock = FakeBackend(), Clock()
    real = embedded_stores(settings, run_here)
    real.data.prepare()
    flaky = StoreComposer(data=injector.wrap(real.data, "data"),
                          state=injector.wrap(real.state, "state"),
                          locker=real.locker, bus=real.bus)
    return UploadRegistry(settings, flaky, backend, clock), backend, clock, settings


def send(upload, channel, data):
    for start in range(0, len(data), CHUNK):
        upload.receive(channel, data[start:start + CHUNK])


def wait_then_finish(tmp_path, injector):
    """Upload with a pause in the middle, answer wait, then finish_upload."""
    registry, backend, clock, settings = build(tmp_path, injector)
    upload = fired(registry.create("http://backend.example/h", "pw", False))
    channels = [FakeChannel()]
    upload.connect(channels[0], len(FILE), "f.bin")
    send(upload, channels[0], FILE[: 2 * CHUNK])
    upload.pause(channels[0])
    channels.append(FakeChannel())
    upload.connect(channels[1], len(FILE), "f.bin")
    send(upload, channels[1], FILE[2 * CHUNK:])
    if backend.handovers:
        backend.handovers[0].deferred.callback(WAIT)
        try:
            upload.finish()
        except TooLate:
            pass
    clock.advance(200)  # any timer that is due
    return registry, upload, backend, channels, settings


def done_then_remove(tmp_path, injector):
    """Upload in one go, answer done; the file is removed after the handover."""
    registry, backend, clock, settings = build(tmp_path, injector, fsync="chunk")
    upload = fired(registry.create("http://backend.example/h", "pw", True))
    channels = [FakeChannel()]
    upload.connect(channels[0], len(FILE), "f.bin")
    send(upload, channels[0], FILE)
    if backend.handovers:
        backend.handovers[0].deferred.callback(DONE)
    clock.advance(200)
    return registry, upload, backend, channels, settings


def cancelled_by_the_backend(tmp_path, injector):
    registry, backend, clock, settings = build(tmp_path, injector)
    upload = fired(registry.create("http://backend.example/h", "pw", True))
    channels = [FakeChannel()]
    upload.connect(channels[0], len(FILE), "f.bin")
    send(upload, channels[0], FILE[:CHUNK])
    try:
        upload.cancel("cancelled by the backend")
    except TooLate:
        pass
    clock.advance(200)
    return registry, upload, backend, channels, settings


def restored_then_handed_over(tmp_path, injector):
    """A complete file whose handover was not answered when the server died;
    the restarted server restores it, seals it, hashes it from the store and
    hands it over again; a paused upload beside it idles out."""
    first, backend, clock, settings = build(tmp_path, Injector())
    upload = fired(first.create("http://backend.example/h", "pw", False))
    upload.connect(FakeChannel(), len(FILE), "f.bin")
    send(upload, upload.channel, FILE)  # the handover hangs: the server dies
    idle = fired(first.create("http://backend.example/h", "pw", True))
    idle.connect(FakeChannel(), len(FILE), "g.bin")
    send(idle, idle.channel, FILE[:CHUNK])
    idle.disconnect(idle.channel)

    registry, backend, clock, settings = build(tmp_path, injector)
    fired(registry.restore())
    upload = registry.get(upload.ticket.id)
    channels = [FakeChannel()]
    clock.advance(0)  # the handover again
    if upload is not None:
        upload.connect(channels[0], len(FILE), "f.bin")
        if backend.handovers:
            backend.handovers[0].deferred.callback(DONE)
    clock.advance(1001)  # the paused one idles out
    return registry, upload, backend, channels, settings


SCENARIOS = {f.__name__: f for f in (wait_then_finish, done_then_remove, cancelled_by_the_backend,
                                     restored_then_handed_over)}


def clean_calls(name, tmp_path_factory):
    injector = Injector()
    SCENARIOS[name](tmp_path_factory.mktemp(name), injector)
    return injector.calls


def cases():
    import tempfile
    from pathlib import Path

    for name, scenario in SCENARIOS.items():
        with tempfile.TemporaryDirectory() as folder:
            injector = Injector()
            scenario(Path(folder), injector)
        for index, call in enumerate(injector.calls):
            yield pytest.param(name, index, call, id=f"{name}-{index}-{call}")


@pytest.mark.parametrize("scenario, fail_at, failed", list(cases()))
def test_one_failing_store_call_ends_in_a_defined_state(scenario, fail_at, failed, tmp_path):
    injector = Injector(fail_at)
    if failed in ("state.create", "state.all"):
        # new_upload fails (no ticket, nothing open), or the restore does
        # (the server stops with the error: tap.UploadServer); nothing is lost
        with pytest.raises(StoreError):
            SCENARIOS[scenario](tmp_path, injector)
        return
    registry, upload, backend, channels, settings = SCENARIOS[scenario](tmp_path, injector)
    if upload is None:  # this one could not be restored: kept for the next start
        assert scenario == "restored_then_handed_over"
        folder = settings.storage_dir
        assert stored_records(folder)  # its record
        assert any(not n.startswith(".incoming.") for n in os.listdir(folder))  # its file
        return
    assert injector.calls[fail_at] == failed  # the same life as the clean run, up to there
    said = [call for channel in channels for call in channel.calls]

    assert upload.state in ("finished", "cancelled"), (failed, upload.state)
    assert registry.open_count() == 0
    final = os.path.join(settings.storage_dir, upload.ticket.id)
    if upload.state == "cancelled":
        (cancel,) = [c for c in backend.cancels if c[0] == upload.ticket.id]
        told = [c for c in said if c[0] in ("fail", "cancelled", "cancel_acked")]
        if scenario != "cancelled_by_the_backend" or "cancelled" not in [c[0] for c in told]:
            # told at once if connected, else when it reconnects
            assert any(
                c[:2] == ("fail", ErrorCode.SERVER_ERROR)
                or (c[:2] == ("fail", ErrorCode.CANCELLED) and "injected failure" in c[2])
                for c in told
            ), (failed, said)
            assert "injected failure" in cancel[2]
        if upload._offered_before:
            # handed over before the restart: the backend may hold it, it stays
            assert upload._keep_file, failed
        elif not failed.endswith((".terminate", ".discard")):
            assert not os.path.exists(final), failed  # nothing under the final name
    else:
        assert [c for c in backend.cancels if c[0] == upload.ticket.id] == []
        assert [h.ticket.id for h in backend.handovers] == [upload.ticket.id]
        assert ("finish_ok",) in said
    # the machine did not break: a later connection is answered, not crashed
    late = FakeChannel()
    upload.connect(late, len(FILE), "f.bin")
    assert late.calls, failed


def test_new_upload_answers_503_when_the_record_cannot_be_stored(tmp_path):
    from twisted.web.test.requesthelper import DummyRequest

    from incoming.backend_api import backend_api

    registry, backend, clock, settings = build(tmp_path, Injector(fail_at=0))
    request = DummyRequest([b""])
    request.method = b"POST"
    request.args = {b"signalFinishURL": [b"http://backend.example/h"]}
    body = backend_api(registry, settings).children[b"new_upload"].render(request)
    assert request.responseCode == 503, body
    assert body.startswith(b"cannot store the upload: injected failure of state.create")
    assert len(registry) == 0 and registry.open_count() == 0


class Unavailable(Injector):
    """The named calls fail with StoreUnavailable, ``times`` times each."""

    def __init__(self, names, times):
        super().__init__()
        self.left = {name: times for name in names}

    def wrap(self, target, prefix: str):
        return UnavailableFor(target, prefix, self)


class UnavailableFor(Flaky):
    def __getattr__(self, name):
        call = super().__getattr__(name)
        key = f"{self._prefix}.{name}"
        if not callable(call) or self._injector.left.get(key, 0) <= 0:
            return call

        def unavailable(*args, **kwargs):
            self._injector.left[key] -= 1
            return fail(StoreUnavailable(f"the store does not answer ({key})"))

        return unavailable


def sealing_unavailable(tmp_path, times, idle_timeout=1000.0):
    """Every byte is stored, then sealing the data meets a store that does
    not answer: ``times`` times for the open data, as many for sealing it
    again (the retries)."""
    injector = Unavailable(["upload.finish", "data.seal_existing"], times)
    registry, backend, clock, settings = build(tmp_path, injector, idle_timeout=idle_timeout)
    upload = fired(registry.create("http://backend.example/h", "pw", False))
    channel = FakeChannel()
    upload.connect(channel, len(FILE), "f.bin")
    send(upload, channel, FILE)
    return upload, backend, clock, channel


def test_sealing_in_a_store_that_does_not_answer_is_tried_again_later(tmp_path):
    upload, backend, clock, channel = sealing_unavailable(tmp_path, times=1)
    assert upload.state == "handing_over" and backend.handovers == []
    assert [c for c in channel.calls if c[0] == "fail"] == []  # it waits, as for a slow backend
    clock.advance(1)  # 1 s: still away
    assert upload.state == "handing_over" and backend.handovers == []
    clock.advance(2)  # 2 s more: sealed, handed over with the sha256 of what came
    (handover,) = backend.handovers
    assert handover.sha256 == hashlib.sha256(FILE).hexdigest()
    handover.deferred.callback(DONE)
    assert upload.state == "finished" and ("finish_ok",) in channel.calls


def test_a_store_that_stays_away_longer_than_the_idle_timeout_cancels(tmp_path):
    upload, backend, clock, channel = sealing_unavailable(tmp_path, times=100, idle_timeout=10.0)
    clock.advance(1 + 2 + 4)
    assert upload.state == "handing_over"
    clock.advance(8)  # the next retry would end after the idle timeout
    assert upload.state == "cancelled" and backend.handovers == []
    assert [c[1] for c in channel.calls if c[0] == "fail"] == [ErrorCode.SERVER_ERROR]


def test_an_upload_let_go_while_its_sealing_waits_never_seals_nor_hands_over(tmp_path):
    """Another server takes it (quiesce): the retry this one had set is off."""
    upload, backend, clock, channel = sealing_unavailable(tmp_path, times=1)
    fired(upload.quiesce())
    clock.advance(100)
    assert backend.handovers == [] and upload.state == "handing_over"


def test_a_store_that_holds_less_than_the_file_after_a_restart_is_never_handed_over(tmp_path):
    """Its handover was under way at a crash; after the restart the store
    holds fewer bytes than the file had (lost behind our back): cancelled,
    the backend is told of a cancellation, never handed a short file."""
    first, backend, clock, settings = build(tmp_path, Injector())
    upload = fired(first.create("http://backend.example/h", "pw", False))
    upload.connect(FakeChannel(), len(FILE), "f.bin")
    send(upload, upload.channel, FILE)  # the handover hangs: the server dies
    assert len(backend.handovers) == 1
    stored = tmp_path / "storage" / upload.ticket.id
    stored.write_bytes(FILE[: len(FILE) // 2])
    registry, backend, clock, settings = build(tmp_path, Injector())
    fired(registry.restore())
    clock.advance(0)  # the handover again
    again = registry.get(upload.ticket.id)
    assert backend.handovers == []
    assert again.state == "cancelled"
    assert "holds" in again.cancel_reason and str(len(FILE)) in again.cancel_reason
