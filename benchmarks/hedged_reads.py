"""Hedged reads against stragglers, and one client's streaming rate vs the local disk.

Five chunk servers run as ``blobtier block serve`` processes on loopback, each adding a
base latency to every request and making a share of requests (the tail) many times
slower. The same reads of 1 MiB chunks run through two block stores over the same
servers, in alternating rounds: one never hedges, one hedges after its automatic
threshold (p95 of recent latencies). The extra requests hedging sent are counted by the
client. The streaming part reads the same bytes from one server (no faults) and with
plain reads from a local file, in the same run.

    python benchmarks/hedged_reads.py                      # 2,000 reads, ~1-2 minutes
    python benchmarks/hedged_reads.py --reads 500 --out hedged.json
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402

from blobtier.blockstore_sim.remote import RemoteChunkStore  # noqa: E402
from blobtier.blockstore_sim.replicated import ReadPolicy, ReplicatedBlockStore  # noqa: E402
from blobtier.checksum import xxh3  # noqa: E402
from blobtier.chunks import ChunkKey  # noqa: E402
from blobtier.metadata.schema import BlobRecord, new_blob_id  # noqa: E402

MiB = 1 << 20


def start_servers(work: str, n: int) -> tuple[list[subprocess.Popen], list[str]]:
    procs, addrs = [], []
    for i in range(n):
        proc = subprocess.Popen([sys.executable, "-m", "blobtier.cli", "block", "serve", "--root",
                                 os.path.join(work, f"server{i}"), "--id", str(i), "--seed", str(i)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        if "serving" not in line:
            raise RuntimeError(f"chunk server {i} did not start: {line!r}")
        addrs.append(line.split()[-1])
    return procs, addrs


def block_store(addrs: list[str], hedge_after_ms: float) -> ReplicatedBlockStore:
    return ReplicatedBlockStore({i: RemoteChunkStore(a) for i, a in enumerate(addrs)}, 3,
                                policy=ReadPolicy(hedge_after_ms=hedge_after_ms))


def write_chunks(block: ReplicatedBlockStore, count: int, size: int) -> list[tuple[BlobRecord, int]]:
    """``count`` chunks of ``size`` bytes, one blob each; returns their refs."""
    refs = []
    base = os.urandom(size + 4096)
    for start in range(0, count, 16):
        batch = []
        for i in range(start, min(count, start + 16)):
            data = base[i % 4096:i % 4096 + size]
            batch.append((ChunkKey(new_blob_id(), 1, 0), data, xxh3(data)))
        for (key, _, csum), where in zip(batch, block.write_chunks(batch)):
            refs.append((BlobRecord(key.blob_id, 1, size, size, [csum], [where]), 0))
    return refs


def set_faults(addrs: list[str], **changes: float) -> None:
    for addr in addrs:
        admin = RemoteChunkStore(addr)
        admin.set_faults(reset=True, **changes)
        admin.close()


def timed_reads(block: ReplicatedBlockStore, refs: list) -> list[float]:
    samples = []
    clock = time.perf_counter
    for ref in refs:
        t = clock()
        block.read_many([ref])
        samples.append(clock() - t)
    return samples


def stream_vs_disk(work: str, addr: str, total: int, chunk: int) -> dict[str, float]:
    """MiB/s of one client reading ``total`` bytes from one server, and of plain reads of
    the same bytes from a local file (page cache, then after dropping it)."""
    store = RemoteChunkStore(addr)
    data = os.urandom(chunk)
    digests = [i.to_bytes(16, "little") for i in range(total // chunk)]
    store.put_many([(d, data, xxh3(data)) for d in digests])
    path = os.path.join(work, "local.bin")
    with open(path, "wb") as f:
        for _ in digests:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    out = {}
    with h.Timer() as t:
        for d in digests:
            store.get(d)
    out["grpc_one_server_MiB_s"] = total / t.seconds / MiB
    buf = bytearray(chunk)
    for name, drop in (("local_cold_MiB_s", True), ("local_page_cache_MiB_s", False)):
        fd = os.open(path, os.O_RDONLY)
        try:
            if drop:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            with h.Timer() as t:
                while os.readv(fd, [buf]):
                    pass
        finally:
            os.close(fd)
        out[name] = total / t.seconds / MiB
    store.close()
    return out


def main() -> None:
    p = h.parser(__doc__.splitlines()[0])
    p.add_argument("--servers", type=int, default=5)
    p.add_argument("--reads", type=int, default=2000, help="measured reads per mode")
    p.add_argument("--chunks", type=int, default=256, help="distinct chunks the reads cycle over")
    p.add_argument("--chunk-mib", type=float, default=1.0)
    p.add_argument("--latency-ms", type=float, default=5.0, help="base latency of every request")
    p.add_argument("--tail-p", type=float, default=0.05)
    p.add_argument("--tail-factor", type=float, default=20.0)
    p.add_argument("--warmup", type=int, default=200, help="unmeasured reads per mode first")
    p.add_argument("--rounds", type=int, default=10, help="the modes alternate this many times")
    p.add_argument("--stream-mib", type=int, default=256)
    args = p.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="bench-hedged-")
    chunk = int(args.chunk_mib * MiB)
    rng = random.Random(7)
    procs: list[subprocess.Popen] = []
    try:
        procs, addrs = start_servers(work, args.servers)
        modes = {"unhedged": block_store(addrs, -1), "hedged": block_store(addrs, 0)}
        refs = write_chunks(modes["unhedged"], args.chunks, chunk)
        set_faults(addrs, latency_ms=args.latency_ms, tail_p=args.tail_p, tail_factor=args.tail_factor)
        for block in modes.values():
            timed_reads(block, [rng.choice(refs) for _ in range(args.warmup)])
        samples = {m: [] for m in modes}
        before = {m: b.counters() for m, b in modes.items()}
        per_round = args.reads // args.rounds
        for _ in range(args.rounds):
            for name, block in modes.items():
                samples[name] += timed_reads(block, [rng.choice(refs) for _ in range(per_round)])
        after = {m: b.counters() for m, b in modes.items()}
        set_faults(addrs)
        stream = stream_vs_disk(work, addrs[0], args.stream_mib * MiB, 4 * MiB)
        for block in modes.values():
            block.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    results = {}
    for name in modes:
        s = h.summarize(samples[name])
        reads = len(samples[name])
        sent = after[name]["requests"] - before[name]["requests"]
        results[name] = {"reads": reads, "p50_ms": s["p50_us"] / 1000, "p99_ms": s["p99_us"] / 1000,
                         "p999_ms": s["p999_us"] / 1000, "mean_ms": s["mean_us"] / 1000,
                         "p99_over_p50": s["p99_us"] / s["p50_us"],
                         "requests": sent, "extra_requests_pct": 100 * (sent - reads) / reads,
                         "hedges": after[name]["hedges"] - before[name]["hedges"],
                         "hedge_wins": after[name]["hedge_wins"] - before[name]["hedge_wins"],
                         "hedge_after_ms": after[name]["hedge_after_ms"]}
    print(h.table([{"mode": k, **v} for k, v in results.items()],
                  ["mode", "reads", "p50_ms", "p99_ms", "p999_ms", "mean_ms", "p99_over_p50",
                   "extra_requests_pct", "hedges", "hedge_wins", "hedge_after_ms"],
                  f"{args.reads:,} reads of {args.chunk_mib:g} MiB chunks per mode, {args.servers} chunk "
                  f"servers, {args.latency_ms:g} ms base latency, {args.tail_p:.0%} of requests "
                  f"{args.tail_factor:g}x slower"))
    print()
    print(h.table([stream], list(stream), f"one client streaming {args.stream_mib} MiB in 4 MiB chunks "
                                          "from one server vs plain reads of a local file"))
    u, hd = results["unhedged"], results["hedged"]
    summary = (f"hedged p99 {hd['p99_ms']:.1f} ms = {hd['p99_over_p50']:.2f}x its p50 "
               f"(unhedged p99 {u['p99_ms']:.1f} ms = {u['p99_over_p50']:.1f}x p50) for "
               f"{hd['extra_requests_pct']:.1f}% extra requests; one gRPC stream "
               f"{stream['grpc_one_server_MiB_s']:,.0f} MiB/s vs local file "
               f"{stream['local_page_cache_MiB_s']:,.0f} MiB/s (page cache), "
               f"{stream['local_cold_MiB_s']:,.0f} MiB/s (cold)")
    print(summary)
    h.write_json(args.out, "hedged_reads", vars(args), {"reads": results, "stream": stream}, summary)


if __name__ == "__main__":
    main()
