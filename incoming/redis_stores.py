"""
``--state redis://...``: records, locks and events in Redis, the data in
the storage folder, composed like the embedded default.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks, succeed

from .folder_store import FolderStore
from .interfaces import LockHeld, StoreComposer, StoreError
from .redis_bus import RedisBus
from .redis_client import RedisHub, parse_redis_url
from .redis_locker import RedisLocker
from .redis_state import RedisStateStore


def redis_stores(settings, run_blocking, clock, metrics=None) -> tuple[StoreComposer, RedisHub]:
    """The stores, and the hub to close when the server stops."""
    address = parse_redis_url(settings.state)
    hub = RedisHub(address, settings.state_prefix, clock, metrics=metrics)
    data = FolderStore(settings.storage_dir, run_blocking)
    stores = StoreComposer(
        data=data,
        state=RedisStateStore(hub),
        locker=RedisLocker(hub, clock),
        bus=RedisBus(hub),
    )
    return stores, hub


SERVER_LOCK = "server"


class RedisGuard:
    """Start: Redis answers, and this is the only server on its prefix (a
    lease lock, renewed while the server runs: until servers share uploads,
    two on one prefix would both restore them).  Stop: let go, disconnect."""

    def __init__(self, settings, hub: RedisHub, locker: RedisLocker):
        self._settings = settings
        self._hub = hub
        self._locker = locker
        self._lock = None

    def _where(self) -> str:
        return f"--state {self._hub.address} (--state-prefix {self._settings.state_prefix!r})"

    @inlineCallbacks
    def start(self):
        try:
            yield self._hub.command("PING")
        except StoreError as e:
            raise GuardRefused(f"cannot reach Redis at {self._where()}: {e}") from None
        try:
            self._lock = yield self._locker.acquire(SERVER_LOCK, lambda: succeed(False))
        except LockHeld:
            raise GuardRefused(
                f"another Incoming!! server uses {self._where()}; give each server a "
                "prefix of its own"
            ) from None

    @inlineCallbacks
    def stop(self):
        lock, self._lock = self._lock, None
        if lock is not None:
            try:
                yield lock.release()
            except StoreError:
                pass  # its lease runs out
        yield self._hub.close()

    def health(self):
        """Fire with None if Redis answers, else what is wrong."""
        d = self._hub.command("PING").addCallback(lambda _: None)
        return d.addErrback(lambda f: f"Redis at {self._hub.address}: {f.value}")


class GuardRefused(Exception):
    """The server must not start; str() says why, naming the setting."""
