"""/health's storage-folder check: asked off the reactor thread, one
question at a time, and a folder that does not answer (a hung network
mount) is reported within FOLDER_CHECK_SECONDS instead of hanging /health."""

from __future__ import annotations

from twisted.internet import task
from twisted.internet.defer import Deferred

from fakes import fired
from incoming.health import FOLDER_CHECK_SECONDS, FolderCheck
from incoming.storage_pool import run_here


class HungStorage:
    """run_blocking whose work never comes back until told to."""

    def __init__(self):
        self.asked: list[Deferred] = []

    def __call__(self, f, *args):
        d = Deferred()
        self.asked.append(d)
        return d


def test_a_writable_folder_is_no_problem_and_a_missing_one_is(tmp_path):
    assert fired(FolderCheck(str(tmp_path), run_here, task.Clock())()) is None
    missing = FolderCheck(str(tmp_path / "gone"), run_here, task.Clock())
    assert fired(missing()) == "storage folder is not writable"


def test_a_folder_that_does_not_answer_is_reported_in_time_and_asked_once(tmp_path):
    clock, storage = task.Clock(), HungStorage()
    check = FolderCheck(str(tmp_path), storage, clock)
    first, second = check(), check()
    assert len(storage.asked) == 1  # one question in flight, however often asked
    results: list = []
    first.addCallback(results.append)
    second.addCallback(results.append)
    clock.advance(FOLDER_CHECK_SECONDS - 0.1)
    assert results == []
    clock.advance(0.1)
    expected = f"storage folder does not answer within {FOLDER_CHECK_SECONDS:g} s"
    assert results == [expected, expected]
    third = check()  # still hung: the same question, not a new thread's worth
    assert len(storage.asked) == 1
    storage.asked[0].callback(None)  # the mount came back
    assert fired(third) is None
    later = check()  # asked afresh
    assert len(storage.asked) == 2
    storage.asked[1].callback("storage folder is not writable")
    assert fired(later) == "storage folder is not writable"
