"""Ratios to the reference, and the printed tables (with ``--workers``,
also N workers against one, and the CPU of each process)."""

from __future__ import annotations

import statistics

THROUGHPUT_FIGURES = [("mbps", "MB/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
                      ("cpu_s_per_gib", "CPU-s/GiB"), ("cpu_ms_per_upload", "CPU ms/upload"),
                      ("peak_rss_mib", "peak RSS MiB")]
MEMORY_FIGURES = [("kib_per_upload", "KiB/open upload"), ("peak_rss_mib", "peak RSS MiB")]
REFERENCE = "reference"


def figures_of(result: dict) -> list:
    return MEMORY_FIGURES if result["kind"] == "memory" else THROUGHPUT_FIGURES


def add_ratios(results: list) -> None:
    """ratio[figure] = this figure / the reference's, same scenario (None
    when the reference's is 0, e.g. CPU below one clock tick)."""
    references = {r["scenario"]: r for r in results
                  if r["server"] == REFERENCE and "error" not in r}
    for result in results:
        reference = references.get(result["scenario"])
        if result["server"] == REFERENCE or reference is None or "error" in result:
            continue
        result["ratio"] = {key: result[key] / reference[key] if reference[key] else None
                           for key, _ in figures_of(result)}


def _number(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _cell(result: dict, key: str) -> str:
    text = _number(result[key])
    if "ratio" not in result:
        return text
    ratio = result["ratio"][key]
    return f"{text} (n/a)" if ratio is None else f"{text} ({ratio:.2f}x)"


def _check(result: dict) -> str:
    if "verified" not in result:
        return ""
    text = f"{result['verified']} ok"
    if result.get("handover_sha256") is not None:
        text += f", {result['handover_sha256']} in handover"
    return text


def _server(result: dict) -> str:
    """The server's label, with the round of a measurement made in rounds."""
    return result["server"] + (f", round {result['round']}" if "round" in result else "")


def table(results: list, kind: str) -> str:
    """One text table of the results of a kind (throughput or memory)."""
    rows = [r for r in results if r["kind"] == kind]
    if not rows:
        return ""
    figures = MEMORY_FIGURES if kind == "memory" else THROUGHPUT_FIGURES
    header = ["scenario", "server"] + [label for _, label in figures]
    if kind != "memory":
        header.append("sha256 verified")
    lines = [header]
    for r in rows:
        server = _server(r)
        if "error" in r:
            lines.append([r["scenario"], server, f"FAILED: {r['error']}"])
            continue
        line = [r["scenario"], server] + [_cell(r, key) for key, _ in figures]
        if kind != "memory":
            line.append(_check(r))
        lines.append(line)
    full = [line for line in lines if len(line) == len(header)]
    widths = [max(len(line[i]) for line in full) for i in range(len(header))]
    out = []
    for line in lines:
        cells = [c.ljust(w) if i < 2 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(line, widths))]
        if len(line) < len(header):  # a failure: its message runs on
            cells = cells[:2] + [line[2]]
        out.append("  ".join(cells))
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def worker_ratios(results: list, one: str, many: str) -> list:
    """Per scenario that ran both: each round's MB/s of one worker, of N and
    N / one (the two measured back to back), and the medians over the rounds."""
    rounds: dict = {}
    for r in results:
        if r["server"] in (one, many) and "error" not in r:
            rounds.setdefault(r["scenario"], {}).setdefault(r.get("round", 1), {})[r["server"]] = r
    ratios = []
    for scenario, by_round in rounds.items():
        pairs = [{"round": number, "one_worker_mbps": pair[one]["mbps"],
                  "workers_mbps": pair[many]["mbps"],
                  "ratio": pair[many]["mbps"] / pair[one]["mbps"]}
                 for number, pair in sorted(by_round.items()) if one in pair and many in pair]
        if pairs:
            ratios.append({"scenario": scenario, "rounds": pairs, **{
                key: statistics.median(p[key] for p in pairs)
                for key in ("one_worker_mbps", "workers_mbps", "ratio")}})
    return ratios


def _render(lines: list) -> str:
    """Columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(line, widths, strict=True))) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def workers_table(ratios: list, count: int) -> str:
    """MB/s of one worker and of count workers (both --state redis://)."""
    if not ratios:
        return ""
    lines = [["scenario (--state redis://)", "1 worker MB/s", f"{count} workers MB/s",
              f"{count} workers / 1", "each round"]]
    lines += [[r["scenario"], _number(r["one_worker_mbps"]), _number(r["workers_mbps"]),
               f"{r['ratio']:.2f}x", " ".join(f"{p['ratio']:.2f}" for p in r["rounds"])]
              for r in ratios]
    return (_render(lines)
            + "\n(medians over the rounds; one worker and N take turns going first)")


def cpu_table(results: list) -> str:
    """CPU seconds per GiB by process, for the runs that had Redis."""
    rows = [r for r in results if "cpu_s_per_gib_by_process" in r]
    if not rows:
        return ""
    order = ["server", "parent", "worker", "redis-server", "bench (backend)", "client"]
    names = sorted({n for r in rows for n in r["cpu_s_per_gib_by_process"]},
                   key=lambda n: (order.index(n.split()[0] if n.startswith("worker") else n), n))
    lines = [["CPU-s/GiB by process"] + names]
    for r in rows:
        spent = r["cpu_s_per_gib_by_process"]
        lines.append([f"{r['scenario']}: {_server(r)}"] +
                     [_number(spent[n]) if n in spent else "" for n in names])
    return _render(lines)


BOTO3 = "boto3 upload_file"


def s3_ratios(results: list) -> list:
    """Per S3 scenario: each round's boto3 MB/s, ours and ours / boto3 (the
    two measured back to back), and the medians over the rounds."""
    rounds: dict = {}
    for r in results:
        if r["kind"] == "s3" and "error" not in r:
            rounds.setdefault(r["scenario"], {}).setdefault(r["round"], {})[r["server"]] = r
    ratios = []
    for scenario, by_round in rounds.items():
        pairs = []
        for number, by_server in sorted(by_round.items()):
            reference = by_server.get(BOTO3)
            others = [r for server, r in by_server.items() if server != BOTO3]
            if reference is None or len(others) != 1:
                continue
            ours = others[0]
            pairs.append({"round": number, "boto3_mbps": reference["mbps"], "mbps": ours["mbps"],
                          "ratio": ours["mbps"] / reference["mbps"],
                          "server_cpu_s_per_gib": ours["cpu_s_per_gib"],
                          "boto3_cpu_s_per_gib": reference["client_cpu_s_per_gib"],
                          "verified": ours["verified"], "server": ours["server"]})
        if not pairs:
            continue
        median = {key: statistics.median(p[key] for p in pairs)
                  for key in ("boto3_mbps", "mbps", "ratio", "server_cpu_s_per_gib",
                              "boto3_cpu_s_per_gib")}
        ratios.append({"scenario": scenario, "server": pairs[0]["server"], **median,
                       "verified": sum(p["verified"] for p in pairs), "rounds": pairs})
    return ratios


def s3_table(ratios: list) -> str:
    """Into the object store: boto3's upload_file against us, same gateway,
    same run; medians over the rounds, and each round's ratio."""
    if not ratios:
        return ""
    lines = [["scenario", "boto3 upload_file MB/s", "incoming MB/s", "incoming / boto3",
              "each round", "incoming CPU-s/GiB", "boto3 CPU-s/GiB", "sha256 verified"]]
    lines += [[r["scenario"], _number(r["boto3_mbps"]), _number(r["mbps"]), f"{r['ratio']:.2f}x",
               " ".join(f"{p['ratio']:.2f}" for p in r["rounds"]),
               _number(r["server_cpu_s_per_gib"]), _number(r["boto3_cpu_s_per_gib"]),
               f"{r['verified']} ok"] for r in ratios]
    return (_render(lines)
            + "\n(medians over the rounds; boto3 and Incoming!! take turns going first)")
