"""The browser benchmark: one file from disk, in the same Chromium and the
same run, sent by a bare loop of WebSocket sends to a sink that throws it
away (tests/browser/sink.py: what the page can send at most), and uploaded
by incoming.js to the server, in rounds that take turns at going first.
The page runs in a Chromium that no driver watches (bare_chromium.py), as
a user's would.  Prints the medians and their ratios (to the last byte
confirmed, the sink's measure, and to onfinished: the server's seal and
the handover, in which the test backend hashes the whole file), and the
CPU seconds per GiB that Chromium, the sink, the server and this test's
process (the backend) spent in each; asserts only that every byte arrived
(timing belongs to the figures, not to a test).  INCOMING_BROWSER_BENCH_MIB
sets the size (64 MiB by default); INCOMING_BROWSER_SERVER_ARGS adds options
to the server (conftest.py)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.procstat import cpu_seconds, tree_cpu_seconds

from .bare_chromium import BareChromium
from .harness import CHROMIUM, CHROMIUM_ARGS, PAGE_LOADED, MiB, free_port, write_test_file
from .test_browser_uploads import assert_handed_over

# The page's side of the sink: read the file in 8 MiB blocks (as incoming.js
# does), send 512 KiB messages (the server's default chunk), keep at most
# 32 MiB buffered (incoming.js's default window), then ask for the count.
BARE_SEND = """async ([url, chunk]) => {
    const file = document.getElementById('files').files[0];
    const started = performance.now();  // as incoming.js's: before the socket opens
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    let first = 0;
    const drained = () => new Promise((resolve) => {
        const check = () => ws.bufferedAmount <= 32 * 1024 * 1024 ? resolve() : setTimeout(check, 1);
        check();
    });
    for (let at = 0; at < file.size; at += 8 * 1024 * 1024) {
        const block = await file.slice(at, at + 8 * 1024 * 1024).arrayBuffer();
        for (let i = 0; i < block.byteLength; i += chunk) {
            await drained();
            first = first || performance.now();
            ws.send(new Uint8Array(block, i, Math.min(chunk, block.byteLength - i)));
        }
    }
    const count = await new Promise((resolve) => {
        ws.onmessage = (e) => resolve(Number(e.data));
        ws.send('count');
    });
    const seconds = (performance.now() - started) / 1000;
    ws.close();
    return {count, seconds, setup: (first - started) / 1000};
}"""


# incoming.js as an app would use it: an uploader with a cheap onprogress
# (the test page's own recording of every event is left out: it measures
# the library, not the test's bookkeeping).  `sent`: from start() to the
# confirmation of the last byte, what the sink's count measures for the
# bare loop (both clocks start before the socket is opened; this one's
# counts the upload request and its answer too); `seconds`: to onfinished,
# the server's seal (its sync at the default --fsync complete) and the
# handover included; `setup`: to the first chunk sent.
LEAN_UPLOAD = """async (ticket) => {
    const file = document.getElementById('files').files[0];
    const started = performance.now();
    let events = 0, acked = 0, first = 0;
    await new Promise((resolve, reject) => {
        const u = new incoming.Uploader(ticket, file);
        u.onprogress = () => {
            events += 1;
            if (!first && u.bytes_tx > 0) { first = performance.now(); }
            if (!acked && u.bytes_acked >= file.size) { acked = performance.now(); }
        };
        u.onfinished = resolve;
        u.onerror = () => reject(new Error(u.error_code + ": " + u.error_msg));
        u.start();
    });
    const done = performance.now();
    return {sent: (acked - started) / 1000, seconds: (done - started) / 1000, events,
            setup: (first - started) / 1000};
}"""

# Rounds (INCOMING_BROWSER_BENCH_ROUNDS, 10 by default; 40 for a steadier
# figure: single rounds of 256 MiB range from 0.65 to 1.45 here,
# and the median of 10 moves by +-0.05 from run to run) after one warm-up
# round of each, not counted (the first read
# of the file and the first socket are slower).  The bare loop goes first in
# even rounds, incoming.js in odd ones (an even count: each first as often):
# whoever runs second may pay for the garbage (8 MiB blocks) the first left.


def start_sink(port: int) -> subprocess.Popen:
    sink = subprocess.Popen([sys.executable, str(Path(__file__).with_name("sink.py")), str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert sink.stdout.readline().strip() == "ready"
    return sink


def cpu_by_side(server_pid: int, sink_pid: int, chromium_pid: int) -> dict:
    """CPU seconds so far of the server, the sink, the benchmark's Chromium
    (all its processes) and this test's own process (the backend)."""
    return {"server": sum(tree_cpu_seconds(server_pid).values()),
            "sink": sum(tree_cpu_seconds(sink_pid).values()),
            "browser": sum(tree_cpu_seconds(chromium_pid).values()),
            "test": cpu_seconds(os.getpid())}


@pytest.fixture
def bench_page(server, backend):
    """The test page in a Chromium that no driver watches (bare_chromium.py:
    under Playwright, its reports of every frame cost more CPU than the
    sending itself, on the same two cores)."""
    chromium = BareChromium(CHROMIUM, CHROMIUM_ARGS)
    try:
        page = chromium.open(backend.test_page(server.host)[0])
        page.wait_for(PAGE_LOADED, 30)
        yield page, chromium.process.pid
    finally:
        chromium.close()


