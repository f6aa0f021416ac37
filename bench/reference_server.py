"""
The reference: about the least a Twisted server can do to take an upload.
It writes each TCP connection's bytes to a file of its own and, when the
client half-closes, closes the file (synced first with ``--fsync
complete``, in a worker thread as Incoming!! does) and answers "ok".

The bench runs it on the same machine in the same run as Incoming!!, fed
by the same load client, so that every figure has a yardstick.

    python -m bench.reference_server --port 4001 --dir /tmp/ref
"""

from __future__ import annotations

import argparse
import itertools
import os

from twisted.internet import protocol, reactor, threads
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

from bench.procstat import raise_open_files_limit


@implementer(IHalfCloseableProtocol)
class Sink(protocol.Protocol):
    """One upload: append what arrives; answer "ok" at the client's EOF."""

    fd = None

    def dataReceived(self, data):
        if self.fd is None:  # on the first bytes: a port probe leaves no file
            path = os.path.join(self.factory.folder, f"upload-{next(self.factory.numbers)}")
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def readConnectionLost(self):
        fd, self.fd = self.fd, None
        if fd is not None and self.factory.fsync:
            threads.deferToThread(os.fsync, fd).addCallback(lambda _: self._finish(fd))
        else:
            self._finish(fd)

    def _finish(self, fd):
        if fd is not None:
            os.close(fd)
        self.transport.write(b"ok\n")
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        if self.fd is not None:  # the client went away mid-upload
            os.close(self.fd)
            self.fd = None


class SinkFactory(protocol.Factory):
    protocol = Sink

    def __init__(self, folder: str, fsync: bool):
        self.folder = folder
        self.fsync = fsync
        self.numbers = itertools.count()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Minimal Twisted upload sink (the bench's reference).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True, help="folder for the received files")
    parser.add_argument("--fsync", choices=("none", "complete"), default="none")
    parser.add_argument("--backlog", type=int, default=50, help="listen backlog")
    args = parser.parse_args(argv)
    raise_open_files_limit()
    os.makedirs(args.dir, exist_ok=True)
    reactor.listenTCP(args.port, SinkFactory(args.dir, args.fsync == "complete"),
                      interface="127.0.0.1", backlog=args.backlog)
    reactor.run()


if __name__ == "__main__":
    main()
