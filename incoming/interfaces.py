"""
The four things an upload's life depends on, declared once: where its bytes
go (a data store), what is known about it (a state store), who may write it
(a locker) and how the parts of the server that touch it hear of each other
(an event bus).

Modelled on tusd's ``pkg/handler``: a small core interface per concern, and
optional capabilities declared apart, so that a store without them still
fits (`StoreComposer.capability` answers None).  Every method returns a
Deferred; none blocks the reactor thread.  Each interface has one contract
test suite (``tests/test_contract_*.py``) that every implementation passes.

Implementations: `incoming.folder_store` and `incoming.s3_store` (data),
`incoming.file_state` and `incoming.redis_state` (state),
`incoming.local_locker` and `incoming.redis_locker`, `incoming.local_bus`
and `incoming.redis_bus`.
"""

from __future__ import annotations

from typing import Any

import attr
from zope.interface import Attribute, Interface


class StoreError(Exception):
    """A store refused or failed an operation; str() is the reason for the user."""


class StoreUnavailable(StoreError):
    """A shared store (Redis) does not answer for now: retry later; what was
    stored before is kept."""


class NoSpace(StoreError):
    """The store is full: the bytes stored before are kept (a torn write is
    cut back), so the upload can go on once there is room."""


class WrongOffset(StoreError):
    """A write did not start where the stored bytes end."""


class DataGone(StoreError):
    """The upload's data is not in the store (never written, or taken away)."""


class VersionConflict(StoreError):
    """A record changed since it was read: someone else won the update."""


class RecordExists(StoreError):
    """A record with that id exists already."""


class RecordInvalid(StoreError):
    """A stored record cannot be read or fails validation."""


class LockHeld(StoreError):
    """Another holder has the upload and did not let go."""


class Refused(Exception):
    """A subscriber declined an event (e.g. too late to cancel).  Crosses a
    bus between processes by class name: raise a subclass of this."""


class BusError(StoreError):
    """A subscriber failed on an event in a way that is not a refusal."""


class LockLost(StoreError):
    """A lock is no longer held (released, or its lease ran out)."""


# ---- data -------------------------------------------------------------------


class IUploadData(Interface):
    """One upload's bytes, open for writing.

    Its caller makes one call at a time (the next once the last has fired),
    so an implementation need not queue them itself."""

    upload_id = Attribute("The ticket id this data belongs to.")
    size = Attribute("Bytes written so far (after the writes that have fired).")

    def write_at(offset: int, data: Any) -> Any:
        """Write ``data`` (bytes-like) at ``offset``, which must be ``size``;
        fire with the new size, or fail with WrongOffset or StoreError."""

    def sync() -> Any:
        """Fire once every byte written so far is durable."""

    def read_tail(size: int) -> Any:
        """Fire with the last ``size`` bytes stored (at most ``size``): what a
        resuming browser's sample is checked against."""

    def finish(durable: bool) -> Any:
        """Seal the data under its final name (durably if asked) and fire
        with its location: what the handover's ``filename`` names."""

    def close() -> Any:
        """Let go of resources (file descriptors) and keep the bytes."""

    def terminate() -> Any:
        """Delete the bytes; fire when they are gone."""


class IDataReader(Interface):
    """Sequential reads of a sealed or partial upload (for a checksum)."""

    def read(size: int) -> Any:
        """Fire with up to ``size`` bytes; b"" at the end."""

    def close() -> Any:
        """Release the reader."""


class IDataStore(Interface):
    """Where uploaded bytes live."""

    def create(upload_id: str, length: int | None = None) -> Any:
        """Fire with a new, empty IUploadData; StoreError if it exists.
        ``length``: the file's announced size, if known (an object store
        sizes its parts from it)."""

    def reopen(upload_id: str, length: int | None = None) -> Any:
        """Fire with the IUploadData of unsealed bytes, ``size`` being what
        the store durably holds; DataGone if there is none.  ``length`` as
        for create."""

    def held(upload_id: str, length: int | None) -> Any:
        """Fire with (bytes held, sealed?) or None if nothing is held:
        what a restart or a reconnect resumes from.  Bytes past ``length``
        (a torn tail) are dropped; None: the length is not known, keep all."""

    def seal_existing(upload_id: str, durable: bool) -> Any:
        """Seal data that is not open (after a restart); fire with its location."""

    def open_reader(upload_id: str) -> Any:
        """Fire with an IDataReader of the upload's bytes, sealed or not."""

    def location(upload_id: str) -> str:
        """The location a sealed upload has (no I/O): the handover's filename."""

    def discard(upload_id: str) -> Any:
        """Delete whatever is held of the upload, sealed or not."""


class IFreeSpace(Interface):
    """Optional: the store can tell how much more it can take."""

    def free_bytes(recent: bool = False) -> Any:
        """Fire with the bytes an upload may still use: measured now, or with
        ``recent``, as measured up to a second ago less what was written
        through this store since (no measurement for each check when the
        room is ample), where the store is the folder's only writer."""


class IRemoveAfterHandover(Interface):
    """Optional: the store can delete a sealed upload the backend has taken."""

    def remove(location: str) -> Any:
        """Delete the sealed data at ``location``; fire with True if it was there."""


class IInventory(Interface):
    """Optional: the store can list what it holds that no upload claims."""

    def unclaimed(known_ids: Any) -> Any:
        """Fire with the names it holds that belong to none of ``known_ids``."""


