"""
The load client: N uploads of a given size, in a process of its own so that
its CPU is never counted as the server's.  Prints one JSON object on stdout.

``--mode ws`` speaks the 0.1 protocol as incoming.js does: a ticket from the
backend API (new_upload), MsgUploadReq, chunks within SendAhead, then it
waits for MsgAllDone (the handover is done).  With ``--byte-window`` it
announces the "byte-window" feature and, if the server grants WindowBytes,
sizes its bytes in flight from the acks (see `Flight`).

``--mode tcp`` streams the same bytes over plain TCP to the reference
server, half-closes and waits for its "ok": the yardstick.

Uploads run all at once, or with ``--sequential`` one after the other
(ticket + upload + handover, each timed as one cycle).  ``--slow-stages
100,1000`` instead opens that many uploads, each sending a little and then
1 KiB a second, and says "open <n>" on stderr at each stage so that the
bench can read the server's memory; it holds each stage ``--hold`` seconds.

Content comes from one seeded random block, each upload starting elsewhere
in it, so every file differs and its sha256 is known before it is sent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import struct
import sys
import time

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.xormasker import create_xor_masker
from treq.client import HTTPClient
from twisted.internet import defer, protocol, task
from twisted.web.client import Agent, HTTPConnectionPool

from bench.flight import Flight
from bench.procstat import raise_open_files_limit
from incoming.autobahn_debug import format_debug_lines_lazily

BLOCK_SIZE = 1_048_583  # a prime number of bytes: repeats never line up with chunks
STRIDE = 7919  # where upload i starts in the block: i * STRIDE
TCP_WRITE = 512 * 1024  # tcp mode writes what a 0.1 chunk would hold
SLOW_FIRST = 4096  # --slow-stages: bytes sent at once, then
SLOW_TRICKLE = 1024  # bytes per second per upload
SLOW_SIZE = 1 << 20  # announced size of a slow upload: it never completes
OPEN_AT_ONCE = 50  # tickets asked for, or slow uploads set up, at a time
PIECE_MAX = 4 << 20  # pieces up to this size are views, not copies


class Pattern:
    """The content of every upload, sliced from one seeded random block."""

    def __init__(self, seed: int = 0):
        self._block = random.Random(seed).randbytes(BLOCK_SIZE)
        # The block, then its repeats up to PIECE_MAX more bytes: any piece
        # that long is one slice of it, a view rather than a copy.
        repeats = self._block * (2 + PIECE_MAX // BLOCK_SIZE)
        self._ring = memoryview(repeats[:BLOCK_SIZE + PIECE_MAX])

    def view(self, index: int, pos: int, size: int):
        """piece() without a copy, as a memoryview."""
        if size > PIECE_MAX:
            return memoryview(self.piece(index, pos, size))
        start = (index * STRIDE + pos) % BLOCK_SIZE
        return self._ring[start:start + size]

    def piece(self, index: int, pos: int, size: int) -> bytes:
        start = (index * STRIDE + pos) % BLOCK_SIZE
        parts = []
        while size:
            part = self._block[start:start + size]
            parts.append(part)
            size -= len(part)
            start = 0
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def sha256(self, index: int, length: int) -> str:
        digest = hashlib.sha256()
        for pos in range(0, length, BLOCK_SIZE):
            digest.update(self.piece(index, pos, min(BLOCK_SIZE, length - pos)))
        return digest.hexdigest()


class Job:
    """One upload: what to send, its ticket, its timing and its outcome."""

    def __init__(self, index: int, size: int, pattern: Pattern, allowed: int | None = None):
        self.index = index
        self.size = size
        self.pattern = pattern
        self.sha256 = pattern.sha256(index, size) if allowed is None else None
        self.allowed = size if allowed is None else allowed  # bytes it may send so far
        self.progress = 0  # bytes acknowledged (ws) or written (tcp)
        self.ticket = None
        self.protocol = None
        self.flight = None
        self.started = self.ended = None
        self.marks = {}  # ws: monotonic time of "conf" (MsgUploadConf), "stored" (last ack)
        self.error = None
        self.done = defer.Deferred()
        self.opened = defer.Deferred()  # --slow-stages: its first bytes are in

    def moved(self, progress: int) -> None:
        self.progress = progress
        if progress == self.size:
            self.marks["stored"] = time.monotonic()
        if progress >= min(self.allowed, SLOW_FIRST) and not self.opened.called:
            self.opened.callback(self)

    def finish(self, error: str | None = None) -> None:
        if self.ended is not None:
            return
        self.ended = time.monotonic()
        self.error = error
        if not self.opened.called:
            self.opened.callback(self)
        self.done.callback(self)

    def report(self) -> dict:
        result = {"id": self.ticket, "index": self.index, "size": self.size,
                  "sha256": self.sha256, "error": self.error}
        if self.flight is not None and self.flight.window_bytes is not None:
            result["window"] = self.flight.summary()
        return result


class ZeroOneUpload(WebSocketClientProtocol):
    """One upload over the 0.1 protocol, sent as incoming.js sends it."""

    def onOpen(self):
        job = self.factory.job
        job.protocol = self
        self.pos = 0
        request = {"Id": job.ticket, "LengthBytes": job.size, "Name": f"bench-{job.index}.bin"}
        if self.factory.byte_window:
            request["Features"] = ["byte-window"]
        self._send("MsgUploadReq", request)

    def _send(self, msg_type, data):
        self.sendMessage(json.dumps({"MsgType": msg_type, "MsgData": data}).encode())

    def onMessage(self, payload, isBinary):
        message = json.loads(payload)
        kind, data = message["MsgType"], message.get("MsgData") or {}
        job = self.factory.job
        if kind == "MsgUploadConf":
            job.marks["conf"] = time.monotonic()
            self.chunk = data["ChunkSizeKB"] * 1024
            self.pos = data["FilePos"]
            window = data.get("WindowBytes") if self.factory.byte_window else None
            job.flight = Flight(self.chunk, data["SendAhead"], window)
            self._send("MsgAck", {"Ack": True})
            self.pump()
        elif kind == "MsgChunkAck":
            job.flight.acked()
            job.moved(job.progress + data["ChunkSize"])
            self.pump()
        elif kind == "MsgAllDone":
            job.finish()
        else:
            job.finish(f"{kind} {data}")

    def pump(self):
        job = self.factory.job
        while self.pos < job.allowed:
            size = min(self.chunk, job.allowed - self.pos)
            if not job.flight.may_send(size):
                return
            self._send_chunk(job.pattern.view(job.index, self.pos, size))
            job.flight.sent(size)
            self.pos += size

    def _send_chunk(self, view) -> None:
        """One binary frame, as sendMessage would make it, with the payload
        masked straight from the pattern and written after its header
        rather than joined to it: a client as lean as a browser's, so that
        the bench's CPU goes to the server."""
        size = len(view)
        if size < 126:
            header = struct.pack("!BB", 0x82, 0x80 | size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", 0x82, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x82, 0x80 | 127, size)
        mask = random.getrandbits(32).to_bytes(4, "big")
        self.transport.writeSequence([header + mask, create_xor_masker(mask, size).process(view)])

    def onClose(self, wasClean, code, reason):
        self.factory.job.finish(f"closed before MsgAllDone: {code} {reason}")


class StreamUpload(protocol.Protocol):
    """The same bytes over plain TCP: stream, half-close, wait for "ok"."""

    def connectionMade(self):
        self.job = self.factory.job
        self.job.protocol = self
        self.pos = 0
        self.paused = False
        self.answer = b""
        self.transport.registerProducer(self, True)
        self.pump()

    def pump(self):
        job = self.job
        while not self.paused and self.pos < job.allowed:
            size = min(TCP_WRITE, job.allowed - self.pos)
            data = job.pattern.piece(job.index, self.pos, size)
            self.pos += size
            self.transport.write(data)  # may pause us
            job.moved(self.pos)
        if self.pos == job.size and self.transport.producer is self:
            self.transport.unregisterProducer()
            self.transport.loseWriteConnection()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.pump()

    def stopProducing(self):
        self.paused = True

    def dataReceived(self, data):
        self.answer += data

    def connectionLost(self, reason):
        self.job.finish(None if self.answer == b"ok\n" else f"closed without ok: {reason.value}")


class Client:
    """Starts uploads against one server (possibly through a proxy)."""

    def __init__(self, args, reactor):
        self._args = args
        self._reactor = reactor
        self._host, port = args.target.rsplit(":", 1)
        self._port = int(port)
        self._http = None

    def _connect_factory(self, job):
        if self._args.mode == "tcp":
            factory = protocol.ClientFactory()
            factory.protocol = StreamUpload
        else:
            # The Host header names the server even when we reach it via a proxy.
            factory = WebSocketClientFactory(f"{self._args.api.replace('http', 'ws', 1)}"
                                             "/incoming/0.1/frontend/upload_ws")
            factory.protocol = ZeroOneUpload
            factory.setProtocolOptions(autoPingInterval=None, maxFramePayloadSize=0,
                                       maxMessagePayloadSize=0)
            factory.byte_window = self._args.byte_window
        factory.job = job
        factory.clientConnectionFailed = lambda _, reason: job.finish(f"connect: {reason.value}")
        return factory

    def start(self, job) -> defer.Deferred:
        """Connect and send; fires with the job when it ended."""
        job.started = time.monotonic()
        self._reactor.connectTCP(self._host, self._port, self._connect_factory(job))
        return job.done

    async def ticket(self, job) -> None:
        """new_upload, as the app's backend would call it."""
        if self._args.mode != "ws":
            return
        if self._http is None:
            pool = HTTPConnectionPool(self._reactor)
            pool.maxPersistentPerHost = OPEN_AT_ONCE
            self._http = HTTPClient(Agent(self._reactor, pool=pool))
        response = await self._http.post(
            self._args.api + "/incoming/0.1/backend/new_upload",
            data={"signalFinishURL": self._args.backend, "backendSecret": "bench",
                  "removeFileWhenFinished": "false", "destType": self._args.dest_type})
        text = await response.text()
        if response.code != 200:
            raise RuntimeError(f"new_upload answered {response.code}: {text}")
        job.ticket = text.strip()


def percentile(values, q: float) -> float:
    """Nearest-rank percentile, q in 0..100."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def phases(jobs, cycle_started: dict) -> dict:
    """Median ms of each part of a ws upload: where latency goes."""
    spans = {"ticket": [], "handshake": [], "data": [], "handover": []}
    for job in jobs:
        if job.index in cycle_started:
            spans["ticket"].append(job.started - cycle_started[job.index])
        spans["handshake"].append(job.marks["conf"] - job.started)
        spans["data"].append(job.marks["stored"] - job.marks["conf"])
        spans["handover"].append(job.ended - job.marks["stored"])
    return {name: percentile(values, 50) * 1000 for name, values in spans.items() if values}


async def run_uploads(client: Client, jobs, sequential: bool, ws: bool) -> dict:
    cycle_started = {}  # sequential: the cycle includes getting the ticket
    if sequential:
        began, cpu = time.monotonic(), time.process_time()
        for job in jobs:
            cycle_started[job.index] = time.monotonic()
            await client.ticket(job)
            await client.start(job)
    else:
        gate = defer.DeferredSemaphore(OPEN_AT_ONCE)
        await defer.gatherResults([defer.ensureDeferred(gate.run(
            lambda j=job: defer.ensureDeferred(client.ticket(j)))) for job in jobs])
        began, cpu = time.monotonic(), time.process_time()
        await defer.gatherResults([client.start(job) for job in jobs])
    elapsed = max(job.ended for job in jobs) - began
    total = sum(job.size for job in jobs)
    latencies = [job.ended - cycle_started.get(job.index, job.started) for job in jobs]
    return {
        "bytes": total, "elapsed": elapsed, "mbps": total / elapsed / 1e6,
        "cpu_s": time.process_time() - cpu,  # ours: did the client keep up?
        "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
        "errors": [job.error for job in jobs if job.error],
        "phases_ms": phases(jobs, cycle_started) if ws and not any(j.error for j in jobs) else {},
        "uploads": [dict(job.report(), latency=latency) for job, latency in zip(jobs, latencies)],
    }


async def run_slow(client: Client, jobs, stages, hold: float, reactor) -> dict:
    def trickle():
        for job in jobs:
            if job.opened.called and job.ended is None and job.allowed < job.size:
                job.allowed += SLOW_TRICKLE
                job.protocol.pump()

    ticker = task.LoopingCall(trickle)
    ticker.start(1.0, now=False)
    gate = defer.DeferredSemaphore(OPEN_AT_ONCE)

    async def open_one(job):
        await client.ticket(job)
        client.start(job)
        await job.opened

    opened = 0
    for stage in stages:
        await defer.gatherResults([defer.ensureDeferred(gate.run(
            lambda j=job: defer.ensureDeferred(open_one(j)))) for job in jobs[opened:stage]])
        opened = stage
        print(f"open {stage}", file=sys.stderr, flush=True)
        await task.deferLater(reactor, hold, lambda: None)
    ticker.stop()
    errors = [job.error for job in jobs if job.error]
    for job in jobs:
        job.protocol.transport.abortConnection()
    return {"stages": stages, "errors": errors}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("ws", "tcp"), default="ws")
    parser.add_argument("--target", required=True,
                        help="host:port to connect to (the server, or a proxy in front of it)")
    parser.add_argument("--api", help="ws mode: the server's base URL, http://host:port")
    parser.add_argument("--backend", help="ws mode: the signalFinishURL for new tickets")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes per upload")
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--byte-window", action="store_true",
                        help="announce the byte-window feature in MsgUploadReq")
    parser.add_argument("--slow-stages", help="open uploads in stages, e.g. 100,1000")
    parser.add_argument("--hold", type=float, default=5.0,
                        help="seconds each --slow-stages stage stays open")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dest-type", default="file", help="ws mode: new_upload's destType")
    args = parser.parse_args(argv)
    if args.mode == "ws" and not (args.api and args.backend):
        parser.error("--mode ws needs --api and --backend")
    return args


def main(argv=None):
    args = parse_args(argv)
    raise_open_files_limit()
    format_debug_lines_lazily()  # as the server does: Autobahn's debug lines cost
    pattern = Pattern(args.seed)
    if args.slow_stages:
        stages = [int(n) for n in args.slow_stages.split(",")]
        jobs = [Job(i, SLOW_SIZE, pattern, allowed=SLOW_FIRST) for i in range(stages[-1])]
    else:
        jobs = [Job(i, args.size, pattern) for i in range(args.count)]

    async def run(reactor):
        client = Client(args, reactor)
        if args.slow_stages:
            result = await run_slow(client, jobs, stages, args.hold, reactor)
        else:
            result = await run_uploads(client, jobs, args.sequential, args.mode == "ws")
        json.dump({"mode": args.mode, **result}, sys.stdout)
        sys.stdout.write("\n")

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
