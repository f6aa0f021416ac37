"""The record log: every upload record a line in ``.incoming.tickets``
(incoming.ticket_log), each change a new line, the last one winning, as the
file state store keeps them across restarts and crashes."""

from __future__ import annotations

import os

import attr
import pytest
from twisted.logger import formatEvent, globalLogPublisher

from fakes import fired
from incoming.file_state import FileStateStore
from incoming.ids import new_ticket_id
from incoming.records import UploadRecord
from incoming.storage_pool import run_here
from incoming.ticket_log import CORRUPT_NAME, TICKETS_NAME

URL = "http://backend.example/api/backend/hand_over_upload"


def a_record(**fields) -> UploadRecord:
    values = dict(id=new_ticket_id(), signal_finish_url=URL, backend_secret="s3cret",
                  touched_at=1_700_000_000.5)
    values.update(fields)
    return UploadRecord(**values)


def restarted(folder) -> tuple[FileStateStore, dict]:
    store = FileStateStore(str(folder), run_here)
    return store, {r.id: r for r in fired(store.all())}


def test_a_thousand_unused_tickets_cost_one_small_file(tmp_path):
    store = FileStateStore(str(tmp_path), run_here)
    created = [fired(store.create(a_record())) for _ in range(1000)]
    assert os.listdir(tmp_path) == [TICKETS_NAME]
    size = os.path.getsize(tmp_path / TICKETS_NAME)
    assert size / 1000 < 320, f"{size / 1000:.0f} bytes per ticket"
    _, records = restarted(tmp_path)
    assert records == {r.id: r for r in created}  # every field, the secret included


def lines(folder) -> int:
    return (folder / TICKETS_NAME).read_bytes().count(b"\n")


@pytest.mark.parametrize("opened", [False, True], ids=["before-start", "after-start"])
def test_each_change_is_a_line_and_the_last_one_wins(tmp_path, opened):
    store = restarted(tmp_path)[0] if opened else FileStateStore(str(tmp_path), run_here)
    stored = fired(store.create(a_record()))
    changed = fired(store.update(attr.evolve(stored, state="uploading", length=5), 1))
    ended = fired(store.update(attr.evolve(changed, state="finished", ended_at=9.0), 2))
    assert os.listdir(tmp_path) == [TICKETS_NAME]  # no file of its own, no new inode
    assert lines(tmp_path) == 3
    _, records = restarted(tmp_path)
    assert records == {stored.id: ended}
    assert lines(tmp_path) == 1  # the older versions were rewritten away


def test_records_of_an_earlier_version_are_taken_into_the_log(tmp_path):
    """<id>.json files, as versions before the record log wrote them."""
    old = attr.evolve(a_record(state="uploading", length=7), version=3)
    (tmp_path / f"{old.id}.json").write_bytes(old.to_json())
    ticket = attr.evolve(a_record(), version=1)
    store = FileStateStore(str(tmp_path), run_here)
    fired(store.create(ticket))
    again, records = restarted(tmp_path)
    assert records == {old.id: old, ticket.id: ticket}
    assert os.listdir(tmp_path) == [TICKETS_NAME]
    fired(again.update(attr.evolve(old, state="paused"), 3))
    _, records = restarted(tmp_path)
    assert records[old.id].state == "paused" and records[old.id].version == 4


def test_a_deleted_ticket_does_not_come_back_after_a_restart(tmp_path):
    store = FileStateStore(str(tmp_path), run_here)
    kept = fired(store.create(a_record()))
    gone = fired(store.create(a_record()))
    ended = fired(store.create(a_record()))
    fired(store.delete(gone.id))
    fired(store.update(attr.evolve(ended, state="cancelled", ended_at=5.0), 1))
    fired(store.delete(ended.id))
    again, records = restarted(tmp_path)
    assert list(records) == [kept.id]
    assert fired(again.get(gone.id)) is None
    assert fired(again.get(kept.id)) == kept


@pytest.mark.parametrize("opened", [False, True], ids=["before-start", "after-start"])
def test_dead_lines_are_rewritten_away_while_running(tmp_path, opened):
    store = restarted(tmp_path)[0] if opened else FileStateStore(str(tmp_path), run_here)
    records = [fired(store.create(a_record())) for _ in range(3000)]
    full = os.path.getsize(tmp_path / TICKETS_NAME)
    for record in records[:2500]:
        fired(store.delete(record.id))
    assert os.path.getsize(tmp_path / TICKETS_NAME) < full / 2
    later = fired(store.create(a_record()))  # into the rewritten file
    _, restored = restarted(tmp_path)
    assert sorted(restored) == sorted([r.id for r in records[2500:]] + [later.id])


def test_a_torn_last_line_is_dropped_and_later_tickets_are_whole(tmp_path):
    store = FileStateStore(str(tmp_path), run_here)
    whole = fired(store.create(a_record()))
    with open(tmp_path / TICKETS_NAME, "ab") as f:
        f.write(b'{"id":"' + new_ticket_id().encode() + b'","signal_fin')  # a crash here
    again, records = restarted(tmp_path)
    assert list(records) == [whole.id]
    later = fired(again.create(a_record()))
    _, records = restarted(tmp_path)
    assert sorted(records) == sorted([whole.id, later.id])


