"""``blobtier report``: pictures of a run as one self-contained HTML page (matplotlib).

A run is a JSON record: ``epochs`` (one row per epoch: ``samples_per_s``, ``stall``,
``served`` = the share of chunk reads each tier answered, ``block_bytes`` read from the
block layer) and ``timeline`` (samples taken during the run: seconds since its start,
cumulative hits and misses per tier, L1 and L3 bytes used and capacity, the block layer's
cumulative egress). ``blobtier demo --report``/``--json`` record one; a benchmark's
``--out`` JSON with the same ``epochs`` rows renders too; ``blobtier report --region``
records a timeline from the region's Prometheus endpoints while something else runs.

Plots: samples/s and data stall per epoch, the share each tier served per epoch (or the
hit ratio per tier over time), block-layer egress, and L1/L3 fill over time. A plot whose
data the record lacks is named as missing, never drawn empty.
"""

from __future__ import annotations

import base64
import html
import io
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from blobtier.errors import InvalidRequest

Record = dict[str, Any]
TIER_NAMES = {"l1": "L1", "l2": "L2", "l3": "L3", "origin": "block layer"}
PLOTS = ("throughput", "stall", "tiers", "egress", "fill")
"""Every plot of a full report, by the id of its ``<img>``."""


# -- recording ------------------------------------------------------------------------
def sample_services(services: list) -> dict[str, Any]:
    """One timeline row's worth of a running region's endpoints (region/top.py's scrape)."""
    from blobtier.region import top

    cur = top.scrape(services)
    row: dict[str, Any] = {"hits": {}, "misses": {}, "down": list(cur.down)}
    if "daemon" in cur.by_kind:
        row["hits"]["l1"] = cur.total("daemon", "blobtier_l1_hits_total")
        row["misses"]["l1"] = cur.total("daemon", "blobtier_l1_misses_total")
        row["l1_used_bytes"] = cur.total("daemon", "blobtier_l1_used_bytes")
        row["l1_capacity_bytes"] = cur.total("daemon", "blobtier_l1_capacity_bytes")
    if "flash" in cur.by_kind:
        row["hits"]["l3"] = cur.total("flash", "blobtier_flash_hits_total")
        row["misses"]["l3"] = cur.total("flash", "blobtier_flash_misses_total")
        row["l3_used_bytes"] = cur.total("flash", "blobtier_flash_used_bytes")
        row["l3_capacity_bytes"] = cur.total("flash", "blobtier_flash_capacity_bytes")
    if "block" in cur.by_kind:
        row["block_egress_bytes"] = cur.total("block", "blobtier_chunkserver_sent_bytes_total")
    return row


def sample_client(client) -> dict[str, Any]:
    """One timeline row from a client: its tiers' counters (DataLoader workers included) and
    the fill of its L1 (the daemon's arena, or its own)."""
    stats = client.stats()
    row: dict[str, Any] = {"hits": {t: s["hits"] for t, s in stats.items() if t != "origin"},
                           "misses": {t: s["misses"] for t, s in stats.items() if t != "origin"},
                           "block_egress_bytes": stats["origin"]["bytes"]}
    l1 = client._l1
    if l1 is not None and hasattr(l1, "stats"):
        try:
            arena = l1.stats()
            row["l1_used_bytes"], row["l1_capacity_bytes"] = arena["used_bytes"], arena["capacity"]
        except (OSError, KeyError):  # a daemon gone mid-run: this row has no L1 fill
            pass
    return row


class Recorder:
    """Samples ``sources`` (callables returning a timeline row; later ones win on a key)
    every ``interval_s`` seconds on a thread, from ``start()`` to ``stop()``."""

    def __init__(self, sources: list[Callable[[], dict[str, Any]]], interval_s: float = 0.5) -> None:
        self.sources, self.interval_s = sources, interval_s
        self.timeline: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def sample(self) -> None:
        row: dict[str, Any] = {"t": time.monotonic() - self._t0, "hits": {}, "misses": {}}
        for source in self.sources:
            got = source()
            for key in ("hits", "misses"):
                row[key].update(got.pop(key, {}))
            row.update(got)
        self.timeline.append(row)

    def start(self) -> Recorder:
        self._t0 = time.monotonic()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="blobtier-report", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        return self.timeline


