"""``plan``: a what-if run of a region's tiers over a trace, with its predictions.

Inputs are a ``Region`` (hosts' L1 arenas, flash nodes, policies), a trace (``Synthetic``
or a recorded file) and a ``Timing`` (step time, batch, tier latencies); the output is a
``Prediction``: hit ratio per tier, block-layer egress per epoch and the data stall.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, replace

import numpy as np

from blobtier import placement
from blobtier.cache_l1_l2.arena import SlabAllocator
from blobtier.errors import InvalidRequest
from blobtier.eviction import POLICIES
from blobtier.flash_l3 import admission as admission_mod
from blobtier.flash_l3.device import ALIGN
from blobtier.flash_l3.regions import ENTRY_HEADER, entry_span
from blobtier.plan.sim import BLOCK, L1, L2, L3, SKIPPED, FlashNode, HostArena, Tally, Tiers, simulate
from blobtier.plan.trace import Reads, Synthetic, recorded
from blobtier.sdk.prefetch import Prefetcher, window

MAX_EVENTS = 1_000_000  # reads simulated per capacity point (the sampling rate follows)
MAX_PLACEMENTS = 30_000_000  # (kept chunks) x (hosts + flash nodes) rendezvous scores
PREFETCH_BATCH = inspect.signature(Prefetcher).parameters["batch"].default
_EXACT_LIMIT = 400_000_000  # samples x (jobs x epochs) drawn with torch's randperm at most


@dataclass(frozen=True)
class Region:
    """The caches of the region being planned (full sizes, bytes).

    ``l1_bytes``: each host's arena (the daemon's ``--memory``); the L2 is the peers'
    arenas (no memory of its own), ``l2=False`` leaves it out (per-host caches);
    ``home_fill``: each chunk's home daemon reads it through and keeps it (``blobtier up``
    with several hosts), else clients offer it to its home (``daemon --peers`` alone).
    ``l3_bytes``: the flash capacity of all ``l3_nodes`` together (0: no L3).
    """

    l1_bytes: int
    l3_bytes: int = 0
    l3_nodes: int = 1
    l3_region_bytes: int = 64 << 20
    l1_policy: str = "sieve"
    admission: str = "all"
    admission_probability: float = 0.5
    admission_window: int = 1 << 20
    l2: bool = True
    home_fill: bool = True
    placement_seed: int = 0  # another draw of rendezvous homes (as other blob ids would give)
    prefetch: bool = True
    prefetch_bytes: int = 256 << 20
    prefetch_threads: int = 2

    def check(self) -> None:
        """Raise ``InvalidRequest`` naming the flag of the first bad value."""
        if self.l1_bytes < 0:
            raise InvalidRequest(f"--l1 must be >= 0 bytes, not {self.l1_bytes}")
        if self.l3_bytes < 0:
            raise InvalidRequest(f"--l3 must be >= 0 bytes, not {self.l3_bytes}")
        if self.l3_nodes < 1:
            raise InvalidRequest(f"--l3-nodes must be at least 1, not {self.l3_nodes}")
        if self.l3_region_bytes < 2 * ALIGN or self.l3_region_bytes % ALIGN:
            raise InvalidRequest(f"--l3-region-size must be a multiple of {ALIGN} bytes "
                                 f"(and at least two of them), not {self.l3_region_bytes}")
        if self.l3_bytes and self.l3_bytes // self.l3_nodes < 2 * self.l3_region_bytes:
            raise InvalidRequest(f"--l3 gives each of the {self.l3_nodes} flash nodes "
                                 f"{self.l3_bytes // self.l3_nodes} bytes: less than two regions of "
                                 f"--l3-region-size {self.l3_region_bytes}")
        if self.l1_policy not in POLICIES:
            raise InvalidRequest(f"--policy {self.l1_policy!r}: choose one of {sorted(POLICIES)}")
        if self.admission not in admission_mod.POLICIES:
            raise InvalidRequest(f"--admission {self.admission!r}: choose one of "
                                 f"{sorted(admission_mod.POLICIES)}")
        if not 0 <= self.admission_probability <= 1:
            raise InvalidRequest("--admission-probability must be within 0-1, "
                                 f"not {self.admission_probability}")
        if self.prefetch_threads < 1:
            raise InvalidRequest(f"--prefetch-threads must be at least 1, not {self.prefetch_threads}")

    def admission_policy(self, rate: float) -> admission_mod.AdmissionPolicy:
        """A fresh admission policy; a second-hit window counts chunks, so it is sampled too."""
        if self.admission == "random":
            return admission_mod.make_policy("random", probability=self.admission_probability, seed=0)
        if self.admission == "second-hit":
            return admission_mod.make_policy("second-hit", window=max(1, round(self.admission_window * rate)))
        return admission_mod.make_policy(self.admission)


@dataclass(frozen=True)
class Timing:
    """Seconds: one training step of ``batch`` samples per rank, and one request to each tier."""

    step_s: float = 0.1
    batch: int = 32
    origin_s: float = 0.02
    l2_s: float = 0.001
    l3_s: float = 0.002

    def check(self) -> None:
        for flag, value in (("--step-time-ms", self.step_s), ("--origin-latency-ms", self.origin_s),
                            ("--l2-latency-ms", self.l2_s), ("--l3-latency-ms", self.l3_s)):
            if not value >= 0:  # NaN fails too
                raise InvalidRequest(f"{flag} must be >= 0, not {value * 1000}")
        if self.batch < 1:
            raise InvalidRequest(f"--batch-size must be at least 1, not {self.batch}")


@dataclass(frozen=True)
class Prediction:
    """What the planner predicts for the whole (unsampled) trace.

    ``served``: the share of the consumer's reads whose bytes came from each of L1, L2,
    L3 and the block layer (for a prefetched chunk, where the prefetch found it);
    ``hit_ratio``: per tier, hits over the lookups that reached it (as
    ``Client.stats()`` counts them, prefetches included); ``egress``: bytes read
    from the block layer in each epoch; ``stall_s``: seconds the training loops wait for
    data over the run, per rank; ``window``: samples the prefetcher keeps ahead.
    """

    served: dict[str, float]
    hit_ratio: dict[str, float]
    egress: list[float]
    served_per_epoch: list[dict[str, float]]
    l3_pulled: list[float]  # bytes asked of L3 per epoch
    prefetch_wasted: float  # share of prefetched chunks evicted before their read
    dataset_bytes: int
    stall_s: float
    stall_share: float
    window: int
    rate: float
    kept_chunks: int
    events: int
    exact_order: bool
    l1_sampled_chunks: float
    seconds: float
    region: Region

    @property
    def egress_ratio(self) -> list[float]:
        """Egress of each epoch over the dataset's bytes."""
        return [e / self.dataset_bytes for e in self.egress]


