"""``as_tensor`` on L1 hits: what safe writes cost against the old unsafe zero-copy view.

For each chunk size, L1 hits (an in-process arena, as a trainer without a host daemon has)
are turned into tensors three ways, all in one run:

  shared      ``torch.frombuffer`` over the arena's shared mapping: the old ``as_tensor``.
              No copy, and no protection: a write changes every reader's bytes.
  as_tensor   the tensor on a copy-on-write mapping of the same pages made for this call
              (``blobtier/pages.py``): no copy; the first write to a page copies that page.
  copy        the bytes copied into memory of the tensor's own (``bytearray``).

Each tensor is consumed once, as a decode or collate would: ``read`` sums every byte;
``write`` adds one in place (for ``shared`` the arena is written: the benchmark refills
it). Reported: microseconds per chunk (lookup + tensor + consume; the lookup is the same
in every column), as_tensor's ratio to the old path and to a copy, and the warnings
as_tensor raised (torch warns of a tensor over read-only memory; expected: 0).

    python benchmarks/as_tensor.py
    python benchmarks/as_tensor.py --seconds 2 --out as_tensor.json
"""

from __future__ import annotations

import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402
import torch  # noqa: E402

from blobtier.cache_l1_l2.l1 import OwnedArena, SharedL1Cache  # noqa: E402
from blobtier.chunks import ChunkKey  # noqa: E402
from blobtier.dataloader import as_tensor  # noqa: E402

SIZES = (4 << 10, 64 << 10, 1 << 20, 4 << 20)
BATCH = 8


def _shared(view: memoryview) -> torch.Tensor:
    with warnings.catch_warnings():  # the warning the old path silenced
        warnings.simplefilter("ignore")
        return torch.frombuffer(view, dtype=torch.uint8)


def _copy(view: memoryview) -> torch.Tensor:
    return torch.frombuffer(bytearray(view), dtype=torch.uint8)


WAYS = {"shared": _shared, "as_tensor": as_tensor, "copy": _copy}


def _consume(t: torch.Tensor, write: bool) -> None:
    if write:
        t.add_(1)
    else:
        t.view(torch.int64).sum()


def per_chunk_us(l1: SharedL1Cache, keys: list[ChunkKey], way: str, write: bool,
                 seconds: float) -> tuple[float, int]:
    """Microseconds per chunk, and the warnings raised (torch's "not writable" one)."""
    make, n = WAYS[way], 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for i in range(0, len(keys), BATCH):
                for view in l1.get_many(keys[i:i + BATCH]).values():
                    _consume(make(view), write)
                    n += 1
        us = (time.perf_counter() - t0) / n * 1e6
    return us, len(caught)


def run_size(size: int, count: int, seconds: float) -> dict:
    torch.set_num_threads(1)  # one reader: ratios, not the machine's thread count
    arena = OwnedArena(size * count + (64 << 20), "sieve")
    try:
        l1 = SharedL1Cache(owner=arena.owner)
        keys = [ChunkKey(b"b" * 16, 1, i) for i in range(count)]
        data = os.urandom(size)
        for k in keys:
            l1.put(k, data)
        row: dict = {"chunk_KiB": size >> 10, "as_tensor_warnings": 0}
        for write in (False, True):
            for way in WAYS:
                us, caught = per_chunk_us(l1, keys, way, write, seconds)
                row[f"{'write' if write else 'read'}_{way}_us"] = us
                if way == "as_tensor":
                    row["as_tensor_warnings"] += caught
        for op in ("read", "write"):
            row[f"{op}_vs_shared"] = row[f"{op}_as_tensor_us"] / row[f"{op}_shared_us"]
            row[f"{op}_vs_copy"] = row[f"{op}_as_tensor_us"] / row[f"{op}_copy_us"]
        l1.close()
        return row
    finally:
        arena.close()


def main() -> None:
    p = h.parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    p.add_argument("--bytes", default=64 << 20, type=int, help="chunk bytes per size (the working set)")
    args = p.parse_args()
    rows = [run_size(size, max(BATCH, args.bytes // size), args.seconds) for size in SIZES]
    cols = ["chunk_KiB"] + [f"{op}_{w}_us" for op in ("read", "write") for w in WAYS] + [
        "read_vs_shared", "read_vs_copy", "write_vs_shared", "write_vs_copy", "as_tensor_warnings"]
    print(h.table(rows, cols, "per L1 hit: lookup + tensor + one pass over it (us; ratios: as_tensor "
                              "over the old shared view and over a copy)"))
    big = rows[-1]
    summary = (f"as_tensor read of a {big['chunk_KiB']} KiB hit {big['read_vs_shared']:.2f}x the old "
               f"unsafe view, {big['read_vs_copy']:.2f}x a copy; 4 KiB "
               f"{rows[0]['read_vs_shared']:.2f}x / {rows[0]['read_vs_copy']:.2f}x; warnings from "
               f"as_tensor: {sum(r['as_tensor_warnings'] for r in rows)}")
    print(summary)
    h.write_json(args.out, "as_tensor", vars(args), rows, summary)


if __name__ == "__main__":
    main()
