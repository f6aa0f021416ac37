"""Random kill -9 of a real `twistd incoming` while many browsers upload.

Clients behave like incoming.js: on any lost connection they wait a short
backoff and reconnect with the same ticket, resuming from FilePos, until
MsgAllDone.  A killer SIGKILLs the server at random moments and starts a
new one on the same folder and port.  Every upload must end with
MsgAllDone and reach the backend intact (at least once), never cancelled.

The seed is fixed (override with INCOMING_CRASH_SEED) and printed in every
assertion message.  It fixes the sizes, contents, start times, backoffs
and kill intervals; the interleaving with the processes still varies from
run to run, so a failure may need a few runs with its seed to reappear.
"""

from __future__ import annotations

import hashlib

import os
import random
import signal
import time

import pytest
import pytest_twisted
import test_twistd
from fakes import stored_records
from incoming.ticket_log import TICKETS_NAME
from test_twistd import TwistdServer, backend, free_port, new_upload  # noqa: F401 (fixture)
from twisted.internet import defer, error, reactor, task
from wsclient import upload

SEED = int(os.environ.get("INCOMING_CRASH_SEED", "20261201"))
KiB, MiB = 1024, 1024 * 1024


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Incarnations:
    """`twistd incoming` on one folder and one fixed port, started again
    after each kill; keeps the log of every process (TwistdServer rewrites
    twistd.log at each start)."""

    def __init__(self, tmp_path, port, *args):
        self.tmp_path = tmp_path
        self.port = port
        self.args = args
        self.server: TwistdServer | None = None
        self.logs: list[str] = []
        self.kills = 0

    async def start(self, *args) -> TwistdServer:
        # TwistdServer takes a new free port per process; a browser
        # reconnects to the same URL, so pin it to ours.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(test_twistd, "free_port", lambda: self.port)
            self.server = TwistdServer(self.tmp_path, *(args or self.args))
        await self.server.ready()
        return self.server

    async def _ended(self, server):
        await server.stop()
        self.logs.append(server.log())
        (self.tmp_path / "twistd-all.log").write_text(self.log())

    async def kill(self):
        server, self.server = self.server, None
        server.process.send_signal(signal.SIGKILL)
        await self._ended(server)
        self.kills += 1

    async def stop(self):
        """SIGTERM: a graceful stop."""
        server, self.server = self.server, None
        if server is not None:
            await self._ended(server)

    def log(self) -> str:
        current = [self.server.log()] if self.server is not None else []
        return "".join(f"==== process {i + 1} ====\n{text}"
                       for i, text in enumerate(self.logs + current))

    def lines_about(self, ticket: str, last: int = 40) -> str:
        lines = [line for line in self.log().splitlines()
                 if ticket in line or line.startswith("====")]
        return "\n".join(lines[-last:])


def make_sizes(rng: random.Random) -> list[int]:
    """100 sizes, 0 B to 20 MiB, around chunk boundaries (64 KiB) too."""
    sizes = [0, 0, 1, 1, 2, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1]
    sizes += [rng.randint(3, 16 * KiB) for _ in range(36)]
    sizes += [rng.randint(100 * KiB, 900 * KiB) for _ in range(38)]
    sizes += [rng.randint(1 * MiB, 4 * MiB) for _ in range(12)]
    sizes += [rng.randint(5 * MiB, 20 * MiB) for _ in range(6)]
    assert len(sizes) == 100
    rng.shuffle(sizes)
    return sizes


# Seconds between chunks of 64 KiB, as links of different speeds: none
# (as fast as loopback goes), ~6.5 MB/s, ~3 MB/s, ~1.6 MB/s.  Without slow
# links every upload would take a few milliseconds and almost no kill would
# fall in the middle of a file.
PACES = (0.0, 0.01, 0.02, 0.04)


