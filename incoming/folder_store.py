"""
The data store of the embedded default: one file per upload in the storage
folder.

A file is named after its ticket id (never after the browser's file name)
and carries a ``.part`` suffix until every byte has arrived, so a reader of
the folder never mistakes a half-written file for a finished one.  The
server only ever deletes files it created itself, and never wipes the
folder.

Chunk writes are positioned writes to the page cache, done on the reactor
thread (a thread hop costs more than the write), and given back to it
behind the writer (`incoming.drop_behind`); everything that can stall
(open, fsync, rename, unlink, close, statvfs, reads for a checksum) runs
through ``run_blocking``; the caller makes one upload's calls one at a
time (`IUploadData`).
"""

from __future__ import annotations

import errno
import os
import time

from twisted.internet.defer import fail, succeed
from zope.interface import implementer

from .drop_behind import DropBehind
from .folder_lock import LOCK_NAME
from .fsops import pwrite_all, remove_quietly, storage_error, sync_folder
from .interfaces import (
    DataGone,
    IDataReader,
    IDataStore,
    IFreeSpace,
    IInventory,
    IRemoveAfterHandover,
    IUploadData,
    NoSpace,
    StoreError,
    WrongOffset,
)

PART_SUFFIX = ".part"
SERVER_FILES_PREFIX = ".incoming."
READ_BLOCK = 1 << 20
# How old a free-space measurement free_bytes(recent=True) may answer from.
RECENT_SECONDS = 1.0


@implementer(IDataStore, IFreeSpace, IRemoveAfterHandover, IInventory)
class FolderStore:
    """The storage folder."""

    def __init__(self, folder: str, run_blocking, monotonic=time.monotonic, shared=False):
        """``shared``: other servers write into the folder too, so a recent
        measurement would miss their writes: every free_bytes measures."""
        self.folder = os.path.abspath(folder)
        self._run = run_blocking
        self._monotonic = monotonic
        self._recent_seconds = 0.0 if shared else RECENT_SECONDS
        self._written = 0  # bytes written through this store, ever
        self._measured: tuple[float, int, int] | None = None  # (when, free, _written then)

    def prepare(self) -> None:
        """Create the folder if missing; leave whatever is in it alone (blocking)."""
        os.makedirs(self.folder, exist_ok=True)

    def location(self, upload_id: str) -> str:
        return os.path.join(self.folder, upload_id)

    def _part(self, upload_id: str) -> str:
        return self.location(upload_id) + PART_SUFFIX

    def create(self, upload_id: str, length: int | None = None):
        path = self._part(upload_id)

        def blocking():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            except OSError as e:
                raise storage_error(e, f"cannot create {path}") from None
            return FolderUpload(self, upload_id, fd, 0)

        return self._run(blocking)

    def reopen(self, upload_id: str, length: int | None = None):
        path = self._part(upload_id)

        def blocking():
            try:
                fd = os.open(path, os.O_WRONLY)
            except FileNotFoundError:
                raise DataGone(f"cannot reopen {path}: the file is gone") from None
            except OSError as e:
                raise StoreError(f"cannot reopen {path}: {e.strerror}") from None
            return FolderUpload(self, upload_id, fd, os.fstat(fd).st_size)

        return self._run(blocking)

    def held(self, upload_id: str, length: int | None):
        """A complete file may already carry its final name; a .part file
        longer than the announced length is trimmed to it."""
        part, final = self._part(upload_id), self.location(upload_id)

        def blocking():
            try:
                size = os.path.getsize(part)
            except FileNotFoundError:
                try:
                    return os.path.getsize(final), True
                except FileNotFoundError:
                    return None
            if length is not None and size > length:
                os.truncate(part, length)
                size = length
            return size, False

        return self._run(blocking)

    def seal_existing(self, upload_id: str, durable: bool):
        part, final = self._part(upload_id), self.location(upload_id)

        def blocking():
            if os.path.exists(part):
                _seal(upload_id, part, final, None, durable)
            elif not os.path.exists(final):
                raise DataGone(f"the file of upload {upload_id} is gone")
            return final

        return self._run(blocking)

    def open_reader(self, upload_id: str):
        part, final = self._part(upload_id), self.location(upload_id)

        def blocking():
            for path in (final, part):
                try:
                    return FolderReader(open(path, "rb"), self._run)  # noqa: SIM115
                except FileNotFoundError:
                    continue
            raise DataGone(f"the file of upload {upload_id} is gone")

        return self._run(blocking)

    def discard(self, upload_id: str):
        def blocking():
            for path in (self._part(upload_id), self.location(upload_id)):
                remove_quietly(path)

        return self._run(blocking)

    def remove(self, location: str):
        return self._run(remove_quietly, location)

    def free_bytes(self, recent: bool = False):
        measured = self._measured
        if recent and measured is not None:
            when, free, written = measured
            if self._monotonic() - when < self._recent_seconds:
                return succeed(max(0, free - (self._written - written)))
        written_before = self._written

        def blocking():
            stats = os.statvfs(self.folder)
            return stats.f_bavail * stats.f_frsize

        def keep(free):
            self._measured = (self._monotonic(), free, written_before)
            return free

        return self._run(blocking).addCallback(keep)

    def wrote(self, count: int) -> None:
        """Bytes an upload's write stored (counted against a recent measurement)."""
        self._written += count

    def unclaimed(self, known_ids):
        known = set(known_ids)

        def blocking():
            names = sorted(os.listdir(self.folder))
            return [n for n in names if n.split(".", 1)[0] not in known and not _ours(n)]

        return self._run(blocking)


