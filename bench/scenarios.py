"""
One measurement = a fresh server process (so peak memory is this
scenario's), optionally the latency proxy in front of it, and the load
client in a third process.  The server's CPU time and peak RSS are read
from /proc (with ``--workers``, of the parent and its workers together);
afterwards every stored file is hashed and compared with the sha256 the
client computed from what it sent, then deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass

from bench.procstat import cpu_seconds, memory_kib, tree_cpu_seconds, tree_memory_kib
from bench.servers import REPO, start_floor, start_incoming, start_proxy, start_reference

GIB = 1 << 30
MIB = 1 << 20


class ScenarioFailed(Exception):
    """The client failed, timed out, or a stored file did not match."""


def human_size(size: int) -> str:
    for unit, factor in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


@dataclass(frozen=True)
class Load:
    """count uploads of size bytes, all at once or one after the other."""

    count: int
    size: int
    sequential: bool = False

    @property
    def name(self) -> str:
        how = " sequential" if self.sequential else " concurrent" if self.count > 1 else ""
        return f"{self.count} x {human_size(self.size)}{how}"

    def budget(self) -> float:
        """Seconds the client may take: generous, yet a hang cannot stall the run."""
        return 30 + self.count * self.size / 20e6


@dataclass(frozen=True)
class Setup:
    """What serves (Incoming!! with some options, or the reference) and
    whether the client announces the byte window.  workers > 0: records in
    the bench's Redis under a fresh --state-prefix, in one process (1) or
    with --workers (more)."""

    label: str
    options: tuple = ()
    reference: bool = False
    floor: bool = False  # bench.floor_server: the stack's floor, 0.1 protocol
    byte_window: bool = False
    workers: int = 0
    profile: str | None = None  # twistd --profile: cProfile statistics to this file
    dest_type: str = "file"  # new_upload's destType (s3: options name the bucket)

    def start(self, folder: str, storage: str, fsync: str, redis_url: str | None = None):
        if self.reference:
            return start_reference(folder, storage, fsync)
        if self.floor:
            return start_floor(folder, storage, fsync)
        options = ("--fsync", fsync, *self.options)
        if self.workers:
            if redis_url is None:
                raise RuntimeError(f"{self.label}: no redis-server (run with --workers)")
            options += ("--state", redis_url, "--state-prefix", f"bench-{uuid.uuid4().hex[:12]}:")
        if self.workers > 1:
            options += ("--workers", str(self.workers))
        return start_incoming(folder, storage, *options, workers=max(1, self.workers),
                              profile=self.profile)

    def client_argv(self, port: int, target: int, backend_url: str) -> list:
        argv = ["--target", f"127.0.0.1:{target}"]
        if self.reference:
            return argv + ["--mode", "tcp"]
        argv += ["--mode", "ws", "--api", f"http://127.0.0.1:{port}", "--backend", backend_url,
                 "--dest-type", self.dest_type]
        return argv + (["--byte-window"] if self.byte_window else [])


def run_client(argv: list, budget: float, on_stage=None) -> dict:
    """Run bench.loadclient; call on_stage(n) at each "open n"; return its JSON."""
    process = subprocess.Popen([sys.executable, "-m", "bench.loadclient", *argv], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer = threading.Timer(budget, process.kill)
    killer.start()
    output = []
    reader = threading.Thread(target=lambda: output.append(process.stdout.read()))
    reader.start()
    complaints = []
    for line in process.stderr:
        if line.startswith("open ") and on_stage is not None:
            on_stage(int(line.split()[1]))
        else:
            complaints.append(line)
    process.wait()
    reader.join()
    timed_out = not killer.is_alive() and process.returncode < 0
    killer.cancel()
    if timed_out:
        raise ScenarioFailed(f"load client killed after its budget of {budget:.0f} s")
    if process.returncode != 0:
        raise ScenarioFailed("load client failed: " + "".join(complaints[-15:]))
    report = json.loads(output[0])
    if report["errors"]:
        raise ScenarioFailed(f"{len(report['errors'])} uploads failed, e.g. {report['errors'][0]}")
    return report


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_incoming(uploads: list, handovers: dict, s3=None) -> dict:
    """Each upload was handed over and its file hashes to what was sent.

    The sha256 field of the handover must match too, when the server sent one.
    An s3:// location is read back (and deleted) through ``s3`` (bench.s3.S3Bench).
    """
    sent_digest = 0
    for upload in uploads:
        form = handovers.get(upload["id"])
        if form is None:
            raise ScenarioFailed(f"no handover for upload {upload['id']}")
        location = form["filename"]
        stored = s3.sha256_of(location) if location.startswith("s3://") else file_sha256(location)
        if stored != upload["sha256"]:
            raise ScenarioFailed(f"upload {upload['id']}: stored sha256 {stored} "
                                 f"!= sent {upload['sha256']}")
        if "sha256" in form:
            sent_digest += 1
            if form["sha256"] != upload["sha256"]:
                raise ScenarioFailed(f"upload {upload['id']}: handover sha256 "
                                     f"{form['sha256']} != sent {upload['sha256']}")
    return {"verified": len(uploads), "handover_sha256": sent_digest}


def verify_reference(uploads: list, storage: str) -> dict:
    """The reference names files by arrival: compare the sets of digests."""
    stored = Counter(file_sha256(os.path.join(storage, name)) for name in os.listdir(storage))
    sent = Counter(upload["sha256"] for upload in uploads)
    if stored != sent:
        raise ScenarioFailed(f"reference stored {sum(stored.values())} files; "
                             f"{sum((sent - stored).values())} sent ones missing or different")
    return {"verified": len(uploads), "handover_sha256": None}


def cpu_snapshot(server, redis) -> dict:
    """{pid: CPU seconds so far} of the server's process tree, and with Redis
    of redis-server ("redis") and this bench process ("bench": the backend's
    threads)."""
    snapshot = tree_cpu_seconds(server.pid)
    if redis is not None:
        snapshot["redis"] = cpu_seconds(redis.pid)
        snapshot["bench"] = sum(os.times()[:2])
    return snapshot


def tree_total(snapshot: dict) -> float:
    """The server's CPU seconds in a snapshot: its processes, keyed by pid."""
    return sum(seconds for key, seconds in snapshot.items() if isinstance(key, int))