def choose_rate(total_chunks: int, reads: int, nodes: int, prefetch: bool,
                max_events: int = MAX_EVENTS) -> float:
    """The SHARDS sampling rate: as many chunks as ``max_events`` simulated reads and
    ``MAX_PLACEMENTS`` rendezvous scores allow (1: the whole trace)."""
    per_read = 2 if prefetch else 1
    return min(1.0, max_events / max(1, reads * per_read), MAX_PLACEMENTS / max(1, total_chunks * nodes))


def synthetic_reads(spec: Synthetic, region: Region, rate: float | None,
                    max_events: int = MAX_EVENTS) -> Reads:
    if rate is None:
        reads = spec.samples * spec.chunks_per_sample * spec.jobs * spec.epochs
        nodes = spec.hosts + (region.l3_nodes if region.l3_bytes else 0)
        rate = choose_rate(spec.samples * spec.chunks_per_sample, reads, nodes, region.prefetch, max_events)
    exact = None if spec.samples * spec.jobs * spec.epochs <= _EXACT_LIMIT else False
    return spec.reads(rate, exact=exact)


def recorded_reads(path: str, rate: float | None, prefetch: bool = True,
                   max_events: int = MAX_EVENTS) -> Reads:
    """A recorded trace, sampled so that it simulates in about ``max_events`` reads."""
    if rate is None:
        whole = recorded(path, 1.0)
        rate = choose_rate(whole.total_chunks, whole.reads_full, whole.hosts, prefetch, max_events)
        if rate >= 1.0:
            return whole
    return recorded(path, rate)


def arena_bytes(capacity: int, sizes: np.ndarray) -> tuple[float, np.ndarray]:
    """(bytes usable for these chunks, slot bytes of each) in an arena of ``capacity``,
    by the arena's own slab allocator: with one chunk size, exactly as many slots as it
    hands out."""
    if capacity <= 0:
        return 0.0, np.ones(len(sizes), dtype=np.int64)
    alloc = SlabAllocator(capacity)
    distinct_sizes, inverse = np.unique(sizes, return_inverse=True)
    slot_of = np.array([alloc.classes[alloc.klass(int(s))] if s <= alloc.max_chunk else capacity + 1
                        for s in distinct_sizes], dtype=np.int64)  # too big: never fits
    slots = slot_of[inverse] if len(sizes) else slot_of
    distinct = distinct_sizes[distinct_sizes <= alloc.max_chunk]
    if len(distinct) != 1:
        return float(capacity), slots
    size, n = int(distinct[0]), 0
    while n < 1_000_000 and alloc.alloc(size) is not None:
        n += 1
    if n == 1_000_000:  # a huge arena: the rest holds as many per byte as the part counted
        return float(capacity), slots
    return float(n * alloc.classes[alloc.klass(size)]), slots


