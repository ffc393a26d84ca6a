"""The host L1: zero-copy hit bandwidth, small-hit rate, memory across processes, and the
hit ratios of the eviction policies on training traces.

1. L1-hit bandwidth for 4 MiB chunks and hits/s for 4 KiB chunks from 1, 2 and 4 reader
   processes sharing one arena, against numpy copying the same bytes (the memory
   bandwidth every copying cache pays). A reader consumes each hit once (a sum over it),
   as a decoder would, with no copy.
2. Memory: 4 processes reading one working set through one shared arena, against 4
   processes each with a cache of its own (proportional set size, summed).
3. Hit ratios over 10 epochs of seeded random permutations, capacity at 10/35/50/75% of
   the dataset, for LRU, SIEVE, keep-what-you-have and clairvoyant, next to Belady's MIN
   computed offline on the same trace; and 8 jobs with different seeds sharing a cache at
   35% (origin reads per epoch). The trace drives the real arena owner (index, slab
   allocator, policy): lookup, then claim and commit on a miss.
4. What checking the L1 costs: hits through the read path (TierChain) of a reader process
   with ``cache.verify_l1`` off, sampled and always (ratios to off), and fills over the
   socket, which the owner checks against the chunk's checksum before publishing them.

    python benchmarks/host_cache.py
    python benchmarks/host_cache.py --working-set 512MiB --items 5000 --out host.json
    python benchmarks/host_cache.py --only verify --seconds 3
"""

from __future__ import annotations

import heapq
import multiprocessing
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402
import numpy as np  # noqa: E402

from blobtier.cache_l1_l2.l1 import OwnedArena, SharedL1Cache  # noqa: E402
from blobtier.cache_l1_l2.owner import GRANTED, ArenaOwner  # noqa: E402
from blobtier.checksum import xxh3  # noqa: E402
from blobtier.chunks import ChunkKey  # noqa: E402
from blobtier.config import parse_size  # noqa: E402
from blobtier.metadata.schema import BlobRecord  # noqa: E402
from blobtier.metrics import TierStats  # noqa: E402
from blobtier.sdk.chain import TierChain  # noqa: E402


def keys(n: int, salt: int = 0) -> list[ChunkKey]:
    return [ChunkKey(salt.to_bytes(8, "little") * 2, 1, i) for i in range(n)]


# -- 1. bandwidth and small hits ---------------------------------------------------------------
def _consume_for(seconds: float, count: int, batch: int, read) -> tuple[int, int, float]:
    """Read chunks ``[0, count)`` in batches (``read(i, j)`` -> views) round and round for
    ``seconds``; returns (chunks, bytes, seconds)."""
    n = nbytes = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i in range(0, count, batch):
            for view in read(i, i + batch):
                # Read every byte once: numpy for big chunks; for 4 KiB ones numpy's call
                # overhead (~7 us) would dwarf the cache's work, so a C-level pass (xxh3).
                np.frombuffer(view, np.uint64).sum() if len(view) > 65536 else xxh3(view)
                n += 1
                nbytes += len(view)
    return n, nbytes, time.perf_counter() - t0


def _reader(socket_path: str, ks: list[ChunkKey], seconds: float, batch: int, start, out) -> None:
    cache = SharedL1Cache(socket_path=socket_path)
    cache.get_many(ks[:1])  # attach before the clock starts
    start.wait()
    out.put(_consume_for(seconds, len(ks), batch, lambda i, j: cache.get_many(ks[i:j]).values()))
    cache.close()