async def browser(port, ticket, data, rng, deadline, result):
    """One browser tab: upload, reconnect after every lost connection with a
    0.1-0.5 s backoff, resume from FilePos, stop at MsgAllDone; give up on
    MsgError or MsgCancel (an incoming.js would show the user a failure), or
    once time.monotonic() passes deadline[0]."""
    pace = rng.choice(PACES)
    while True:
        if time.monotonic() > deadline[0]:
            result["end"] = "gave up: deadline"
            return
        result["connections"] += 1
        try:
            outcome = await upload(port, ticket, data=data, name=f"{ticket}.bin", pace=pace)
        except error.ConnectError:  # the server is down or not listening yet
            result["refused"] += 1
            await sleep(rng.uniform(0.1, 0.5))
            continue
        for msg_type, msg_data in outcome.messages:
            if msg_type == "MsgUploadConf" and msg_data["FilePos"] > 0:
                result["resumed_at"].append(msg_data["FilePos"])
            if msg_type in ("MsgError", "MsgCancel"):
                result["end"] = f"{msg_type} {msg_data}"
                return
        if outcome.last()[0] == "MsgAllDone":
            result["end"] = "MsgAllDone"
            return
        await sleep(rng.uniform(0.1, 0.5))


def folder_listing(storage):
    """(data files, .part files, records by id, anything else)."""
    data, parts, other = set(), set(), set()
    records = stored_records(storage)
    for name in os.listdir(storage):
        if name.endswith(".part"):
            parts.add(name)
        elif name in (".incoming.lock", TICKETS_NAME):  # the folder lock, the record log
            continue
        elif "." not in name:
            data.add(name)
        else:
            other.add(name)
    return data, parts, records, other


