"""
``twistd incoming``: command-line options and the service they build.

Settings come from the defaults (those of the 0.1 server), then the
``--config`` file (a 0.1 ``incoming_cfg.yaml``), then the command line.
"""

from __future__ import annotations

import os
import sys
import time

import attr
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from . import __version__
from .config import SETTINGS, ConfigError, Settings, build_settings, read_yaml_config
from .folder_lock import FolderInUse, lock_folder, write_pid
from .guards import GuardRefused, Guards
from .storage_pool import StoragePool

DEFAULTS = Settings()


def _key_text(setting) -> str:
    return f" Config key: {setting.yaml_key}." if setting.yaml_key else ""


# Lists that allow anything while empty (--backend-origins, empty, allows none).
ANY_WHEN_EMPTY = frozenset({"allowed_origins", "backend_allow", "finish_url_hosts"})


# What an empty default means, as --help says it.
EMPTY_DEFAULTS = {
    "backend_token": "none",
    "metrics_listen": "the main port",
    "state": "the storage folder",
    "backend_ca": "the system's trust store",
    "s3_bucket": "none (no S3 store)",
    "s3_endpoint": "AWS S3",
    "s3_prefix": "none",
    "s3_region": "the AWS chain's, else us-east-1",
    "s3_ca": "botocore's bundle (AWS_CA_BUNDLE, else certifi's)",
}


def _default_text(field: str) -> str:
    value = getattr(DEFAULTS, field)
    if field in ANY_WHEN_EMPTY and not value:
        return "any"  # an empty list restricts nothing
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    if field in EMPTY_DEFAULTS and not value:
        return EMPTY_DEFAULTS[field]
    return str(value)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the Incoming!! upload server: backend API under "
        "/incoming/0.1/backend/, WebSocket uploads at "
        "/incoming/0.1/frontend/upload_ws, the JavaScript library at "
        "/incoming/0.1/frontend/incoming.js; /health and /metrics for "
        "operators.  JSON logs: twistd --logger incoming.logs.json_observer.  "
        "Command-line options override "
        "the --config file, which overrides the defaults."
    )
    optFlags = [
        [
            "demo",
            None,
            "Also serve a demo web app at /demo/ that plays the app backend "
            "(gets tickets, takes handovers, lists sha256 of received files). "
            "Anyone who reaches it can upload: not for a public server. "
            "[default: off]",
        ],
    ]
    optParameters = [
        [
            "config",
            "c",
            None,
            "Read settings from a YAML file: a 0.1 incoming_cfg.yaml (IncomingIP, "
            "IncomingPort and the keys named below) or one with the newer keys "
            "too. [default: none]",
        ],
    ] + [
        [s.flag, None, None, f"{s.help}{_key_text(s)} [default: {_default_text(s.field)}]"]
        for s in SETTINGS
    ]

    def opt_version(self):
        """Print the version and exit."""
        print(f"incoming {__version__}")
        raise SystemExit(0)

    def postOptions(self):
        config_values = {}
        if self["config"] is not None:
            config_values = self._read_config(self["config"])
        flag_values = {}
        for setting in SETTINGS:
            if self[setting.flag] is not None:
                try:
                    flag_values[setting.field] = setting.parse(self[setting.flag])
                except ConfigError as e:
                    raise usage.UsageError(f"--{setting.flag}: {e}") from None
        try:
            self.settings = build_settings(config_values, flag_values)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self._check_endpoint(self.settings.listen)
        if self.settings.metrics_listen:
            self._check_endpoint(self.settings.metrics_listen, "metrics-port")
        self._check_storage(self.settings.storage_dir)

    @staticmethod
    def _read_config(path: str) -> dict:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise usage.UsageError(f"cannot read config file {path}: {e}") from None
        try:
            return read_yaml_config(text)
        except ConfigError as e:
            raise usage.UsageError(f"config file {path}: {e}") from None

    @staticmethod
    def _check_endpoint(description: str, flag: str = "port") -> None:
        # Parsing only stores the reactor; nothing listens yet.
        try:
            serverFromString(None, description)
        except Exception as e:
            raise usage.UsageError(f"--{flag} {description!r}: {e}") from None

    @staticmethod
    def _check_storage(folder: str) -> None:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise usage.UsageError(f"--storage-dir (StorageDir) {folder!r}: {e.strerror}") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise usage.UsageError(f"--storage-dir (StorageDir) {folder!r} is not writable")


