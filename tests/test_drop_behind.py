"""The page cache behind an upload is given back as it grows
(incoming/drop_behind.py): the steps it asks the kernel to drop, one call
at a time and never after the file is closed, and, on the real kernel, the
start of a big upload's file no longer cached while its end still is."""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import tempfile

import pytest

from twisted.internet.defer import Deferred

from fakes import fired
from incoming.drop_behind import STEP, DropBehind
from incoming.folder_store import FolderStore
from incoming.ids import new_ticket_id
from incoming.storage_pool import run_here

MIB = 1024 * 1024
PAGE = mmap.PAGESIZE


def resident_pages(path, start: int, length: int) -> int:
    """How many pages of [start, start + length) of the file are in the page cache."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
        assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        pages = ctypes.create_string_buffer(length // PAGE)
        try:
            assert libc.mincore(address, length, pages) == 0, ctypes.get_errno()
        finally:
            libc.munmap(address, length)
    finally:
        os.close(fd)
    return sum(b & 1 for b in pages.raw)


class Calls:
    """A run_blocking that holds each call until the test lets it run."""

    def __init__(self):
        self.asked: list[tuple] = []
        self._waiting: list[tuple] = []

    def run(self, f, *args):
        self.asked.append(args)
        d = Deferred()
        self._waiting.append((d, f, args))
        return d

    def finish_one(self):
        d, f, args = self._waiting.pop(0)
        try:
            result = f(*args)
        except Exception:
            d.errback()  # as a thread's failure reaches the reactor
        else:
            d.callback(result)


def test_each_new_step_is_asked_about_with_the_step_before_it():
    calls = Calls()
    behind = DropBehind(calls.run, "upload X", advise=lambda *args: None)
    for size in (STEP - 1, STEP):
        behind.wrote(7, size)
    assert calls.asked == [(7, 0, STEP)]
    calls.finish_one()
    behind.wrote(7, 2 * STEP + 5)
    assert calls.asked[-1] == (7, 0, 2 * STEP)
    calls.finish_one()
    behind.wrote(7, 3 * STEP)
    assert calls.asked[-1] == (7, 0, 3 * STEP)
    calls.finish_one()
    behind.wrote(7, 4 * STEP)
    assert calls.asked[-1] == (7, STEP, 3 * STEP)  # steps 2 and 3 again, step 4 new


def test_one_call_at_a_time_and_the_next_covers_what_was_skipped():
    calls = Calls()
    behind = DropBehind(calls.run, "upload X", advise=lambda *args: None)
    behind.wrote(3, STEP)
    behind.wrote(3, 2 * STEP)  # the first call still runs: nothing more asked
    behind.wrote(3, 3 * STEP)
    assert calls.asked == [(3, 0, STEP)]
    calls.finish_one()
    behind.wrote(3, 3 * STEP + 1)
    assert calls.asked == [(3, 0, STEP), (3, 0, 3 * STEP)]


def test_a_reopened_file_starts_from_what_it_holds():
    calls = Calls()
    behind = DropBehind(calls.run, "upload X", size=5 * STEP + 3, advise=lambda *args: None)
    behind.wrote(4, 5 * STEP + 10)
    assert calls.asked == []
    behind.wrote(4, 6 * STEP)
    assert calls.asked == [(4, 3 * STEP, 3 * STEP)]


def test_settled_waits_for_the_call_running_and_a_failing_call_is_not_passed_on():
    calls = Calls()

    def refuses(fd, offset, length):
        raise RuntimeError("no advice today")

    behind = DropBehind(calls.run, "upload X", advise=refuses)
    assert fired(behind.settled()) is None
    behind.wrote(3, STEP)
    settled = behind.settled()
    assert not settled.called
    calls.finish_one()
    assert fired(settled) is None
    assert fired(behind.settled()) is None


def test_the_file_is_closed_only_after_the_advice_that_uses_its_descriptor(tmp_path):
    held: list[Deferred] = []
    closed: list[int] = []

    def run_blocking(f, *args):
        if f.__name__ == "advise_dropped":
            d = Deferred()
            held.append(d)
            d.addCallback(lambda _: f(*args))
            return d
        return run_here(f, *args)

    store = FolderStore(str(tmp_path), run_blocking)
    store.prepare()
    upload_id = new_ticket_id()
    data = fired(store.create(upload_id))
    fired(data.write_at(0, b"x" * STEP))
    assert len(held) == 1
    real_close = os.close

    def watch_close(fd):
        closed.append(fd)
        real_close(fd)

    os.close = watch_close
    try:
        finishing = data.finish(False)
        assert closed == [] and not finishing.called
        held[0].callback(None)
        assert fired(finishing).endswith(upload_id)
        assert len(closed) == 1
    finally:
        os.close = real_close


@pytest.fixture
def on_disk():
    """A folder on the disk the checkout is on (a tmpfs tmp_path would
    ignore the advice: its pages cannot be dropped)."""
    folder = tempfile.mkdtemp(prefix=".drop-behind-", dir=os.path.dirname(os.path.abspath(__file__)))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_big_file_has_its_start_dropped_and_its_end_cached(on_disk):
    """On the real kernel: once a step is written back, the next step's
    advice drops it; the bytes past the last step stay cached."""
    store = FolderStore(on_disk, run_here)
    store.prepare()
    upload_id = new_ticket_id()
    data = fired(store.create(upload_id))
    block = os.urandom(MIB)
    for offset in range(0, 2 * STEP, MIB):
        fired(data.write_at(offset, block))
        if offset + MIB == STEP:
            fired(data.sync())  # the first step is on disk, clean: droppable
    for offset in range(2 * STEP, 3 * STEP + MIB, MIB):
        fired(data.write_at(offset, block))
    part = os.path.join(on_disk, f"{upload_id}.part")
    assert resident_pages(part, 0, STEP) == 0
    assert resident_pages(part, 3 * STEP, MIB) == MIB // PAGE  # asked about by no call
    location = fired(data.finish(True))
    with open(location, "rb") as f:
        f.seek(STEP - MIB)
        assert f.read(MIB) == block  # dropped from the cache, not from the file