@pytest_twisted.ensureDeferred
async def test_uploads_survive_random_kill_9(tmp_path, backend):  # noqa: F811
    seed = f"(seed {SEED}; INCOMING_CRASH_SEED={SEED} to rerun)"
    rng = random.Random(SEED)
    sizes = make_sizes(rng)
    contents = [rng.randbytes(n) for n in sizes]
    expected = [sha(c) for c in contents]
    servers = Incarnations(tmp_path, free_port(), "--chunk-size", "64", "--retention", "600")
    server = await servers.start()
    deadline = [time.monotonic() + 240.0]  # the browsers give up after it
    try:
        tickets = [await new_upload(server, backend, removeFileWhenFinished="false")
                   for _ in sizes]
        by_ticket = dict(zip(tickets, range(len(tickets)), strict=True))
        results = {t: {"connections": 0, "refused": 0, "resumed_at": [], "end": None}
                   for t in tickets}
        started = time.monotonic()
        slots = defer.DeferredSemaphore(20)  # at most 20 tabs uploading at once

        async def tab(i, ticket):
            # users start uploads over ~20 s, so the crashes hit every phase
            # of an upload (first connect, streaming, handover, the end)
            await sleep(rng_starts.uniform(0.0, 20.0))
            await slots.run(lambda: defer.ensureDeferred(browser(
                servers.port, ticket, contents[i], random.Random(SEED + 1 + i), deadline,
                results[ticket])))

        rng_starts = random.Random(SEED - 1)
        tabs = defer.DeferredList(
            [defer.ensureDeferred(tab(i, t)) for i, t in enumerate(tickets)],
            fireOnOneErrback=True, consumeErrors=True)
        all_ended = []
        tabs.addBoth(all_ended.append)

        rng_kill = random.Random(SEED + 1000)
        while not all_ended:
            until = time.monotonic() + rng_kill.uniform(0.5, 3.0)
            while not all_ended and time.monotonic() < until:
                await sleep(0.02)
            if all_ended:
                break
            await servers.kill()
            if time.monotonic() > deadline[0]:
                break  # the browsers see the server gone and give up
            await servers.start()
        await tabs
        chaos = time.monotonic() - started
        kills = servers.kills

        def summary():
            return (f"{seed}; {servers.kills} kills; full log in "
                    f"{tmp_path / 'twistd-all.log'}")

        failed = {t: r for t, r in results.items() if r["end"] != "MsgAllDone"}
        assert not failed, (
            f"{len(failed)} uploads did not end with MsgAllDone {summary()}:\n"
            + "\n".join(f"{t} ({sizes[by_ticket[t]]} B): {r}\n{servers.lines_about(t)}"
                        for t, r in list(failed.items())[:5]))
        assert servers.kills >= 3, f"only {servers.kills} kills: the test proved little {seed}"

        cancels = [c for c in backend.calls if c["cancelled"] != "no"]
        assert not cancels, f"cancellations reached the backend {summary()}: {cancels}"
        handed = {}
        for call in backend.calls:
            i = by_ticket[call["id"]]
            handed[call["id"]] = handed.get(call["id"], 0) + 1
            where = f"handover of {call['id']} ({sizes[i]} B) {summary()}"
            assert call["sha256"] == expected[i], where
            assert call["filename"] == str(server.storage / call["id"]), where
            assert call["size_at_handover"] == sizes[i], where
            if call.get("content") is not None:
                assert sha(call["content"]) == expected[i], where
        missing = set(tickets) - set(handed)
        assert not missing, f"never handed over {summary()}: {missing}"

        data, parts, records, other = folder_listing(server.storage)
        assert not parts, f".part files left {summary()}: {parts}"
        assert not other, f"unexpected files {summary()}: {other}"
        not_ended = {i: r["state"] for i, r in records.items() if r["state"] != "finished"}
        assert not not_ended, f"open records left {summary()}: {not_ended}"
        assert set(records) == set(tickets) and data == set(tickets), summary()

        # One more kill -9 with everything finished: a browser that
        # reconnects learns from the tombstone that its upload is done.
        calls_before = len(backend.calls)
        await servers.kill()
        server = await servers.start()
        again = await defer.gatherResults(
            [upload(server.port, t, data=contents[by_ticket[t]]) for t in tickets])
        for t, outcome in zip(tickets, again, strict=True):
            assert outcome.types() == ["MsgUploadConf", "MsgAllDone"], (t, outcome, summary())
            assert outcome.first("MsgUploadConf")["FilePos"] == sizes[by_ticket[t]], summary()
        assert len(backend.calls) == calls_before, f"a finished upload was handed over again {seed}"
        await servers.stop()

        # A restart with a short --retention: tombstones older than it go at
        # restore, the younger ones when their remaining time is up; the
        # data files stay (removeFileWhenFinished=false).
        ended_at = {i: r["ended_at"] for i, r in folder_listing(server.storage)[2].items()}
        spawned = time.time()
        retention = max(1.0, spawned - (max(ended_at.values()) - 2.0))
        old = {i for i, at in ended_at.items() if at + retention < spawned}
        server = await servers.start("--chunk-size", "64", "--retention", f"{retention:.3f}")
        kept = set(folder_listing(server.storage)[2])
        assert not (old & kept), (  # the server restores before it listens
            f"expired tombstones still there once the server listens {summary()}: {old & kept}")
        for _ in range(300):
            if not folder_listing(server.storage)[2]:
                break
            await sleep(0.05)
        data, parts, records, other = folder_listing(server.storage)
        assert not records, f"tombstones outlived --retention {retention:.1f} s {summary()}"
        assert data == set(tickets) and not parts and not other, summary()
        for t in tickets:
            assert sha((server.storage / t).read_bytes()) == expected[by_ticket[t]], (t, seed)
        gone = await upload(server.port, tickets[0], data=contents[0])
        assert gone.last()[0] == "MsgError" and gone.last()[1]["ErrorCode"] == 2, gone
    finally:
        deadline[0] = 0.0  # after a failure: browsers still running stop
        await servers.stop()

    resumed = sum(1 for r in results.values() if r["resumed_at"])
    resumes = sum(len(r["resumed_at"]) for r in results.values())
    print(f"\nrandom kill -9 {seed}: {kills} kills, {len(tickets)} uploads "
          f"({sum(sizes) / MiB:.0f} MiB), {sum(r['connections'] for r in results.values())} "
          f"connections, {resumed} uploads resumed mid-file ({resumes} times), "
          f"{sum(n - 1 for n in handed.values())} repeated handovers, chaos {chaos:.1f} s, "
          f"{len(old)} tombstones expired at restore, {len(tickets) - len(old)} after")


