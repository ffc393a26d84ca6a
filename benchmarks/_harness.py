"""Shared benchmark plumbing: timing, percentiles, a printed table, JSON output.

Every benchmark compares against a baseline measured in the same run (these machines are
noisy: ratios travel, absolute times do not) and ends with one summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", help="write results as JSON to this file")
    p.add_argument("--dir", help="work directory (default: a fresh temp dir, removed after)")
    return p


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[k]


def summarize(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/p999/mean in microseconds of per-operation times given in seconds."""
    us = [s * 1e6 for s in samples_s]
    return {"p50_us": percentile(us, 50), "p99_us": percentile(us, 99),
            "p999_us": percentile(us, 99.9), "mean_us": statistics.fmean(us) if us else float("nan")}


def timed_each(fn, items) -> list[float]:  # noqa: ANN001 - any callable of one item
    """Seconds each ``fn(item)`` took, in order."""
    samples = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        samples.append(time.perf_counter() - start)
    return samples


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def table(rows: list[dict[str, Any]], columns: Sequence[str], title: str = "") -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count()}


def write_json(path: str | None, name: str, params: dict, results: Any, summary: str) -> None:
    if not path:
        return
    with open(path, "w") as f:
        json.dump({"benchmark": name, "machine": machine(), "params": params, "results": results,
                   "summary": summary, "time": time.time()}, f, indent=2, default=str)