def build_tiers(reads: Reads, region: Region) -> Tiers:
    """The sampled tiers for ``reads``: capacities times the sampling rate."""
    rate = reads.rate
    usable, slots = arena_bytes(region.l1_bytes, reads.sizes)
    arenas = [HostArena(usable * rate, region.l1_policy) for _ in range(reads.hosts)]
    if region.l2 and reads.hosts > 1:
        salt = f"#{region.placement_seed}" if region.placement_seed else ""
        home = placement.best(reads.key_ids, [f"host-{h}{salt}" for h in range(reads.hosts)]).tolist()
    else:
        home = [-1] * len(reads.key_ids)
    flash, node = [], [0] * len(reads.key_ids)
    if region.l3_bytes:
        per_node = region.l3_bytes // region.l3_nodes
        usable_region = (region.l3_region_bytes - ALIGN) * rate
        flash = [FlashNode(per_node // region.l3_region_bytes, usable_region, region.admission_policy(rate))
                 for _ in range(region.l3_nodes)]
        if region.l3_nodes > 1:
            node = placement.best(reads.key_ids, [f"flash-{i}" for i in range(region.l3_nodes)]).tolist()
    sizes = reads.sizes.tolist()
    return Tiers(arenas, flash, home, node, slots.tolist(), [entry_span(s) for s in sizes], sizes,
                 region.l3_region_bytes - ALIGN - ENTRY_HEADER, region.home_fill)


def prefetch_window(region: Region, timing: Timing, sample_bytes: float) -> int:
    """Samples the prefetcher keeps ahead (``Client._prefetcher``'s bound, ``window``'s
    depth) while its batches go to the block layer (the depth it grows to when cold)."""
    memory = min(region.prefetch_bytes, region.l1_bytes // 4) if region.l1_bytes else region.prefetch_bytes
    rate = timing.batch / timing.step_s if timing.step_s > 0 else 1e9
    depth = window(rate, timing.origin_s or None, PREFETCH_BATCH, region.prefetch_threads)
    return max(0, min(depth, int(memory // max(1.0, sample_bytes))))


def _events(reads: Reads, lead: int, batch: int) -> tuple[np.ndarray, ...]:
    """The consumer's reads, ``batch`` samples of a rank at one time (one chain read
    each), and with ``lead`` > 0 the prefetcher's, ``PREFETCH_BATCH`` at a time, ``lead``
    samples ahead of the first it fetches."""
    steps = reads.steps[reads.job]
    step = np.floor((reads.t - reads.epoch) * steps + 1e-6)
    t = reads.epoch + (step // batch) * batch / steps
    consume = np.ones(len(reads.t), dtype=bool)
    if lead <= 0:
        return t, reads.host, reads.key, reads.epoch, consume
    early = reads.epoch + ((step // PREFETCH_BATCH) * PREFETCH_BATCH - lead) / steps
    return (np.concatenate([t, early]), np.concatenate([reads.host, reads.host]),
            np.concatenate([reads.key, reads.key]), np.concatenate([reads.epoch, reads.epoch]),
            np.concatenate([consume, ~consume]))


def _announcements(reads: Reads, t: np.ndarray, host: np.ndarray, key: np.ndarray,
                   consume: np.ndarray, lead: int) -> dict[int, list]:
    """Before each epoch's first prefetch, every host tells its arena's policy the order
    of its reads in that epoch and the next (``BlobSampler`` through ``Client.announce``,
    job 0): ``{event position: [(host, keys)]}`` in ``simulate``'s order."""
    order = np.lexsort((host, consume, t))
    ts, hs, ks, cs = t[order], host[order], key[order], consume[order]
    ahead = lead / reads.steps.min() if lead > 0 else 0.0
    out: dict[int, list] = {}
    for e in range(reads.epochs):
        at = int(np.searchsorted(ts, e - ahead)) if e else 0
        m = cs & (ts >= e) & (ts < e + 2)
        for h in np.unique(hs[m]):
            out.setdefault(at, []).append((int(h), ks[m & (hs == h)].tolist()))
    return out


def predict(reads: Reads, region: Region, timing: Timing, sample_bytes: float) -> Prediction:
    """Simulate ``reads`` through ``region`` and scale the counts to the whole trace."""
    region.check()
    timing.check()
    started = time.perf_counter()
    tiers = build_tiers(reads, region)
    lead = prefetch_window(region, timing, sample_bytes) if region.prefetch else 0
    t, host, key, epoch, consume = _events(reads, lead, timing.batch)
    clairvoyant = region.l1_policy == "clairvoyant"
    announce = _announcements(reads, t, host, key, consume, lead) if clairvoyant else None
    tally = simulate(tiers, t, host, key, epoch, consume, reads.epochs, announce)
    l1_chunks = tiers.arenas[0].capacity / max(1, tiers.slot[0]) if tiers.slot else 0.0
    return _prediction(reads, region, timing, tally, lead, len(t), l1_chunks,
                       time.perf_counter() - started)


def _prediction(reads: Reads, region: Region, timing: Timing, tally: Tally, lead: int, events: int,
                l1_chunks: float, seconds: float) -> Prediction:
    served = _shares(tally.served.sum(axis=0))
    per_epoch = [_shares(row) for row in tally.served]
    looked = tally.found.sum(axis=(0, 1))
    hit_ratio = {}
    reaching = looked[:BLOCK + 1].sum()
    for tier, name in ((L1, "L1"), (L2, "L2"), (L3, "L3")):
        if tier == L1 and not region.l1_bytes or tier == L2 and not (region.l2 and reads.hosts > 1) \
                or tier == L3 and not region.l3_bytes:
            continue
        hit_ratio[name] = looked[tier] / reaching if reaching else 0.0
        reaching -= looked[tier]
    stall = stall_seconds(tally, reads, region, timing, lead)
    steps = reads.steps.max() * reads.epochs / timing.batch
    compute = steps * timing.step_s
    prefetched = tally.found[0, :, L2:BLOCK + 1].sum()
    wasted = tally.prefetch_wasted / prefetched if prefetched else 0.0
    return Prediction(served, hit_ratio, (tally.egress / reads.rate).tolist(), per_epoch,
                      (tally.pulled / reads.rate).tolist(), float(wasted), reads.total_bytes, stall,
                      stall / (stall + compute) if stall + compute > 0 else 0.0, lead, reads.rate,
                      len(reads.key_ids), events, reads.exact_order, l1_chunks, seconds, region)


def _shares(counts: np.ndarray) -> dict[str, float]:
    total = max(1, counts.sum())
    return {name: float(counts[i] / total) for i, name in enumerate(("L1", "L2", "L3", "block"))}


def stall_seconds(tally: Tally, reads: Reads, region: Region, timing: Timing, lead: int) -> float:
    """Seconds a rank's loop waits for data over the run.

    A batch read through the chain costs the latency of each tier any of its samples
    reaches (L2, L3 and the block layer are asked one after another, each for all the
    batch's misses at once). Without prefetch every step waits for its batch. With it,
    ``prefetch_threads`` batches of ``PREFETCH_BATCH`` are in flight, at most ``lead``
    samples ahead: the loop waits only for what that pipeline cannot supply at its pace,
    and for the first batch of the run.
    """
    steps = reads.steps.max() * reads.epochs / timing.batch
    own = _batch_latency(tally.found[1], timing.batch, timing)  # the loop's own reads below L1
    if lead <= 0:
        return steps * own
    ahead = _batch_latency(tally.found[0], PREFETCH_BATCH, timing)
    if ahead <= 0:
        return steps * own
    in_flight = min(region.prefetch_threads * PREFETCH_BATCH, max(lead, PREFETCH_BATCH))
    supply = in_flight / ahead  # samples per second the prefetcher delivers
    per_step = max(0.0, timing.batch / supply - timing.step_s)
    return ahead + steps * (per_step + own)


def _batch_latency(found: np.ndarray, size: int, timing: Timing) -> float:
    """Seconds to read a batch of ``size`` samples through the chain: each tier below L1
    costs its latency when any sample of the batch reaches it (``found``: reads per
    epoch and tier that answered)."""
    per_tier = found.sum(axis=0)[:BLOCK + 1].astype(np.float64)
    n = per_tier.sum()
    if not n:
        return 0.0
    reach = [per_tier[t:].sum() / n for t in (L2, L3, BLOCK)]
    return sum((1 - (1 - q) ** size) * s for q, s in zip(reach, (timing.l2_s, timing.l3_s, timing.origin_s)))


def sweep(reads: Reads, region: Region, timing: Timing, sample_bytes: float, tier: str,
          factors: list[float]) -> list[tuple[int, Prediction]]:
    """Predictions with ``tier``'s capacity (``l1`` or ``l3``) times each of ``factors``."""
    out = []
    for f in factors:
        if tier == "l1":
            r = replace(region, l1_bytes=int(region.l1_bytes * f))
            cap = r.l1_bytes
        else:
            r = replace(region, l3_bytes=int(region.l3_bytes * f))
            cap = r.l3_bytes
        try:
            r.check()
        except InvalidRequest:
            continue  # too small for this tier (fewer than two flash regions): no point
        out.append((cap, predict(reads, r, timing, sample_bytes)))
    return out


__all__ = ["Prediction", "Region", "Timing", "predict", "sweep", "synthetic_reads", "recorded_reads",
           "SKIPPED"]
