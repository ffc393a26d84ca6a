"""``blobtier plan`` against measured runs: does it predict what a region really does?

Two sources of measurements, each compared row by row with the planner's prediction for
the same trace (hit shares within 2 points, egress within 5% of the dataset):

- ``--from region_scale.json`` (``benchmarks/region_scale.py --out``): each run of H
  simulated hosts (one job per host, with L2 or per-host caches) is replayed as a
  recorded trace in exactly the benchmark's orders (job k on host k, shuffled by
  ``random.Random(k * 1000 + epoch)``, read 8 at a time); ``predicted_columns`` adds the
  predictions to its rows.
- by default, a small real run of its own: one host whose own L1 holds a third of the
  dataset, a flash node (L3) holding two thirds, real chunk servers below, 2 epochs in
  ``BlobSampler``'s order, measured by the client's tier counters and the chunk servers'.

    python benchmarks/plan_accuracy.py
    python benchmarks/plan_accuracy.py --from region_scale.json --out plan_accuracy.json
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402

from blobtier.plan import Recorder, Region, Timing, predict, recorded  # noqa: E402

SHARE_POINTS, EGRESS_SHARE = 0.02, 0.05
SHARES = ("l1_share", "l2_share", "below_share", "l3_hit_ratio")
EGRESS = ("egress_l3", "egress_block")


def _epoch_row(p, epoch: int, dataset: int) -> dict[str, float]:
    """The planner's numbers for one epoch (0-based) in region_scale's terms."""
    s = p.served_per_epoch[epoch]
    below = s["L3"] + s["block"]
    return {"l1_share": s["L1"], "l2_share": s["L2"], "below_share": below,
            "l3_hit_ratio": s["L3"] / below if below else 0.0,
            "egress_l3": p.l3_pulled[epoch] / dataset, "egress_block": p.egress[epoch] / dataset}


def region_scale_trace(path: str, hosts: int, samples: int, size: int, epochs: int) -> None:
    """region_scale's reads as a recorded trace: job k on host k, in its shuffled order."""
    with Recorder(path) as rec:
        for epoch in range(epochs):
            for k in range(hosts):
                order = list(range(samples))
                random.Random(k * 1000 + epoch).shuffle(order)
                for i in order:
                    rec.record(host=k, job=k, key=f"ds/{i:05d}", size=size, epoch=epoch)


def predicted_columns(params: dict, rows: list[dict], work: str | None = None) -> list[dict]:
    """``rows`` (region_scale's) with ``predicted_<metric>`` for each measured metric;
    ``work``: where the traces go (default: a temporary directory, removed after)."""
    if work is None:
        with tempfile.TemporaryDirectory(prefix="bt-plan-") as tmp:
            return predicted_columns(params, rows, tmp)
    out, cache = [], {}
    for row in rows:
        run = (row["hosts"], row["mode"])
        if run not in cache:
            trace = os.path.join(work, f"trace-h{run[0]}-{run[1]}.jsonl")
            region_scale_trace(trace, run[0], params["samples"], params["sample_bytes"], params["epochs"])
            region = Region(l1_bytes=params["l1_bytes"], l3_bytes=params["flash_bytes"],
                            l3_region_bytes=16 << 20, l1_policy=params.get("l1_policy", "sieve"),
                            l2=run[1] == "l2", prefetch=False)
            cache[run] = predict(recorded(trace, 1.0), region, Timing(batch=8), params["sample_bytes"])
        got = _epoch_row(cache[run], row["epoch"] - 1, params["dataset_bytes"])
        out.append({**row, **{f"predicted_{k}": v for k, v in got.items()}})
    return out