def test_incoming_js_against_a_bare_websocket_sink(tmp_path, server, backend, bench_page):
    """A warm-up, then `rounds` rounds, each the bare sends and incoming.js
    (in turns first); the medians."""
    mib = int(os.environ.get("INCOMING_BROWSER_BENCH_MIB", "64"))
    rounds = int(os.environ.get("INCOMING_BROWSER_BENCH_ROUNDS", "10"))
    assert rounds >= 2 and rounds % 2 == 0, (
        "INCOMING_BROWSER_BENCH_ROUNDS: an even count, 2 or more")
    size = mib * MiB
    path = tmp_path / "bench.bin"
    sha = write_test_file(path, size)
    port = free_port()
    sink = start_sink(port)
    bare, ours, whole = [], [], []
    setups: dict[str, list] = {"bare": [], "ours": []}  # seconds to the first byte sent
    bare_cpu: list[dict] = []  # CPU-s per GiB by side, each round
    ours_cpu: list[dict] = []
    try:
        page, chromium_pid = bench_page
        page.set_input_files("#files", [str(path)])
        gib = size / (1 << 30)

        def spent(before: dict) -> dict:
            after = cpu_by_side(server.process.pid, sink.pid, chromium_pid)
            return {side: (after[side] - before[side]) / gib for side in after}

        def send_bare():
            before = cpu_by_side(server.process.pid, sink.pid, chromium_pid)
            sent = page.evaluate(BARE_SEND, [f"ws://127.0.0.1:{port}/", 512 * 1024])
            assert sent["count"] == size, sent
            bare.append(size / sent["seconds"] / 1e6)
            setups["bare"].append(sent["setup"])
            bare_cpu.append(spent(before))

        def upload():
            ticket = server.new_upload(backend)
            before = cpu_by_side(server.process.pid, sink.pid, chromium_pid)
            uploaded = page.evaluate(LEAN_UPLOAD, ticket)
            assert uploaded["events"] > size // (512 * 1024), uploaded  # it went in chunks
            assert 0 < uploaded["sent"] <= uploaded["seconds"], uploaded
            ours.append(size / uploaded["sent"] / 1e6)
            setups["ours"].append(uploaded["setup"])
            whole.append(size / uploaded["seconds"] / 1e6)
            ours_cpu.append(spent(before))
            (call,) = backend.calls_for(ticket)
            assert_handed_over(call, ticket, "bench.bin", sha, size, server.storage)

        for round_ in range(rounds + 1):
            if round_ == 1:  # the warm-up is over
                del bare[:], ours[:], whole[:], bare_cpu[:], ours_cpu[:]
                del setups["bare"][:], setups["ours"][:]
            for phase in (send_bare, upload) if round_ % 2 == 0 else (upload, send_bare):
                phase()
    finally:
        sink.terminate()
        sink.wait(10)
        path.unlink()
    sink_mbps, ours_mbps = statistics.median(bare), statistics.median(ours)
    whole_mbps = statistics.median(whole)
    ratios = [o / b for o, b in zip(ours, bare, strict=True)]  # each round's pair
    quartiles = statistics.quantiles(ratios, n=4)  # the first quartile, the median, the third
    print(f"\n{mib} MiB from Chromium, medians of {rounds} alternating rounds after a warm-up: "
          f"bare WebSocket "
          f"sink {sink_mbps:.1f} MB/s, incoming.js to the last confirmation {ours_mbps:.1f} MB/s "
          f"({ours_mbps / sink_mbps:.2f}x), to onfinished (seal and handover included) "
          f"{whole_mbps:.1f} MB/s ({whole_mbps / sink_mbps:.2f}x); rounds: sink "
          f"{[round(x, 1) for x in bare]}, incoming.js {[round(x, 1) for x in ours]}, "
          f"to onfinished {[round(x, 1) for x in whole]}; each round's ratio (to the last "
          f"confirmation) {[round(r, 2) for r in ratios]}, their median {quartiles[1]:.2f} "
          f"and quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f}; "
          f"at {time.strftime('%H:%M:%S')}")

    def median_cpu(measured: list, side: str) -> float:
        return statistics.median(r[side] for r in measured)

    print(f"CPU-s per GiB, medians: the bare loop: browser {median_cpu(bare_cpu, 'browser'):.1f}, "
          f"sink {median_cpu(bare_cpu, 'sink'):.1f}; incoming.js (to onfinished): browser "
          f"{median_cpu(ours_cpu, 'browser'):.1f}, server {median_cpu(ours_cpu, 'server'):.1f}; "
          f"this test's process (the backend): {median_cpu(bare_cpu, 'test'):.1f} in the bare "
          f"loop's rounds, {median_cpu(ours_cpu, 'test'):.1f} in incoming.js's")
    print(f"to the first chunk sent, median ms: the bare loop "
          f"{statistics.median(setups['bare']) * 1000:.1f}, incoming.js "
          f"{statistics.median(setups['ours']) * 1000:.1f}")
