"""``blobtier top``: the region's Prometheus endpoints, scraped and shown as one view.

Every service of the state file is scraped (``/metrics``, parsed by prometheus_client's
parser); counters of the same kind of service are summed. A frame compares two scrapes:
rates, hit ratios and latency percentiles are over the time between them. The first
frame has no earlier scrape, so it shows averages since each service started.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from blobtier.runstate import RegionState, ServiceRecord

Labels = tuple[tuple[str, str], ...]
MiB = float(1 << 20)


@dataclass
class Scrape:
    """The samples of every service, by kind; ``down`` lists services that did not answer
    (their process runs), ``dead`` those whose process is gone."""

    at: float
    by_kind: dict[str, list[dict[tuple[str, Labels], float]]] = field(default_factory=dict)
    down: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    started: dict[str, float] = field(default_factory=dict)  # kind -> earliest start

    def total(self, svc: str, name: str, **labels: str) -> float:
        """Sum over the services of kind ``svc`` of the samples ``name`` whose labels include
        ``labels``."""
        want = set(labels.items())
        return sum(v for samples in self.by_kind.get(svc, []) for (n, lab), v in samples.items()
                   if n == name and want <= set(lab))

    def buckets(self, svc: str, name: str, **labels: str) -> list[tuple[float, float]]:
        """A histogram's cumulative buckets (upper bound, count), summed over services."""
        out: dict[float, float] = {}
        want = set(labels.items())
        for samples in self.by_kind.get(svc, []):
            for (n, lab), v in samples.items():
                if n == f"{name}_bucket" and want <= set(lab):
                    le = float(dict(lab)["le"])
                    out[le] = out.get(le, 0.0) + v
        return sorted(out.items())


def fetch(where: int | str, timeout_s: float = 1.0) -> dict[tuple[str, Labels], float]:
    """The samples of the endpoint at ``where``: a port on 127.0.0.1, or ``host:port``."""
    addr = f"127.0.0.1:{where}" if isinstance(where, int) else where
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=timeout_s) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples
            if not s.name.endswith("_created")}


def scrape(services: Iterable[ServiceRecord], trainers: Iterable[str] = ()) -> Scrape:
    """Every service's endpoint, and each trainer's (``host:port``, kind ``trainer``)."""
    from blobtier.runstate import pid_alive

    out = Scrape(time.time())
    for addr in trainers:
        try:
            out.by_kind.setdefault("trainer", []).append(fetch(addr))
        except (OSError, urllib.error.URLError, ValueError):
            out.down.append(f"trainer {addr}")
    for s in services:
        if not pid_alive(s.pid):
            out.dead.append(s.name)  # shown as dead in its tier's row, not left out
            continue
        if not s.metrics_port:
            continue
        try:
            samples = fetch(s.metrics_port)
        except (OSError, urllib.error.URLError, ValueError):
            out.down.append(s.name)
            continue
        out.by_kind.setdefault(s.kind, []).append(samples)
        out.started[s.kind] = min(out.started.get(s.kind, s.started), s.started)
    return out


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative histogram buckets, interpolated within its bucket (as
    Prometheus' ``histogram_quantile``); None with no observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_le, prev_count = le, count
    return prev_le


class Window:
    """What happened between two scrapes (or since start, with no earlier one)."""

    def __init__(self, cur: Scrape, prev: Scrape | None) -> None:
        self.cur, self.prev = cur, prev

    def seconds(self, svc: str) -> float:
        since = self.prev.at if self.prev else self.cur.started.get(svc, self.cur.at)
        return max(self.cur.at - since, 1e-9)

    def delta(self, svc: str, name: str, **labels: str) -> float:
        before = self.prev.total(svc, name, **labels) if self.prev else 0.0
        return max(0.0, self.cur.total(svc, name, **labels) - before)  # a restart resets counters

    def rate(self, svc: str, name: str, **labels: str) -> float:
        return self.delta(svc, name, **labels) / self.seconds(svc)

    def ratio(self, svc: str, hits: str, misses: str) -> float | None:
        h, m = self.delta(svc, hits), self.delta(svc, misses)
        return h / (h + m) if h + m else None

    def percentile(self, q: float, svc: str, name: str, **labels: str) -> float | None:
        cur = self.cur.buckets(svc, name, **labels)
        before = dict(self.prev.buckets(svc, name, **labels)) if self.prev else {}
        return quantile(q, [(le, c - before.get(le, 0.0)) for le, c in cur])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.2f}"


def _row(tier: str, ratio: str, hits: str, misses: str, mib: str, p50: str, p99: str,
         evictions: str, used: str) -> str:
    return (f"{tier:<7} {ratio:>9} {hits:>9} {misses:>9} {mib:>8} {p50:>8} {p99:>8} "
            f"{evictions:>10}  {used}")


