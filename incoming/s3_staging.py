"""
The bytes of an S3 upload that are not in a part yet, staged on local disk
so that an acknowledged chunk survives a restart of this server.

Each upload has a folder ``<staging>/<id>/`` with one file per part to be,
named after the offset it starts at (``0``, ``16777216``, ...), and
``lead-<offset>``: the last `SAMPLE_BYTES` before the first staged file,
kept when a part is sent, so that a resuming browser's sample can still be
checked (an unfinished multipart upload cannot be read back from S3).

Every function here blocks: run them in a storage thread.
"""

from __future__ import annotations

import os
import shutil

from .fsops import remove_quietly, sync_folder
from .wire import SAMPLE_BYTES

LEAD = "lead-"
MULTIPART = "multipart"  # the id of the upload's multipart upload, once begun


class Staging:
    """The staging folder (``.incoming.s3`` in the storage folder by default)."""

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)

    def prepare(self) -> None:
        os.makedirs(self.folder, exist_ok=True)

    def upload_folder(self, upload_id: str) -> str:
        return os.path.join(self.folder, upload_id)

    def segment(self, upload_id: str, start: int) -> str:
        return os.path.join(self.folder, upload_id, str(start))

    def make(self, upload_id: str) -> None:
        """A new upload's folder; FileExistsError if it has one."""
        os.mkdir(self.upload_folder(upload_id))

    def sync_names(self, upload_id: str) -> None:
        """Make the upload's folder and its files' names durable."""
        sync_folder(self.upload_folder(upload_id))
        sync_folder(self.folder)

    def chain(self, upload_id: str, start: int, length: int | None) -> list[tuple[int, int]] | None:
        """The staged files that continue from ``start``, as (offset, size);
        files before ``start`` (sent already) or after a gap are removed,
        bytes past ``length`` dropped.  None if the upload has no folder."""
        folder = self.upload_folder(upload_id)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return None
        offsets = sorted(int(n) for n in names if n.isdigit())
        chain: list[tuple[int, int]] = []
        end = start
        for offset in offsets:
            path = os.path.join(folder, str(offset))
            size = os.path.getsize(path)
            if offset != end or (length is not None and offset > length):
                remove_quietly(path)
                continue
            if length is not None and offset + size > length:
                os.truncate(path, length - offset)
                size = length - offset
            chain.append((offset, size))
            end = offset + size
        for name in names:  # leads of other offsets are stale
            if name.startswith(LEAD) and name != f"{LEAD}{start}":
                remove_quietly(os.path.join(folder, name))
        return chain

    def keep_multipart(self, upload_id: str, multipart: str) -> None:
        """Note which multipart upload is this upload's (a retried start can
        make two; the other is aborted)."""
        path = os.path.join(self.upload_folder(upload_id), MULTIPART)
        with open(path + ".new", "w", encoding="ascii") as f:
            f.write(multipart)
        os.replace(path + ".new", path)

    def multipart(self, upload_id: str) -> str | None:
        path = os.path.join(self.upload_folder(upload_id), MULTIPART)
        try:
            with open(path, encoding="ascii") as f:
                return f.read().strip() or None
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def keep_lead(self, upload_id: str, start: int, size: int) -> None:
        """The file at ``start`` went into a part: keep its last bytes as the
        lead of what follows, then remove it."""
        folder = self.upload_folder(upload_id)
        path = self.segment(upload_id, start)
        end = start + size
        try:
            with open(path, "rb") as f:
                f.seek(max(0, size - SAMPLE_BYTES))
                tail = f.read()
        except FileNotFoundError:
            return
        lead = os.path.join(folder, f"{LEAD}{end}")
        with open(lead + ".new", "wb") as f:
            f.write(tail)
        os.replace(lead + ".new", lead)
        remove_quietly(path)
        for name in os.listdir(folder):
            if name.startswith(LEAD) and name != f"{LEAD}{end}":
                remove_quietly(os.path.join(folder, name))

    def tail(self, upload_id: str, segments: list[tuple[int, int]], end: int, size: int) -> bytes:
        """The last ``size`` bytes before ``end`` that are at hand: from the
        staged files, then the lead (fewer if not all are)."""
        pieces: list[bytes] = []
        want = size
        first = end
        for offset, length in reversed(segments):
            if want <= 0:
                break
            take = min(want, length)
            try:
                with open(self.segment(upload_id, offset), "rb") as f:
                    f.seek(length - take)
                    pieces.append(f.read(take))
            except FileNotFoundError:  # sent meanwhile: its lead follows
                break
            first = offset
            want -= take
        if want > 0:
            try:
                with open(os.path.join(self.upload_folder(upload_id), f"{LEAD}{first}"), "rb") as f:
                    lead = f.read()
                pieces.append(lead[-want:] if want < len(lead) else lead)
            except FileNotFoundError:
                pass
        return b"".join(reversed(pieces))

    def read(self, upload_id: str, segments: list[tuple[int, int]]) -> bytes:
        """All the staged bytes (a small unsent upload read back)."""
        return b"".join(_read(self.segment(upload_id, offset)) for offset, _ in segments)

    def remove(self, upload_id: str) -> bool:
        """Remove the upload's staged bytes; True if it had any."""
        folder = self.upload_folder(upload_id)
        existed = os.path.isdir(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return existed

    def ids(self) -> list[str]:
        """The uploads with a staging folder."""
        try:
            return sorted(os.listdir(self.folder))
        except FileNotFoundError:
            return []


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