@implementer(IUploadData)
class FolderUpload:
    """An open .part file."""

    def __init__(self, store: FolderStore, upload_id: str, fd: int, size: int):
        self._store = store
        self.upload_id = upload_id
        self._fd: int | None = fd
        self.size = size
        self._named_durably = False
        # the page cache behind the writer is given back as the file grows
        self._behind = DropBehind(store._run, f"upload {upload_id}", size)

    def write_at(self, offset: int, data):
        if offset != self.size:
            return fail(WrongOffset(f"write at {offset}, but {self.size} bytes are stored"))
        if self._fd is None:
            return fail(StoreError(f"upload {self.upload_id} is not open for writing"))
        start = offset
        offset, e = pwrite_all(self._fd, data, offset)
        if e is not None:
            self.size = offset  # what the writes that went through stored
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                return self._cut_back(start, e)
            return fail(StoreError(f"cannot write upload {self.upload_id}: {e.strerror}"))
        self._store.wrote(offset - start)
        self.size = offset
        self._behind.wrote(self._fd, offset)
        return succeed(offset)

    def _cut_back(self, start: int, error: OSError):
        """A full disk: drop the part of the chunk that went through, so that
        what is stored ends at a chunk the browser was (or will be) told of."""
        fd = self._fd

        def blocking():
            why = f"cannot write upload {self.upload_id}: {error.strerror}"
            try:
                if fd is not None:
                    os.ftruncate(fd, start)
            except OSError as e:
                raise StoreError(f"{why}, nor cut the torn chunk back: {e.strerror}") from None
            self.size = start
            raise NoSpace(why)

        return self._blocking(blocking)

    def _blocking(self, f, *args):
        return self._store._run(f, *args)

    def _closing(self, f, *args):
        """Run ``f``, which closes the descriptor, once no advice uses it."""
        return self._behind.settled().addCallback(lambda _: self._blocking(f, *args))

    def sync(self):
        fd = self._fd
        if fd is None:
            return succeed(None)
        if self._named_durably:
            return self._blocking(_fsync, self.upload_id, fd)
        self._named_durably = True  # the first sync makes the file's name durable too

        def blocking():
            _fsync(self.upload_id, fd)
            _sync_folder(self.upload_id, self._store.folder)

        return self._blocking(blocking)

    def read_tail(self, size: int):
        part, end = self._store._part(self.upload_id), self.size

        def blocking():
            try:
                with open(part, "rb") as f:
                    f.seek(max(0, end - size))
                    return f.read(min(size, end))
            except OSError as e:
                raise StoreError(f"cannot read upload {self.upload_id}: {e.strerror}") from None

        return self._blocking(blocking)

    def finish(self, durable: bool):
        fd, self._fd = self._fd, None
        part, final = self._store._part(self.upload_id), self._store.location(self.upload_id)
        return self._closing(_seal, self.upload_id, part, final, fd, durable).addCallback(
            lambda _: final
        )

    def close(self):
        fd, self._fd = self._fd, None
        return self._closing(_close, fd)

    def terminate(self):
        fd, self._fd = self._fd, None
        part = self._store._part(self.upload_id)

        def blocking():
            _close(fd)
            remove_quietly(part)

        return self._closing(blocking)


@implementer(IDataReader)
class FolderReader:
    """A file opened for reading; reads run through run_blocking."""

    def __init__(self, file, run_blocking):
        self._file = file
        self._run = run_blocking

    def read(self, size: int = READ_BLOCK):
        return self._run(self._file.read, size)

    def close(self):
        return self._run(self._file.close)


def _ours(name: str) -> bool:
    """The server's own files in the folder: its lock and its ticket log."""
    return name == LOCK_NAME or name.startswith(SERVER_FILES_PREFIX)


def _fsync(upload_id: str, fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as e:
        raise StoreError(f"cannot sync upload {upload_id}: {e.strerror}") from None


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _seal(upload_id: str, part: str, final: str, fd: int | None, durable: bool) -> None:
    """Make the bytes durable if asked, close, rename to the final name and,
    if durable, sync the folder so that the rename survives a power loss."""
    try:
        if durable:
            if fd is None:
                fd = os.open(part, os.O_WRONLY)
            os.fsync(fd)
    except OSError as e:
        _close(fd)
        raise StoreError(f"cannot sync upload {upload_id}: {e.strerror}") from None
    _close(fd)
    try:
        os.rename(part, final)
    except OSError as e:
        raise StoreError(f"cannot complete upload {upload_id}: {e.strerror}") from None
    if durable:  # the new name too, before the handover names it
        _sync_folder(upload_id, os.path.dirname(final))


def _sync_folder(upload_id: str, folder: str) -> None:
    try:
        sync_folder(folder)
    except OSError as e:
        raise StoreError(f"cannot sync the folder of upload {upload_id}: {e.strerror}") from None