def placement_spread(params: dict, rows: list[dict], work: str, draws: int) -> list[dict]:
    """``rows`` with, for runs with an L2, the range of the predicted L3 pull and L2 share
    over ``draws`` draws of the rendezvous homes: how much the answer depends on which
    host each chunk happens to be homed at (the real run's blob ids are one such draw)."""
    out, cache = [], {}
    for row in rows:
        run = (row["hosts"], row["mode"])
        if run[0] < 2 or run[1] != "l2":
            out.append(row)
            continue
        if run not in cache:
            trace = os.path.join(work, f"trace-h{run[0]}-{run[1]}.jsonl")
            reads = recorded(trace, 1.0)
            cache[run] = [predict(reads, Region(l1_bytes=params["l1_bytes"], l3_bytes=params["flash_bytes"],
                                                l3_region_bytes=16 << 20, prefetch=False, placement_seed=d),
                                  Timing(batch=8), params["sample_bytes"]) for d in range(draws)]
        got = [_epoch_row(p, row["epoch"] - 1, params["dataset_bytes"]) for p in cache[run]]
        extra = {}
        for m in ("l2_share", "egress_l3"):
            lo, hi = min(g[m] for g in got), max(g[m] for g in got)
            extra[f"{m}_range"] = f"{lo:.2f}-{hi:.2f}"
            extra[f"{m}_in_range"] = lo - SHARE_POINTS <= row[m] <= hi + SHARE_POINTS
        out.append({**row, **extra})
    return out


def verdicts(rows: list[dict]) -> list[dict]:
    """Per row: the largest miss of a share (points) and of an egress (share of the dataset)."""
    out = []
    for r in rows:
        share = max(abs(r[f"predicted_{m}"] - r[m]) for m in SHARES if m in r)
        egress = max(abs(r[f"predicted_{m}"] - r[m]) for m in EGRESS if m in r)
        out.append({**r, "share_miss": share, "egress_miss": egress,
                    "within": share <= SHARE_POINTS and egress <= EGRESS_SHARE})
    return out


def own_run(work: str, samples: int = 300, size: int = 60_000, epochs: int = 2) -> tuple[dict, list[dict]]:
    """A real client over its own L1, a flash node and chunk servers; rows per epoch."""
    import blobtier
    from blobtier.blockstore_sim.chunk_server import ChunkServer
    from blobtier.blockstore_sim.remote import RemoteChunkStore
    from blobtier.blockstore_sim.replicated import ReadPolicy, ReplicatedBlockStore
    from blobtier.config import FlashNodeConfig
    from blobtier.dataloader.sampler import BlobSampler
    from blobtier.flash_l3.service import FlashNode
    from blobtier.sdk.routing import RoutingSource

    l1, flash = 6 << 20, 12 << 20  # a third and two thirds of an 18 MB dataset
    params = {"samples": samples, "sample_bytes": size, "dataset_bytes": samples * size, "epochs": epochs,
              "l1_bytes": l1, "flash_bytes": flash, "flash_region_bytes": 1 << 20, "seed": 7}
    servers = [ChunkServer(os.path.join(work, f"chunks{i}"), server_id=i) for i in range(3)]
    endpoints = [s.address for s in servers]
    source = RoutingSource(ReplicatedBlockStore(
        {i: RemoteChunkStore(a, timeout_s=10) for i, a in enumerate(endpoints)}, 1, writable_ids=(),
        policy=ReadPolicy(hedge_after_ms=-1, max_retries=1)))
    node = FlashNode(FlashNodeConfig(os.path.join(work, "flash"), flash, region_bytes=1 << 20), source)
    keys = [f"ds/{i:05d}" for i in range(samples)]
    cfg = {"block": {"endpoints": endpoints}, "client": {"chunk_size": "64KiB"}}
    rows = []
    try:
        no_l1 = {"l1_bytes": 0, "daemon": "off"}
        with blobtier.connect(os.path.join(work, "region"), cache=no_l1, **cfg) as c:
            c.put_many({k: os.urandom(size) for k in keys})
        sent = lambda: sum(s.faults.counters()["bytes_sent"] for s in servers)  # noqa: E731
        with blobtier.connect(os.path.join(work, "region"), cache={"l1_bytes": l1, "daemon": "off"},
                              flash={"endpoints": [node.address]}, **cfg) as c:
            sampler = BlobSampler(keys, seed=7, rank=0, world_size=1)
            for epoch in range(epochs):
                before, block0, gets0 = c.stats(), sent(), node.cache.stats()
                for i in sampler.order(epoch):
                    c.get(keys[i])
                after, gets1 = c.stats(), node.cache.stats()
                l1_hits = after["l1"]["hits"] - before["l1"]["hits"]
                l3_hits = after["l3"]["hits"] - before["l3"]["hits"]
                l3_gets = l3_hits + after["l3"]["misses"] - before["l3"]["misses"]
                rows.append({"epoch": epoch + 1, "l1_share": l1_hits / samples, "l2_share": 0.0,
                             "below_share": 1 - l1_hits / samples,
                             "l3_hit_ratio": l3_hits / l3_gets if l3_gets else 0.0,
                             "egress_l3": (gets1["hits"] + gets1["misses"] - gets0["hits"] - gets0["misses"])
                             * size / params["dataset_bytes"],
                             "egress_block": (sent() - block0) / params["dataset_bytes"]})
    finally:
        node.stop(0)
        source.close()
        for s in servers:
            s.stop(0)
    return params, rows


