"""The benchmark suite keeps working: ``python -m bench --quick`` (tiny
sizes) must print every figure with its ratio to the reference and verify
the sha256 of every stored file."""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATIO = re.compile(r"\((-?\d+\.\d\dx|n/a)\)")
FIGURES = {"throughput": ["mbps", "p50_ms", "p99_ms", "cpu_s_per_gib", "peak_rss_mib"],
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
        ("throughput", "reference"), ("throughput", "incoming sha256"),
        ("throughput", "incoming no digest"), ("throughput", "incoming 0.1 window"),
        ("throughput", "incoming byte-window"),
        ("memory", "reference"), ("memory", "incoming sha256"),
    }
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
            sent = 0 if result["server"] == "incoming no digest" else result["verified"]
            assert result["handover_sha256"] == sent, result