def hit_rates(chunk: int, count: int, procs: int, seconds: float, batch: int) -> dict:
    arena = OwnedArena(chunk * count + (64 << 20), "sieve")
    try:
        l1 = SharedL1Cache(owner=arena.owner)
        ks = keys(count)
        data = os.urandom(chunk)
        for k in ks:
            l1.put(k, data)
        ctx = multiprocessing.get_context("fork")
        start, out = ctx.Event(), ctx.Queue()
        ps = [ctx.Process(target=_reader, args=(arena.socket_path, ks, seconds, batch, start, out))
              for _ in range(procs)]
        for p in ps:
            p.start()
        time.sleep(0.5)
        start.set()
        results = [out.get(timeout=seconds + 60) for _ in ps]
        for p in ps:
            p.join()
        l1.close()
    finally:
        arena.close()
    hits = sum(r[0] / r[2] for r in results)
    return {"hits_per_s": hits, "hits_per_s_per_proc": hits / procs,
            "GiB_per_s": sum(r[1] / r[2] for r in results) / 2**30}


def copy_bandwidth(chunk: int, count: int, seconds: float) -> float:
    src = np.frombuffer(os.urandom(chunk * count), np.uint8)
    dst = np.empty_like(src[:chunk])
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i in range(count):
            np.copyto(dst, src[i * chunk:(i + 1) * chunk])
            n += chunk
    return n / (time.perf_counter() - t0) / 2**30


# -- 2. memory across processes -------------------------------------------------------------------
def pss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def _memory_reader(socket_path: str | None, ks: list[ChunkKey], chunk: int, ready, done, out) -> None:
    if socket_path is None:  # a cache of its own, as every per-process cache has
        arena = OwnedArena(chunk * len(ks) + (64 << 20), "sieve")
        cache = SharedL1Cache(owner=arena.owner)
        data = os.urandom(chunk)
        for k in ks:
            cache.put(k, data)
    else:
        cache = SharedL1Cache(socket_path=socket_path)
    for i in range(0, len(ks), 16):
        for view in cache.get_many(ks[i:i + 16]).values():
            np.frombuffer(view, np.uint64).sum()
    out.put(os.getpid())
    ready.wait()
    done.wait()


def memory(working_set: int, procs: int, chunk: int = 4 << 20) -> dict:
    count = working_set // chunk
    ks = keys(count, salt=7)
    ctx = multiprocessing.get_context("spawn")
    out = {}
    for mode in ("shared", "per-process"):
        arena = OwnedArena(chunk * count + (64 << 20), "sieve") if mode == "shared" else None
        if arena is not None:
            l1 = SharedL1Cache(owner=arena.owner)
            data = os.urandom(chunk)
            for k in ks:
                l1.put(k, data)
        ready, done, q = ctx.Event(), ctx.Event(), ctx.Queue()
        path = arena.socket_path if arena else None
        ps = [ctx.Process(target=_memory_reader, args=(path, ks, chunk, ready, done, q))
              for _ in range(procs)]
        for p in ps:
            p.start()
        pids = [q.get(timeout=600) for _ in ps]
        ready.set()
        total = sum(pss(pid) for pid in pids) + pss(os.getpid())
        done.set()
        for p in ps:
            p.join()
        if arena is not None:
            l1.close()
            arena.close()
        out[mode] = total
    return out