def _gone(region: RegionState, cur: Scrape, kind: str) -> str:
    """``"; DEAD: flash-1"`` for the services of ``kind`` whose process is gone, and
    ``"; NOT ANSWERING: ..."`` for those whose endpoint did not answer ("" when none)."""
    names = {s.name for s in region.of_kind(kind)}
    dead = [n for n in cur.dead if n in names]
    down = [n for n in cur.down if n in names]
    return (f"; DEAD: {', '.join(dead)}" if dead else "") + \
        (f"; NOT ANSWERING: {', '.join(down)}" if down else "")


def _gone_row(region: RegionState, cur: Scrape, kind: str, tier: str) -> list[str]:
    """A row for a tier none of whose services answered (never left out silently)."""
    if kind in cur.by_kind or not region.of_kind(kind):
        return []
    return [_row(tier, "-", "-", "-", "-", "-", "-", "-", _gone(region, cur, kind).lstrip("; ")
                 or "serves no metrics")]


def trainer_lines(cur: Scrape, prev: Scrape | None) -> list[str]:
    """The trainers' samples/s, data stall, p99 wait for a batch and the share of their chunk
    reads each tier answered (``blobtier.dataloader.serve_metrics``), summed over trainers.
    The first frame has no earlier scrape: averages over the training loop's own time."""
    if "trainer" not in cur.by_kind:
        return []
    w = Window(cur, prev)
    step = w.delta("trainer", "blobtier_step_seconds_total")
    samples = w.delta("trainer", "blobtier_samples_total")
    rate = samples / w.seconds("trainer") if prev else (samples / step if step else 0.0)
    stall = w.delta("trainer", "blobtier_data_stall_seconds_total") / step if step else None
    reads = {t: w.delta("trainer", "blobtier_tier_hits_total", tier=t) for t in ("l1", "l2", "l3", "origin")}
    first = w.delta("trainer", "blobtier_tier_hits_total", tier="l1") + \
        w.delta("trainer", "blobtier_tier_misses_total", tier="l1")
    served = ", ".join(f"{t.upper() if t != 'origin' else 'block'} {n / first:.0%}"
                       for t, n in reads.items() if first and n)
    p99 = w.percentile(0.99, "trainer", "blobtier_data_wait_seconds")
    return [f"trainer  {rate:,.0f} samples/s, data stall {_pct(stall)}, p99 wait for a batch "
            f"{_ms(p99)} ms" + (f"; reads served by {served}" if served else "")]


