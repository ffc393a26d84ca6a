"""A region of H simulated hosts (``blobtier up`` with ``services.hosts = H``): what the
region reads from below the hosts per epoch, however many hosts train on one dataset.

For H = 1, 2 and 4 hosts, one job (a process) per host reads a dataset twice the size of
one host's L1 for a few epochs, each job in its own shuffled order, every byte checked.
Per epoch it reports what the hosts pulled from below them (flash-node gets, L3) and what
the block layer sent (chunk-server bytes), each divided by the dataset's size, from the
servers' own counters; where the jobs' reads were served (the host's own L1, a peer's
arena over L2, below); and samples/s. The baseline, in the same run: per-host caches with
no L2 (H daemons that do not know each other), which pull the dataset from L3 H times.
Then the checkpoint burst: every host reads one large blob at once; the block layer and
the flash node should each see one read per chunk.

Each configuration is a fresh region (cold flash node, cold arenas). The flash node holds
the whole dataset, so block-layer egress is 1x in the first epoch and 0 after, with L2 or
without; the hosts' pull from L3 is where the H-fold shows.

    python benchmarks/region_scale.py
    python benchmarks/region_scale.py --hosts 1,2,4 --l1 8MiB --epochs 2 --out region_scale.json

JSON (``--out``): ``results.rows`` has one row per (hosts, mode, epoch) with the measured
shares and egress ratios (``l1_share``, ``l2_share``, ``below_share``, ``l3_hit_ratio``,
``egress_l3``, ``egress_block``, ``samples_per_s``) and ``results.params`` the region's
sizes, so a planner can be compared row by row (``predicted_*`` columns may be added).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402

from blobtier import runstate as state  # noqa: E402
from blobtier.config import parse_size  # noqa: E402

# One job: announces it is ready before each epoch, waits for the go file, reads every
# sample once in its own order (batches of 8), checks each byte; its line after an epoch
# carries the client's tier counters so far.
JOB = r"""
import hashlib, json, os, random, sys, time
import blobtier

config, n, size, epochs, seed, run = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]
keys = [f"ds/{i:05d}" for i in range(n)]

def data(i):
    return (hashlib.sha256(str(i).encode()).digest() * (size // 32 + 1))[:size]

client = blobtier.connect(config)
for epoch in range(epochs + 1):
    print("ready", json.dumps(client.stats()), flush=True)
    if epoch == epochs:
        break
    while not os.path.exists(os.path.join(run, f"go-{epoch}")):
        time.sleep(0.01)
    order = list(range(n))
    random.Random(seed * 1000 + epoch).shuffle(order)
    for start in range(0, n, 8):
        batch = order[start:start + 8]
        for i, view in zip(batch, client.get_many([keys[i] for i in batch])):
            if bytes(view) != data(i):
                raise SystemExit(f"wrong bytes for {keys[i]}")
client.close()
"""

READER = r"""
import hashlib, sys
import blobtier

with blobtier.connect(sys.argv[1]) as client, client.open("ckpt/model.bin") as f:
    digest = hashlib.sha256()
    while chunk := f.read(8 << 20):
        digest.update(chunk)
print(digest.hexdigest(), flush=True)
"""


def sample(i: int, size: int) -> bytes:
    return (hashlib.sha256(str(i).encode()).digest() * (size // 32 + 1))[:size]


def free_base(span: int = 40) -> int:
    """A base port with ``span`` free ports, below the kernel's ephemeral range."""
    for _ in range(200):
        base = random.randrange(10000, 30000)
        try:
            for port in range(base, base + span):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


def cli(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "blobtier.cli", *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"blobtier {' '.join(args)}: {out.stderr or out.stdout}")
    return out


class Region:
    """One fresh region under ``work``: ``hosts`` daemons that fill their homes (L2), or
    none (``hosts`` = 0: the per-host baseline starts its own daemons)."""

    def __init__(self, work: str, name: str, hosts: int, memory: int, chunk: int) -> None:
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        base = free_base()
        self.path = os.path.join(self.dir, "region.toml")
        with open(self.path, "w") as f:
            f.write(f'''root = "{self.dir}/root"
[block]
servers = 2
replicas = 1
[client]
chunk_size = {chunk}
[services]
base_port = {base}
metrics_base_port = {base + 20}
flash_capacity_bytes = "2GiB"
flash_region_bytes = "16MiB"
daemon = {"true" if hosts else "false"}
hosts = {max(hosts, 1)}
daemon_memory_bytes = {memory}
''')
        self.root = os.path.join(self.dir, "root")
        cli("up", "-c", self.path)

    def counters(self) -> dict[str, float]:
        """Chunk-server bytes sent; flash-node gets and hits (their own counters)."""
        out = {"block_bytes": 0.0, "l3_gets": 0.0, "l3_hits": 0.0}
        for s in state.read(self.root).services:
            if s.kind not in ("block", "flash"):
                continue
            with urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=10) as r:
                lines = dict(line.rsplit(" ", 1) for line in r.read().decode().splitlines()
                             if line and not line.startswith("#"))
            if s.kind == "block":
                sent = lines.get("blobtier_chunkserver_sent_bytes_total",
                                 lines.get("blobtier_chunkserver_bytes_sent_total"))  # its old name
                out["block_bytes"] += float(sent)
            else:
                hits = float(lines["blobtier_flash_hits_total"])
                out["l3_hits"] += hits
                out["l3_gets"] += hits + float(lines["blobtier_flash_misses_total"])
        return out

    def down(self) -> None:
        cli("down", "-c", self.path)


def own_daemons(region: Region, hosts: int, memory: int) -> tuple[list[subprocess.Popen], list[str]]:
    """``hosts`` daemons that know nothing of each other: per-host caches, no L2."""
    procs, socks = [], []
    for n in range(hosts):
        sock = os.path.join(region.dir, f"own-{n}.sock")
        argv = [sys.executable, "-m", "blobtier.cli", "daemon", "--memory", str(memory), "--socket", sock]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
        socks.append(sock)
    for p in procs:
        p.stdout.readline()  # its ready line
    return procs, socks


def run_epochs(region: Region, hosts: int, envs: list[dict], n: int, size: int, epochs: int) -> list[dict]:
    """The jobs, one per host; a row per epoch from the servers' counters and the jobs'."""
    run = os.path.join(region.dir, "run-jobs")
    os.makedirs(run)
    argv = [sys.executable, "-c", JOB, region.path, str(n), str(size), str(epochs)]
    jobs = [subprocess.Popen([*argv, str(k), run], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **envs[k]}) for k in range(hosts)]
    rows = []
    try:
        def ready() -> list[dict]:
            out = []
            for job in jobs:
                line = job.stdout.readline()
                if not line.startswith("ready "):
                    raise RuntimeError(f"a job failed: {line}{job.stderr.read()}")
                out.append(json.loads(line[6:]))
            return out

        before, counters, started = ready(), region.counters(), 0.0
        for epoch in range(epochs):
            started = time.perf_counter()
            open(os.path.join(run, f"go-{epoch}"), "w").close()
            after = ready()
            seconds = time.perf_counter() - started
            now = region.counters()
            rows.append(_row(epoch, hosts, n, size, before, after, counters, now, seconds))
            before, counters = after, now
        for job in jobs:
            if job.wait(timeout=120):
                raise RuntimeError(f"a job failed: {job.stderr.read()}")
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
                job.wait()
    return rows


