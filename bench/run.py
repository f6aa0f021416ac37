"""
``python -m bench``: run every scenario against the installed Incoming!!
(sha256 digest on, and ``--digest none``) and against the reference
server, print a table with each figure's ratio to the reference, print the
JSON and write it to bench/results/latest.json.  Uploads of 64 KiB or less
also run against bench/floor_server.py, the least a server on Incoming!!'s
libraries (twisted.web, Autobahn, a Twisted Agent) can do for the same
cycle: what of the cost per upload is the stack's.  Installs nothing; all
traffic stays on 127.0.0.1.  ``--quick`` runs tiny sizes (the test suite
does, so that the bench cannot rot).

``--workers N`` also starts a redis-server of its own (free loopback port,
``--save "" --appendonly no``; stopped at the end) and runs 200 x 64 KiB
and 64 x 4 MiB concurrent (with ``--quick``, 8 x 256 KiB) against
Incoming!! with ``--state`` in one process and with ``--workers N``, each
start under a fresh ``--state-prefix``, in 3 rounds (2 with ``--quick``)
that take turns at which goes first, and prints the medians of both MB/s
and of the ratio N workers / 1 worker, each round's ratio, and the CPU of
each process (parent, workers, redis-server, the bench's backend, the load
client) per GiB.  Server CPU
and peak RSS count the whole process tree (parent plus workers).

``--s3`` also starts a Ceph RADOS Gateway of its own (bench/s3.py) and
runs 1 x 1 GiB and 8 x 64 MiB (with ``--quick``, 1 x 20 MiB and 3 x 6
MiB) into it: boto3's ``upload_file`` against Incoming!! with
``--s3-bucket`` (destType=s3), same gateway, same run.

``--profile FILE`` runs the scenarios that ``--only`` picks against
Incoming!! (sha256 on) alone, under twistd's cProfile (``--profiler
cprofile --savestats``: the reactor thread only), writes the statistics to
FILE (read them with ``python -m pstats FILE``) and prints the functions
that took the most time.  Its figures are the profiled server's, slower
than without.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time

from bench.procstat import raise_open_files_limit
from bench.report import (
    BOTO3,
    add_ratios,
    cpu_table,
    s3_ratios,
    s3_table,
    table,
    worker_ratios,
    workers_table,
)
from bench.scenarios import GIB, MIB, Bench, Load, ScenarioFailed, Setup
from bench.servers import Backend, start_redis

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latest.json")

REFERENCE = Setup("reference", reference=True)
FLOOR = Setup("stack floor", floor=True)
DIGEST_ON = Setup("incoming sha256", ("--digest", "sha256"))
DIGEST_OFF = Setup("incoming no digest", ("--digest", "none"))
ZERO_ONE = Setup("incoming 0.1 window", ("--digest", "sha256"))
BYTE_WINDOW = Setup("incoming byte-window", ("--digest", "sha256"), byte_window=True)
ONE_WORKER = Setup("incoming redis 1 worker", ("--digest", "sha256"), workers=1)


def workers_setup(count: int) -> Setup:
    return Setup(f"incoming redis {count} workers", ("--digest", "sha256"), workers=count)


# Uploads this small are measured against bench.floor_server too: their cost
# is mostly per upload, and most of that is the libraries'.
SMALL_UPLOAD = 64 * 1024

FULL = {
    "loads": [Load(1, GIB), Load(8, 64 * MIB), Load(64, 4 * MIB),
              Load(200, 64 * 1024), Load(200, 64 * 1024, sequential=True)],
    "memory_stages": (100, 1000), "hold": 5.0,
    "proxied": Load(1, 256 * MIB),
    "workers_loads": ("200 x 64 KiB concurrent", "64 x 4 MiB concurrent"), "workers_rounds": 3,
    "s3_loads": [Load(1, GIB), Load(8, 64 * MIB)], "s3_rounds": 3,
}
QUICK = {
    # One load of each shape (single, concurrent, sequential) keeps it short.
    "loads": [Load(1, 4 * MIB), Load(8, 256 * 1024), Load(10, 64 * 1024, sequential=True)],
    "memory_stages": (5, 20), "hold": 0.3,
    "proxied": Load(1, MIB),
    "workers_loads": ("8 x 256 KiB concurrent",), "workers_rounds": 2,
    "s3_loads": [Load(1, 20 * MIB), Load(3, 6 * MIB)], "s3_rounds": 2,
}


def plan(settings: dict, delay_ms: float, rate_mbps: float, workers: int = 0, s3=None):
    """(scenario name, kind, setup, how to measure it with a Bench), in order."""
    if s3 is not None:
        yield from s3_plan(settings, s3)
    for load in settings["loads"]:
        floor = (FLOOR,) if load.size <= SMALL_UPLOAD else ()
        for setup in (REFERENCE, *floor, DIGEST_ON, DIGEST_OFF):
            yield load.name, "throughput", setup, lambda b, s=setup, l=load: b.throughput(s, l)
        if workers and load.name in settings["workers_loads"]:
            yield from workers_rounds(load, workers, settings["workers_rounds"])
    stages = settings["memory_stages"]
    name = f"{stages[-1]} open uploads"
    for setup in (REFERENCE, DIGEST_ON):
        yield name, "memory", setup, lambda b, s=setup: b.memory(s, stages, settings["hold"])
    load = settings["proxied"]
    name = f"{load.name} via {2 * delay_ms:g} ms RTT, {rate_mbps:g} MB/s"
    for setup in (REFERENCE, ZERO_ONE, BYTE_WINDOW):
        yield name, "throughput", setup, lambda b, s=setup: b.throughput(s, load, proxied=True)


def workers_rounds(load, workers: int, rounds: int):
    """One worker and N workers in rounds, taking turns to go first: on
    this kind of machine one run swings by a third, so one pair of runs
    says little."""
    turns = [ONE_WORKER, workers_setup(workers)]
    for number in range(1, rounds + 1):
        for setup in turns if number % 2 else reversed(turns):
            yield (load.name, "throughput", setup,
                   lambda b, s=setup: b.throughput(s, load), {"round": number})


def s3_plan(settings: dict, s3):
    """Each S3 load in rounds, boto3's upload_file and Incoming!! into the
    same bucket, taking turns to go first: the gateway gets slower as it
    fills (its deleted objects stay in memory until its garbage collection,
    which runs between measurements), so a fixed order would favour one."""
    boto3 = Setup(BOTO3)
    ours = Setup("incoming s3", ("--digest", "sha256", *s3.options()), dest_type="s3")
    for load in settings["s3_loads"]:
        name = f"{load.name} into S3"
        for number in range(1, settings["s3_rounds"] + 1):
            turns = [(boto3, lambda b, l=load: b.s3.upload_file(l.count, l.size)),
                     (ours, lambda b, l=load: b.throughput(ours, l))]
            for setup, measure in turns if number % 2 else reversed(turns):
                yield (name, "s3", setup, lambda b, m=measure: s3_round(b, m),
                       {"round": number})


def s3_round(bench: Bench, measure) -> dict:
    """One measurement of a round, then (whatever its outcome) the
    gateway's garbage collected; a collection that fails fails this step."""
    try:
        return measure(bench)
    finally:
        try:
            bench.s3.collect_garbage()
        except (AssertionError, subprocess.SubprocessError) as e:
            raise RuntimeError(f"the gateway's garbage collection failed: {e}") from None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--only", help="run only scenarios whose name contains this text")
    parser.add_argument("--fsync", choices=("none", "complete"), default="none",
                        help="server --fsync (and the reference syncs likewise); none "
                             "measures the server rather than the disk [default: none]")
    parser.add_argument("--delay-ms", type=float, default=25.0, help="proxy one-way delay")
    parser.add_argument("--rate-mbps", type=float, default=100.0, help="proxy bandwidth cap")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="also compare --state redis:// in one process with --workers N "
                             "(N >= 2) on 200 x 64 KiB and 64 x 4 MiB concurrent; starts "
                             "and stops a redis-server of its own")
    parser.add_argument("--profile", metavar="FILE",
                        help="profile Incoming!! (cProfile) in the scenarios --only picks; "
                             "statistics to FILE")
    parser.add_argument("--s3", action="store_true",
                        help="also measure uploads into a Ceph RGW of its own (destType=s3) "
                             "next to boto3's upload_file")
    parser.add_argument("--json", default=RESULTS, help=f"where to write the JSON [{RESULTS}]")
    args = parser.parse_args(argv)
    if args.workers and args.workers < 2:
        parser.error("--workers N compares N >= 2 workers with one")
    if args.profile and not args.only:
        parser.error("--profile needs --only (one scenario, say --only '64 KiB sequential')")
    if args.profile and args.workers:
        parser.error("--profile profiles one process: not with --workers")
    return args


