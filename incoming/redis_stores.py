"""
``--state redis://...``: records, locks and events in Redis, the data in
the storage folder, composed like the embedded default.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from .folder_store import FolderStore
from .guards import GuardRefused
from .interfaces import StoreComposer, StoreError
from .local_locker import LocalLocker
from .redis_bus import RedisBus
from .redis_client import RedisHub, parse_redis_url
from .redis_locker import RedisLocker
from .redis_state import RedisStateStore
from .restore import next_deadline


def redis_stores(settings, run_blocking, clock, metrics=None):
    """The stores; the residency locker that servers share (the uploads'
    own connection locks stay in this process: only the resident server
    has the upload); and the hub to close when the server stops."""
    address = parse_redis_url(settings.state)
    hub = RedisHub(address, settings.state_prefix, clock, metrics=metrics)
    data = FolderStore(settings.storage_dir, run_blocking, shared=True)  # by every server
    stores = StoreComposer(
        data=data,
        state=RedisStateStore(hub, lambda record: next_deadline(record, settings)),
        locker=LocalLocker(),
        bus=RedisBus(hub),
    )
    return stores, RedisLocker(hub, clock), hub


class RedisGuard:
    """Start: Redis answers (else the server does not start).  Stop:
    disconnect."""

    def __init__(self, settings, hub: RedisHub):
        self._settings = settings
        self._hub = hub

    def _where(self) -> str:
        return f"--state {self._hub.address} (--state-prefix {self._settings.state_prefix!r})"

    @inlineCallbacks
    def start(self):
        try:
            yield self._hub.command("PING")
        except StoreError as e:
            raise GuardRefused(f"cannot reach Redis at {self._where()}: {e}") from None

    def stop(self):
        return self._hub.close()

    def health(self):
        """Fire with None if Redis answers, else what is wrong."""
        d = self._hub.command("PING").addCallback(lambda _: None)
        return d.addErrback(lambda f: f"Redis at {self._hub.address}: {f.value}")