# -- reading --------------------------------------------------------------------------
def load(path: str) -> Record:
    """A run record from a JSON file: ``{"epochs": [...], "timeline": [...]}`` (either may
    be missing), or a list of epoch rows.

    Raises: ``FileNotFoundError``; ``InvalidRequest`` naming the file when it is not JSON or
    holds neither epochs nor a timeline.
    """
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except ValueError as exc:
            raise InvalidRequest(f"{path}: not JSON ({exc})") from None
    if isinstance(data, list):
        data = {"epochs": data}
    if not isinstance(data, dict) or not (data.get("epochs") or data.get("timeline")):
        raise InvalidRequest(f"{path}: no 'epochs' rows and no 'timeline' to plot")
    data.setdefault("source", path)
    return data


# -- drawing --------------------------------------------------------------------------
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _figure(title: str, ylabel: str, xlabel: str = "epoch"):
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed (or wanted) on a server
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _epoch_bars(epochs: list[Mapping], key: str, title: str, ylabel: str, scale: float = 1.0) -> bytes:
    fig, ax = _figure(title, ylabel)
    xs = [int(e.get("epoch", i + 1)) for i, e in enumerate(epochs)]
    ax.bar(xs, [float(e[key]) * scale for e in epochs], color="#4878a8")
    ax.set_xticks(xs)
    return _png(fig)


def _tiers_per_epoch(epochs: list[Mapping]) -> bytes:
    fig, ax = _figure("Share of chunk reads each tier served", "share of reads (%)")
    xs = [int(e.get("epoch", i + 1)) for i, e in enumerate(epochs)]
    bottom = [0.0] * len(epochs)
    for tier, name in TIER_NAMES.items():
        shares = [100 * float(e["served"].get(tier, 0.0)) for e in epochs]
        if any(shares):
            ax.bar(xs, shares, bottom=bottom, label=name)
            bottom = [b + s for b, s in zip(bottom, shares)]
    ax.set_xticks(xs)
    ax.legend(loc="upper left", fontsize="small")
    return _png(fig)


def _rates(timeline: list[Mapping], get: Callable[[Mapping], float | None]) -> tuple[list, list]:
    """(t, per-second rate of a cumulative value) between consecutive rows that have it."""
    ts, rates = [], []
    prev = None
    for row in timeline:
        v = get(row)
        if v is None:
            continue
        if prev is not None and row["t"] > prev[0]:
            ts.append(row["t"])
            rates.append(max(0.0, v - prev[1]) / (row["t"] - prev[0]))
        prev = (row["t"], v)
    return ts, rates


def _tiers_over_time(timeline: list[Mapping]) -> bytes | None:
    fig, ax = _figure("Hit ratio per tier over time", "hit ratio (%)", "seconds")
    drawn = False
    for tier in ("l1", "l2", "l3"):
        _, hits = _rates(timeline, lambda r, t=tier: r.get("hits", {}).get(t))
        ts, misses = _rates(timeline, lambda r, t=tier: r.get("misses", {}).get(t))
        points = [(t, 100 * h / (h + m)) for t, h, m in zip(ts, hits, misses) if h + m > 0]
        if points:
            ax.plot(*zip(*points), marker=".", label=TIER_NAMES[tier])
            drawn = True
    if not drawn:
        return None
    ax.set_ylim(0, 105)
    ax.legend(loc="lower right", fontsize="small")
    return _png(fig)


def _egress(epochs: list[Mapping], timeline: list[Mapping]) -> bytes | None:
    ts, rates = _rates(timeline, lambda r: r.get("block_egress_bytes"))
    if ts:
        fig, ax = _figure("Block-layer egress", "MiB/s", "seconds")
        ax.plot(ts, [r / 2**20 for r in rates], color="#c44e52")
        return _png(fig)
    if epochs and all("block_bytes" in e for e in epochs):
        return _epoch_bars(epochs, "block_bytes", "Block-layer egress per epoch", "MiB", 1 / 2**20)
    return None


def _fill(timeline: list[Mapping]) -> bytes | None:
    fig, ax = _figure("Cache fill over time", "used / capacity (%)", "seconds")
    drawn = False
    for tier in ("l1", "l3"):
        points = [(r["t"], 100 * r[f"{tier}_used_bytes"] / r[f"{tier}_capacity_bytes"]) for r in timeline
                  if r.get(f"{tier}_capacity_bytes")]
        if points:
            ax.plot(*zip(*points), label=TIER_NAMES[tier])
            drawn = True
    if not drawn:
        return None
    ax.set_ylim(0, 105)
    ax.legend(loc="lower right", fontsize="small")
    return _png(fig)


