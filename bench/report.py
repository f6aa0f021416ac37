"""Ratios to the reference, and the printed tables."""

from __future__ import annotations

THROUGHPUT_FIGURES = [("mbps", "MB/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
                      ("cpu_s_per_gib", "CPU-s/GiB"), ("peak_rss_mib", "peak RSS MiB")]
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
        if "error" in r:
            lines.append([r["scenario"], r["server"], f"FAILED: {r['error']}"])
            continue
        line = [r["scenario"], r["server"]] + [_cell(r, key) for key, _ in figures]
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
