"""
``--workers N``: N server processes on one listening port, so that one
machine's cores all take uploads.

The parent binds the port (before twistd drops privileges) and accepts
nothing itself; each worker is ``twistd -n incoming`` with the same
options and adopts a listening socket from the parent (passed as file
descriptor 3).  On a TCP port each worker gets a socket of its own, all
bound to the port with ``SO_REUSEPORT``, so that the kernel deals the
connections out evenly (on one shared socket, the worker that wakes first
takes a whole burst); the socket of a worker that ended is closed at once
(its share goes to the others) and a new one is bound when it starts again.
A port another server holds is refused, as without workers.  A UNIX socket
or one from systemd is shared.  The workers share their
uploads through ``--state`` (Redis), as separate servers do.  The parent
starts a worker again if one dies, and at SIGTERM stops them all (each
closes its browsers with "going away") and waits for them.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

WORKER_FD = 3
WORKER_ENV = "INCOMING_WORKER_FD"  # set for a worker: the socket it adopts
RESPAWN_SECONDS = 1.0  # a worker that ended is started again after this...
RESPAWN_MAX_SECONDS = 30.0  # ...doubled each time it ends soon again, up to this
STEADY_SECONDS = 30.0  # a worker that ran this long counts as a first failure
STOP_SECONDS = 15.0

_log = Logger()


# twistd's own options that a worker takes from its parent's command line
# (the others, --pidfile, --logfile, --nodaemon, are the parent's alone).
PASSED_TWISTD_OPTIONS = ("--logger", "--umask", "--reactor", "-r")


def twistd_arguments(argv: list[str]) -> list[str]:
    """The parent's twistd options (before ``incoming``) a worker must share:
    the log observer (JSON logs say so), the umask (the files it stores),
    the reactor."""
    options = argv[1 : argv.index("incoming")]
    kept = []
    for number, arg in enumerate(options):
        name = arg.split("=", 1)[0]
        if name not in PASSED_TWISTD_OPTIONS:
            continue
        if "=" in arg:
            kept.append(arg)
        elif number + 1 < len(options):
            kept += [arg, options[number + 1]]
    return kept


def worker_arguments(argv: list[str]) -> list[str]:
    """The options of ``incoming`` in twistd's argv, without --workers."""
    options = argv[argv.index("incoming") + 1 :]
    kept, skip = [], False
    for arg in options:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        kept.append(arg)
    return kept


class _Worker(ProcessProtocol):
    def __init__(self, parent: WorkerParent, number: int):
        self.parent = parent
        self.number = number
        self.started_at = parent._reactor.seconds()
        self.ended: Deferred = Deferred()

    def processEnded(self, reason):
        self.parent._ended(self, reason)
        self.ended.callback(None)


class WorkerParent(Service):
    """Binds the port, runs the workers, keeps them running."""

    def __init__(self, reactor, endpoint, count: int, argv: list[str]):
        self._reactor = reactor
        self._endpoint = endpoint
        self._count = count
        self._argv = argv
        self._port: Any = None
        self._sockets: ReusePortSockets | None = None  # one per worker, or one shared
        self._workers: dict[int, _Worker] = {}
        self._delays: dict[int, float] = {}  # worker number -> its last respawn delay
        self._stopping = False

    def privilegedStartService(self):
        super().privilegedStartService()
        try:
            self._sockets = ReusePortSockets.for_endpoint(self._endpoint)
            if self._sockets is not None:
                for number in range(1, self._count + 1):
                    self._sockets.socket_for(number)  # bound while privileged
        except OSError as e:
            if self._sockets is not None:
                self._sockets.stopListening()
            self._sockets = None
            if e.errno == errno.EADDRINUSE:  # as a single server would say it
                return self._cannot_start(Failure(e))
            _log.warn("workers share one socket: cannot bind one each ({why})", why=e.strerror)
        if self._sockets is not None:
            self._port = self._sockets
            if self.running:
                self._start_all()
            return
        d = self._endpoint.listen(Factory())  # never accepts: the workers do
        d.addCallback(self._bound)
        d.addErrback(self._cannot_start)

    def _bound(self, port):
        port.stopReading()
        self._port = port
        if self.running:
            self._start_all()

    def _cannot_start(self, failure):
        _log.failure("cannot listen; stopping", failure)
        self._reactor.callWhenRunning(self._reactor.stop)

    def startService(self):
        super().startService()
        if self._port is not None:
            self._start_all()

    def _start_all(self):
        _log.info(
            "{count} workers share {address}{how}",
            count=self._count,
            address=self._port.getHost(),
            how=", a socket each (SO_REUSEPORT)" if self._sockets is not None else "",
        )
        for number in range(1, self._count + 1):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        if self._stopping:
            return
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        args = [twistd, "-n", "--pidfile=", "--logfile=-", *twistd_arguments(self._argv)]
        args += ["incoming", *worker_arguments(self._argv)]
        worker = _Worker(self, number)
        self._workers[number] = worker
        listening: Any = self._port
        if self._sockets is not None:
            try:
                listening = self._sockets.socket_for(number)
            except OSError as e:  # e.g. a port below 1024 and no privileges now
                _log.error(
                    "worker {number}: cannot bind its socket again ({why}); trying again",
                    number=number,
                    why=e.strerror,
                )
                self._worker_ended_soon(number)
                return
        child_fds = {0: "w", 1: 1, 2: 2, WORKER_FD: listening.fileno()}
        env = dict(os.environ, **{WORKER_ENV: str(WORKER_FD)})
        process = self._reactor.spawnProcess(worker, twistd, args, env=env, childFDs=child_fds)
        _log.info("worker {number} started (pid {pid})", number=number, pid=process.pid)

    def _ended(self, worker: _Worker, reason) -> None:
        if self._workers.get(worker.number) is worker:
            del self._workers[worker.number]
        if self._stopping:
            return
        if self._sockets is not None:
            self._sockets.drop(worker.number)  # its share goes to the others meanwhile
        ran = self._reactor.seconds() - worker.started_at
        delay = self._next_delay(worker.number, ran)
        _log.error(
            "worker {number} ended ({why}) after {ran:.1f} s; starting it again in {delay:g} s",
            number=worker.number,
            why=reason.value,
            ran=ran,
            delay=delay,
        )
        self._reactor.callLater(delay, self._spawn, worker.number)

    def _next_delay(self, number: int, ran: float) -> float:
        previous = self._delays.get(number)
        if previous is None or ran >= STEADY_SECONDS:
            delay = RESPAWN_SECONDS
        else:  # it keeps failing: no tight loop of starts (and log lines)
            delay = min(previous * 2, RESPAWN_MAX_SECONDS)
        self._delays[number] = delay
        return delay

    def _worker_ended_soon(self, number: int) -> None:
        self._reactor.callLater(self._next_delay(number, 0.0), self._spawn, number)

    def stopService(self):
        super().stopService()
        self._stopping = True
        workers = list(self._workers.values())
        self._signal(workers, signal.SIGTERM)
        ended = DeferredList([w.ended for w in workers])
        ended.addTimeout(STOP_SECONDS, self._reactor).addErrback(lambda _: self._kill(workers))
        port, self._port = self._port, None
        if port is not None:
            ended.addCallback(lambda _: port.stopListening())
        return ended

    def _kill(self, workers) -> None:
        self._signal(workers, signal.SIGKILL)

    @staticmethod
    def _signal(workers, number: int) -> None:
        for worker in workers:
            transport: Any = worker.transport
            try:
                transport.signalProcess(number)
            except Exception:
                pass  # gone already