def plots(record: Record) -> dict[str, tuple[str, bytes | None]]:
    """``{plot id: (title, PNG bytes or None when the record lacks its data)}``."""
    epochs, timeline = record.get("epochs") or [], record.get("timeline") or []
    has = lambda key: bool(epochs) and all(key in e for e in epochs)  # noqa: E731
    throughput = _epoch_bars(epochs, "samples_per_s", "Samples/s per epoch", "samples/s") \
        if has("samples_per_s") else None
    stall = _epoch_bars(epochs, "stall", "Data stall per epoch", "share of step time (%)", 100) \
        if has("stall") else None
    tiers = _tiers_per_epoch(epochs) if has("served") else _tiers_over_time(timeline)
    return {"throughput": ("Samples/s per epoch", throughput), "stall": ("Data stall per epoch", stall),
            "tiers": ("Hit ratio per tier", tiers),
            "egress": ("Block-layer egress", _egress(epochs, timeline)),
            "fill": ("L1 and L3 fill over time", _fill(timeline))}


def _epoch_table(epochs: list[Mapping]) -> str:
    if not epochs:
        return ""
    cols = [c for c in ("epoch", "samples_per_s", "stall", "loss", "accuracy", "block_bytes")
            if c in epochs[0]]
    head = "".join(f"<th>{c}</th>" for c in cols) + "".join(
        f"<th>{TIER_NAMES[t]} served</th>" for t in TIER_NAMES if "served" in epochs[0])
    rows = []
    for e in epochs:
        cells = [f"{e[c]:.3g}" if isinstance(e[c], float) else str(e[c]) for c in cols]
        if "served" in e:
            cells += [f"{100 * e['served'].get(t, 0):.1f}%" for t in TIER_NAMES]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render(record: Record) -> str:
    """The HTML page: every plot as an inline PNG, and the epochs as a table."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>blobtier report</title>"
             "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
             "td,th{padding:2px 8px;text-align:right}</style></head><body>",
             f"<h1>blobtier report</h1><p>{html.escape(str(record.get('source', '')))}</p>"]
    for pid, (title, png) in plots(record).items():
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if png is None:
            parts.append(f"<p class='missing' id='{pid}'>not in this record</p>")
        else:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<img id='{pid}' alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    parts.append(_epoch_table(record.get("epochs") or []))
    parts.append("</body></html>")
    return "\n".join(parts)


def write(record: Record, out: str) -> list[str]:
    """Write the report to ``out``; the ids of the plots drawn."""
    page = render(record)
    with open(out, "w", encoding="utf-8") as f:
        f.write(page)
    return [pid for pid in PLOTS if f"id='{pid}' alt=" in page]


def _running_services(root: str) -> list:
    from blobtier import runstate

    state = runstate.read(root)
    return [s for s in state.services if s.metrics_port] if state is not None else []


def recorder_for(client, interval_s: float = 0.5) -> Recorder:
    """A recorder of ``client``'s counters and L1, and of the region's services when
    ``blobtier up`` runs them (their L1/L3 fill and the block layer's egress win)."""
    services = _running_services(client.config.root)
    sources: list[Callable[[], dict[str, Any]]] = [lambda: sample_client(client)]
    if services:
        sources.append(lambda: sample_services(services))
    return Recorder(sources, interval_s)


def record_region(root: str, seconds: float, interval_s: float) -> Record:
    """Sample the running region at ``root`` for ``seconds`` (a timeline only).

    Raises: ``InvalidRequest`` when no region is up there or its services serve no metrics.
    """
    services = _running_services(root)
    if not services:
        raise InvalidRequest(f"no region with metrics is up at {root}; start one (`blobtier up`) "
                             "or plot a recorded run with --from FILE")
    rec = Recorder([lambda: sample_services(services)], interval_s).start()
    try:
        time.sleep(seconds)
    finally:
        timeline = rec.stop()
    return {"source": f"region {root}, {seconds:g} s sampled every {interval_s:g} s",
            "timeline": timeline}


def save_run(record: Record, json_out: str | None, report_out: str | None) -> list[str]:
    """Write a run's record as JSON and/or its report; the lines to print about them."""
    said = []
    if json_out:
        with open(json_out, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        said.append(f"run recorded in {json_out}")
    if report_out:
        drawn = write(record, report_out)
        said.append(f"report written to {report_out} ({len(drawn)} plots: {', '.join(drawn)})")
    return said
