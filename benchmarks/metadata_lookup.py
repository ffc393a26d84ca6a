"""Flat single-record metadata lookup vs a legacy five-hop chain, on the same RocksDB.

The flat schema opens a blob with one point lookup of its ``BlobRecord`` through
``RocksDBStore`` (the real code path). The legacy chain resolves the same blob through
namespace -> bucket -> blob inode -> chunk map -> volume: five dependent gets, each value a
small record with its own crc32c (the same integrity the flat record has), decoded hop by
hop. Both end with the same facts: size, version, per-chunk checksums and replica placement.

    python benchmarks/metadata_lookup.py            # 1M blobs, a few minutes
    python benchmarks/metadata_lookup.py --blobs 200000 --out lookup.json
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402

from blobtier.checksum import crc32c  # noqa: E402
from blobtier.metadata import schema  # noqa: E402
from blobtier.metadata.rocksdb_store import RocksDBStore  # noqa: E402
from blobtier.metadata.store import ABSENT  # noqa: E402

NAMESPACE = "imagenet"
VOLUMES = 1024
_U64 = struct.Struct("<Q")
_INODE = struct.Struct("<QQQI")  # chunk map id, size, version, n chunks
_VOLUME = struct.Struct("<HHH")  # replica servers


def key_of(i: int) -> str:
    return f"{NAMESPACE}/train/n{i % 1000:05d}/img_{i:08d}.JPEG"


def sealed(payload: bytes) -> bytes:
    return payload + struct.pack("<I", crc32c(payload))


def unseal(value: bytes) -> bytes:
    body = value[:-4]
    if crc32c(body) != struct.unpack_from("<I", value, len(value) - 4)[0]:
        raise ValueError("corrupt legacy record")
    return body


def build(store: RocksDBStore, blobs: int) -> None:
    db = store._db
    from rocksdict import WriteBatch

    db[b"Lns/" + NAMESPACE.encode()] = sealed(_U64.pack(7))  # namespace -> bucket id
    for v in range(VOLUMES):
        db[b"Lvol/" + _U64.pack(v)] = sealed(_VOLUME.pack(v % 5, (v + 1) % 5, (v + 2) % 5))
    step = 10_000
    for start in range(0, blobs, step):
        flat = []
        wb = WriteBatch(raw_mode=True)
        for i in range(start, min(blobs, start + step)):
            key = key_of(i)
            csum = random.getrandbits(64)
            placement = ((i % 5, (i + 1) % 5, (i + 2) % 5),)
            flat.append((key, schema.BlobRecord(os.urandom(16), 1, 100_000 + i % 1000, 4 << 20,
                                                [csum], placement, "xxh3", time.time_ns()),
                         ABSENT))
            path = key[len(NAMESPACE) + 1:].encode()
            wb.put(b"Lblob/" + _U64.pack(7) + path, sealed(_U64.pack(i)))  # bucket/path -> inode
            wb.put(b"Linode/" + _U64.pack(i), sealed(_INODE.pack(i, 100_000 + i % 1000, 1, 1)))
            wb.put(b"Lcmap/" + _U64.pack(i), sealed(struct.pack("<QQ", csum, i % VOLUMES)))
        db.write(wb)
        store.commit_many(flat)
    db.flush()
    db.compact_range(None, None)


def chain_lookup(db, key: str) -> tuple:
    ns, _, path = key.partition("/")
    bucket = unseal(db.get(b"Lns/" + ns.encode()))
    inode = unseal(db.get(b"Lblob/" + bucket + path.encode()))
    cmap_id, size, version, n = _INODE.unpack(unseal(db.get(b"Linode/" + inode)))
    cmap = unseal(db.get(b"Lcmap/" + _U64.pack(cmap_id)))
    checksums = struct.unpack_from(f"<{n}Q", cmap)
    (volume,) = struct.unpack_from("<Q", cmap, 8 * n)
    placement = _VOLUME.unpack(unseal(db.get(b"Lvol/" + _U64.pack(volume))))
    return size, version, checksums, placement


def chain_lookup_many(db, keys: list[str]) -> list[tuple]:
    """The chain batched the best it can: one multi-get per hop."""
    ns = unseal(db.get(b"Lns/" + NAMESPACE.encode()))
    inodes = [unseal(v) for v in db[[b"Lblob/" + ns + k.partition("/")[2].encode() for k in keys]]]
    heads = [_INODE.unpack(unseal(v)) for v in db[[b"Linode/" + i for i in inodes]]]
    cmaps = [unseal(v) for v in db[[b"Lcmap/" + _U64.pack(hd[0]) for hd in heads]]]
    vols = [unseal(v) for v in db[[b"Lvol/" + cm[8:16] for cm in cmaps]]]
    return [(hd[1], hd[2], struct.unpack_from(f"<{hd[3]}Q", cm), _VOLUME.unpack(v))
            for hd, cm, v in zip(heads, cmaps, vols)]


def flat_lookup(store: RocksDBStore, key: str) -> tuple:
    rec = store.get(key)
    return rec.size, rec.version, rec.checksums, rec.placement[0]


def flat_lookup_many(store: RocksDBStore, keys: list[str]) -> list[tuple]:
    return [(r.size, r.version, r.checksums, r.placement[0]) for r in store.get_many(keys)]


def time_singles(fn, arg, keys: list[str]) -> tuple[list[float], float]:
    samples = []
    clock = time.perf_counter
    start = clock()
    for key in keys:
        t = clock()
        fn(arg, key)
        samples.append(clock() - t)
    return samples, clock() - start


def time_batches(fn, arg, keys: list[str], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(keys), batch):
        fn(arg, keys[i:i + batch])
    return time.perf_counter() - start


def main() -> None:
    p = h.parser(__doc__.splitlines()[0])
    p.add_argument("--blobs", type=int, default=1_000_000)
    p.add_argument("--lookups", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3,
                   help="passes over the keys: the first is cold (caches empty), the best later one warm")
    p.add_argument("--row-cache-mib", type=int, default=1024,
                   help="RocksDB row cache (blobtier's default is 128; the warm figures need the "
                        "records of both schemas to fit)")
    args = p.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="bench-metadata-")
    random.seed(1)
    try:
        store = RocksDBStore(os.path.join(work, "db"), writable=True,
                             row_cache_bytes=args.row_cache_mib << 20)
        with h.Timer() as t:
            build(store, args.blobs)
        print(f"built {args.blobs:,} blobs (flat records + legacy chain) in {t.seconds:.1f}s")
        keys = [key_of(random.randrange(args.blobs)) for _ in range(args.lookups)]
        assert flat_lookup(store, keys[0])[:3] == chain_lookup(store._db, keys[0])[:3]
        results = {}
        for name, fn, arg in [("flat", flat_lookup, store), ("chain", chain_lookup, store._db)]:
            runs = [time_singles(fn, arg, keys) for _ in range(args.rounds)]
            cold, warm = runs[0], min(runs[1:] or runs, key=lambda run: run[1])
            results[name] = {"cold_lookups_per_s": len(keys) / cold[1],
                             "lookups_per_s": len(keys) / warm[1], **h.summarize(warm[0])}
        for name, fn, arg in [("flat", flat_lookup_many, store), ("chain", chain_lookup_many, store._db)]:
            best = min(time_batches(fn, arg, keys, args.batch) for _ in range(args.rounds))
            results[name]["multiget_keys_per_s"] = len(keys) / best
        store.close()
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    speedup = results["flat"]["lookups_per_s"] / results["chain"]["lookups_per_s"]
    cold = results["flat"]["cold_lookups_per_s"] / results["chain"]["cold_lookups_per_s"]
    rows = [{"schema": k, **v} for k, v in results.items()]
    print(h.table(rows, ["schema", "cold_lookups_per_s", "lookups_per_s", "p50_us", "p99_us",
                         "p999_us", "multiget_keys_per_s"],
                  f"metadata lookups, {args.blobs:,} blobs, {args.lookups:,} random keys, "
                  f"multi-get batches of {args.batch}"))
    summary = (f"flat lookup {results['flat']['lookups_per_s']:,.0f}/s = {speedup:.1f}x the 5-hop chain "
               f"warm, {cold:.1f}x cold (p50 {results['flat']['p50_us']:.1f} vs "
               f"{results['chain']['p50_us']:.1f} us); "
               f"multi-get {results['flat']['multiget_keys_per_s']:,.0f} keys/s")
    print(summary)
    h.write_json(args.out, "metadata_lookup", vars(args), results, summary)


if __name__ == "__main__":
    main()
