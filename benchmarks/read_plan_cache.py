"""Metadata lookups through the SDK: embedded RocksDB vs a metadata service, with the
client's read-plan cache (``metadata.record_ttl_s``) off and warm.

One region's records are written to RocksDB; a ``blobtier meta serve`` process serves the
same database. Three clients then look up random keys (``client.stat``: the one metadata
lookup that opens a blob) and multi-get batches of 256 records (what ``announce`` and
``prefetch`` do each epoch): an embedded client (a RocksDB reader catching up every
``client.metadata_staleness_s``), a client of the service with the cache off, and one
with the cache warm (every key looked up once before, TTL longer than the run). Chunks
are never read here; the service clients name chunk servers only because remote metadata
needs them. Expected: warm-cache lookups >= 0.8x the embedded rate (issue 13).

    python benchmarks/read_plan_cache.py                    # 20k blobs, under a minute
    python benchmarks/read_plan_cache.py --blobs 100000 --out read_plan_cache.json
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402
from metadata_service import key_of, record  # noqa: E402

import blobtier  # noqa: E402
from blobtier.metadata.rocksdb_store import RocksDBStore  # noqa: E402
from blobtier.metadata.store import ABSENT  # noqa: E402

BATCH = 256


def measure(client: blobtier.Client, keys: list[str], lookups: int, batches: int,
            warm: bool) -> dict[str, float]:
    rng = random.Random(1)
    if warm:  # every key once: the read-plan cache holds them all
        for start in range(0, len(keys), 4096):
            client._metadata.get_many(keys[start:start + 4096])
    for k in rng.sample(keys, min(len(keys), 500)):  # warm the channel and RocksDB's caches
        client.stat(k)
    samples = []
    with h.Timer() as total:
        for k in (rng.choice(keys) for _ in range(lookups)):
            with h.Timer() as t:
                client.stat(k)
            samples.append(t.seconds)
    groups = [rng.sample(keys, BATCH) for _ in range(batches)]
    with h.Timer() as t:
        for group in groups:
            client._metadata.get_many(group)
    return {**h.summarize(samples), "lookups_s": lookups / total.seconds,
            "multiget_keys_s": batches * BATCH / t.seconds}


def main() -> None:
    p = h.parser(__doc__.splitlines()[0])
    p.add_argument("--blobs", type=int, default=20_000)
    p.add_argument("--lookups", type=int, default=20_000)
    p.add_argument("--batches", type=int, default=200, help=f"multi-gets of {BATCH} keys")
    args = p.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="read-plan-")
    root = os.path.join(work, "region")
    keys = [key_of(i) for i in range(args.blobs)]
    rows = []
    try:
        with RocksDBStore(os.path.join(root, "metadata"), writable=True) as store:
            for start in range(0, len(keys), 1000):
                batch = keys[start:start + 1000]
                store.commit_many([(k, record(start + i), ABSENT) for i, k in enumerate(batch)])
        backend = f"rocksdb:{os.path.join(root, 'metadata')}"
        proc = subprocess.Popen([sys.executable, "-m", "blobtier.cli", "meta", "serve", "--backend", backend],
                                stdout=subprocess.PIPE, text=True)
        try:
            addr = proc.stdout.readline().rsplit(" on ", 1)[1].strip()
            cases = [("embedded RocksDB", {}, False),
                     ("service, no read-plan cache", {"endpoints": [addr], "record_ttl_s": 0}, False),
                     ("service, read-plan cache warm", {"endpoints": [addr], "record_ttl_s": 3600}, True)]
            for name, metadata, warm in cases:
                block = {"endpoints": ["127.0.0.1:9"], "replicas": 1} if metadata else {}  # never contacted
                with blobtier.connect(root, metadata=metadata, block=block, cache={"l1_bytes": 0}) as c:
                    rows.append({"path": name, **measure(c, keys, args.lookups, args.batches, warm)})
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    print(h.table(rows, ["path", "p50_us", "p99_us", "mean_us", "lookups_s", "multiget_keys_s"],
                  f"SDK metadata lookups, {args.blobs:,} blobs"))
    base, off, warm = rows
    summary = (f"warm read-plan cache / embedded: lookups {warm['lookups_s'] / base['lookups_s']:.2f}x, "
               f"multi-get {warm['multiget_keys_s'] / base['multiget_keys_s']:.2f}x; "
               f"no cache / embedded: lookups {off['lookups_s'] / base['lookups_s']:.2f}x")
    print(summary)
    h.write_json(args.out, "read_plan_cache", vars(args), rows, summary)


if __name__ == "__main__":
    main()
