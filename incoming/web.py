"""The resource tree: every URL the server answers, built in one place."""

from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource
from twisted.web.http import combinedLogFormatter
from twisted.web.resource import Resource
from twisted.web.server import Site

from .backend_api import backend_api
from .demo import demo_resource
from .embedded import embedded_stores
from .handover import BackendClient
from .health import FolderCheck, HealthCheck
from .metrics import NO_METRICS, Metrics, MetricsPage
from .registry import UploadRegistry
from .static import FileCache, library_files
from .storage_pool import run_here
from .ws_route import UploadSite
from .wsproto import UploadFactory

UPLOAD_WS_PATH = b"/incoming/0.1/frontend/upload_ws"  # where build_root puts it


def build_root(
    registry,
    settings,
    clock,
    demo: bool = False,
    run_blocking=run_here,
    metrics=NO_METRICS,
    health_checks=(),
    *,
    websocket_factory,
) -> Resource:
    """/incoming/0.1/backend/*, /incoming/0.1/frontend/upload_ws (served by
    ``websocket_factory``, an UploadFactory) and incoming.js beside it;
    /demo/ too when ``demo`` is true; /health, and /metrics unless
    --metrics-port moves it."""
    files = FileCache(run_blocking)
    frontend = Resource()
    frontend.putChild(b"upload_ws", WebSocketResource(websocket_factory))
    library_files(frontend, files)
    version = Resource()
    version.putChild(b"backend", backend_api(registry, settings))
    version.putChild(b"frontend", frontend)
    incoming = Resource()
    incoming.putChild(b"0.1", version)
    root = Resource()
    root.putChild(b"incoming", incoming)
    if demo:
        demo_page = demo_resource(registry, clock, run_blocking, files, settings.finish_url_hosts)
        root.putChild(b"demo", demo_page)
    operations_pages(root, None if settings.metrics_listen else metrics, health_checks)
    return root


def operations_pages(root: Resource, metrics=None, health_checks=()) -> Resource:
    """/health for load balancers and, with ``metrics``, /metrics for
    Prometheus: pages for operators, which a public proxy should not pass.
    ``health_checks``: what /health asks."""
    root.putChild(b"health", HealthCheck(health_checks))
    if metrics is not None and metrics.registry is not None:
        root.putChild(b"metrics", MetricsPage(metrics.registry))
    return root


def metrics_site(metrics, health_checks=()) -> Site:
    """What --metrics-port serves: /metrics and /health (asking the same
    checks as the main port's), nothing else."""
    return _site(operations_pages(Resource(), metrics, health_checks))


def _site(root: Resource, websocket_factory=None) -> Site:
    """A Site that logs without query strings and never shows tracebacks;
    with ``websocket_factory``, upgrades of the upload URL go straight to it
    (`incoming.ws_route`)."""
    if websocket_factory is None:
        site = Site(root, logFormatter=access_log_line)
    else:
        site = UploadSite(root, UPLOAD_WS_PATH, websocket_factory, logFormatter=access_log_line)
    site.displayTracebacks = False
    return site


class _PathOnly:
    """A request seen without its query string."""

    def __init__(self, request):
        self._request = request

    @property
    def uri(self):
        return self._request.path

    def __getattr__(self, name):
        return getattr(self._request, name)


def access_log_line(timestamp, request) -> str:
    """Combined log format without the query string: 0.1 backends send
    backendSecret there, and secrets are never logged."""
    return combinedLogFormatter(timestamp, _PathOnly(request))


def make_site(
    settings,
    clock,
    http,
    demo: bool = False,
    run_blocking=run_here,
    metrics=None,
    stores=None,
    monotonic=None,
    health_checks=None,
    residency=None,
) -> tuple[Site, UploadRegistry]:
    """The whole server as a twisted.web Site, plus its upload registry
    (not restored yet: call ``registry.restore()``, as the service does at start).

    ``clock`` is the reactor (or a Clock in tests); ``http`` is the
    handover client (`incoming.handover.backend_http`, or treq's StubTreq)
    used for the handover calls; ``run_blocking``
    runs blocking storage work (the storage pool in production).  ``demo``
    adds the /demo/ web app.  ``metrics`` (an incoming.metrics.Metrics)
    defaults to a new one with a registry of its own; ``stores`` (a
    StoreComposer) to the embedded default; ``monotonic`` (elapsed
    seconds for the timers that cancel or fail uploads, time.monotonic in
    production) to the clock's; ``health_checks`` are what /health asks
    (callables firing with None or a problem), by default the storage
    folder's `FolderCheck` alone.
    With ``residency`` (a locker shared with other servers) the uploads are
    shared with them (`incoming.shared_registry`).
    """
    if metrics is None:
        metrics = Metrics()
    if health_checks is None:
        health_checks = [FolderCheck(settings.storage_dir, run_blocking, clock)]
    if stores is None:
        stores = embedded_stores(settings, run_blocking)
        stores.data.prepare()
    backend = BackendClient(http, clock, settings.handover_timeout, monotonic)
    if residency is not None:
        from .shared_registry import SharedRegistry

        registry: UploadRegistry = SharedRegistry(
            settings, stores, backend, clock, run_blocking, metrics, monotonic, residency=residency
        )
    else:
        registry = UploadRegistry(
            settings, stores, backend, clock, run_blocking, metrics, monotonic
        )
    websocket = UploadFactory(registry, settings, clock, metrics)
    root = build_root(
        registry,
        settings,
        clock,
        demo,
        run_blocking,
        metrics,
        health_checks,
        websocket_factory=websocket,
    )
    return _site(root, websocket), registry