class IKeepsDigest(Interface):
    """Optional: the store keeps a sealed upload's sha256 with its data."""

    def keep_digest(upload_id: str, sha256: str) -> Any:
        """Record the digest with the sealed data; fire when done."""


class ITidiesUnclaimed(Interface):
    """Optional: the store can remove what it holds for no open upload
    (an object store's unfinished multipart uploads)."""

    def tidy_unclaimed(open_ids: Any) -> Any:
        """``open_ids()`` fires with the ids of the open uploads; it is asked
        after the store has listed what it holds, so that an upload begun
        meanwhile is never taken for an orphan.  Remove the rest and fire
        with a description of each thing removed (for the log)."""


# ---- state ------------------------------------------------------------------


class IStateStore(Interface):
    """Upload records (``incoming.records.UploadRecord``), versioned.

    Every successful write returns the record with ``version`` one higher;
    an update that names an older version fails with VersionConflict, so two
    writers can never both win.  A record in an ended state (finished or
    cancelled) is a *tombstone*: it is kept until `sweep` removes it.
    """

    def create(record: Any) -> Any:
        """Store a new record; fire with it at version 1 (RecordExists if taken)."""

    def get(upload_id: str) -> Any:
        """Fire with the record, or None."""

    def update(record: Any, expected_version: int) -> Any:
        """Replace the record if it is still at ``expected_version``; fire with
        the stored record (version + 1), or fail with VersionConflict."""

    def delete(upload_id: str) -> Any:
        """Remove the record; fire when it is gone (also if it was not there)."""

    def all() -> Any:
        """Fire with every readable record (unreadable ones are logged and skipped)."""

    def sweep(ended_before: float) -> Any:
        """Remove tombstones that ended before that time; fire with their ids."""


class IDeadlines(Interface):
    """Optional, for stores shared by several servers: each record's next
    deadline (an idle or confirm timeout, the end of a retention, a handover
    to resume) is indexed, so that any server can find the due ones."""

    def due(before: float, limit: int) -> Any:
        """Fire with up to ``limit`` ids whose deadline is before ``before``."""

    def postpone(upload_id: str, until: float) -> Any:
        """Look at this one again at ``until`` (held elsewhere, or failing),
        so that it does not keep others waiting; its next write sets it anew."""


class ICountsOpen(Interface):
    """Optional, for stores shared by several servers: how many records
    have not ended, on every server (tickets nobody connected to included),
    for --max-uploads; one server alone counts the uploads it holds."""

    def count_open() -> Any:
        """Fire with the number of records that have not ended."""


# ---- locks ------------------------------------------------------------------


class ILock(Interface):
    """One holder's hold on one upload.

    A lock shared between processes has a lease that its holder renews; an
    in-process lock lives as long as its holder and never expires."""

    def renew() -> Any:
        """Extend the lease; fail with LockLost if the lock is no longer ours."""

    def release() -> Any:
        """Let go; fire when another holder may take the upload."""


class ILocker(Interface):
    """At most one holder per upload at a time."""

    def acquire(
        upload_id: str, on_release_requested: Any, ask_holder: bool = False, on_lost: Any = None
    ) -> Any:
        """Fire with an ILock, or fail with LockHeld.

        With ``ask_holder``, a present holder is asked to let go first (its
        ``on_release_requested`` is called, which fires with True if it lets
        go); tusd's ``requestUnlock``.  ``on_lost()`` is called if the lock
        is lost while held (a lease that could not be renewed in time).
        """


# ---- events -----------------------------------------------------------------

# Event names on an upload's topic.
CANCEL_REQUESTED = "cancel"  # the backend called cancel_upload; payload: reason
FINISH_REQUESTED = "finish"  # the backend called finish_upload


class IEventBus(Interface):
    """Publish and subscribe per upload."""

    def publish(upload_id: str, event: str, payload: Any = None) -> Any:
        """Deliver to the upload's subscribers; fire with the answers of the
        subscribers that took it (an empty list if none did)."""

    def subscribe(upload_id: str, handler: Any) -> Any:
        """Call ``handler(event, payload)`` for the upload's events; its return
        value (or Deferred) is the answer, its exception the refusal (a
        `Refused` subclass reaches the publisher as itself across processes).
        Fire, once the subscription is active, with a callable that
        unsubscribes."""


# ---- composition ------------------------------------------------------------


# The destType of new_upload whose data store is `StoreComposer.data`.
FILE = "file"


@attr.s(frozen=True, auto_attribs=True)
class StoreComposer:
    """The stores one server runs with; optional capabilities looked up here."""

    data: Any  # IDataStore of destType "file"
    state: Any  # IStateStore
    locker: Any  # ILocker
    bus: Any  # IEventBus
    destinations: Any = attr.Factory(dict)  # other destTypes: name -> IDataStore

    def data_for(self, dest_type: str = FILE) -> Any:
        """The data store of a destType, or None if this server has none."""
        return self.data if dest_type == FILE else self.destinations.get(dest_type)

    def dest_types(self) -> list[str]:
        return [FILE, *sorted(self.destinations)]

    def capability(self, interface: Any, dest_type: str = FILE) -> Any:
        """The destType's data store if it offers ``interface``, else None."""
        store = self.data_for(dest_type)
        return store if store is not None and interface.providedBy(store) else None
