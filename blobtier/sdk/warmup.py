"""``warmup``: hydrate every blob under a prefix into a cache tier before training.

- ``l3``: each chunk's home flash node is asked to read it from the block layer into its
  cache (the node's Prefetch, the hydration path of ``Client.prefetch``); no bytes come
  back to this process.
- ``l1``: chunks go through the read path's warm-up (``TierChain.warm``, what the
  prefetcher runs) into the host daemon's arena, from L2/L3 where they are cached, else
  from the block layer (filling L3 on the way). Only a host daemon's L1 outlives the
  process that warms it, so ``l1`` needs one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from blobtier.chunks import ChunkRef
from blobtier.errors import InvalidRequest, TierUnavailable
from blobtier.humanize import plural
from blobtier.metrics import delta

Progress = Callable[[int, int, int, int], None]  # (blobs, bytes, total blobs, total bytes)
TIERS = ("l3", "l1")


@dataclass
class WarmupReport:
    tier: str
    blobs: int = 0
    chunks: int = 0
    bytes: int = 0
    cached: int = 0  # chunks the tier held already
    fetched: int = 0  # chunks brought in now
    rejected: int = 0  # chunks the tier did not admit (full, or its admission policy)
    failed: int = 0  # chunks that could not be read
    from_tiers: dict[str, int] | None = None  # l1: where fetched chunks came from

    def summary(self) -> str:
        text = (f"warmed {plural(self.blobs, 'blob')} ({plural(self.chunks, 'chunk')}, "
                f"{self.bytes / 2**20:,.1f} MiB) into "
                f"{self.tier.upper()}: {self.cached} already there, {self.fetched} fetched, "
                f"{self.rejected} not admitted, {self.failed} failed")
        if self.from_tiers:
            text += " (fetched from " + ", ".join(f"{t} {n}" for t, n in self.from_tiers.items()) + ")"
        return text


def warmup(client, prefix: str, tier: str = "l3", progress: Progress | None = None,
           batch_chunks: int = 64, threads: int = 4) -> WarmupReport:
    """Hydrate ``tier`` with every blob under ``prefix``; see the module docstring."""
    if tier not in TIERS:
        raise InvalidRequest(f"--tier must be one of {', '.join(TIERS)}, not {tier!r}")
    warm = _l3_warmer(client) if tier == "l3" else _l1_warmer(client)
    samples = client._samples([info.key for info in client.iter_ls(prefix)])
    sizes = [sum(rec.chunk_range(i)[1] for rec, i in s) for s in samples]
    report = WarmupReport(tier, blobs=len(samples), chunks=sum(map(len, samples)), bytes=sum(sizes))
    batches = _batches([len(s) for s in samples], batch_chunks)
    before = client.stats()
    lock = threading.Lock()
    done = [0, 0]

    def run(batch: list[int]) -> None:
        counts = warm([ref for j in batch for ref in samples[j]])
        with lock:
            for name, n in counts.items():
                setattr(report, name, getattr(report, name) + n)
            done[0] += len(batch)
            done[1] += sum(sizes[j] for j in batch)
            if progress is not None:
                progress(done[0], done[1], report.blobs, report.bytes)

    if progress is not None:
        progress(0, 0, report.blobs, report.bytes)
    with ThreadPoolExecutor(threads, thread_name_prefix="blobtier-warmup") as pool:
        list(pool.map(run, batches))
    if tier == "l1":
        moved = delta(client.stats(), before)
        report.cached = moved["l1"]["hits"]
        report.fetched -= report.cached
        report.from_tiers = {t: moved[t]["hits"] for t in ("l2", "l3", "origin") if moved[t]["hits"]}
    return report


def _batches(chunks: list[int], per_batch: int) -> list[list[int]]:
    """Sample indices in batches of about ``per_batch`` chunks (whole samples each)."""
    out, cur, n = [], [], 0
    for k, c in enumerate(chunks):
        cur.append(k)
        n += c
        if n >= per_batch:
            out.append(cur)
            cur, n = [], 0
    return out + ([cur] if cur else [])


def _l3_warmer(client) -> Callable[[Sequence[ChunkRef]], dict[str, int]]:
    flash = client._wiring.l3
    if flash is None:
        raise InvalidRequest("this region has no L3: flash.endpoints is empty (`blobtier up` starts "
                             "flash nodes)")

    def warm(refs: Sequence[ChunkRef]) -> dict[str, int]:
        by_node: dict[str | None, list[ChunkRef]] = {}
        for ref in refs:
            by_node.setdefault(flash.home(ref[0].chunk_key(ref[1])), []).append(ref)
        counts = {"cached": 0, "fetched": 0, "rejected": 0, "failed": len(by_node.pop(None, []))}
        for node, mine in by_node.items():
            try:
                got = flash.members[node].prefetch(mine)
            except (TierUnavailable, OSError):
                flash.health.failed(node)
                counts["failed"] += len(mine)
                continue
            for name in counts:
                counts[name] += got[name]
        return counts

    return warm


def _l1_warmer(client) -> Callable[[Sequence[ChunkRef]], dict[str, int]]:
    from blobtier.cache_l1_l2.daemon import find_daemon

    if find_daemon(client.config.cache.daemon) is None or client._l1 is None:
        raise InvalidRequest("warmup --tier l1 needs a host daemon (a process's own L1 ends with it): "
                             "`blobtier up` starts one, or set cache.daemon")

    def warm(refs: Sequence[ChunkRef]) -> dict[str, int]:
        try:
            kept = client._chain.warm(refs)
        except (TierUnavailable, OSError):
            return {"failed": len(refs)}
        return {"fetched": kept, "rejected": len(refs) - kept}  # warm() counts held ones as kept

    return warm
