"""Metadata lookups through the metadata service vs the embedded RocksDB they both read.

The baseline opens the database in this process (``RocksDBStore``, the embedded path);
then a ``blobtier meta serve --backend rocksdb:DIR`` process serves the same database and
``RemoteMetadataStore`` reads it over loopback gRPC. Both: point lookups of random keys
(p50/p99) and multi-gets of 256 random keys (keys/s).

    python benchmarks/metadata_service.py                  # 20k blobs, under a minute
    python benchmarks/metadata_service.py --blobs 100000 --out meta_service.json
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

from blobtier.metadata.remote import RemoteMetadataStore  # noqa: E402
from blobtier.metadata.rocksdb_store import RocksDBStore  # noqa: E402
from blobtier.metadata.schema import BlobRecord  # noqa: E402
from blobtier.metadata.store import ABSENT, MetadataStore  # noqa: E402

BATCH = 256


def key_of(i: int) -> str:
    return f"imagenet/train/n{i % 1000:05d}/img_{i:08d}.JPEG"


def record(i: int) -> BlobRecord:
    n = 1 + i % 4
    return BlobRecord(os.urandom(16), 1, n * 65536 - 100, 65536, [random.getrandbits(64) for _ in range(n)],
                      [(i % 7, (i + 1) % 7, (i + 2) % 7)] * n)


def measure(store: MetadataStore, keys: list[str], lookups: int, batches: int) -> dict[str, float]:
    rng = random.Random(1)
    for k in rng.sample(keys, min(len(keys), 500)):  # warm caches and the channel
        store.get(k)
    samples = h.timed_each(store.get, [rng.choice(keys) for _ in range(lookups)])
    groups = [rng.sample(keys, BATCH) for _ in range(batches)]
    with h.Timer() as t:
        for group in groups:
            store.get_many(group)
    return {**h.summarize(samples), "multiget_keys_s": batches * BATCH / t.seconds}


def main() -> None:
    p = h.parser(__doc__.splitlines()[0])
    p.add_argument("--blobs", type=int, default=20_000)
    p.add_argument("--lookups", type=int, default=5_000)
    p.add_argument("--batches", type=int, default=200, help=f"multi-gets of {BATCH} keys")
    args = p.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="meta-service-")
    db = os.path.join(work, "db")
    keys = [key_of(i) for i in range(args.blobs)]
    try:
        with RocksDBStore(db, writable=True) as store:
            for start in range(0, len(keys), 1000):
                batch = keys[start:start + 1000]
                store.commit_many([(k, record(start + i), ABSENT) for i, k in enumerate(batch)])
            rows = [{"path": "embedded RocksDB", **measure(store, keys, args.lookups, args.batches)}]
        proc = subprocess.Popen([sys.executable, "-m", "blobtier.cli", "meta", "serve",
                                 "--backend", f"rocksdb:{db}"], stdout=subprocess.PIPE, text=True)
        try:
            addr = proc.stdout.readline().rsplit(" on ", 1)[1].strip()
            with RemoteMetadataStore(addr) as remote:
                rows.append({"path": "metadata service", **measure(remote, keys, args.lookups, args.batches)})
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    print(h.table(rows, ["path", "p50_us", "p99_us", "mean_us", "multiget_keys_s"],
                  f"metadata lookups, {args.blobs:,} blobs"))
    base, svc = rows
    rate = svc["multiget_keys_s"]
    summary = (f"service/embedded: p50 {svc['p50_us'] / base['p50_us']:.1f}x, multi-get "
               f"{rate:,.0f} keys/s ({rate / base['multiget_keys_s']:.2f}x)")
    print(summary)
    h.write_json(args.out, "metadata_service", vars(args), rows, summary)


if __name__ == "__main__":
    main()
