"""``blobtier plan``: its flags, its table and its plot."""

from __future__ import annotations

import argparse
import json
import math
import time

from blobtier.config import parse_size
from blobtier.errors import InvalidRequest
from blobtier.plan.model import (
    MAX_EVENTS,
    Prediction,
    Region,
    Timing,
    predict,
    recorded_reads,
    sweep,
    synthetic_reads,
)
from blobtier.plan.trace import Synthetic

SWEEP_FACTORS = "0.125,0.25,0.5,1,2,4"


def add_arguments(p: argparse.ArgumentParser) -> None:
    w = p.add_argument_group("workload (synthetic unless --trace)")
    w.add_argument("--trace", default=None, metavar="FILE",
                   help="a recorded trace: JSON lines {host, job, key, size[, epoch]} "
                        "(blobtier.plan.Recorder writes them)")
    w.add_argument("--hosts", default="1", help="GPU hosts in the region (each one L1 arena)")
    w.add_argument("--jobs", default="1", help="training jobs; each spans hosts/jobs hosts (one rank "
                                               "per host), or one host each when there are more jobs")
    w.add_argument("--samples", default=None, help="samples in the dataset (every job reads all of them)")
    w.add_argument("--sample-size", default="128KiB", help="bytes per sample")
    w.add_argument("--chunk-size", default="4MiB", help="bytes per chunk (the region's client.chunk_size)")
    w.add_argument("--epochs", default="2")
    w.add_argument("--seeds", default="0", metavar="S[,S...]",
                   help="shuffle seeds, job j takes the (j mod count)-th (BlobSampler's seed)")
    c = p.add_argument_group("caches")
    c.add_argument("--l1", default="512MiB", help="each host's arena (the daemon's --memory); the L2 "
                                                   "is the other hosts' arenas")
    c.add_argument("--no-l2", action="store_true", help="per-host caches: no peer reads")
    c.add_argument("--l2-mode", default="fill", choices=("fill", "offer"),
                   help="fill: each chunk's home daemon reads it through and keeps it, an L1 keeps "
                        "only its host's share (blobtier up with several hosts); offer: clients "
                        "keep what they read and offer it to the home (daemon --peers alone)")
    c.add_argument("--l3", default="0", help="flash capacity of all L3 nodes together (0: no L3)")
    c.add_argument("--l3-nodes", default="1")
    c.add_argument("--l3-region-size", default="64MiB", help="bytes per flash region")
    c.add_argument("--policy", default="sieve", help="L1 eviction: sieve, lru, keep, clairvoyant")
    c.add_argument("--admission", default="all", help="L3 admission: all, second-hit, random")
    c.add_argument("--admission-probability", default="0.5", help="for --admission random")
    c.add_argument("--no-prefetch", action="store_true", help="no sampler-driven prefetch")
    c.add_argument("--prefetch-bytes", default="256MiB", help="the client's prefetch_bytes")
    c.add_argument("--prefetch-threads", default="2", help="the client's prefetch_threads")
    t = p.add_argument_group("timing (data stall)")
    t.add_argument("--step-time-ms", default="100", help="one training step's compute")
    t.add_argument("--batch-size", default="32", help="samples per step per rank")
    t.add_argument("--origin-latency-ms", default="20", help="one block-layer read")
    t.add_argument("--l2-latency-ms", default="1")
    t.add_argument("--l3-latency-ms", default="2")
    o = p.add_argument_group("sampling and output")
    o.add_argument("--sample-rate", default=None,
                   help="SHARDS rate: the share of chunks simulated (default: what fits the budget)")
    o.add_argument("--max-events", default=str(MAX_EVENTS), help="reads simulated per capacity point")
    o.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also sweep a capacity and plot hit ratio and egress against it")
    o.add_argument("--sweep", default="l1", choices=("l1", "l3"), help="the capacity --plot sweeps")
    o.add_argument("--sweep-factors", default=SWEEP_FACTORS, help="multiples of that capacity")
    o.add_argument("--json", default=None, metavar="FILE", help="write the prediction(s) as JSON")


def _number(args: argparse.Namespace, name: str, kind: type, minimum: float) -> float:
    """``args.<name>`` as ``kind`` (int or float), at least ``minimum``; else
    ``InvalidRequest`` naming its flag."""
    flag = "--" + name.replace("_", "-")
    raw = getattr(args, name)
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(raw)
    except ValueError:
        raise InvalidRequest(f"{flag}: {raw!r} is not {what}") from None
    if not (math.isfinite(value) and value >= minimum):
        raise InvalidRequest(f"{flag} must be {what} >= {minimum}, not {raw}")
    return value