def _row(epoch: int, hosts: int, n: int, size: int, before: list[dict], after: list[dict],
         c0: dict, c1: dict, seconds: float) -> dict:
    reads = hosts * n
    dataset = n * size

    def moved(tier: str) -> int:
        return sum(a[tier]["hits"] - b[tier]["hits"] for a, b in zip(after, before))

    l1, l2 = moved("l1"), moved("l2")
    gets = c1["l3_gets"] - c0["l3_gets"]
    return {"epoch": epoch + 1, "l1_share": l1 / reads, "l2_share": l2 / reads,
            "below_share": 1 - (l1 + l2) / reads,
            "l3_hit_ratio": (c1["l3_hits"] - c0["l3_hits"]) / gets if gets else 0.0,
            "egress_l3": gets * size / dataset,
            "egress_block": (c1["block_bytes"] - c0["block_bytes"]) / dataset,
            "samples_per_s": reads / seconds}


def scale_run(work: str, hosts: int, l2: bool, args) -> list[dict]:
    name = f"h{hosts}-{'l2' if l2 else 'per-host'}"
    region = Region(work, name, hosts if l2 else 0, args.l1, args.chunk)
    procs: list[subprocess.Popen] = []
    try:
        import blobtier

        with blobtier.connect(region.path, cache={"daemon": "off", "l1_bytes": 0}) as client:
            client.put_many([(f"ds/{i:05d}", sample(i, args.sample)) for i in range(args.samples)])
        if l2:
            envs = [{"BLOBTIER_HOST": f"host-{k}"} for k in range(hosts)]
        else:
            procs, socks = own_daemons(region, hosts, args.l1)
            envs = [{"BLOBTIER_CACHE_DAEMON": s} for s in socks]
        rows = run_epochs(region, hosts, envs, args.samples, args.sample, args.epochs)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        region.down()
    return [{"hosts": hosts, "mode": "l2" if l2 else "per-host", **r} for r in rows]