# -- 3. hit ratios ------------------------------------------------------------------------------
def belady_hits(trace: list[int], capacity: int) -> int:
    """Belady's MIN, offline: on a miss with the cache full, evict the item used farthest ahead."""
    nxt = [0] * len(trace)
    last: dict[int, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        nxt[i] = last.get(trace[i], 1 << 60)
        last[trace[i]] = i
    cached: dict[int, int] = {}
    heap: list[tuple[int, int]] = []
    hits = 0
    for i, item in enumerate(trace):
        if item in cached:
            hits += 1
        elif len(cached) >= capacity:
            while True:
                neg, victim = heapq.heappop(heap)
                if cached.get(victim) == -neg:
                    break
            if -neg < nxt[i]:  # everything cached is needed sooner: do not admit
                heapq.heappush(heap, (neg, victim))
                continue
            del cached[victim]
        cached[item] = nxt[i]
        heapq.heappush(heap, (-nxt[i], item))
    return hits


def simulate(policy: str, n: int, share: float, epochs: int, jobs: int, item: int = 4096) -> list[int]:
    """Origin reads per epoch through a real ArenaOwner (lookup, claim, commit)."""
    owner = ArenaOwner(max(item, int(n * share) * item), policy)
    session = owner.open_session()
    digests = [i.to_bytes(16, "little") for i in range(n)]
    rngs = [random.Random(1000 + j) for j in range(jobs)]
    misses_per_epoch = []
    try:
        for _ in range(epochs):
            orders = []
            for rng in rngs:
                order = list(range(n))
                rng.shuffle(order)
                orders.append(order)
            for j, order in enumerate(orders):
                owner.announce([digests[i] for i in order], job=j)
            misses = 0
            for pos in range(n):
                for order in orders:
                    d = digests[order[pos]]
                    place = owner.lookup([d], session)[0]
                    if place is not None:
                        owner.release([place[0]], session)
                        continue
                    misses += 1
                    status, _ = owner.claim(d, item, session)
                    if status == GRANTED:
                        owner.commit(d, session)
            misses_per_epoch.append(misses)
    finally:
        owner.close()
    return misses_per_epoch


def hit_ratios(n: int, epochs: int) -> list[dict]:
    rows = []
    for share in (0.10, 0.35, 0.50, 0.75):
        trace = []
        rng = random.Random(1000)
        for _ in range(epochs):
            order = list(range(n))
            rng.shuffle(order)
            trace += order
        cap = int(n * share)
        warm = trace[n:]  # steady state: epochs after the first
        row = {"share_pct": 100 * share,
               "belady_pct": 100 * (belady_hits(trace, cap) - belady_hits(trace[:n], cap)) / len(warm)}
        for policy in ("lru", "sieve", "keep", "clairvoyant"):
            misses = simulate(policy, n, share, epochs, 1)
            row[f"{policy}_pct"] = 100 * (1 - sum(misses[1:]) / (n * (epochs - 1)))
        rows.append(row)
    return rows


def shared_jobs(n: int, epochs: int, jobs: int, share: float) -> dict:
    out = {}
    for policy in ("lru", "sieve", "keep", "clairvoyant"):
        misses = simulate(policy, n, share, epochs, jobs)
        out[policy] = sum(misses[1:]) / (epochs - 1)
    return out


class _NoSource:
    """The verify benchmark reads hits only: a read that reaches the source is a bug."""

    def read_many(self, refs):
        raise AssertionError("an L1 miss in a benchmark of L1 hits")


def _chain_reader(socket_path: str, rec: BlobRecord, mode: str, seconds: float, batch: int,
                  start, out) -> None:
    chain = TierChain([SharedL1Cache(socket_path=socket_path, verify=mode)], _NoSource(), TierStats())
    refs = [(rec, i) for i in range(rec.n_chunks)]
    chain.read(refs[:1])  # attach before the clock starts
    start.wait()
    measured = _consume_for(seconds, len(refs), batch, lambda i, j: chain.read(refs[i:j]))
    out.put((*measured, chain.stats.snapshot()["l1"]["corrupt"]))


def verified_hits(chunk: int, count: int, mode: str, seconds: float, batch: int) -> dict:
    """L1 hits through the read path (TierChain) of a reader process, ``cache.verify_l1 = mode``."""
    arena = OwnedArena(chunk * count + (64 << 20), "sieve")
    try:
        data = os.urandom(chunk)
        rec = BlobRecord(b"verify-bench-000", 1, chunk * count, chunk, [xxh3(data)] * count)
        l1 = SharedL1Cache(owner=arena.owner)
        for i in range(count):
            l1.put(rec.chunk_key(i), data)
        ctx = multiprocessing.get_context("fork")
        start, out = ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=_chain_reader, args=(arena.socket_path, rec, mode, seconds, batch,
                                                        start, out))
        proc.start()
        time.sleep(0.5)
        start.set()
        n, nbytes, elapsed, corrupt = out.get(timeout=seconds + 60)
        proc.join()
        assert corrupt == 0
        l1.close()
    finally:
        arena.close()
    return {"hits_per_s": n / elapsed, "GiB_per_s": nbytes / elapsed / 2**30}