def _int(args: argparse.Namespace, name: str, minimum: int = 0) -> int:
    return int(_number(args, name, int, minimum))


def _float(args: argparse.Namespace, name: str, minimum: float = 0.0) -> float:
    return _number(args, name, float, minimum)


def _size(args: argparse.Namespace, name: str) -> int:
    return parse_size(getattr(args, name), "--" + name.replace("_", "-"))


def region_of(args: argparse.Namespace) -> Region:
    return Region(l1_bytes=_size(args, "l1"), l3_bytes=_size(args, "l3"), l3_nodes=_int(args, "l3_nodes", 1),
                  l3_region_bytes=_size(args, "l3_region_size"), l1_policy=args.policy,
                  admission=args.admission, admission_probability=_float(args, "admission_probability"),
                  l2=not args.no_l2, home_fill=args.l2_mode == "fill", prefetch=not args.no_prefetch,
                  prefetch_bytes=_size(args, "prefetch_bytes"),
                  prefetch_threads=_int(args, "prefetch_threads", 1))


def timing_of(args: argparse.Namespace) -> Timing:
    return Timing(step_s=_float(args, "step_time_ms") / 1000, batch=_int(args, "batch_size", 1),
                  origin_s=_float(args, "origin_latency_ms") / 1000,
                  l2_s=_float(args, "l2_latency_ms") / 1000, l3_s=_float(args, "l3_latency_ms") / 1000)


def workload_of(args: argparse.Namespace) -> Synthetic:
    if args.samples is None:
        raise InvalidRequest("--samples is required without --trace")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        raise InvalidRequest(f"--seeds: {args.seeds!r} is not a comma-separated list of integers") from None
    hosts = _int(args, "hosts", 1)
    if hosts > 65536:
        raise InvalidRequest(f"--hosts must be at most 65536, not {hosts}")
    sample, chunk = _size(args, "sample_size"), _size(args, "chunk_size")
    if sample < 1:
        raise InvalidRequest("--sample-size must be at least 1 byte")
    if chunk < 1:
        raise InvalidRequest("--chunk-size must be at least 1 byte")
    return Synthetic(hosts=hosts, jobs=_int(args, "jobs", 1), samples=_int(args, "samples", 1),
                     sample_bytes=sample, chunk_bytes=chunk, epochs=_int(args, "epochs", 1), seeds=seeds)


def _rate(args: argparse.Namespace) -> float | None:
    if args.sample_rate is None:
        return None
    rate = _float(args, "sample_rate")
    if not 0 < rate <= 1:
        raise InvalidRequest(f"--sample-rate must be within (0, 1], not {args.sample_rate}")
    return rate


def _factors(args: argparse.Namespace) -> list[float]:
    try:
        factors = [float(f) for f in args.sweep_factors.split(",")]
    except ValueError:
        raise InvalidRequest(f"--sweep-factors: {args.sweep_factors!r} is not a list of numbers") from None
    if not factors or not all(math.isfinite(f) and f > 0 for f in factors):
        raise InvalidRequest(f"--sweep-factors must be positive numbers, not {args.sweep_factors!r}")
    return sorted(set(factors))


