"""The reactor's clock is the wall clock; when it jumps forward (an NTP
step, a VM resumed), the timers that cancel or fail uploads must not fire
early: idle timeout, finish_upload (confirm) timeout, handover timeout.
Two fake clocks: the wall (the reactor's) and the elapsed (monotonic) one."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from fakes import create, embedded_registry
from incoming.config import Settings
from incoming.handover import WAIT, BackendClient, HandoverFailed
from test_upload_machine import FakeBackend, FakeChannel

IDLE, CONFIRM, HANDOVER = 1000.0, 100.0, 50.0


class Clocks:
    def __init__(self):
        self.wall, self.elapsed = Clock(), Clock()

    def jump(self, seconds):
        """The wall clock alone moves (and the reactor runs what is due)."""
        self.wall.advance(seconds)

    def advance(self, seconds):
        """Time really passes."""
        self.elapsed.advance(seconds)
        self.wall.advance(seconds)


def build(tmp_path):
    clocks, backend = Clocks(), FakeBackend()
    settings = Settings(storage_dir=str(tmp_path), chunk_size_kb=1, idle_timeout=IDLE,
                        handover_confirm_timeout=CONFIRM, handover_timeout=HANDOVER)
    registry = embedded_registry(settings, backend, clocks.wall,
                                 monotonic=clocks.elapsed.seconds)
    return registry, backend, clocks


def test_a_wall_clock_jump_does_not_idle_out_an_upload(tmp_path):
    registry, backend, clocks = build(tmp_path)
    upload = create(registry)
    clocks.jump(IDLE * 10)
    assert upload.state == "created"
    clocks.advance(IDLE - 1)
    assert upload.state == "created"
    clocks.advance(2)  # now it really was idle that long
    assert upload.state == "cancelled" and "idle" in upload.cancel_reason


def test_a_wall_clock_jump_does_not_fail_a_handover_waiting_for_finish(tmp_path):
    registry, backend, clocks = build(tmp_path)
    upload = create(registry)
    channel = FakeChannel()
    upload.connect(channel, 10, "f.bin")
    upload.receive(channel, b"0123456789")
    backend.handovers[0].deferred.callback(WAIT)
    clocks.jump(CONFIRM * 10)
    assert upload.state == "waiting_for_finish"
    clocks.advance(CONFIRM + 1)
    assert upload.state == "cancelled"
    assert "finish_upload" in upload.cancel_reason


def test_a_wall_clock_jump_does_not_time_out_the_handover_post():
    clocks = Clocks()
    answers: list = []

    class Hanging:
        def post(self, url, data, allow_redirects=True):
            return Deferred()  # the backend takes its time

    client = BackendClient(Hanging(), clocks.wall, HANDOVER, monotonic=clocks.elapsed.seconds)

    from incoming.upload import Ticket

    ticket = Ticket("t", "http://backend.example/h", "s")
    client.hand_over(ticket, "/f", "f.bin", None).addBoth(answers.append)
    clocks.jump(HANDOVER * 10)
    assert answers == []
    clocks.advance(HANDOVER + 1)
    (failure,) = answers
    assert failure.check(HandoverFailed)
    assert "did not answer the handover within 50 s" in str(failure.value)
