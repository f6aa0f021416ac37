"""The benchmark suite keeps working: ``python -m bench --quick`` (tiny
sizes) must print every figure with its ratio to the reference and verify
the sha256 of every stored file."""

import json
import pstats
import os
import re
import socket
import statistics
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATIO = re.compile(r"\((-?\d+\.\d\dx|n/a)\)")
FIGURES = {"throughput": ["mbps", "p50_ms", "p99_ms", "cpu_s_per_gib", "cpu_ms_per_upload",
                          "peak_rss_mib"],
           "memory": ["kib_per_upload", "peak_rss_mib"]}

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"),
                                reason="the bench reads /proc")


def test_quick_bench_prints_every_figure_with_its_ratio(tmp_path):
    output = tmp_path / "quick.json"
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(output)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    results = json.loads(output.read_text())["results"]
    assert {(r["kind"], r["server"]) for r in results} == {
        ("throughput", "reference"), ("throughput", "stack floor"),
        ("throughput", "incoming sha256"),
        ("throughput", "incoming no digest"), ("throughput", "incoming 0.1 window"),
        ("throughput", "incoming byte-window"),
        ("memory", "reference"), ("memory", "incoming sha256"),
    }
    # the stack's floor stands beside the small uploads only
    assert {r["scenario"] for r in results if r["server"] == "stack floor"} == {
        "10 x 64 KiB sequential"}
    printed = run.stdout.splitlines()
    for result in results:
        figures = FIGURES[result["kind"]]
        assert all(isinstance(result[key], (int, float)) for key in figures), result
        row = next(line for line in printed
                   if line.startswith(result["scenario"] + " ") and f" {result['server']} " in line)
        if result["server"] == "reference":
            assert "ratio" not in result
        else:
            assert set(result["ratio"]) == set(figures)
            assert len(RATIO.findall(row)) == len(figures), row
        if result["kind"] == "throughput":
            assert result["verified"] >= 1 and f"{result['verified']} ok" in row, row
        if result["kind"] == "throughput" and result["server"] != "reference":
            # The handover carries the server's digest only when it is on.
            no_digest = result["server"] in ("incoming no digest", "stack floor")
            sent = 0 if no_digest else result["verified"]
            assert result["handover_sha256"] == sent, result


def test_profile_writes_the_servers_statistics_for_one_scenario(tmp_path):
    output, stats = tmp_path / "profiled.json", tmp_path / "small.prof"
    scenario = "10 x 64 KiB sequential"
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", scenario,
                          "--profile", str(stats), "--json", str(output)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    (result,) = json.loads(output.read_text())["results"]
    assert result["scenario"] == scenario and result["server"] == "incoming sha256, profiled"
    assert result["verified"] == 10 and result["cpu_ms_per_upload"] > 0
    profiled = pstats.Stats(str(stats)).stats  # (file, line, function) -> figures
    handled = [key for key in profiled if key[0].endswith("incoming/upload.py")]
    assert handled and "the reactor thread's functions" in run.stdout
    assert max(profiled[key][0] for key in handled) >= 10  # called for each upload


