"""Reading one blob through ``blobtier://`` vs the same bytes through ``file://``.

Both filesystems are driven through fsspec, as a training pipeline would: a sequential
read of the whole blob in ``--read-mib`` reads (``fsspec.open``), and ``--ranges`` random
``--range-bytes`` ranges in one ``cat_ranges`` call. The local file was just written, so
``file://`` reads come from the OS page cache: the memory-speed ceiling of local reads.
blobtier is timed with a cold in-process L1 (a fresh client: chunks come from the block
store's volume files and are verified) and a warm one (the blob is in L1). A plain
``os.pread`` loop over the local file is the floor for per-range overhead. Every range is
checked against the local bytes.

    python benchmarks/fsspec_read.py                      # 256 MiB, 10,000 ranges
    python benchmarks/fsspec_read.py --size 32 --out fsspec_read.json
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402
import fsspec  # noqa: E402
import numpy as np  # noqa: E402

from blobtier.sdk.fs import BlobtierFileSystem  # noqa: E402

KEY = "bench/fsspec/blob.bin"
MiB = 1 << 20


def sequential(url: str, options: dict, read_bytes: int) -> tuple[float, int]:
    """Seconds to read the whole file in ``read_bytes`` reads, and the bytes read."""
    total = 0
    with h.Timer() as t, fsspec.open(url, "rb", **options) as f:
        while data := f.read(read_bytes):
            total += len(data)
    return t.seconds, total


def ranged(fs: fsspec.AbstractFileSystem, path: str, starts: list[int],
           ends: list[int]) -> tuple[float, list[bytes]]:
    with h.Timer() as t:
        out = fs.cat_ranges([path] * len(starts), starts, ends)
    return t.seconds, out


def pread(path: str, starts: list[int], ends: list[int]) -> tuple[float, list[bytes]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        with h.Timer() as t:
            out = [os.pread(fd, e - s, s) for s, e in zip(starts, ends)]
    finally:
        os.close(fd)
    return t.seconds, out


def main() -> None:
    p = h.parser(__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="blob size in MiB")
    p.add_argument("--read-mib", type=float, default=1.0, help="size of each sequential read, MiB")
    p.add_argument("--ranges", type=int, default=10_000)
    p.add_argument("--range-bytes", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=3, help="timed passes; the best is reported")
    args = p.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="bench-fsspec-")
    size, read_bytes = args.size * MiB, int(args.read_mib * MiB)
    rng = random.Random(1)
    starts = [rng.randrange(size - args.range_bytes) for _ in range(args.ranges)]
    ends = [s + args.range_bytes for s in starts]
    try:
        region, local = os.path.join(work, "region"), os.path.join(work, "blob.bin")
        data = np.random.default_rng(1).bytes(size)
        with open(local, "wb") as f:
            f.write(data)
        bt = {"region": region}
        fsspec.filesystem("blobtier", **bt).pipe_file(KEY, data)
        del data
        bt_url, file_url = f"blobtier://{KEY}", f"file://{local}"
        local_fs = fsspec.filesystem("file")
        want = pread(local, starts, ends)[1]
        seq: dict[str, list[float]] = {"blobtier_cold": [], "blobtier_warm": [], "file": []}
        rng_s: dict[str, list[float]] = {"blobtier_cold": [], "blobtier_warm": [], "file": [], "pread": []}
        for _ in range(args.rounds):
            # A fresh client each round: an empty L1, the blob's chunks read from the block store.
            BlobtierFileSystem.clear_instance_cache()
            seconds, n = sequential(bt_url, bt, read_bytes)
            assert n == size, (n, size)
            seq["blobtier_cold"].append(seconds)
            seq["blobtier_warm"].append(sequential(bt_url, bt, read_bytes)[0])
            seq["file"].append(sequential(file_url, {}, read_bytes)[0])
            BlobtierFileSystem.clear_instance_cache()
            bt_fs = fsspec.filesystem("blobtier", **bt)
            for name, (seconds, got) in [("blobtier_cold", ranged(bt_fs, KEY, starts, ends)),
                                         ("blobtier_warm", ranged(bt_fs, KEY, starts, ends)),
                                         ("file", ranged(local_fs, local, starts, ends)),
                                         ("pread", pread(local, starts, ends))]:
                if got != want:
                    raise SystemExit(f"{name}: cat_ranges returned wrong bytes")
                rng_s[name].append(seconds)
        BlobtierFileSystem.clear_instance_cache()
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    results = {}
    for name in rng_s:
        row: dict = {}
        if name in seq:
            row["seq_mib_per_s"] = size / MiB / min(seq[name])
        row["ranges_per_s"] = args.ranges / min(rng_s[name])
        row["ranges_mib_per_s"] = args.ranges * args.range_bytes / MiB / min(rng_s[name])
        results[name] = row
    f, cold, warm = results["file"], results["blobtier_cold"], results["blobtier_warm"]
    rows = [{"target": k, **v} for k, v in results.items()]
    print(h.table(rows, ["target", "seq_mib_per_s", "ranges_per_s", "ranges_mib_per_s"],
                  f"fsspec reads of one {args.size} MiB blob: sequential in {args.read_mib:g} MiB "
                  f"reads, {args.ranges:,} random {args.range_bytes} B cat_ranges, best of "
                  f"{args.rounds}"))
    summary = (f"blobtier:// sequential {warm['seq_mib_per_s']:,.0f} MiB/s warm = "
               f"{warm['seq_mib_per_s'] / f['seq_mib_per_s']:.2f}x file:// "
               f"({f['seq_mib_per_s']:,.0f} MiB/s), cold {cold['seq_mib_per_s']:,.0f} MiB/s = "
               f"{cold['seq_mib_per_s'] / f['seq_mib_per_s']:.2f}x; cat_ranges "
               f"{warm['ranges_per_s']:,.0f}/s warm = {warm['ranges_per_s'] / f['ranges_per_s']:.2f}x "
               f"file:// ({f['ranges_per_s']:,.0f}/s), cold {cold['ranges_per_s']:,.0f}/s")
    print(summary)
    h.write_json(args.out, "fsspec_read", vars(args), results, summary)


if __name__ == "__main__":
    main()