def verified_fills(chunk: int, count: int, seconds: float) -> float:
    """GiB/s of fills from a reader process over the socket: claim, write, commit (which
    the owner checks against the chunk's checksum before it publishes the slot)."""
    arena = OwnedArena(chunk * count + (64 << 20), "sieve")
    try:
        data = os.urandom(chunk)
        sum_ = xxh3(data)
        reader = SharedL1Cache(socket_path=arena.socket_path)
        n, t0, rnd = 0, time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            arena.owner.drop()
            rnd += 1
            for i in range(count):
                reader.put(ChunkKey(rnd.to_bytes(16, "little"), 1, i), data, checksum=("xxh3", sum_))
                n += 1
        elapsed = time.perf_counter() - t0
        assert arena.owner.stats()["inserts"] == n
        reader.close()
    finally:
        arena.close()
    return n * chunk / elapsed / 2**30


def verify_cost(seconds: float, repeats: int = 3) -> tuple[dict, str]:
    modes = ("off", "sampled", "always")
    runs: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for _ in range(repeats):  # modes interleaved, medians kept: this machine drifts
        for mode in modes:
            big = verified_hits(4 << 20, 64, mode, seconds, 8)
            small = verified_hits(4096, 4096, mode, seconds, 64)
            runs[mode].append((big["GiB_per_s"], small["hits_per_s"]))
    rows = [{"verify_l1": m, "4MiB_GiB_s": statistics.median(b for b, _ in runs[m]),
             "4KiB_hits_s": statistics.median(s for _, s in runs[m])} for m in modes]
    off = rows[0]
    for row in rows:
        row["4MiB_vs_off"] = row["4MiB_GiB_s"] / off["4MiB_GiB_s"]
        row["4KiB_vs_off"] = row["4KiB_hits_s"] / off["4KiB_hits_s"]
    fills = verified_fills(4 << 20, 32, seconds)
    hashing = hash_bandwidth(4 << 20, seconds)
    print(h.table(rows, ["verify_l1", "4MiB_GiB_s", "4MiB_vs_off", "4KiB_hits_s", "4KiB_vs_off"],
                  f"L1 hits through the read path, one reader process, by cache.verify_l1 "
                  f"(median of {repeats})"))
    print(f"checked fills over the socket: {fills:.2f} GiB/s for 4 MiB chunks "
          f"(xxh3 alone: {hashing:.1f} GiB/s)")
    by = {r["verify_l1"]: r for r in rows}
    summary = (f"verify_l1 4 MiB hits: sampled {by['sampled']['4MiB_vs_off']:.2f}x, always "
               f"{by['always']['4MiB_vs_off']:.2f}x off; 4 KiB: sampled {by['sampled']['4KiB_vs_off']:.2f}x, "
               f"always {by['always']['4KiB_vs_off']:.2f}x; checked fills {fills:.2f} GiB/s")
    return {"rows": rows, "fills_GiB_s": fills, "xxh3_GiB_s": hashing}, summary


def hash_bandwidth(chunk: int, seconds: float) -> float:
    """GiB/s of xxh3 over ``chunk``-byte buffers: what checking a hit costs at most."""
    data = os.urandom(chunk)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        xxh3(data)
        n += 1
    return n * chunk / (time.perf_counter() - t0) / 2**30


