"""
One server per storage folder: a lock file held for the process's life.

Two servers on the same folder would both restore the same records and
append to the same files.  The lock is an ``flock`` on ``.incoming.lock`` in
the folder (released by the kernel when the process ends, kill -9 too), so
a second server refuses to start and says which folder and which process.
"""

from __future__ import annotations

import fcntl
import os

LOCK_NAME = ".incoming.lock"


class FolderInUse(Exception):
    """Another process holds the folder; str() says which."""


def lock_folder(folder: str) -> int:
    """Take the folder's lock (blocking file calls: at start only); return
    the descriptor, which must stay open as long as the server runs."""
    path = os.path.join(folder, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "another process"
        os.close(fd)
        raise FolderInUse(
            f"{os.path.abspath(folder)} is in use by another Incoming!! server (pid {holder})"
        ) from None
    write_pid(fd)
    return fd


def write_pid(fd: int) -> None:
    """Put this process's pid in the lock file: again once twistd has forked
    (a daemon's pid differs from the one that took the lock)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
