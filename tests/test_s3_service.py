"""The S3 store's guard: /health asks the bucket at most every 10 s (a
load balancer asks every few seconds; HeadBucket is a billed request), and
says what is wrong when it does not answer."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from fakes import fired
from incoming.interfaces import StoreUnavailable
from incoming.s3_client import S3Target
from incoming.s3_service import HEALTH_SECONDS, S3Guard


class Store:
    target = S3Target(bucket="uploads", endpoint="http://rgw.example:7480")

    def __init__(self):
        self.checks = 0
        self.down = False

    def check(self):
        self.checks += 1
        if self.down:
            raise StoreUnavailable("cannot use the bucket: the object store does not answer")


class Pool:
    """Runs at once, or holds the work until release() with ``hold``."""

    def __init__(self):
        self.hold = False
        self.held: list = []

    def run(self, f, *args):
        d = Deferred()
        if self.hold:
            self.held.append((f, d))
        else:
            self._do(f, d)
        return d

    @staticmethod
    def _do(f, d):
        try:
            d.callback(f())
        except Exception as e:
            d.errback(e)

    def release(self):
        held, self.held = self.held, []
        for f, d in held:
            self._do(f, d)


def test_health_asks_the_bucket_at_most_every_ten_seconds_and_names_the_trouble():
    now = [100.0]
    store, pool = Store(), Pool()
    guard = S3Guard(store, pool, monotonic=lambda: now[0])
    assert fired(guard.health()) is None and store.checks == 1
    now[0] += HEALTH_SECONDS - 0.1
    store.down = True
    assert fired(guard.health()) is None and store.checks == 1  # the recent answer
    now[0] += 0.2
    problem = fired(guard.health())
    assert store.checks == 2
    assert problem.startswith("S3 bucket 'uploads' at http://rgw.example:7480: ")
    assert "does not answer" in problem


def test_callers_during_a_check_share_its_answer():
    store, pool = Store(), Pool()
    guard = S3Guard(store, pool, monotonic=lambda: 0.0)
    pool.hold = True
    first, second = guard.health(), guard.health()
    assert not first.called and not second.called and len(pool.held) == 1
    pool.release()
    assert fired(first) is None and fired(second) is None and store.checks == 1
