"""
Where uploaded bytes live: one file per ticket in the storage folder.

A file is named after its ticket id (never after the browser's file name)
and carries a ``.part`` suffix until every byte has arrived, so a reader of
the folder never mistakes a half-written file for a finished one.  The
server only ever deletes files it created itself, and never wipes the
folder.
"""

from __future__ import annotations

import hashlib
import os

PART_SUFFIX = ".part"


class StorageError(Exception):
    """The file system refused a write, rename or open."""


class Storage:
    """The storage folder."""

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)

    def prepare(self) -> None:
        """Create the folder if missing; leave whatever is in it alone."""
        os.makedirs(self.folder, exist_ok=True)

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer may still use in the folder."""
        stats = os.statvfs(self.folder)
        return stats.f_bavail * stats.f_frsize

    def final_path(self, upload_id: str) -> str:
        return os.path.join(self.folder, upload_id)

    def part_path(self, upload_id: str) -> str:
        return self.final_path(upload_id) + PART_SUFFIX

    def create(self, upload_id: str) -> PartFile:
        """A new, empty .part file; refuses to reuse an existing name."""
        path = self.part_path(upload_id)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        except OSError as e:
            raise StorageError(f"cannot create {path}: {e.strerror}") from None
        return PartFile(self, upload_id, fd, 0)

    def reopen(self, upload_id: str) -> PartFile:
        """Reopen our .part file to append; its size is what is on disk."""
        path = self.part_path(upload_id)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise StorageError(f"cannot reopen {path}: {e.strerror}") from None
        return PartFile(self, upload_id, fd, os.fstat(fd).st_size)

    def stored_size(self, upload_id: str, length: int) -> int | None:
        """After a restart: how many bytes of the upload are on disk, or
        None if there is no file at all (never written, or taken away).

        A complete file may already carry its final name.  A .part file
        longer than the announced length is trimmed to it.
        """
        final = self.final_path(upload_id)
        part = self.part_path(upload_id)
        if not os.path.exists(part) and os.path.exists(final):
            return os.path.getsize(final)
        try:
            size = os.path.getsize(part)
        except FileNotFoundError:
            return None
        if size > length:
            os.truncate(part, length)
            size = length
        return size

    def complete_existing(self, upload_id: str, sync: bool) -> str:
        """Give a complete file that is not open its final name."""
        part = self.part_path(upload_id)
        final = self.final_path(upload_id)
        if os.path.exists(part):
            file = self.reopen(upload_id)
            return file.complete(sync=sync)
        if not os.path.exists(final):
            raise StorageError(f"the file of upload {upload_id} is gone")
        return final


class PartFile:
    """An open .part file that chunks are appended to."""

    def __init__(self, storage: Storage, upload_id: str, fd: int, size: int):
        self._storage = storage
        self._id = upload_id
        self._fd: int | None = fd
        self.size = size

    def append(self, data) -> None:
        """Write all of ``data`` (bytes-like) at the end of the file."""
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self.size += written
        except OSError as e:
            raise StorageError(f"cannot write upload {self._id}: {e.strerror}") from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def sync(self) -> None:
        os.fsync(self._fd)

    def complete(self, sync: bool = False) -> str:
        """Close and rename to the final name; return that path.

        With ``sync``, the data reach the disk before the rename (may take
        seconds for a large file: run it in a worker thread).
        """
        if sync:
            os.fsync(self._fd)
        self.close()
        final = self._storage.final_path(self._id)
        try:
            os.rename(self._storage.part_path(self._id), final)
        except OSError as e:
            raise StorageError(f"cannot complete upload {self._id}: {e.strerror}") from None
        return final


def remove_quietly(path: str) -> bool:
    """Delete a file we created; True if it was there."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def sha256_of_file(path: str) -> str:
    """Hex sha256 of a whole file (blocking: run it in a worker thread)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