def own_predictions(params: dict, rows: list[dict]) -> list[dict]:
    from blobtier.plan import Synthetic

    spec = Synthetic(hosts=1, jobs=1, samples=params["samples"], sample_bytes=params["sample_bytes"],
                     chunk_bytes=64 << 10, epochs=params["epochs"], seeds=(params["seed"],))
    region = Region(l1_bytes=params["l1_bytes"], l3_bytes=params["flash_bytes"],
                    l3_region_bytes=params["flash_region_bytes"], prefetch=False)
    p = predict(spec.reads(1.0), region, Timing(batch=1), params["sample_bytes"])
    out = []
    for r in rows:
        got = _epoch_row(p, r["epoch"] - 1, params["dataset_bytes"])
        out.append({**r, **{f"predicted_{k}": v for k, v in got.items()}})
    return out


def main() -> None:
    p = h.parser(__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=20, help="placement draws for the range columns")
    p.add_argument("--from", dest="source", default=None, metavar="REGION_SCALE_JSON",
                   help="compare with benchmarks/region_scale.py's --out instead of a run of its own")
    args = p.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="bt-plan-accuracy-")
    try:
        if args.source:
            with open(args.source) as f:
                measured = json.load(f)["results"]
            params, rows = measured["params"], predicted_columns(measured["params"], measured["rows"], work)
            rows = placement_spread(params, rows, work, args.draws)
            title = "region_scale.py"
        else:
            params, rows = own_run(work)
            rows = own_predictions(params, rows)
            title = "one host: own L1 + flash node + chunk servers"
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    rows = verdicts(rows)
    columns = [c for c in ("hosts", "mode", "epoch") if c in rows[0]]
    for m in (*SHARES, *EGRESS):
        columns += [m, f"predicted_{m}"]
    columns += ["share_miss", "egress_miss", "within"]
    print(h.table(rows, columns, f"measured vs blobtier plan ({title})"))
    spread = [r for r in rows if "egress_l3_range" in r]
    if spread:
        print()
        print(h.table(spread, ["hosts", "mode", "epoch", "l2_share", "l2_share_range", "l2_share_in_range",
                               "egress_l3", "egress_l3_range", "egress_l3_in_range"],
                      f"the same runs over {args.draws} draws of the rendezvous homes"))
    ok = sum(r["within"] for r in rows)
    summary = (f"blobtier plan within {SHARE_POINTS * 100:.0f} points (shares) and {EGRESS_SHARE:.0%} of the "
               f"dataset (egress) on {ok} of {len(rows)} rows; worst share miss "
               f"{max(r['share_miss'] for r in rows) * 100:.1f} points, worst egress miss "
               f"{max(r['egress_miss'] for r in rows):.3f}x")
    print(summary)
    h.write_json(args.out, "plan_accuracy", {**params, "source": args.source or "own run"}, {"rows": rows},
                 summary)


if __name__ == "__main__":
    main()
