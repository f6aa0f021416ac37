"""What reaches the disk, and in which order (README "Durability"): a file's
bytes, then its rename, then the folder, so that a power loss after the
handover began cannot take the file's final name; records likewise at
--fsync chunk.  Traced at the system calls."""

from __future__ import annotations

import os
import stat

import attr
import pytest

from fakes import fired, open_files
from incoming.file_state import FileStateStore
from incoming.folder_store import FolderStore
from incoming.interfaces import StoreError
from incoming.ids import new_ticket_id
from incoming.records import UploadRecord
from incoming.storage_pool import run_here


@pytest.fixture
def disk(monkeypatch):
    """The fsyncs and renames the server makes, in order, by base name."""
    trace: list[tuple] = []
    real = {name: getattr(os, name) for name in ("fsync", "rename", "replace")}

    def fsync(fd):
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        trace.append(("fsync", kind, os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real["fsync"](fd)

    def renamer(name):
        def rename(src, dst):
            trace.append((name, os.path.basename(src), os.path.basename(dst)))
            real[name](src, dst)

        return rename

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", renamer("rename"))
    monkeypatch.setattr(os, "replace", renamer("replace"))
    return trace


def stored_file(tmp_path):
    store = FolderStore(str(tmp_path / "storage"), run_here)
    store.prepare()
    upload_id = new_ticket_id()
    data = fired(store.create(upload_id))
    fired(data.write_at(0, b"all the bytes"))
    return store, upload_id, data


def test_a_durable_seal_syncs_the_bytes_then_the_name(tmp_path, disk):
    store, upload_id, data = stored_file(tmp_path)
    fired(data.finish(True))
    assert disk == [
        ("fsync", "file", f"{upload_id}.part"),
        ("rename", f"{upload_id}.part", upload_id),
        ("fsync", "folder", "storage"),
    ]


def test_fsync_none_forces_nothing(tmp_path, disk):
    store, upload_id, data = stored_file(tmp_path)
    fired(data.finish(False))
    assert disk == [("rename", f"{upload_id}.part", upload_id)]


def test_chunk_syncs_make_the_new_files_name_durable_once(tmp_path, disk):
    store, upload_id, data = stored_file(tmp_path)
    fired(data.sync())
    fired(data.write_at(13, b" and more"))
    fired(data.sync())
    assert disk == [
        ("fsync", "file", f"{upload_id}.part"),
        ("fsync", "folder", "storage"),
        ("fsync", "file", f"{upload_id}.part"),
    ]


def a_record() -> UploadRecord:
    return UploadRecord(id=new_ticket_id(), signal_finish_url="http://backend.example/h")


def test_durable_records_sync_the_record_then_the_folder(tmp_path, disk):
    store = FileStateStore(str(tmp_path), run_here, durable=True)
    first = fired(store.create(a_record()))
    fired(store.create(a_record()))
    assert disk == [
        ("fsync", "file", ".incoming.tickets"),
        ("fsync", "folder", tmp_path.name),  # the log is new: its name too
        ("fsync", "file", ".incoming.tickets"),
    ]
    del disk[:]
    fired(store.update(attr.evolve(first, state="uploading", length=5), 1))
    assert disk == [("fsync", "file", ".incoming.tickets")]  # a change is a line too


def test_records_that_need_not_be_durable_are_only_appended(tmp_path, disk):
    store = FileStateStore(str(tmp_path), run_here)
    first = fired(store.create(a_record()))
    fired(store.update(attr.evolve(first, state="uploading", length=5), 1))
    fired(store.delete(first.id))
    assert disk == []
    assert (tmp_path / ".incoming.tickets").read_bytes().count(b"\n") == 3


@pytest.fixture
def failing_disk(monkeypatch):
    """os.fsync of a regular file fails with EIO (a disk that gives up)."""
    import errno

    real = os.fsync

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def descriptors_of(path) -> list[str]:
    """This process's file descriptors open on `path`."""
    return [name for name in open_files(os.getpid()) if name == str(path)]


def test_an_fsync_error_at_the_seal_closes_the_file_and_names_nothing(tmp_path, failing_disk):
    store, upload_id, data = stored_file(tmp_path)
    part = tmp_path / "storage" / f"{upload_id}.part"
    assert descriptors_of(part)
    with pytest.raises(StoreError, match="cannot sync upload"):
        fired(data.finish(True))
    assert descriptors_of(part) == []  # closed: a deleted .part would keep no space
    assert not (tmp_path / "storage" / upload_id).exists()  # no final name
    assert part.read_bytes() == b"all the bytes"


def test_an_fsync_error_on_a_chunk_is_a_store_error_and_the_file_can_be_let_go(tmp_path,
                                                                           failing_disk):
    store, upload_id, data = stored_file(tmp_path)
    part = tmp_path / "storage" / f"{upload_id}.part"
    with pytest.raises(StoreError, match="cannot sync upload"):  # not a raw OSError
        fired(data.sync())
    fired(data.terminate())  # the upload is cancelled
    assert descriptors_of(part) == [] and not part.exists()