def cpu_by_process(server_pid: int, before: dict, after: dict) -> dict:
    """CPU seconds spent between two snapshots, by process name.  A worker
    that ended meanwhile shows minus what it had (its parent reaped it and
    counts all of its time); one started meanwhile counts from its start."""
    spent = {}
    workers = sorted(pid for pid in before.keys() | after.keys()
                     if isinstance(pid, int) and pid != server_pid)
    names = {server_pid: "parent" if workers else "server", "redis": "redis-server",
             "bench": "bench (backend)"}
    for number, pid in enumerate(workers, 1):
        names[pid] = f"worker {number}" + ("" if pid in before else " (new)") + \
            ("" if pid in after else " (ended)")
    for key, name in names.items():
        if key in before or key in after:
            spent[name] = after.get(key, 0.0) - before.get(key, 0.0)
    return spent


class Bench:
    """What every measurement shares: the backend, fsync level, proxy link."""

    def __init__(self, backend, fsync: str, delay_ms: float, rate_mbps: float, redis=None,
                 s3=None):
        self.backend = backend
        self.s3 = s3  # a bench.s3.S3Bench, for the S3 scenarios
        self.fsync = fsync
        self.delay_ms = delay_ms
        self.rate_mbps = rate_mbps
        self.redis = redis  # a ServerProcess with .url, for Setups with workers

    def _run(self, setup: Setup, measure, proxied=False):
        folder = tempfile.mkdtemp(prefix="incoming-bench-")
        storage = os.path.join(folder, "storage")
        try:
            server = setup.start(folder, storage, self.fsync,
                                 self.redis.url if self.redis is not None else None)
            proxy = None
            try:
                target = server.port
                if proxied:
                    proxy = start_proxy(folder, server.port, self.delay_ms, self.rate_mbps)
                    target = proxy.port
                argv = setup.client_argv(server.port, target, self.backend.url)
                return measure(server, argv, storage)
            finally:
                if proxy is not None:
                    proxy.stop()
                server.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def throughput(self, setup: Setup, load: Load, proxied=False) -> dict:
        """MB/s, latency, server CPU per GiB and peak RSS; sha256 checked."""

        def measure(server, argv, storage):
            argv += ["--count", str(load.count), "--size", str(load.size)]
            if load.sequential:
                argv.append("--sequential")
            before = cpu_snapshot(server, self.redis)
            report = run_client(argv, load.budget())
            after = cpu_snapshot(server, self.redis)
            cpu = tree_total(after) - tree_total(before)
            peak = tree_memory_kib(server.pid, "VmHWM")
            if setup.reference:
                checked = verify_reference(report["uploads"], storage)
            else:
                checked = verify_incoming(report["uploads"], self.backend.handovers, self.s3)
            result = {
                "mbps": report["mbps"], "p50_ms": report["p50_ms"], "p99_ms": report["p99_ms"],
                "cpu_s_per_gib": cpu / (report["bytes"] / GIB), "peak_rss_mib": peak / 1024,
                "cpu_ms_per_upload": cpu * 1000 / load.count,
                "elapsed_s": report["elapsed"],
                "client_cpu_s_per_gib": report["cpu_s"] / (report["bytes"] / GIB), **checked,
            }
            if setup.workers:  # where the CPU went, seconds per GiB, by process
                spent = cpu_by_process(server.pid, before, after)
                spent["client"] = report["cpu_s"]
                result["cpu_s_per_gib_by_process"] = {
                    name: seconds / (report["bytes"] / GIB) for name, seconds in spent.items()}
            if report["phases_ms"]:
                result["phases_ms"] = report["phases_ms"]
            window = report["uploads"][0].get("window")
            if window:
                result["window"] = window
            return result

        return self._run(setup, measure, proxied)

    def memory(self, setup: Setup, stages: tuple, hold: float) -> dict:
        """Server RSS growth per open, trickling upload between two stages."""
        rss = {}

        def measure(server, argv, storage):
            def on_stage(n):
                time.sleep(hold * 0.7)  # every upload has trickled once more
                rss[n] = memory_kib(server.pid, "VmRSS")

            argv += ["--slow-stages", ",".join(map(str, stages)), "--hold", str(hold)]
            run_client(argv, 60 + stages[-1] * hold / 100, on_stage)
            low, high = stages[0], stages[-1]
            return {
                "kib_per_upload": (rss[high] - rss[low]) / (high - low),
                "rss_mib": {str(n): kib / 1024 for n, kib in rss.items()},
                "peak_rss_mib": memory_kib(server.pid, "VmHWM") / 1024,
            }

        return self._run(setup, measure)
