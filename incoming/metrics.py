"""
Prometheus metrics of one server, and the page that exposes them.

Each server owns a `Metrics` object with its own CollectorRegistry (never
the global one), so that several servers can live in one process (tests)
and nothing else in the process leaks into our page.  The upload machine,
the registry and the WebSocket adapter call its methods at the few points
that matter; `NO_METRICS` does nothing, for code built without metrics.

Cancellations are counted by a small fixed set of reasons (`CANCEL_KINDS`),
never by the free-text reason the browser and the backend are told: label
values must stay few, and text may carry anything.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from twisted.web.resource import Resource

from . import __version__

# Why an upload was cancelled: the `reason` label of incoming_uploads_cancelled.
BROWSER = "browser"  # MsgCancel or MsgError from the browser
BACKEND = "backend"  # cancel_upload
IDLE = "idle"  # no progress within --idle-timeout
PROTOCOL = "protocol"  # a chunk too large or past the end of the file
STORAGE = "storage"  # the file could not be created, written or completed
HANDOVER = "handover"  # the backend refused, failed or timed out
TOO_LARGE = "too_large"  # the file is above --max-file-size
CANCEL_KINDS = (BROWSER, BACKEND, IDLE, PROTOCOL, STORAGE, HANDOVER, TOO_LARGE)

# A chunk write is a write(2) to the page cache (plus fsync with --fsync chunk).
CHUNK_WRITE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# A handover is an HTTP POST to the backend, bounded by --handover-timeout.
HANDOVER_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)


def server_registry() -> CollectorRegistry:
    """A fresh registry with the usual process, platform and GC metrics."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class Metrics:
    """What one server counts; the methods are named after the events."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else server_registry()
        r = self.registry
        Info("incoming_server", "This server process.", registry=r).info(
            {"version": __version__, "pid": str(os.getpid())}
        )
        self._created = Counter(
            "incoming_uploads_created", "Upload tickets issued (new_upload).", registry=r
        )
        self._finished = Counter(
            "incoming_uploads_finished",
            "Uploads handed over and accepted by the backend.",
            registry=r,
        )
        cancelled = Counter(
            "incoming_uploads_cancelled", "Uploads cancelled, by reason.", ["reason"], registry=r
        )
        # Every reason is exported from the start (as 0), so rate() sees its first one.
        self._cancelled = {kind: cancelled.labels(reason=kind) for kind in CANCEL_KINDS}
        self._received = Counter(
            "incoming_received_bytes",
            "Bytes of uploaded files written to the storage folder.",
            registry=r,
        )
        self._open_uploads = Gauge(
            "incoming_open_uploads", "Uploads neither finished nor cancelled.", registry=r
        )
        self._websockets = Gauge(
            "incoming_websocket_connections", "Open upload WebSocket connections.", registry=r
        )
        self._handover = Histogram(
            "incoming_handover_duration_seconds",
            "Time from the handover POST to the backend's answer or failure.",
            buckets=HANDOVER_BUCKETS,
            registry=r,
        )
        self._handover_failures = Counter(
            "incoming_handover_failures",
            "Handovers that failed (refused, non-200, bad answer, timeout, "
            "no finish_upload in time).",
            registry=r,
        )
        self._chunk_write = Histogram(
            "incoming_chunk_write_duration_seconds",
            "Time to write one chunk to its file (and sync it with --fsync chunk).",
            buckets=CHUNK_WRITE_BUCKETS,
            registry=r,
        )

        self._redis = Histogram(
            "incoming_redis_command_duration_seconds",
            "Round-trip time of a Redis command or script (with --state).",
            buckets=CHUNK_WRITE_BUCKETS,
            registry=r,
        )
        self._takeovers = Counter(
            "incoming_lock_takeovers",
            "Uploads this server took over from another holder that let go (with --state).",
            registry=r,
        )
        self._locks_lost = Counter(
            "incoming_locks_lost",
            "Holds on uploads this server lost: its lease ran out unrenewed or was "
            "taken over (with --state).",
            registry=r,
        )

    def upload_created(self) -> None:
        self._created.inc()

    def upload_finished(self) -> None:
        self._finished.inc()

    def upload_cancelled(self, kind: str) -> None:
        """``kind`` is one of CANCEL_KINDS."""
        self._cancelled[kind].inc()

    def count_open_uploads(self, count) -> None:
        """``count()`` gives the open uploads; called at each scrape, so it
        cannot drift from the registry."""
        self._open_uploads.set_function(count)

    def chunk_stored(self, nbytes: int, seconds: float) -> None:
        """Per chunk: two cheap updates, no allocation beyond the call."""
        self._received.inc(nbytes)
        self._chunk_write.observe(seconds)

    def handover_ended(self, seconds: float) -> None:
        """The handover POST was answered, failed or timed out."""
        self._handover.observe(seconds)

    def handover_failed(self) -> None:
        self._handover_failures.inc()

    def redis_answered(self, seconds: float) -> None:
        self._redis.observe(seconds)

    def lock_taken_over(self) -> None:
        self._takeovers.inc()

    def lock_lost(self) -> None:
        self._locks_lost.inc()

    def websocket_opened(self) -> None:
        self._websockets.inc()

    def websocket_closed(self) -> None:
        self._websockets.dec()


class NullMetrics:
    """Counts nothing: the default where no Metrics is passed in."""

    registry = None

    def upload_created(self) -> None:
        pass

    def upload_finished(self) -> None:
        pass

    def upload_cancelled(self, kind: str) -> None:
        pass

    def count_open_uploads(self, count) -> None:
        pass

    def chunk_stored(self, nbytes: int, seconds: float) -> None:
        pass

    def handover_ended(self, seconds: float) -> None:
        pass

    def handover_failed(self) -> None:
        pass

    def redis_answered(self, seconds: float) -> None:
        pass

    def lock_taken_over(self) -> None:
        pass

    def lock_lost(self) -> None:
        pass

    def websocket_opened(self) -> None:
        pass

    def websocket_closed(self) -> None:
        pass


NO_METRICS = NullMetrics()


class MetricsPage(Resource):
    """GET /metrics: the registry in the Prometheus text format (or
    OpenMetrics, if the scraper asks for it)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry):
        super().__init__()
        self._registry = registry

    def render_GET(self, request):
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encode, content_type = choose_encoder(accept)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return encode(self._registry)
