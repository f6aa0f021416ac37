"""Small blocking file-system helpers shared by the folder stores (run them
in a storage thread)."""

from __future__ import annotations

import errno
import os

from .interfaces import NoSpace, StoreError


def storage_error(error: OSError, what: str) -> StoreError:
    """``what: <strerror>`` as a StoreError; NoSpace for a full disk or quota."""
    kind = NoSpace if error.errno in (errno.ENOSPC, errno.EDQUOT) else StoreError
    return kind(f"{what}: {error.strerror}")


def pwrite_all(fd: int, data, offset: int) -> tuple[int, OSError | None]:
    """Write all of ``data`` at ``offset`` (a positioned write to the page
    cache: cheap enough for the reactor thread); return the offset reached
    and the error that stopped the writes short, if one did."""
    view = memoryview(data)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
    except OSError as e:
        return offset, e
    return offset, None


def remove_quietly(path: str) -> bool:
    """Delete a file we created; True if it was there."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def sync_folder(folder: str) -> None:
    """fsync a folder, so that a rename or a new file in it survives a power
    loss (the file's own fsync does not cover its name)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
