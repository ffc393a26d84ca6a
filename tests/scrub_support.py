"""Damage for scrub tests: flip a byte of a replica in its volume file, delete a replica,
and the plan both scrub tests apply (to an embedded region and to gRPC chunk servers)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from blobtier import checksum
from blobtier.metadata.schema import BlobRecord

CHUNK = 64 * 1024
# (blob, chunk index, what happens to the replica at each position of its placement)
PLAN = [
    (0, 0, ("flip", "delete", None)),
    (1, 1, (None, "delete", "flip")),
    (2, 2, ("flip", None, "flip")),
    (3, 0, ("delete", "delete", None)),
    (4, 1, (None, "flip", None)),
    (5, 0, ("flip", "flip", "delete")),  # no good copy left: lost
]
LOST = (5, 0)


def blobs() -> dict[str, bytes]:
    """Six blobs of three chunks each (the last one short)."""
    return {f"ds/{b}": os.urandom(2 * CHUNK + 1000 + b) for b in range(6)}


def flip_in_dir(server_dir: str, data: bytes) -> None:
    """Flip one byte in the middle of ``data`` where it lies in a volume file under
    ``server_dir`` (written in place, as a failing disk would)."""
    for name in sorted(os.listdir(server_dir)):
        if not name.endswith(".dat"):
            continue
        path = os.path.join(server_dir, name)
        with open(path, "r+b") as f:
            at = f.read().find(bytes(data))
            if at < 0:
                continue
            f.seek(at + len(data) // 2)
            byte = f.read(1)
            f.seek(at + len(data) // 2)
            f.write(bytes([byte[0] ^ 0x55]))
            f.flush()
            os.fsync(f.fileno())
            return
    raise AssertionError(f"chunk bytes not found under {server_dir}")


@dataclass
class Expected:
    per_server: dict[int, dict[str, int]]  # sid -> {good, missing, corrupt}
    chunks: int
    degraded: int
    repaired: int


def apply_plan(records: list[BlobRecord], data: list[bytes],
               flip: Callable[[int, bytes], None],
               delete: Callable[[int, bytes], None]) -> Expected:
    """Damage replicas as ``PLAN`` says; ``flip(sid, chunk bytes)``, ``delete(sid, digest)``."""
    per_server: dict[int, dict[str, int]] = {}
    damaged = set()
    for rec in records:
        for i in range(rec.n_chunks):
            for sid in rec.placement[i]:
                per_server.setdefault(sid, {"good": 0, "missing": 0, "corrupt": 0})["good"] += 1
    repaired = 0
    for b, i, actions in PLAN:
        rec = records[b]
        start, length = rec.chunk_range(i)
        damaged.add((b, i))
        for sid, action in zip(rec.placement[i], actions):
            if action is None:
                continue
            per_server[sid]["good"] -= 1
            if action == "flip":
                flip(sid, data[b][start:start + length])
                per_server[sid]["corrupt"] += 1
            else:
                delete(sid, rec.chunk_key(i).digest())
                per_server[sid]["missing"] += 1
            repaired += (b, i) != LOST
    return Expected(per_server, sum(r.n_chunks for r in records), len(damaged), repaired)


def replica_is_good(store, rec: BlobRecord, index: int) -> bool:
    """Whether ``store`` (one server, read directly) holds the chunk's right bytes."""
    try:
        view = store.get(rec.chunk_key(index).digest())
    except FileNotFoundError:
        return False
    return checksum.compute(rec.checksum_algo, view) == rec.checksums[index]


def good_counts(stores, records: list[BlobRecord]) -> dict[tuple[int, int], int]:
    """(blob, chunk) -> how many of ``stores`` (servers read directly) hold its right bytes;
    the stores are closed."""
    try:
        return {(b, i): sum(replica_is_good(s, rec, i) for s in stores)
                for b, rec in enumerate(records) for i in range(rec.n_chunks)}
    finally:
        for s in stores:
            s.close()