def burst(work: str, hosts: int, args) -> dict:
    """Every host (``args.readers`` processes each) reads one blob at once."""
    # Each home holds its share, with room to spare; and 4 MiB chunks (an arena takes
    # chunks up to a sixteenth of its size: arena.default_max_chunk).
    memory = max(args.l1, 2 * args.burst // hosts, 64 << 20)
    region = Region(work, f"burst-h{hosts}", hosts, memory, 4 << 20)
    try:
        import blobtier

        blob = os.urandom(args.burst)
        with blobtier.connect(region.path, cache={"daemon": "off", "l1_bytes": 0}) as client:
            client.put("ckpt/model.bin", blob)
        c0 = region.counters()
        with h.Timer() as t:
            readers = [subprocess.Popen([sys.executable, "-c", READER, region.path], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "BLOBTIER_HOST": f"host-{k}"})
                       for k in range(hosts) for _ in range(args.readers)]
            want = hashlib.sha256(blob).hexdigest()
            ok = all(r.communicate(timeout=600)[0].strip() == want for r in readers)
        c1 = region.counters()
    finally:
        region.down()
    chunks = args.burst // (4 << 20)
    return {"hosts": hosts, "readers": hosts * args.readers, "bytes": args.burst, "chunks": chunks,
            "all_bytes_right": ok,
            "block_reads_per_chunk": (c1["block_bytes"] - c0["block_bytes"]) / args.burst,
            "l3_reads_per_chunk": (c1["l3_gets"] - c0["l3_gets"]) / chunks, "seconds": t.seconds}


def main() -> None:
    p = h.parser(__doc__.splitlines()[0])
    p.add_argument("--hosts", default="1,2,4", help="host counts to run")
    p.add_argument("--l1", default="8MiB", help="one host's L1 (the daemon's arena)")
    p.add_argument("--sample", default="128KiB", help="bytes per sample (one chunk each)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--burst", default="128MiB", help="the checkpoint's size (0: no burst)")
    p.add_argument("--readers", type=int, default=2, help="burst readers per host")
    args = p.parse_args()
    args.l1, args.sample, args.burst = (parse_size(args.l1, "--l1"), parse_size(args.sample, "--sample"),
                                        parse_size(args.burst, "--burst"))
    args.chunk = max(args.sample, 64 << 10)
    args.samples = 2 * args.l1 // args.sample  # the dataset: twice one host's L1
    host_counts = [int(x) for x in args.hosts.split(",")]
    work = args.dir or tempfile.mkdtemp(prefix="bt-region-scale-")
    try:
        rows = []
        for hosts in host_counts:
            for l2 in (True, False):
                rows += scale_run(work, hosts, l2, args)
        bursts = [burst(work, max(host_counts), args)] if args.burst else []
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    params = {"hosts": host_counts, "l1_bytes": args.l1, "sample_bytes": args.sample, "samples": args.samples,
              "dataset_bytes": args.samples * args.sample, "chunk_bytes": args.chunk, "epochs": args.epochs,
              "flash_bytes": parse_size("2GiB", "flash"), "burst_bytes": args.burst,
              "burst_readers_per_host": args.readers, "l1_policy": "sieve",
              "seeds": "job k: k * 1000 + epoch"}
    from plan_accuracy import predicted_columns  # what blobtier plan predicts for each row

    rows = predicted_columns(params, rows)
    columns = ["hosts", "mode", "epoch", "egress_l3", "egress_block", "l1_share", "l2_share", "below_share",
               "l3_hit_ratio", "samples_per_s",
               "predicted_egress_l3", "predicted_l1_share", "predicted_l2_share"]  # by blobtier plan
    print(h.table(rows, columns, f"dataset {args.samples} x {args.sample >> 10} KiB = 2 x one host's L1 "
                                 f"({args.l1 >> 20} MiB); egress = bytes read below the hosts / dataset"))
    if bursts:
        print()
        print(h.table(bursts, ["hosts", "readers", "chunks", "block_reads_per_chunk", "l3_reads_per_chunk",
                               "seconds", "all_bytes_right"], "checkpoint burst"))
    l2_worst = max(r["egress_l3"] for r in rows if r["mode"] == "l2")
    flat = max((r["egress_l3"] for r in rows if r["mode"] == "per-host" and r["hosts"] == max(host_counts)
                and r["epoch"] == 1), default=float("nan"))
    summary = (f"egress per epoch with L2 at most {l2_worst:.2f}x the dataset for H in {host_counts} "
               f"(expected <= 1.05); per-host caches at H={max(host_counts)}: {flat:.2f}x")
    if bursts:
        b = bursts[0]
        summary += (f"; burst of {b['readers']} readers: {b['block_reads_per_chunk']:.2f} block and "
                    f"{b['l3_reads_per_chunk']:.2f} L3 reads per chunk")
    print(summary)
    h.write_json(args.out, "region_scale", params, {"params": params, "rows": rows, "burst": bursts}, summary)


if __name__ == "__main__":
    main()