def test_a_corrupt_line_is_kept_aside_and_reported_and_the_rest_restored(tmp_path):
    store = FileStateStore(str(tmp_path), run_here)
    before = fired(store.create(a_record()))
    with open(tmp_path / TICKETS_NAME, "ab") as f:
        f.write(b'{"id": "not-a-ticket", "length": "10"}\n')
    after = fired(store.create(a_record()))
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        _, records = restarted(tmp_path)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert sorted(records) == sorted([before.id, after.id])
    assert (tmp_path / CORRUPT_NAME).read_bytes() == b'{"id": "not-a-ticket", "length": "10"}\n'
    (line,) = [formatEvent(e) for e in events if "corrupt" in formatEvent(e)]
    assert "line 2" in line and CORRUPT_NAME in line


def test_a_corrupt_record_file_is_not_replaced_by_its_older_line(tmp_path):
    """An earlier version's record file, left empty by a power loss."""
    store = FileStateStore(str(tmp_path), run_here)
    stored = fired(store.create(a_record()))
    (tmp_path / f"{stored.id}.json").write_bytes(b"")
    _, records = restarted(tmp_path)
    assert records == {}  # not restored as a fresh ticket: its file is reported instead
    assert (tmp_path / f"{stored.id}.json.corrupt").exists()


def test_a_delete_whose_tombstone_cannot_be_written_leaves_the_record_whole(tmp_path,
                                                                           monkeypatch):
    import incoming.file_state as file_state
    from incoming.interfaces import StoreError

    store = FileStateStore(str(tmp_path), run_here)
    stored = fired(store.create(a_record()))
    ended = fired(store.update(attr.evolve(stored, state="finished", ended_at=9.0), 1))

    def full(*args):
        raise StoreError("cannot write the ticket log: No space left on device")

    monkeypatch.setattr(file_state, "append_lines", full)
    with pytest.raises(StoreError):
        fired(store.delete(stored.id))
    _, records = restarted(tmp_path)
    assert records == {stored.id: ended}  # the tombstone, never the old ticket


@pytest.mark.parametrize("opened", [False, True], ids=["before-start", "after-start"])
def test_an_append_cut_short_by_a_full_disk_leaves_no_half_line(tmp_path, monkeypatch, opened):
    import errno

    import incoming.ticket_log as ticket_log
    from incoming.interfaces import NoSpace

    store = restarted(tmp_path)[0] if opened else FileStateStore(str(tmp_path), run_here)
    before = fired(store.create(a_record()))
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ticket_log.os, "write", half_then_full)
    with pytest.raises(NoSpace):
        fired(store.create(a_record()))
    with pytest.raises(NoSpace):
        fired(store.update(attr.evolve(before, state="uploading", length=3), 1))
    monkeypatch.setattr(ticket_log.os, "write", real_write)
    after = fired(store.create(a_record()))
    assert (tmp_path / TICKETS_NAME).read_bytes().endswith(b"\n")
    _, records = restarted(tmp_path)
    assert sorted(records) == sorted([before.id, after.id])
    assert records[before.id] == before  # the failed change is not there, half or whole


def test_a_log_that_cannot_be_rewritten_at_start_does_not_stop_it(tmp_path, monkeypatch):
    import incoming.file_state as file_state
    from incoming.interfaces import StoreError

    store = FileStateStore(str(tmp_path), run_here)
    kept = fired(store.create(a_record()))
    gone = fired(store.create(a_record()))
    fired(store.delete(gone.id))
    with open(tmp_path / TICKETS_NAME, "ab") as f:
        f.write(b'{"id":"torn')  # and a crash mid-line

    def full(*args):
        raise StoreError("cannot rewrite the ticket log: No space left on device")

    monkeypatch.setattr(file_state, "rewrite_log", full)
    again, records = restarted(tmp_path)  # a full disk at start
    assert list(records) == [kept.id]
    later = fired(again.create(a_record()))  # on a line of its own
    monkeypatch.undo()
    _, records = restarted(tmp_path)
    assert sorted(records) == sorted([kept.id, later.id])


def test_a_rewrite_that_fails_after_its_rename_loses_no_later_line(tmp_path, monkeypatch):
    """The rewritten log is in place, then the folder's sync fails (EIO):
    what comes after must go into the file the log's name now holds."""
    import errno

    import incoming.ticket_log as ticket_log

    store, _ = restarted(tmp_path)
    records = [fired(store.create(a_record())) for _ in range(1200)]

    def broken(folder):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ticket_log, "sync_folder", broken)
    for record in records[:1100]:
        fired(store.delete(record.id))  # compaction, which fails after its rename
    monkeypatch.undo()
    later = fired(store.create(a_record()))
    changed = fired(store.update(attr.evolve(records[-1], state="uploading", length=3), 1))
    fired(store.delete(records[1100].id))
    _, restored = restarted(tmp_path)
    assert sorted(restored) == sorted([r.id for r in records[1101:]] + [later.id])
    assert restored[changed.id] == changed