# The shape of the second test.  An upload's idle timer measures time since
# its last progress.  A restarted server continues it from the record's
# touched_at: idle_left = idle_timeout - (now - touched_at).  A server that
# wrote touched_at only at connect, pause and disconnect would, after a
# kill -9 (no disconnect is recorded) of a connection that streamed longer
# than the idle timeout, find touched_at = the connect time, idle_left <= 0,
# and cancel the upload at once, although it never was idle.  Liveness is
# written at least every LIVENESS_SECONDS (30 s: longer than this test) or
# LIVENESS_BYTES (64 MiB).  So the test streams steadily for longer than the
# idle timeout, past 64 MiB, and is killed shortly (~0.5 s) after the 64 MiB
# mark: only the bytes rule can have refreshed touched_at, and it leaves the
# restarted server several seconds to see the browser come back.
IDLE_TIMEOUT = 6.0
CHUNK_KB = 2048
PACE = 0.25  # one 2 MiB chunk per 0.25 s: 8 MiB/s, 64 MiB after ~8 s
KILL_AT = 68 * MiB


@pytest_twisted.ensureDeferred
async def test_streaming_longer_than_the_idle_timeout_survives_a_kill_9(tmp_path, backend):  # noqa: F811
    from incoming.records import LIVENESS_BYTES, LIVENESS_SECONDS

    assert LIVENESS_BYTES < KILL_AT < LIVENESS_BYTES + 8 * MiB
    streamed_for = KILL_AT / (CHUNK_KB * KiB / PACE)
    assert IDLE_TIMEOUT + 1 < streamed_for < LIVENESS_SECONDS
    data = random.Random(SEED).randbytes(96 * MiB + 12345)
    args = ("--idle-timeout", f"{IDLE_TIMEOUT:g}", "--handover-timeout", "5",
            "--chunk-size", str(CHUNK_KB), "--retention", "600")
    servers = Incarnations(tmp_path, free_port(), *args)
    server = await servers.start()
    try:
        ticket = await new_upload(server, backend, removeFileWhenFinished="false")
        part = server.storage / f"{ticket}.part"
        connected = time.monotonic()
        first = upload(server.port, ticket, data=data, pace=PACE)
        for _ in range(int(3 * streamed_for / 0.02)):
            if part.exists() and part.stat().st_size >= KILL_AT:
                break
            await sleep(0.02)
        streaming = time.monotonic() - connected
        record = stored_records(server.storage)[ticket]
        touched_ago = time.time() - record["touched_at"]
        await servers.kill()
        before = await first
        held = part.stat().st_size
        shape = (f"streamed {held / MiB:.1f} MiB for {streaming:.1f} s, record {record['state']}"
                 f" touched {touched_ago:.1f} s before the kill")
        assert held >= KILL_AT and streaming > IDLE_TIMEOUT + 1, shape
        assert before.types()[0] == "MsgUploadConf" and before.last()[0] == "MsgChunkAck", shape

        server = await servers.start()
        while True:  # as incoming.js: reconnect until the server is back
            try:
                after = await upload(server.port, ticket, data=data)
                break
            except error.ConnectError:
                await sleep(0.1)
        where = f"{shape}; after the restart: {after.messages[:3]}\n{servers.lines_about(ticket)}"
        assert after.types()[0] == "MsgUploadConf", where
        assert after.first("MsgUploadConf")["FilePos"] == held > 0, where
        assert after.last()[0] == "MsgAllDone", where
        assert (server.storage / ticket).stat().st_size == len(data)
        assert sha((server.storage / ticket).read_bytes()) == sha(data)
        assert backend.calls, where
        for call in backend.calls:
            assert call["cancelled"] == "no", (call.get("cancelReason"), where)
            assert call["sha256"] == sha(data), where
    finally:
        await servers.stop()
    print(f"\nidle timeout {IDLE_TIMEOUT:g} s: {shape}; resumed at {held / MiB:.1f} MiB")
