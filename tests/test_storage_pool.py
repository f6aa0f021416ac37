"""The storage pool: every call runs in a storage thread and its result or
failure reaches its caller on the reactor thread; no more threads than
asked for; stopping waits for the calls already asked for."""

import threading
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from incoming.storage_pool import StoragePool


@pytest.fixture
def pool():
    pool = StoragePool(reactor, threads=3, name="test-storage")
    pool.startService()
    yield pool
    pool.stop_now()


def within(d, seconds=5):
    """A result that never comes fails the test instead of hanging it."""
    return d.addTimeout(seconds, reactor)


def names_alive(prefix="test-storage-"):
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


@pytest_twisted.ensureDeferred
async def test_results_and_failures_reach_their_callers_on_the_reactor_thread(pool):
    main = threading.current_thread()
    seen = []

    def work(i):
        seen.append(threading.current_thread())
        if i % 7 == 0:
            raise ValueError(f"no {i}")
        return i * i

    calls = [pool.run(work, i) for i in range(500)]
    outcomes = await defer.DeferredList(calls, consumeErrors=True)
    for i, (ok, value) in enumerate(outcomes):
        if i % 7 == 0:
            assert not ok and value.check(ValueError) and str(value.value) == f"no {i}"
        else:
            assert ok and value == i * i
    assert main not in seen and len(seen) == 500
    assert threading.current_thread() is main


@pytest_twisted.ensureDeferred
async def test_no_more_threads_than_asked_for(pool):
    running, most = [0], [0]
    lock = threading.Lock()

    def slow():
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)  # a storage thread, not the reactor's
        with lock:
            running[0] -= 1

    await defer.gatherResults([pool.run(slow) for _ in range(12)])
    assert most[0] == 3
    assert len(names_alive()) == 3


@pytest_twisted.ensureDeferred
async def test_stopping_waits_for_what_was_asked_and_the_threads_go():
    pool = StoragePool(reactor, threads=2, name="stopping-storage")
    pool.startService()
    done = []

    def slow(i):
        time.sleep(0.01)
        done.append(i)
        return i

    results = [pool.run(slow, i) for i in range(20)]
    await pool.stopService()
    assert sorted(done) == list(range(20))
    assert [r.result for r in results] == list(range(20))
    for _ in range(100):
        if not names_alive("stopping-storage-"):
            break
        time.sleep(0.01)
    assert names_alive("stopping-storage-") == []
    # work asked for after the stop still runs (a late rename is not lost)
    assert await pool.run(lambda: "late") == "late"
    await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_a_stopped_pool_with_nothing_to_do_stops_at_once():
    pool = StoragePool(reactor, threads=2, name="idle-storage")
    pool.startService()
    stopped = pool.stopService()
    assert stopped.called
    await stopped


@pytest_twisted.ensureDeferred
async def test_two_calls_at_once_with_one_idle_thread_run_side_by_side(pool):
    await pool.run(lambda: None)  # one thread started,
    await task.deferLater(reactor, 0.1, lambda: None)  # and waiting for work
    both = threading.Barrier(2, timeout=2)  # each waits for the other
    await within(defer.gatherResults([pool.run(both.wait), pool.run(both.wait)]))


@pytest_twisted.ensureDeferred
async def test_starting_again_while_still_stopping_is_refused():
    pool = StoragePool(reactor, threads=1, name="restart-storage")
    pool.startService()
    go = threading.Event()
    pool.run(go.wait, 2)
    stopping = pool.stopService()
    with pytest.raises(RuntimeError, match="still stopping"):
        pool.startService()
    go.set()
    await within(stopping)
