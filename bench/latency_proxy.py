"""
A userspace TCP proxy that makes loopback look like a long link: each
direction delays every byte by a one-way delay (default 25 ms, so a 50 ms
round trip) and carries at most a given rate (default 100 MB/s).  Bytes
queue as at a router; above ``--buffer`` bytes queued the sender is paused,
which TCP turns into back-pressure.  The bench uses it to show what a window
of SendAhead chunks costs on a long link.

    python -m bench.latency_proxy --listen 4100 --target 127.0.0.1:4000
"""

from __future__ import annotations

import argparse
from collections import deque

from twisted.internet import protocol, reactor
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class Link:
    """One direction: bytes leave at most ``rate`` bytes/s and arrive
    ``delay`` s later at ``sink`` (a transport, which may pause us)."""

    def __init__(self, clock, delay: float, rate: float, buffer: int, source, sink):
        self._clock = clock
        self._delay = delay
        self._rate = rate
        self._buffer = buffer
        self._source = source  # transport we read from: paused when the queue is full
        self._sink = sink
        self._queue = deque()  # (arrival time, bytes)
        self._queued = 0
        self._free_at = 0.0  # when the link has sent everything queued so far
        self._timer = None
        self._source_paused = False
        self._sink_paused = False
        self._end = None  # after the queue drains: "half" (EOF) or "full" close
        sink.registerProducer(self, True)

    def send(self, data: bytes) -> None:
        now = self._clock.seconds()
        self._free_at = max(now, self._free_at) + len(data) / self._rate
        self._queue.append((self._free_at + self._delay, data))
        self._queued += len(data)
        if self._queued > self._buffer and not self._source_paused:
            self._source_paused = True
            self._source.pauseProducing()
        self._schedule()

    def finish(self, how: str) -> None:
        """The source is done ("half": sent EOF, "full": gone); pass it on in order."""
        if self._end != "full":
            self._end = how
        self._schedule()

    def _schedule(self):
        if self._timer is not None or self._sink_paused:
            return
        if self._queue:
            wait = max(0.0, self._queue[0][0] - self._clock.seconds())
            self._timer = self._clock.callLater(wait, self._deliver)
        elif self._end is not None:
            self._close_sink()

    def _deliver(self):
        self._timer = None
        now = self._clock.seconds()
        while self._queue and self._queue[0][0] <= now and not self._sink_paused:
            _, data = self._queue.popleft()
            self._queued -= len(data)
            self._sink.write(data)
        if self._source_paused and self._queued <= self._buffer // 2:
            self._source_paused = False
            self._source.resumeProducing()
        self._schedule()

    def _close_sink(self):
        end, self._end = self._end, None
        if end == "half":
            self._sink.loseWriteConnection()
        else:
            self._sink.unregisterProducer()
            self._sink.loseConnection()

    def pauseProducing(self):
        self._sink_paused = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def resumeProducing(self):
        self._sink_paused = False
        self._deliver()

    def stopProducing(self):
        self.pauseProducing()
        self._queue.clear()


@implementer(IHalfCloseableProtocol)
class End(protocol.Protocol):
    """One end of a proxied connection; what it reads goes over ``link``."""

    link = None
    peer = None

    def dataReceived(self, data):
        self.link.send(data)

    def readConnectionLost(self):
        self.link.finish("half")

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        if self.link is not None:
            self.link.finish("full")
        elif self.peer is not None:  # the other end never came up
            self.peer.transport.loseConnection()


class ServerEnd(End):
    """Our connection to the target, made for one client connection."""

    def connectionMade(self):
        self.factory.client_end.connected_to(self)


class ClientEnd(End):
    """A connection from a client: waits (paused) until the target answers."""

    def connectionMade(self):
        self.transport.pauseProducing()
        settings = self.factory
        target = protocol.ClientFactory.forProtocol(ServerEnd)
        target.client_end = self
        target.clientConnectionFailed = lambda _, reason: self.transport.loseConnection()
        reactor.connectTCP(settings.target_host, settings.target_port, target)

    def connected_to(self, server_end):
        if not self.transport.connected:  # the client left while we connected
            server_end.transport.loseConnection()
            return
        s = self.factory
        self.peer, server_end.peer = server_end, self
        self.link = Link(reactor, s.delay, s.rate, s.buffer, self.transport, server_end.transport)
        server_end.link = Link(reactor, s.delay, s.rate, s.buffer, server_end.transport,
                               self.transport)
        self.transport.resumeProducing()


class ProxyFactory(protocol.Factory):
    protocol = ClientEnd

    def __init__(self, target: str, delay: float, rate: float, buffer: int):
        host, port = target.rsplit(":", 1)
        self.target_host, self.target_port = host, int(port)
        self.delay, self.rate, self.buffer = delay, rate, buffer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--target", required=True, help="host:port to forward to")
    parser.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay")
    parser.add_argument("--rate-mbps", type=float, default=100.0, help="MB/s each way")
    parser.add_argument("--buffer", type=int, default=8 << 20, help="bytes queued per direction")
    parser.add_argument("--backlog", type=int, default=50, help="listen backlog")
    args = parser.parse_args(argv)
    factory = ProxyFactory(args.target, args.delay_ms / 1000, args.rate_mbps * 1e6, args.buffer)
    reactor.listenTCP(args.listen, factory, interface="127.0.0.1", backlog=args.backlog)
    reactor.run()


if __name__ == "__main__":
    main()