def makeService(config, reactor=None) -> MultiService:
    """The server's service tree: the upload server (storage pool, restore,
    then listen) and --metrics-port if set."""
    if reactor is None:
        from twisted.internet import reactor
    from .handover import backend_http
    from .health import FolderCheck
    from .metrics import Metrics
    from .tls import backend_tls_policy
    from .twisted_speedups import remember_pure_results
    from .web import make_site, metrics_site

    remember_pure_results()  # see incoming.twisted_speedups
    settings = config.settings
    from .workers import WORKER_ENV, AdoptedPort, WorkerParent, watch_parent

    worker_fd = os.environ.pop(WORKER_ENV, None)
    if settings.workers > 1 and worker_fd is None:  # the parent: only the port
        parent = MultiService()
        endpoint = serverFromString(reactor, settings.listen)
        WorkerParent(reactor, endpoint, settings.workers, sys.argv).setServiceParent(parent)
        return parent
    lock_fd = None
    try:  # held for the process's life: one server per folder (unless they share)
        if not settings.state:
            lock_fd = lock_folder(settings.storage_dir)
    except FolderInUse as e:
        raise SystemExit(f"twistd incoming: --storage-dir (StorageDir) {e}") from None
    metrics = Metrics()  # this server's own CollectorRegistry
    pool = StoragePool(reactor)
    http = backend_http(reactor, backend_tls_policy(settings.backend_ca))
    stores, residency = None, None
    guards: list = []
    if settings.state:
        from .redis_stores import RedisGuard, redis_stores

        stores, residency, hub = redis_stores(settings, pool.run, reactor, metrics)
        stores.data.prepare()
        guards.append(RedisGuard(settings, hub))
    if settings.s3_bucket:
        from .embedded import embedded_stores
        from .s3_service import s3_destination

        if stores is None:
            stores = embedded_stores(settings, pool.run)
            stores.data.prepare()
        s3, s3_guard = s3_destination(settings, reactor)
        stores = attr.evolve(stores, destinations={"s3": s3})
        guards.append(s3_guard)
    guard = Guards(guards) if guards else None
    # /health asks these, on the main port and on --metrics-port alike
    checks = [FolderCheck(settings.storage_dir, pool.run, reactor)]
    checks += guard.health_checks() if guard is not None else []
    site, registry = make_site(
        settings,
        reactor,
        http,
        demo=bool(config["demo"]),
        run_blocking=pool.run,
        metrics=metrics,
        stores=stores,
        monotonic=time.monotonic,  # the reactor's clock is the wall clock
        health_checks=checks,
        residency=residency,
    )
    service = MultiService()
    if worker_fd is not None:
        endpoint = AdoptedPort(reactor, int(worker_fd))
        reactor.callWhenRunning(watch_parent, reactor)
    else:
        endpoint = serverFromString(reactor, settings.listen)
    server = UploadServer(registry, reactor, endpoint, site, pool, guard)
    server.lock_fd = lock_fd
    server.setServiceParent(service)
    if settings.metrics_listen:
        StreamServerEndpointService(
            serverFromString(reactor, settings.metrics_listen),
            metrics_site(metrics, checks),
        ).setServiceParent(service)
    return service


class UploadServer(Service):
    """The main port, accepting only once the uploads are restored.

    The port is bound in ``privilegedStartService`` (before twistd drops
    privileges, so a port below 1024 works) but accepts no connection until
    the storage pool has started and the stores are restored: a browser that
    reconnects at once after a restart finds its upload.  At shutdown:
    connected browsers are told "going away" (close code 1001), their last
    storage work runs, the port closes, then the pool stops.
    """

    _log = Logger()

    def __init__(self, registry, reactor, endpoint, site, pool, guard=None):
        """``guard``: checks made before the restore (``start``, failing with
        a reason to stop) and undone after the stop (``stop``)."""
        self._guard = guard
        self.lock_fd: int | None = None  # the storage folder's lock, if held
        self._registry = registry
        self._reactor = reactor
        self._endpoint = endpoint
        self._site = site
        self._pool = pool
        self._port: Deferred | None = None  # fires once bound (and held)
        self._bound = None  # the listening port
        self.restored: Deferred | None = None  # fires once connections are accepted

    def privilegedStartService(self):
        super().privilegedStartService()
        self._port = self._endpoint.listen(self._site)
        self._port.addCallback(self._hold)
        self._port.addErrback(self._cannot_start, "cannot listen")

    def _hold(self, port):
        port.stopReading()  # bound; connections wait in the backlog
        self._bound = port

    def startService(self):
        if self._port is None:  # not started by twistd (tests)
            self.privilegedStartService()
        super().startService()
        if self.lock_fd is not None:
            write_pid(self.lock_fd)  # after twistd's fork
        self._pool.startService()
        self.restored = maybeDeferred(self._guard.start) if self._guard else succeed(None)
        self.restored.addCallback(lambda _: self._registry.restore())
        self.restored.addCallback(lambda _: self._port)  # bound by now, or failed
        self.restored.addCallback(self._accept)
        self.restored.addErrback(self._cannot_start, "cannot restore the uploads")

    def _accept(self, _=None):
        if self.running and self._bound is not None:  # not stopped while restoring
            self._bound.startReading()
            self._log.info(
                "{count} uploads restored; accepting connections on {address}",
                count=len(self._registry),
                address=self._bound.getHost(),
            )
            tidying = self._registry.tidy_destinations()
            tidying.addErrback(lambda f: self._log.failure("tidying the object stores", f))

    def _cannot_start(self, failure, what: str):
        if failure.check(GuardRefused):
            self._log.error("{why}; stopping", why=str(failure.value))
        else:
            self._log.failure("{what}; stopping", failure, what=what)
        if self._reactor.running:
            self._reactor.stop()
        else:  # under twistd, before the reactor runs
            self._reactor.callWhenRunning(self._reactor.stop)

    def stopService(self):
        super().stopService()
        if self._bound is not None:
            self._bound.stopReading()  # no new browser between "going away" and the end
        d = self._registry.close_connections(self._reactor)
        d.addCallback(lambda _: self._registry.stop())  # shared uploads: let go
        bound, self._bound = self._bound, None
        if bound is not None:
            d.addCallback(lambda _: bound.stopListening())
        d.addErrback(lambda f: self._log.failure("stopping the port", f))
        d.addCallback(lambda _: self._pool.stopService())
        if self._guard is not None:
            d.addCallback(lambda _: self._guard.stop())
            d.addErrback(lambda f: self._log.failure("letting go of the stores", f))
        return d