class ReusePortSockets:
    """A listening socket per worker on one TCP address, bound with
    SO_REUSEPORT.  The socket of a worker that ended is closed at once, so
    that new connections go to the others (a socket nobody accepts on would
    hold its share of them until the worker is back); a worker started again
    gets a new one."""

    def __init__(self, family: int, address: tuple, backlog: int):
        self._family, self._address, self._backlog = family, address, backlog
        self._sockets: dict[int, socket.socket] = {}

    @classmethod
    def for_endpoint(cls, endpoint) -> ReusePortSockets | None:
        """For a TCP endpoint, where SO_REUSEPORT exists; else None."""
        from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

        if not hasattr(socket, "SO_REUSEPORT"):
            return None
        if isinstance(endpoint, TCP6ServerEndpoint):
            family, default = socket.AF_INET6, "::"
        elif isinstance(endpoint, TCP4ServerEndpoint):
            family, default = socket.AF_INET, "0.0.0.0"
        else:
            return None
        # The endpoint's own settings (Twisted keeps them as these attributes).
        port, interface, backlog = endpoint._port, endpoint._interface, endpoint._backlog
        # A plain bind first: a port in use by another server (SO_REUSEPORT
        # or not) is refused, not silently shared; it also decides a port 0.
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((interface or default, port))
            address = probe.getsockname()[:2]
        return cls(family, address, backlog)

    def socket_for(self, number: int) -> socket.socket:
        """Worker ``number``'s socket, bound now if it has none."""
        if number not in self._sockets:
            s = socket.socket(self._family, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind(self._address)
                s.listen(self._backlog)
                s.setblocking(False)
            except OSError:
                s.close()
                raise
            self._sockets[number] = s
        return self._sockets[number]

    def drop(self, number: int) -> None:
        s = self._sockets.pop(number, None)
        if s is not None:
            s.close()

    def getHost(self) -> str:
        return f"{self._address[0]}:{self._address[1]}"

    def stopListening(self):
        for number in list(self._sockets):
            self.drop(number)
        return succeed(None)


class _ParentWatch:
    """A worker's stdin is a pipe from its parent: its end means the parent
    is gone (killed, crashed), and the worker stops rather than go on
    holding the port alone."""

    def __init__(self, reactor):
        self._reactor = reactor

    def fileno(self) -> int:
        return 0

    def logPrefix(self) -> str:
        return "parent-watch"

    def doRead(self):
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            return ConnectionDone()
        return None

    def connectionLost(self, reason):
        self._reactor.removeReader(self)
        _log.error("the workers' parent is gone; this worker stops")
        if self._reactor.running:
            self._reactor.stop()


def watch_parent(reactor) -> None:
    reactor.addReader(_ParentWatch(reactor))


class AdoptedPort:
    """A worker's "endpoint": the listening socket its parent passed on."""

    def __init__(self, reactor, fd: int):
        self._reactor = reactor
        self._fd = fd

    def listen(self, site):
        probe = socket.socket(fileno=os.dup(self._fd))
        family = probe.family
        probe.close()
        port = self._reactor.adoptStreamPort(self._fd, family, site)
        os.close(self._fd)  # the port holds a duplicate of its own
        return succeed(port)
