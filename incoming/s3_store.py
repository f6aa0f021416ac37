"""
The data store of ``destType=s3``: each upload becomes one object in an
S3 bucket (AWS S3, Ceph RGW, any S3-compatible store), written as a
multipart upload while the browser sends it.

Chunks are staged on local disk (`incoming.s3_staging`) until a part's
worth (``--s3-part-size``, at least the 5 MiB S3 needs) is there; the part
is then sent with ``UploadPart`` while the next one fills, several at a
time per upload.  What an upload holds is the parts S3 has (a multipart
upload's parts are listed, parts 1..k without a gap) plus the staged files
that continue them, so:

- an acknowledged chunk is *staged*: it survives a restart of this server
  (durably at ``--fsync chunk``), and is in S3 once its part has been sent;
- a browser that comes back to this server (or one sharing its storage
  folder) resumes at the last staged byte; one that comes back to another
  server resumes where the parts S3 holds end, and sends the rest again.

A file smaller than one part never starts a multipart upload: it is one
``PutObject`` at the end.  The object's sha256 is put on it as the tag
``sha256`` (an object's metadata is fixed when a multipart upload starts,
before the last byte is known).  Every S3 call runs in the S3 threads;
staged chunk writes are positioned writes to the page cache on the
reactor thread, as in the folder store.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import attr
from twisted.internet.defer import Deferred, fail, gatherResults, inlineCallbacks, succeed
from twisted.logger import Logger
from zope.interface import implementer

from .fsops import pwrite_all, storage_error
from .interfaces import (
    DataGone,
    IDataReader,
    IDataStore,
    IKeepsDigest,
    IRemoveAfterHandover,
    ITidiesUnclaimed,
    IUploadData,
    StoreError,
    WrongOffset,
)
from .s3_client import S3Target, error_code, s3_error
from .s3_staging import Staging
from .shared_result import SharedResult

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
DEFAULT_PART_SIZE = 16 * MIB
MAX_PARTS = 10_000
PARTS_IN_FLIGHT = 4  # per upload; the S3 threads bound them all
READ_BLOCK = 1 << 20
DIGEST_TAG = "sha256"


@attr.s(auto_attribs=True)
class Held:
    """What the store holds of an upload that is not sealed."""

    multipart: str | None  # the multipart upload id, if one was started
    parts: list  # [(number, etag, size)], 1..k without a gap
    staged: list  # [(offset, size)] continuing the parts

    @property
    def size(self) -> int:
        return sum(p[2] for p in self.parts) + sum(s[1] for s in self.staged)


@implementer(IDataStore, IRemoveAfterHandover, IKeepsDigest, ITidiesUnclaimed)
class S3Store:
    """One bucket and key prefix; ``run_s3`` runs blocking work in the S3 threads."""

    _log = Logger()

    def __init__(
        self,
        client,
        target: S3Target,
        staging_folder: str,
        run_s3,
        part_size: int = DEFAULT_PART_SIZE,
        parts_in_flight: int = PARTS_IN_FLIGHT,
        run_local=None,
    ):
        """``run_s3`` runs S3 calls (they may take minutes); ``run_local``
        the staging folder's file work (the storage pool; default run_s3)."""
        self.client = client
        self.target = target
        self.staging = Staging(staging_folder)
        self._run = run_s3
        self.run_local = run_local or run_s3
        self.part_size = max(part_size, MIN_PART_SIZE)
        self.parts_in_flight = parts_in_flight

    # ---- plumbing ---------------------------------------------------------

    def prepare(self) -> None:
        """Create the staging folder (blocking, at start)."""
        self.staging.prepare()

    def check(self) -> None:
        """Blocking, at start: the bucket is there and ours to write."""
        try:
            self.client.head_bucket(Bucket=self.target.bucket)
        except Exception as e:
            raise s3_error(e, f"cannot use {self.target.describe()}") from None

    def call(self, what: str, f, *args, **kwargs) -> Deferred:
        """Run ``f`` in an S3 thread; its exceptions become store errors."""

        def blocking():
            try:
                return f(*args, **kwargs)
            except StoreError:
                raise
            except Exception as e:
                raise s3_error(e, what) from None

        return self._run(blocking)

    def _key(self, upload_id: str) -> str:
        return self.target.key(upload_id)

    def location(self, upload_id: str) -> str:
        return self.target.location(upload_id)

    # ---- blocking S3 steps (S3 threads) -----------------------------------

    def _head(self, key: str) -> int | None:
        try:
            return self.client.head_object(Bucket=self.target.bucket, Key=key)["ContentLength"]
        except Exception as e:
            if error_code(e) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def _multiparts(self, prefix: str, exact: bool) -> list[tuple[str, str]]:
        """(key, upload id) of the multipart uploads under ``prefix``, oldest first."""
        found = []
        pages = self.client.get_paginator("list_multipart_uploads")
        for page in pages.paginate(Bucket=self.target.bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                if not exact or upload["Key"] == prefix:
                    found.append((upload["Initiated"], upload["Key"], upload["UploadId"]))
        return [(key, upload_id) for _, key, upload_id in sorted(found)]

    def _abort(self, key: str, multipart: str) -> None:
        try:
            self.client.abort_multipart_upload(
                Bucket=self.target.bucket, Key=key, UploadId=multipart
            )
        except Exception as e:
            if error_code(e) not in ("NoSuchUpload", "NoSuchKey", "404"):
                raise

    def _listed_parts(self, key: str, multipart: str) -> dict[int, tuple[str, int]]:
        """Part number -> (etag, size) of every part S3 holds."""
        listed: dict[int, tuple[str, int]] = {}
        pages = self.client.get_paginator("list_parts")
        for page in pages.paginate(Bucket=self.target.bucket, Key=key, UploadId=multipart):
            for part in page.get("Parts", []):
                listed[part["PartNumber"]] = (part["ETag"], part["Size"])
        return listed

    def _inspect(self, upload_id: str, length: int | None) -> int | Held | None:
        """The sealed object's size, or what is held of an unsealed one, or None.

        Every part but the last has the size of part 1, so part n holds the
        bytes from (n - 1) x that size on, whichever server sent it (they
        all go on with part 1's size).  Parts are trusted from 1 up to the
        first gap or part of another size; a part after that is sent again
        over (Ceph RGW refuses to complete without every part it holds)."""
        key = self._key(upload_id)
        sealed = self._head(key)
        if sealed is not None:
            return sealed
        listings = {m: self._listed_parts(key, m) for _, m in self._multiparts(key, exact=True)}
        multipart = self.staging.multipart(upload_id)
        if multipart not in listings:  # the most parts; a retried start left an empty one
            multipart = max(reversed(list(listings)), key=lambda m: len(listings[m]), default=None)
        for extra in listings:
            if extra != multipart:
                self._abort(key, extra)
        listed = listings.get(multipart, {}) if multipart is not None else {}
        parts: list[tuple[int, str, int]] = []
        size = listed[1][1] if 1 in listed else 0
        while len(parts) + 1 in listed and listed[len(parts) + 1][1] == size:
            parts.append((len(parts) + 1, *listed[len(parts) + 1]))
        durable = sum(p[2] for p in parts)
        staged = self.staging.chain(upload_id, durable, length)
        if multipart is None and staged is None:
            return None
        return Held(multipart, parts, staged or [])

    def _put_whole(self, upload_id: str, staged: list) -> None:
        """A file smaller than a part: one PutObject of its staged bytes."""
        key = self._key(upload_id)
        if staged:
            with open(self.staging.segment(upload_id, staged[0][0]), "rb") as f:
                self.client.put_object(Bucket=self.target.bucket, Key=key, Body=f)
        else:
            self.client.put_object(Bucket=self.target.bucket, Key=key, Body=b"")

    def _start_multipart(self, upload_id: str) -> str:
        answer = self.client.create_multipart_upload(
            Bucket=self.target.bucket, Key=self._key(upload_id)
        )
        multipart = answer["UploadId"]
        self.staging.keep_multipart(upload_id, multipart)  # which one, if a retry made two
        return multipart

    def _send_part(self, upload_id: str, multipart: str, number: int, offset: int) -> str:
        with open(self.staging.segment(upload_id, offset), "rb") as f:
            answer = self.client.upload_part(
                Bucket=self.target.bucket,
                Key=self._key(upload_id),
                UploadId=multipart,
                PartNumber=number,
                Body=f,
            )
        return answer["ETag"]

    def _complete(self, upload_id: str, multipart: str, parts: list) -> None:
        self.client.complete_multipart_upload(
            Bucket=self.target.bucket,
            Key=self._key(upload_id),
            UploadId=multipart,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e, _ in parts]},
        )

    def _discard(self, upload_id: str) -> None:
        key = self._key(upload_id)
        for _, multipart in self._multiparts(key, exact=True):
            self._abort(key, multipart)
        self.client.delete_object(Bucket=self.target.bucket, Key=key)
        self.staging.remove(upload_id)

    # ---- IDataStore -------------------------------------------------------

    def part_size_for(self, length: int | None) -> int:
        """The setting, or more for a file that would need more than
        MAX_PARTS parts (whole MiB)."""
        if length is None or length <= self.part_size * MAX_PARTS:
            return self.part_size
        return -(-length // (MAX_PARTS * MIB)) * MIB

    def create(self, upload_id: str, length: int | None = None):
        def blocking():
            try:
                self.staging.make(upload_id)
            except FileExistsError:
                raise StoreError(f"upload {upload_id} has staged data already") from None
            except OSError as e:
                raise storage_error(e, f"cannot stage upload {upload_id}") from None
            return S3Upload(self, upload_id, Held(None, [], []), self.part_size_for(length))

        return self.run_local(blocking)

    def reopen(self, upload_id: str, length: int | None = None):
        def blocking():
            held = self._inspect(upload_id, None)
            if held is None:
                raise DataGone(f"upload {upload_id} holds nothing in {self.target.describe()}")
            if not isinstance(held, Held):
                raise DataGone(f"upload {upload_id} is complete already")
            os.makedirs(self.staging.upload_folder(upload_id), exist_ok=True)
            return held

        d = self.call(f"cannot reopen upload {upload_id}", blocking)
        return d.addCallback(self._reopened, upload_id, length)

    def _reopened(self, held: Held, upload_id: str, length: int | None):
        upload = S3Upload(self, upload_id, held, self.part_size_for(length))
        return upload.resume().addCallback(lambda _: upload)

    def held(self, upload_id: str, length: int | None):
        def blocking():
            found = self._inspect(upload_id, length)
            if found is None:
                return None
            if isinstance(found, Held):
                return found.size, False
            return found, True

        return self.call(f"cannot look at upload {upload_id}", blocking)

    def seal_existing(self, upload_id: str, durable: bool):
        def sealed_or_reopen(found):
            if found is None:
                raise DataGone(f"the data of upload {upload_id} is gone")
            if found[1]:  # completed before a restart: only its staging may be left
                d = self.run_local(self.staging.remove, upload_id)
                return d.addCallback(lambda _: self.location(upload_id))
            return self.reopen(upload_id).addCallback(lambda data: data.finish(durable))

        return self.held(upload_id, None).addCallback(sealed_or_reopen)

    def open_reader(self, upload_id: str):
        key = self._key(upload_id)

        def blocking():
            found = self._inspect(upload_id, None)
            if found is None:
                raise DataGone(f"the data of upload {upload_id} is gone")
            if isinstance(found, Held):
                if found.parts:
                    raise StoreError(
                        f"upload {upload_id} is an unfinished multipart upload: S3 cannot "
                        "read it back before it is complete"
                    )
                return _BytesReader(self.staging.read(upload_id, found.staged))
            body = self.client.get_object(Bucket=self.target.bucket, Key=key)["Body"]
            return S3Reader(self, body, upload_id)

        return self.call(f"cannot read upload {upload_id}", blocking)

    def discard(self, upload_id: str):
        return self.call(f"cannot delete upload {upload_id}", self._discard, upload_id)

    # ---- capabilities -----------------------------------------------------

    def remove(self, location: str):
        key = self.target.key_of_location(location)
        if key is None:
            return fail(StoreError(f"{location} is not in {self.target.describe()}"))

        def blocking():
            there = self._head(key) is not None
            if there:
                self.client.delete_object(Bucket=self.target.bucket, Key=key)
            return there

        return self.call(f"cannot remove {location}", blocking)

    def keep_digest(self, upload_id: str, sha256: str):
        return self.call(
            f"cannot tag upload {upload_id} with its sha256",
            self.client.put_object_tagging,
            Bucket=self.target.bucket,
            Key=self._key(upload_id),
            Tagging={"TagSet": [{"Key": DIGEST_TAG, "Value": sha256}]},
        )

    @inlineCallbacks
    def tidy_unclaimed(self, open_ids):
        """Abort the multipart uploads and remove the staged bytes of every
        upload under the prefix that is not open."""
        prefix = self.target.prefix
        multiparts = yield self.call(
            "cannot list multipart uploads", self._multiparts, prefix, False
        )
        staged = yield self.run_local(self.staging.ids)
        known = set((yield open_ids()))
        removed = []
        for key, multipart in multiparts:
            if key[len(prefix) :] in known:
                continue
            yield self.call(
                f"cannot abort the multipart upload of {key}", self._abort, key, multipart
            )
            removed.append(f"multipart upload {multipart} of s3://{self.target.bucket}/{key}")
        for upload_id in staged:
            if upload_id not in known:
                yield self.run_local(self.staging.remove, upload_id)
                removed.append(f"staged bytes of upload {upload_id}")
        return removed


@attr.s(auto_attribs=True, eq=False)
class _Segment:
    """A staged file: a part to be."""

    offset: int
    size: int
    fd: int | None = None
    number: int = 0  # its part number, once sent
    etag: str | None = None
    sent: Deferred | None = None  # fires (never fails) when its UploadPart has ended


@implementer(IUploadData)
class S3Upload:
    """One upload being written: parts sent, and staged files (the last one filling)."""

    _log = Logger()

    def __init__(self, store: S3Store, upload_id: str, held: Held, part_size: int = 0):
        """``part_size``: for a multipart upload whose first part is not
        sent yet (else part 1's size is kept); 0: the store's."""
        self._store = store
        self.upload_id = upload_id
        self._multipart: str | None = held.multipart  # its id, once started
        self._starting: SharedResult | None = None  # the start of the multipart upload
        self._parts = list(held.parts)  # sent: (number, etag, size), in order
        # Every part but the last is this long: part 1's, else a full staged
        # file's (made before a restart), else as asked.
        staged = held.staged
        self.part_size = part_size or store.part_size
        if held.parts:
            self.part_size = held.parts[0][2]
        elif len(staged) > 1 or (staged and staged[0][1] >= self.part_size):
            self.part_size = staged[0][1]
        self._segments = [_Segment(offset, size) for offset, size in held.staged]
        self.size = held.size
        self._failure: Any = None  # a part that could not be sent: every call fails
        self._room: Deferred | None = None  # a write waiting for a part to be sent
        self._tidying: Deferred = succeed(None)  # staged files retired, in order
        self._synced = False  # sync() was asked for: sealed files are synced too
        self._new_names = True  # staged files made since the last sync (and the folder)

    # ---- sending ----------------------------------------------------------

    def resume(self) -> Deferred:
        """After a reopen: send the full staged files again, and open the
        last one to go on filling it."""
        if not self._segments:
            return succeed(None)
        last = self._segments[-1]
        for segment in self._segments[:-1]:
            self._send(segment)
        if last.size >= self.part_size:
            self._send(last)
            return succeed(None)
        path = self._store.staging.segment(self.upload_id, last.offset)

        def opened(fd):
            last.fd = fd

        return self._store.run_local(os.open, path, os.O_WRONLY).addCallback(opened)

    def _in_flight(self) -> int:
        return sum(1 for s in self._segments if s.sent is not None and s.etag is None)

    def _multipart_id(self) -> Deferred:
        """Fire with the multipart upload's id, starting it the first time."""
        if self._multipart is not None:
            return succeed(self._multipart)
        if self._starting is None:
            d = self._store.call(
                f"cannot start the multipart upload of {self.upload_id}",
                self._store._start_multipart,
                self.upload_id,
            )
            self._starting = SharedResult(d.addCallback(self._multipart_started))
        return self._starting.get()

    def _multipart_started(self, multipart: str) -> str:
        self._multipart = multipart
        return multipart

    def _send(self, segment: _Segment) -> None:
        """Seal a staged file and send it as the next part."""
        number = segment.number = segment.offset // self.part_size + 1
        if number > MAX_PARTS:
            why = f"upload {self.upload_id} needs more than {MAX_PARTS} parts: raise --s3-part-size"
            self._fail(StoreError(why))
            return
        fd, segment.fd = segment.fd, None
        store, durable = self._store, self._synced

        def close():
            if fd is not None:
                if durable:
                    os.fsync(fd)
                os.close(fd)

        d = store.run_local(close).addCallback(lambda _: self._multipart_id())
        d.addCallback(
            lambda multipart: store.call(
                f"cannot send part {number} of upload {self.upload_id}",
                store._send_part,
                self.upload_id,
                multipart,
                number,
                segment.offset,
            )
        )
        segment.sent = d.addCallbacks(
            self._part_sent, self._part_failed, callbackArgs=(segment,), errbackArgs=(segment,)
        )

    def _part_sent(self, etag: str, segment: _Segment) -> None:
        segment.etag = etag
        while self._segments and self._segments[0].etag is not None:
            done = self._segments.pop(0)
            self._parts.append((done.number, done.etag, done.size))
            self._retire(done)
        self._wake()

    def _retire(self, segment: _Segment) -> None:
        staging = self._store.staging

        def retire(_):
            return self._store.run_local(
                staging.keep_lead, self.upload_id, segment.offset, segment.size
            )

        self._tidying = self._tidying.addCallback(retire)
        self._tidying.addErrback(
            lambda f: self._log.failure("upload {id}: removing a sent part", f, id=self.upload_id)
        )

    def _part_failed(self, failure, segment: _Segment) -> None:
        self._fail(failure.value)

    def _fail(self, error: Exception) -> None:
        if self._failure is None:
            self._failure = error
        self._wake()

    def _wake(self) -> None:
        room, self._room = self._room, None
        if room is None:
            return
        if self._failure is not None:
            room.errback(self._failure)
        else:
            room.callback(self.size)

    def _settled(self) -> Deferred:
        """Fires when no part is being sent."""
        return gatherResults([s.sent for s in self._segments if s.sent is not None])

    # ---- IUploadData ------------------------------------------------------

    def write_at(self, offset: int, data):
        if offset != self.size:
            return fail(WrongOffset(f"write at {offset}, but {self.size} bytes are stored"))
        if self._failure is not None:
            return fail(self._failure)
        return self._append(memoryview(data))

    def _append(self, view):
        """Stage ``view`` at the end: into the filling file up to a part's
        size (a full one is sent), the rest into a new file."""
        filling = self._segments[-1] if self._segments else None
        if filling is None or filling.sent is not None:
            filling = _Segment(self.size, 0)
            path = self._store.staging.segment(self.upload_id, self.size)

            def opened(fd):
                filling.fd = fd
                self._segments.append(filling)
                return self._append(view)

            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            self._new_names = True
            d = self._store.run_local(_open_staged, path, flags, self.upload_id)
            return d.addCallback(opened)
        head, rest = view[: self.part_size - filling.size], view[self.part_size - filling.size :]
        assert filling.fd is not None  # the filling file is open
        position, error = pwrite_all(filling.fd, head, filling.size)
        if error is not None:
            fd, at = filling.fd, filling.size

            def cut_back():  # what is staged ends at a chunk the browser was told of
                os.ftruncate(fd, at)
                raise storage_error(error, f"cannot stage upload {self.upload_id}")

            return self._store.run_local(cut_back)
        filling.size = position
        self.size += len(head)
        if filling.size >= self.part_size:
            self._send(filling)
        if rest:
            return self._append(rest)
        if self._failure is not None:
            return fail(self._failure)
        if self._in_flight() >= self._store.parts_in_flight:
            self._room = Deferred()
            return self._room
        return succeed(self.size)

    def sync(self):
        filling = self._segments[-1] if self._segments else None
        fd = filling.fd if filling is not None else None
        names, self._new_names = self._new_names, False
        self._synced = True
        staging = self._store.staging

        def blocking():
            if fd is not None:
                os.fsync(fd)
            if names:  # a staged file made since the last sync: its name too
                staging.sync_names(self.upload_id)

        return self._store.run_local(
            _as_store_error, blocking, f"cannot sync upload {self.upload_id}"
        )

    def read_tail(self, size: int):
        segments = [(s.offset, s.size) for s in self._segments]
        end = self.size
        return self._store.run_local(
            _as_store_error,
            self._store.staging.tail,
            f"cannot read upload {self.upload_id}",
            self.upload_id,
            segments,
            end,
            size,
        )

    def finish(self, durable: bool):
        d = self._finish(durable)

        def failed(failure):  # the parts being sent settle and the file closes first
            return self.close().addBoth(lambda _: failure)

        return d.addErrback(failed)

    @inlineCallbacks
    def _finish(self, durable: bool):
        store = self._store
        if self._failure is not None:
            raise self._failure
        filling = self._segments[-1] if self._segments else None
        unstarted = self._multipart is None and self._starting is None
        unstarted = unstarted and all(s.sent is None for s in self._segments)
        if unstarted and not self._parts and len(self._segments) <= 1:
            yield self._close_filling()
            staged = [(s.offset, s.size) for s in self._segments]
            yield store.call(
                f"cannot store upload {self.upload_id}", store._put_whole, self.upload_id, staged
            )
        else:
            if filling is not None and filling.sent is None:
                if filling.size:
                    self._send(filling)
                else:
                    yield self._close_filling()
                    self._segments.pop()
            yield self._settled()
            if self._failure is not None:
                raise self._failure
            multipart = yield self._multipart_id()
            yield store.call(
                f"cannot complete upload {self.upload_id}",
                store._complete,
                self.upload_id,
                multipart,
                self._parts,
            )
        yield self._tidying
        yield store.run_local(store.staging.remove, self.upload_id)
        return store.location(self.upload_id)

    def _close_filling(self) -> Deferred:
        filling = self._segments[-1] if self._segments else None
        fd = filling.fd if filling is not None else None
        if filling is not None:
            filling.fd = None
        return self._store.run_local(_close, fd)

    @inlineCallbacks
    def close(self):
        """Keep what is staged and sent; the parts being sent finish first
        (a reopen then finds them in S3 or staged, never both half)."""
        yield self._close_filling()
        yield self._settled()
        yield self._tidying

    @inlineCallbacks
    def terminate(self):
        yield self.close()
        yield self._store.discard(self.upload_id)


@implementer(IDataReader)
class S3Reader:
    """A sealed object, read in the S3 threads."""

    def __init__(self, store: S3Store, body, upload_id: str):
        self._store = store
        self._body = body
        self._what = f"cannot read upload {upload_id}"

    def read(self, size: int = READ_BLOCK):
        return self._store.call(self._what, self._body.read, size)

    def close(self):
        return self._store.call(self._what, self._body.close)


@implementer(IDataReader)
class _BytesReader:
    """The staged bytes of an upload smaller than a part, already read."""

    def __init__(self, data: bytes):
        self._data = memoryview(data)

    def read(self, size: int = READ_BLOCK):
        block, self._data = self._data[:size], self._data[size:]
        return succeed(bytes(block))

    def close(self):
        return succeed(None)


def _open_staged(path: str, flags: int, upload_id: str) -> int:
    try:
        return os.open(path, flags, 0o640)
    except OSError as e:
        raise storage_error(e, f"cannot stage upload {upload_id}") from None


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _as_store_error(f, what: str, *args):
    try:
        return f(*args)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise storage_error(e, what) from None
        raise StoreError(f"{what}: {e.strerror}") from None