def profile_plan(settings: dict, path: str):
    """The throughput scenarios against the profiled server only."""
    setup = dataclasses.replace(DIGEST_ON, label="incoming sha256, profiled", profile=path)
    for load in settings["loads"]:
        yield load.name, "throughput", setup, lambda b, l=load: b.throughput(setup, l)


def print_profile(path: str, lines: int = 30) -> None:
    stats = pstats.Stats(path)
    print(f"\n{path}: the reactor thread's functions, by time spent in each itself")
    stats.sort_stats("tottime").print_stats(lines)
    print("... and with the functions they called")
    stats.sort_stats("cumulative").print_stats(lines)


def main(argv=None):
    args = parse_args(argv)
    raise_open_files_limit()
    settings = QUICK if args.quick else FULL
    backend = Backend()
    redis_folder = tempfile.mkdtemp(prefix="incoming-bench-redis-") if args.workers else None
    redis = None
    s3 = None
    s3_folder = tempfile.mkdtemp(prefix="incoming-bench-ceph-") if args.s3 else None
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    try:
        if args.workers:
            redis = start_redis(redis_folder)
        if args.s3:
            from bench.s3 import S3Bench, start_gateway

            s3 = S3Bench(start_gateway(s3_folder))
        bench = Bench(backend, args.fsync, args.delay_ms, args.rate_mbps, redis, s3)
        steps = (profile_plan(settings, os.path.abspath(args.profile)) if args.profile
                 else plan(settings, args.delay_ms, args.rate_mbps, args.workers, s3))
        results = run_plan(bench, steps, args.only)
    finally:
        if redis is not None:
            redis.stop()
        if redis_folder is not None:
            shutil.rmtree(redis_folder, ignore_errors=True)
        if s3 is not None:
            s3.stop()
        if s3_folder is not None:
            shutil.rmtree(s3_folder, ignore_errors=True)
        backend.close()
    add_ratios(results)
    summary = {
        "quick": args.quick, "fsync": args.fsync, "elapsed_s": time.monotonic() - started,
        "cpus": os.cpu_count(), "loadavg_before": load_before,
        "loadavg_after": os.getloadavg()[0], "results": results,
    }
    if args.workers:
        summary["workers"] = {"count": args.workers, "redis_url": redis.url,
                              "ratios": worker_ratios(results, ONE_WORKER.label,
                                                      workers_setup(args.workers).label)}
    tables = [table(results, kind) for kind in ("throughput", "memory")]
    if args.workers:
        tables += [workers_table(summary["workers"]["ratios"], args.workers),
                   cpu_table(results)]
    if args.s3:
        summary["s3"] = {"ratios": s3_ratios(results)}
        tables.append(s3_table(summary["s3"]["ratios"]))
    print("\n\n".join(filter(None, tables)))
    print(f"\nratios: this server's figure / the reference's.  fsync {args.fsync}; "
          f"{summary['elapsed_s']:.0f} s; load average {load_before:.1f} before, "
          f"{summary['loadavg_after']:.1f} after ({os.cpu_count()} CPUs)\n")
    text = json.dumps(summary, indent=1)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        f.write(text + "\n")
    if args.profile and os.path.exists(args.profile):
        print_profile(args.profile)
    if any("error" in r for r in results):
        sys.exit(1)


def run_plan(bench: Bench, steps, only: str | None) -> list:
    results = []
    for name, kind, setup, measure, *extra in steps:  # extra: {"round": n} in rounds
        if only and only not in name:
            continue
        began = time.monotonic()
        result = {"scenario": name, "kind": kind, "server": setup.label,
                  **(extra[0] if extra else {})}
        try:
            result.update(measure(bench))
        except (ScenarioFailed, RuntimeError) as e:
            result["error"] = str(e)
        results.append(result)
        print(f"{time.monotonic() - began:5.1f} s  {name}: {setup.label}"
              f"{'  FAILED' if 'error' in result else ''}", file=sys.stderr, flush=True)
    return results
