"""Disk space ``gc`` gives back: bytes on disk after deleting or overwriting blobs.

Two workloads on an embedded region (5 chunk servers, 3 replicas, default volumes):

- ``delete half``: write N blobs, delete every other one, ``gc --grace 0``;
- ``rewrite 10x``: write the same M keys ten times over, ``gc --grace 0``.

Each is measured three ways in the same run: before ``gc``; after the mark and sweep alone
(the baseline: what ``gc`` did before it compacted, deleting only by tombstone); and after
compaction (what ``gc`` does now). Bytes are the volume files' sizes (data and index);
``ideal`` is the live blobs' bytes times the replicas. The disk usage the file system
reports (``du``) is listed too: it adds each chunk server's space reserve.

    python benchmarks/gc_reclaim.py                   # 2,000 x 64 KiB, 2,000 x 16 KiB x 10
    python benchmarks/gc_reclaim.py --blobs 500 --out gc.json
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402

import blobtier  # noqa: E402
from blobtier.sdk import gc  # noqa: E402


class _SweepOnly:
    """A chunk store as ``gc`` saw one before compaction existed."""

    def __init__(self, store) -> None:
        self.digests = store.digests
        self.delete_many = store.delete_many


def usage(region: str) -> tuple[int, int]:
    """(bytes of volume files, bytes allocated on disk) under the region's ``blocks/``."""
    files = disk = 0
    for dirpath, _, names in os.walk(os.path.join(region, "blocks")):
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            disk += st.st_blocks * 512
            if name.endswith((".dat", ".idx")):
                files += st.st_size
    return files, disk


def collect(client, region: str, live_bytes: int) -> list[dict]:
    """Sweep alone, then compaction; a row for each state, and one for before."""
    replicas = client.config.block.replicas
    ideal = live_bytes * replicas
    rows = [{"state": "before gc", **_sizes(region, ideal)}]
    time.sleep(2.1)  # gc spares chunks written in the cutoff's second and the one before
    writer = client._write_path()
    servers = client._blocks.servers
    with h.Timer() as t_sweep:
        report = gc.collect(writer.metadata, {s: _SweepOnly(v) for s, v in servers.items()}, 0.0,
                            writer.inflight_digests)
    rows.append({"state": "sweep only (baseline)", **_sizes(region, ideal), "seconds": t_sweep.seconds,
                 "deleted": report.deleted_chunks})
    with h.Timer() as t_compact:
        moved = sum(store.compact().moved_bytes for store in servers.values())
    rows.append({"state": "sweep + compaction", **_sizes(region, ideal), "seconds": t_compact.seconds,
                 "moved_MiB": moved / 2**20, "copy_MiB_s": moved / 2**20 / max(t_compact.seconds, 1e-9)})
    before = rows[0]["files_MiB"]
    for row in rows:
        row["vs_before"] = row["files_MiB"] / before
    return rows


def _sizes(region: str, ideal: int) -> dict:
    files, disk = usage(region)
    return {"files_MiB": files / 2**20, "du_MiB": disk / 2**20, "ideal_MiB": ideal / 2**20,
            "vs_ideal": files / ideal}


def delete_half(region: str, blobs: int, size: int) -> list[dict]:
    payload = os.urandom(size + blobs)
    with blobtier.connect(region) as c:
        for start in range(0, blobs, 100):
            c.put_many({f"bench/{i}": payload[i:i + size] for i in range(start, min(blobs, start + 100))})
        for i in range(0, blobs, 2):
            c.delete(f"bench/{i}")
        return collect(c, region, (blobs - (blobs + 1) // 2) * size)


def rewrite(region: str, blobs: int, size: int, rounds: int) -> list[dict]:
    with blobtier.connect(region) as c:
        for _ in range(rounds):
            payload = os.urandom(size + blobs)
            for start in range(0, blobs, 200):
                c.put_many({f"bench/{i}": payload[i:i + size] for i in range(start, min(blobs, start + 200))})
        return collect(c, region, blobs * size)


def main() -> None:
    p = h.parser(__doc__.splitlines()[0])
    p.add_argument("--blobs", type=int, default=2000, help="blobs in each workload")
    p.add_argument("--size", type=int, default=64 * 1024, help="bytes per blob, delete half")
    p.add_argument("--rewrite-size", type=int, default=16 * 1024, help="bytes per blob, rewrite")
    p.add_argument("--rounds", type=int, default=10, help="writes of each key, rewrite")
    args = p.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="bench-gc-")
    results = {}
    try:
        results["delete half"] = delete_half(os.path.join(work, "half"), args.blobs, args.size)
        results[f"rewrite {args.rounds}x"] = rewrite(os.path.join(work, "rewrite"), args.blobs,
                                                    args.rewrite_size, args.rounds)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    cols = ["state", "files_MiB", "du_MiB", "ideal_MiB", "vs_before", "vs_ideal", "seconds", "copy_MiB_s"]
    for name, rows in results.items():
        print(h.table(rows, cols, f"{name}: {args.blobs:,} blobs, 3 replicas"))
        print()
    half, rew = results["delete half"], results[f"rewrite {args.rounds}x"]
    summary = (f"gc gives space back: delete half -> {half[2]['vs_before']:.2f}x the bytes before "
               f"(sweep alone {half[1]['vs_before']:.2f}x); rewrite {args.rounds}x -> "
               f"{rew[2]['vs_ideal']:.2f}x one copy (sweep alone {rew[1]['vs_ideal']:.2f}x)")
    print(summary)
    h.write_json(args.out, "gc_reclaim", vars(args), results, summary)


if __name__ == "__main__":
    main()
