"""100 uploads (0 B to 4 MiB) to three servers that share uploads (one
folder, one Redis prefix) while the servers are killed with SIGKILL in turn
and started again: every browser ends with MsgAllDone and every file
reaches the backend whole.

Browsers behave like incoming.js: each connection goes to any of the three
servers (as behind a round-robin balancer); after a lost connection, a
refused one, or a MsgError worth a retry (3: busy, while a dead server's
lease runs out; 12: the store is away) they wait a short backoff and try
again, resuming from FilePos."""

from __future__ import annotations

import hashlib
import os
import random
import time

import pytest_twisted
from twisted.internet import defer, error, reactor, task

from redis_server import redis_server, unique_prefix  # noqa: F401 (fixture)
from test_crash_random import Incarnations
from test_twistd import backend, free_port, new_upload  # noqa: F401 (fixture)
from wsclient import upload

SEED = int(os.environ.get("INCOMING_CRASH_SEED", "20261201"))
KiB, MiB = 1024, 1024 * 1024
RETRIED = (3, 12)


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


async def browser(servers, ticket, data, rng, deadline, result):
    pace = rng.choice((0.0, 0.02, 0.05))
    while time.monotonic() < deadline:
        port = rng.choice(servers).port
        result["connections"] += 1
        try:
            outcome = await upload(port, ticket, data=data, pace=pace, features=("takeover",))
        except error.ConnectError:
            await sleep(rng.uniform(0.1, 0.4))
            continue
        last = outcome.last()
        if last is not None and last[0] == "MsgAllDone":
            result["end"] = "MsgAllDone"
            return
        if last is not None and last[0] in ("MsgError", "MsgCancel"):
            if last[0] == "MsgCancel" or last[1].get("ErrorCode") not in RETRIED:
                result["end"] = f"{last[0]} {last[1]}"
                return
        await sleep(rng.uniform(0.1, 0.4))
    result["end"] = "gave up: deadline"


@pytest_twisted.ensureDeferred
async def test_uploads_survive_servers_killed_in_turn(tmp_path, redis_server, backend):  # noqa: F811
    seed = f"(seed {SEED}; INCOMING_CRASH_SEED={SEED} to rerun)"
    rng = random.Random(SEED)
    sizes = [0, 1, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1]
    sizes += [rng.randint(2, 16 * KiB) for _ in range(35)]
    sizes += [rng.randint(100 * KiB, 900 * KiB) for _ in range(45)]
    sizes += [rng.randint(1 * MiB, 4 * MiB) for _ in range(15)]
    assert len(sizes) == 100
    contents = [rng.randbytes(n) for n in sizes]
    folder = tmp_path / "shared-storage"
    shared = ("--chunk-size", "64", "--storage-dir", str(folder), "--state", redis_server.url,
              "--state-prefix", unique_prefix())
    servers = []
    for n in range(3):
        home = tmp_path / f"server{n}"
        home.mkdir()
        servers.append(Incarnations(home, free_port(), *shared))
    for s in servers:
        await s.start()
    deadline = time.monotonic() + 150.0
    try:
        tickets = [await new_upload(rng.choice(servers).server, backend,
                                    removeFileWhenFinished="false") for _ in sizes]
        results = {t: {"connections": 0, "end": None} for t in tickets}
        slots = defer.DeferredSemaphore(20)
        starts = random.Random(SEED - 1)

        async def tab(i, ticket):
            await sleep(starts.uniform(0.0, 15.0))
            await slots.run(lambda: defer.ensureDeferred(browser(
                servers, ticket, contents[i], random.Random(SEED + i), deadline,
                results[ticket])))

        tabs = defer.DeferredList([defer.ensureDeferred(tab(i, t)) for i, t in enumerate(tickets)],
                                  fireOnOneErrback=True, consumeErrors=True)
        ended = []
        tabs.addBoth(ended.append)
        killer = random.Random(SEED + 1000)
        turn = 0
        while not ended and time.monotonic() < deadline:
            await sleep(killer.uniform(0.5, 1.5))
            if ended:
                break
            victim = servers[turn % len(servers)]
            turn += 1
            await victim.kill()
            await sleep(killer.uniform(0.2, 1.0))
            await victim.start()
        await tabs
        failed = {t: r for t, r in results.items() if r["end"] != "MsgAllDone"}
        assert not failed, f"{seed} {failed}"
        assert turn >= 4, f"{seed}: only {turn} kills"
        for ticket, data in zip(tickets, contents, strict=True):
            calls = [c for c in backend.calls if c["id"] == ticket]
            assert calls, f"{seed} {ticket} never handed over"
            assert all(c["cancelled"] == "no" for c in calls), (seed, calls)
            assert calls[-1]["sha256"] == hashlib.sha256(data).hexdigest(), (seed, ticket)
            assert (folder / ticket).read_bytes() == data, (seed, ticket)
        print(f"\n{turn} kills; {sum(r['connections'] for r in results.values())} connections")
    finally:
        for s in servers:
            await s.stop()