def bandwidth(seconds: float) -> tuple[dict, str]:
    copy_big = copy_bandwidth(4 << 20, 64, seconds)
    copy_small = copy_bandwidth(4096, 4096, seconds)
    rows = []
    for procs in (1, 2, 4):
        big = hit_rates(4 << 20, 64, procs, seconds, 8)
        small = hit_rates(4096, 4096, procs, seconds, 64)
        rows.append({"procs": procs, "4MiB_GiB_s": big["GiB_per_s"],
                     "vs_copy": big["GiB_per_s"] / (copy_big * min(procs, os.cpu_count() or 1)),
                     "4KiB_hits_s_per_proc": small["hits_per_s_per_proc"],
                     "4KiB_copies_s": copy_small * 2**30 / 4096})
    print(h.table(rows, ["procs", "4MiB_GiB_s", "vs_copy", "4KiB_hits_s_per_proc", "4KiB_copies_s"],
                  f"L1 hits (numpy copy: {copy_big:.1f} GiB/s for 4 MiB, one process; "
                  f"vs_copy divides by copy bandwidth x min(procs, cores))"))
    summary = (f"4 MiB hits {rows[0]['4MiB_GiB_s']:.1f} GiB/s ({rows[0]['vs_copy']:.2f}x copy), "
               f"4 KiB {rows[0]['4KiB_hits_s_per_proc']:,.0f} hits/s/proc")
    return {"copy_GiB_s": copy_big, "rows": rows}, summary


def memory_section(working_set: str) -> tuple[dict, str]:
    mem = memory(parse_size(working_set), 4)
    print(f"\nmemory of 4 processes reading a {working_set} working set: shared arena "
          f"{mem['shared'] / 2**30:.2f} GiB, per-process caches {mem['per-process'] / 2**30:.2f} GiB "
          f"(PSS, readers + this process)")
    return mem, (f"4 procs use {mem['shared'] / 2**30:.1f} GiB shared vs "
                 f"{mem['per-process'] / 2**30:.1f} GiB")


def ratios_section(items: int, epochs: int, n_jobs: int) -> tuple[dict, str]:
    ratios = hit_ratios(items, epochs)
    print("\n" + h.table(ratios, ["share_pct", "belady_pct", "lru_pct", "sieve_pct", "keep_pct",
                                  "clairvoyant_pct"],
                         f"steady-state hit ratio, one job, {items:,} items, {epochs} epochs"))
    jobs = shared_jobs(items, epochs, n_jobs, 0.35)
    print(f"\n{n_jobs} jobs sharing a cache at 35%: origin reads per epoch "
          + ", ".join(f"{k} {v:,.0f}" for k, v in jobs.items()))
    one = next(r for r in ratios if r["share_pct"] == 50)
    summary = (f"at 50%: clairvoyant {one['clairvoyant_pct']:.1f}%, keep {one['keep_pct']:.1f}%, "
               f"LRU {one['lru_pct']:.1f}%; {n_jobs} jobs at 35%: clairvoyant "
               f"{jobs['clairvoyant'] / jobs['keep']:.2f}x keep's origin reads")
    return {"hit_ratios": ratios, "shared_jobs_origin_reads": jobs}, summary


SECTIONS = ("bandwidth", "memory", "ratios", "verify")


def main() -> None:
    p = h.parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=2.0, help="per bandwidth measurement")
    p.add_argument("--working-set", default="2GiB")
    p.add_argument("--items", type=int, default=10_000, help="dataset size of the hit-ratio traces")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections")
    args = p.parse_args()
    run = {
        "bandwidth": lambda: bandwidth(args.seconds),
        "memory": lambda: memory_section(args.working_set),
        "ratios": lambda: ratios_section(args.items, args.epochs, args.jobs),
        "verify": lambda: verify_cost(args.seconds),
    }
    results: dict = {}
    summaries = []
    for name in args.only or SECTIONS:
        results[name], summary = run[name]()
        summaries.append(summary)
    summary = "; ".join(summaries)
    print(summary)
    h.write_json(args.out, "host_cache", vars(args), results, summary)


if __name__ == "__main__":
    main()