def render(region: RegionState, cur: Scrape, prev: Scrape | None,
           namespaces: list[str] | None = None) -> list[str]:
    """One frame: the trainers, a line per tier (a tier whose services are dead or silent
    says so), the block layer's egress and faults, then ``namespaces`` (usage lines)."""
    w = Window(cur, prev)
    when = time.strftime("%H:%M:%S", time.localtime(cur.at))
    span = f"over the last {cur.at - prev.at:.1f}s" if prev else "averages since start"
    lines = [f"blobtier top  {region.root}  {when}  ({span})", *trainer_lines(cur, prev),
             _row("tier", "hit ratio", "hits/s", "misses/s", "MiB/s", "p50 ms", "p99 ms", "evictions",
                  "used")]
    lines += _gone_row(region, cur, "daemon", "L1")
    if "daemon" in cur.by_kind:
        lines.append(_row(
            "L1", _pct(w.ratio("daemon", "blobtier_l1_hits_total", "blobtier_l1_misses_total")),
            f"{w.rate('daemon', 'blobtier_l1_hits_total'):.0f}",
            f"{w.rate('daemon', 'blobtier_l1_misses_total'):.0f}",
            f"{w.rate('daemon', 'blobtier_l1_hit_bytes_total') / MiB:.1f}", "-", "-",
            f"{w.delta('daemon', 'blobtier_l1_evictions_total'):.0f}",
            f"{cur.total('daemon', 'blobtier_l1_used_bytes') / MiB:,.0f}/"
            f"{cur.total('daemon', 'blobtier_l1_capacity_bytes') / MiB:,.0f} MiB"
            + _gone(region, cur, "daemon")))
        if cur.total("daemon", "blobtier_l2_served_hits_total") or \
                cur.total("daemon", "blobtier_l2_served_misses_total"):
            lines.append(_row(
                "L2", _pct(w.ratio("daemon", "blobtier_l2_served_hits_total",
                                   "blobtier_l2_served_misses_total")),
                f"{w.rate('daemon', 'blobtier_l2_served_hits_total'):.0f}",
                f"{w.rate('daemon', 'blobtier_l2_served_misses_total'):.0f}",
                f"{w.rate('daemon', 'blobtier_l2_served_bytes_total') / MiB:.1f}", "-", "-", "-", ""))
        lines += _host_lines(region, cur)
    lines += _gone_row(region, cur, "flash", "L3")
    if "flash" in cur.by_kind:
        lines.append(_row(
            "L3", _pct(w.ratio("flash", "blobtier_flash_hits_total", "blobtier_flash_misses_total")),
            f"{w.rate('flash', 'blobtier_flash_hits_total'):.0f}",
            f"{w.rate('flash', 'blobtier_flash_misses_total'):.0f}",
            f"{w.rate('flash', 'blobtier_flash_read_bytes_total') / MiB:.1f}",
            _ms(w.percentile(0.5, "flash", "blobtier_flash_get_seconds")),
            _ms(w.percentile(0.99, "flash", "blobtier_flash_get_seconds")),
            f"{w.delta('flash', 'blobtier_flash_evicted_entries_total'):.0f}",
            f"{cur.total('flash', 'blobtier_flash_used_bytes') / MiB:,.0f}/"
            f"{cur.total('flash', 'blobtier_flash_capacity_bytes') / MiB:,.0f} MiB, "
            f"{cur.total('flash', 'blobtier_flash_entries'):.0f} chunks" + _gone(region, cur, "flash")))
    lines += _gone_row(region, cur, "block", "block")
    if "block" in cur.by_kind:
        gets = w.delta("block", "blobtier_chunkserver_requests_total", method="Get")
        lines.append(_row(
            "block", "-", f"{gets / w.seconds('block'):.0f}", "-",
            f"{w.rate('block', 'blobtier_chunkserver_sent_bytes_total') / MiB:.1f}",
            _ms(w.percentile(0.5, "block", "blobtier_chunkserver_request_seconds", method="Get")),
            _ms(w.percentile(0.99, "block", "blobtier_chunkserver_request_seconds", method="Get")),
            "-", f"{len(cur.by_kind['block'])} chunk servers" + _gone(region, cur, "block")))
        faults = {k: w.delta("block", "blobtier_chunkserver_faults_total", kind=k)
                  for k in ("refused", "errors", "stragglers", "corrupted")}
        lines.append(
            f"block egress {w.rate('block', 'blobtier_chunkserver_sent_bytes_total') / MiB:.1f} MiB/s "
            f"(total {cur.total('block', 'blobtier_chunkserver_sent_bytes_total') / MiB:,.1f} MiB), "
            f"ingress {w.rate('block', 'blobtier_chunkserver_received_bytes_total') / MiB:.1f} MiB/s; "
            f"errors {w.delta('block', 'blobtier_chunkserver_errors_total'):.0f}; injected faults "
            + ", ".join(f"{k} {v:.0f}" for k, v in faults.items()))
    if "flash" in cur.by_kind:
        lines.append(
            f"L3 fills from the block layer {w.rate('flash', 'blobtier_flash_fills_total'):.0f}/s "
            f"(p99 {_ms(w.percentile(0.99, 'flash', 'blobtier_flash_fill_seconds'))} ms), "
            f"admissions rejected {w.delta('flash', 'blobtier_flash_admissions_rejected_total'):.0f}, "
            f"corrupt {w.delta('flash', 'blobtier_flash_corrupt_total'):.0f}")
    if cur.dead:
        lines.append("dead (process gone; `blobtier restart` brings them back): " + ", ".join(cur.dead))
    if cur.down:
        lines.append("not answering: " + ", ".join(cur.down))
    return lines + (namespaces or [])


def _host_lines(region: RegionState, cur: Scrape) -> list[str]:
    """A line per simulated host (``services.hosts``; region/hosts.py), since its start:
    its L1, what it served its peers, and the chunks homed at it that it read from below."""
    names = [s.name for s in region.of_kind("daemon")
             if s.metrics_port and s.name not in cur.down and s.name not in cur.dead]
    if len(names) < 2:
        return []

    def one(samples: dict, name: str) -> float:
        return sum(v for (n, _), v in samples.items() if n == name)

    out = []
    for name, samples in zip(names, cur.by_kind.get("daemon", [])):
        hits, misses = one(samples, "blobtier_l1_hits_total"), one(samples, "blobtier_l1_misses_total")
        ratio = _pct(hits / (hits + misses) if hits + misses else None)
        out.append(f"  host-{name.rpartition('-')[2]:<3} L1 {ratio} of {hits + misses:.0f}, "
                   f"{one(samples, 'blobtier_l1_used_bytes') / MiB:,.0f}/"
                   f"{one(samples, 'blobtier_l1_capacity_bytes') / MiB:,.0f} MiB; served peers "
                   f"{one(samples, 'blobtier_l2_served_hits_total'):.0f} hits; read for its homes "
                   f"{one(samples, 'blobtier_l2_home_filled_total'):.0f} chunks")
    return out


def namespace_lines(usage: Callable[[], list]) -> list[str]:
    """A line per namespace object: its usage against its quotas (``sdk/namespaces.py``);
    one line saying why when the usage cannot be read."""
    from blobtier.errors import BlobtierError

    try:
        found = usage()
    except (BlobtierError, OSError) as exc:
        return [f"namespaces: usage not readable ({exc})"]
    return [f"namespace {u.name:<20} {u.describe()}" for u in found]