def run(args: argparse.Namespace) -> int:
    """The ``plan`` command: print the prediction (and plot a sweep with ``--plot``)."""
    started = time.perf_counter()
    region, timing, rate = region_of(args), timing_of(args), _rate(args)
    region.check()
    timing.check()
    budget = _int(args, "max_events", 1000)
    factors = _factors(args) if args.plot else []
    if args.sweep == "l3" and args.plot and not region.l3_bytes:
        raise InvalidRequest("--sweep l3 needs an L3: give --l3")
    if args.trace:
        reads = recorded_reads(args.trace, rate, region.prefetch, budget // max(1, len(factors) or 1))
        sample_bytes = reads.total_bytes / max(1, reads.total_chunks)
    else:
        spec = workload_of(args)
        # With a sweep, each capacity point gets its share of the budget.
        reads = synthetic_reads(spec, region, rate, budget // max(1, len(factors) or 1))
        sample_bytes = spec.sample_bytes
    prediction = predict(reads, region, timing, sample_bytes)
    print("\n".join(table(prediction, timing)))
    points = sweep(reads, region, timing, sample_bytes, args.sweep, factors) if args.plot else []
    if args.plot:
        plot(points, args.sweep, args.plot)
        print(f"plot: {args.plot} ({args.sweep} capacity x {','.join(f'{f:g}' for f in factors)})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"prediction": as_dict(prediction),
                       "sweep": [{"capacity": c, **as_dict(p)} for c, p in points]}, f, indent=2)
    print(f"planned in {time.perf_counter() - started:.1f} s")
    return 0


def as_dict(p: Prediction) -> dict:
    return {"served": p.served, "served_per_epoch": p.served_per_epoch, "hit_ratio": p.hit_ratio,
            "egress_bytes": p.egress, "l3_pulled_bytes": p.l3_pulled, "prefetch_wasted": p.prefetch_wasted,
            "egress_ratio": p.egress_ratio, "dataset_bytes": p.dataset_bytes, "stall_s": p.stall_s,
            "stall_share": p.stall_share, "prefetch_window": p.window, "sample_rate": p.rate,
            "kept_chunks": p.kept_chunks, "events": p.events, "exact_order": p.exact_order,
            "l1_sampled_chunks": p.l1_sampled_chunks}


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} PiB"


def table(p: Prediction, timing: Timing) -> list[str]:
    """The prediction as plain text lines."""
    lines = [f"{'tier':<6} {'served':>8} {'hit ratio':>10}"]
    for name in ("L1", "L2", "L3", "block"):
        ratio = p.hit_ratio.get(name)
        shown = "-" if ratio is None else f"{ratio:.1%}"
        if name == "block" or ratio is not None or p.served[name]:
            lines.append(f"{name:<6} {p.served[name]:>8.1%} {shown:>10}")
    lines.append("")
    lines.append(f"{'epoch':<6} {'block egress':>14} {'x dataset':>10}")
    for e, (b, r) in enumerate(zip(p.egress, p.egress_ratio)):
        lines.append(f"{e:<6} {_bytes(b):>14} {r:>10.3f}")
    lines.append("")
    lines.append(f"data stall: {p.stall_s:.1f} s per rank over the run ({p.stall_share:.1%} of its time), "
                 f"step {timing.step_s * 1000:g} ms, origin {timing.origin_s * 1000:g} ms, "
                 f"prefetch window {p.window} samples")
    if p.window:
        lines.append(f"prefetch: {p.prefetch_wasted:.1%} of the chunks it fetched from below L2 were evicted "
                     "before their read and fetched again")
    order = "the sampler's order" if p.exact_order else "orders drawn with numpy (no torch, or too large)"
    lines.append(f"sampling: SHARDS rate {p.rate:.4g} ({p.kept_chunks} chunks, {p.events} reads simulated, "
                 f"{p.l1_sampled_chunks:.1f} chunks per sampled L1), {order}")
    if p.l1_sampled_chunks and p.l1_sampled_chunks < 16:
        lines.append("warning: a sampled L1 holds under 16 chunks; raise --sample-rate for accuracy")
    return lines


def plot(points: list[tuple[int, Prediction]], tier: str, path: str) -> None:
    """Hit ratio (share of reads each cache tier served) and egress per epoch against
    ``tier``'s capacity, as a PNG at ``path``."""
    if not points:
        raise InvalidRequest(f"--plot: no capacity of --sweep-factors gives a valid {tier} (too small)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caps = [c / (1 << 30) for c, _ in points]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in ("L1", "L2", "L3"):
        ys = [p.served[name] for _, p in points]
        if any(ys):
            ax1.plot(caps, ys, marker="o", label=f"{name} served")
    ax1.plot(caps, [1 - p.served["block"] for _, p in points], marker="s", linestyle="--", label="all caches")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel(f"{tier.upper()} capacity (GiB{' per host' if tier == 'l1' else ''})")
    ax1.set_ylabel("share of reads")
    ax1.set_ylim(0, 1)
    ax1.legend()
    ax1.set_title("hit ratio")
    epochs = len(points[0][1].egress)
    for e in range(epochs):
        ax2.plot(caps, [p.egress_ratio[e] for _, p in points], marker="o", label=f"epoch {e}")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel(ax1.get_xlabel())
    ax2.set_ylabel("block-layer egress / dataset")
    ax2.legend()
    ax2.set_title("egress per epoch")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