def test_quick_bench_compares_two_workers_with_one(tmp_path):
    """--workers 2: the same scenario against --state redis:// in one process
    and with --workers 2, on a redis-server the bench starts and stops, in
    rounds that take turns at going first; the medians and each round's
    ratio."""
    output = tmp_path / "workers.json"
    scenario = "8 x 256 KiB concurrent"
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--workers", "2",
                          "--only", scenario, "--json", str(output)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    summary = json.loads(output.read_text())
    servers = ("incoming redis 1 worker", "incoming redis 2 workers")
    order = [(r["server"], r.get("round")) for r in summary["results"]]
    assert order == [("reference", None), ("incoming sha256", None), ("incoming no digest", None),
                     (servers[0], 1), (servers[1], 1), (servers[1], 2), (servers[0], 2)]
    runs = {(r["server"], r.get("round")): r for r in summary["results"]}
    (ratio,) = summary["workers"]["ratios"]
    rounds = [{"round": n, "one_worker_mbps": runs[(servers[0], n)]["mbps"],
               "workers_mbps": runs[(servers[1], n)]["mbps"],
               "ratio": runs[(servers[1], n)]["mbps"] / runs[(servers[0], n)]["mbps"]}
              for n in (1, 2)]
    assert ratio == {"scenario": scenario, "rounds": rounds, **{
        key: statistics.median(p[key] for p in rounds)
        for key in ("one_worker_mbps", "workers_mbps", "ratio")}}
    for n in (1, 2):
        one, two = runs[(servers[0], n)], runs[(servers[1], n)]
        for result in (one, two):
            assert result["verified"] == result["handover_sha256"] == 8, result
            assert set(result["ratio"]) == set(FIGURES["throughput"]), result
        assert set(one["cpu_s_per_gib_by_process"]) == {
            "server", "redis-server", "bench (backend)", "client"}
        assert set(two["cpu_s_per_gib_by_process"]) == {
            "parent", "worker 1", "worker 2", "redis-server", "bench (backend)", "client"}
        # The server's CPU is its whole tree: parent and workers.
        spent = two["cpu_s_per_gib_by_process"]
        tree = spent["parent"] + spent["worker 1"] + spent["worker 2"]
        assert abs(two["cpu_s_per_gib"] - tree) < 1e-6 * max(1.0, tree)
    printed = run.stdout.splitlines()
    (row,) = [line for line in printed  # the workers table: no ratios to the reference
              if line.startswith(scenario + " ") and "(" not in line
              and line.split()[-3].endswith("x")]
    *_, one_mbps, two_mbps, printed_ratio, first, second = row.split()
    assert abs(float(one_mbps) - ratio["one_worker_mbps"]) <= 0.05, row
    assert abs(float(two_mbps) - ratio["workers_mbps"]) <= 0.05, row
    assert printed_ratio == f"{ratio['ratio']:.2f}x", row
    assert [first, second] == [f"{p['ratio']:.2f}" for p in rounds], row
    assert any(line.startswith(f"{scenario}: incoming redis 2 workers, round 2 ")
               for line in printed)
    port = int(summary["workers"]["redis_url"].rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the bench stopped its redis-server"


def test_quick_bench_compares_uploads_into_s3_with_boto3(tmp_path):
    """--s3: a Ceph RGW of the bench's own; each S3 load in rounds through
    boto3's upload_file and through Incoming!! (destType=s3), taking turns
    to go first, every object read back; the medians and each round's ratio."""
    output = tmp_path / "s3.json"
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--s3", "--only", "into S3",
                          "--json", str(output)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    summary = json.loads(output.read_text())
    scenarios = ["1 x 20 MiB into S3", "3 x 6 MiB concurrent into S3"]
    servers = ("boto3 upload_file", "incoming s3")
    order = [(r["scenario"], r["round"], r["server"]) for r in summary["results"]]
    expected = []
    for scenario in scenarios:
        expected += [(scenario, 1, servers[0]), (scenario, 1, servers[1]),
                     (scenario, 2, servers[1]), (scenario, 2, servers[0])]
    assert order == expected
    rows = {(r["scenario"], r["round"], r["server"]): r for r in summary["results"]}
    for ratio, scenario in zip(summary["s3"]["ratios"], scenarios, strict=True):
        assert ratio["scenario"] == scenario
        each = []
        for number, pair in enumerate(ratio["rounds"], 1):
            ours, boto3 = rows[(scenario, number, servers[1])], rows[(scenario, number, servers[0])]
            assert pair["ratio"] == ours["mbps"] / boto3["mbps"]
            assert ours["verified"] == ours["handover_sha256"] == boto3["verified"], ours
            each.append(pair["ratio"])
        assert len(each) == 2 and ratio["ratio"] == statistics.median(each)
        assert ratio["mbps"] == statistics.median(
            rows[(scenario, n, servers[1])]["mbps"] for n in (1, 2))
        (line,) = [x for x in run.stdout.splitlines() if x.startswith(scenario + "  ")]
        assert f"{ratio['ratio']:.2f}x" in line and f"{ratio['verified']} ok" in line
        assert " ".join(f"{r:.2f}" for r in each) in line


def test_the_load_clients_views_hold_the_same_bytes_as_its_pieces():
    """The ws client sends views of the pattern (no copies); the sha256 it
    checks against comes from the pieces: they must agree, across the
    block's end too."""
    sys.path.insert(0, REPO)
    from bench.loadclient import BLOCK_SIZE, PIECE_MAX, Pattern

    pattern = Pattern(seed=3)
    for index, pos, size in [(0, 0, 1), (1, 100, 512 * 1024), (2, BLOCK_SIZE - 10, 4096),
                             (9, 3 * BLOCK_SIZE - 1, PIECE_MAX), (5, 7, PIECE_MAX + 1)]:
        assert bytes(pattern.view(index, pos, size)) == pattern.piece(index, pos, size)
