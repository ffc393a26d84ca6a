"""End to end: a DataLoader feeding a simulated training loop from a slow origin.

The origin is a directory behind ``slowfile://``, an fsspec filesystem that charges every
request (info, range read, whole-file get) a fixed latency and shares a bandwidth cap per
process: an object store seen from a GPU host. Every configuration trains the same way:
batch 64, 2 DataLoader workers, a training step of fixed compute (time.sleep). Reported
per epoch: samples/s, data stall (share of step time spent waiting for the batch) and,
for blobtier, the hit ratio (share of samples served without an origin read).

Configurations, all in one run:
  local files     plain PyTorch reading the files from local disk (the ceiling)
  simplecache     fsspec ``simplecache::slowfile://`` (whole files cached on local disk)
  blockcache      fsspec ``blockcache::slowfile://`` (blocks cached on local disk)
  blobtier ...    the origin registered by reference (``ingest --reference``); the L1 at
                  50% of the dataset; prefetch on/off; clairvoyant, keep or LRU eviction
  blobtier mixture  BlobMixture of the dataset's two halves at 70/30 (the merged order is
                  announced to the cache), prefetch + clairvoyant
  resume          a BlobDataLoader (workers, prefetch) resumed mid-epoch: time from
                  load_state_dict to its first batch against a fresh epoch's first batch
                  (expected <= 1.2x: the resume starts where it stopped, reading nothing
                  twice)

The fsspec baselines run over the first ``--baseline-samples`` samples only: their cold
epoch is latency-bound and its rate does not depend on the dataset size.

    python benchmarks/dataloader_e2e.py                 # 20,000 x 100 KiB, a few minutes
    python benchmarks/dataloader_e2e.py --size 1MiB --samples 4000 --out e2e_1m.json
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402
import fsspec  # noqa: E402
import torch  # noqa: E402
from fsspec.implementations.local import LocalFileSystem  # noqa: E402
from fsspec.spec import AbstractBufferedFile  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

import blobtier  # noqa: E402
from blobtier.config import parse_size  # noqa: E402
from blobtier.dataloader import (  # noqa: E402
    BlobDataLoader,
    BlobDataset,
    BlobMixture,
    BlobSampler,
    DataStallMeter,
    as_tensor,
)
from blobtier.metrics import delta  # noqa: E402
from blobtier.sdk.ingest import register  # noqa: E402


class _Link:
    """Latency per request plus a bandwidth cap shared by this process's requests."""

    latency_s = 0.010
    bytes_per_s = 1 << 30
    _lock = threading.Lock()
    _free_at = 0.0

    @classmethod
    def charge(cls, nbytes: int) -> None:
        """Sleep out the request's latency, and its turn on the shared link."""
        with cls._lock:
            now = time.monotonic()
            cls._free_at = max(cls._free_at, now) + nbytes / cls.bytes_per_s
            done = cls._free_at
        time.sleep(max(cls.latency_s, done - time.monotonic()))


class SlowFile(AbstractBufferedFile):
    def _fetch_range(self, start: int, end: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        _Link.charge(len(data))
        return data


class SlowFileSystem(LocalFileSystem):
    protocol = "slowfile"
    root_marker = "/"

    @classmethod
    def _strip_protocol(cls, path):
        return LocalFileSystem._strip_protocol(str(path).replace("slowfile://", "file://"))

    def unstrip_protocol(self, name: str) -> str:
        return "slowfile://" + self._strip_protocol(name)

    def info(self, path, **kwargs):
        _Link.charge(0)
        return super().info(path, **kwargs)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        return SlowFile(self, self._strip_protocol(path), mode, block_size or 5 << 20,
                        cache_type=kwargs.get("cache_type", "readahead"), cache_options=cache_options)

    def cat_file(self, path, start=None, end=None, **kwargs):
        with open(self._strip_protocol(path), "rb") as f:
            if start:
                f.seek(start)
            data = f.read() if end is None else f.read(end - (start or 0))
        _Link.charge(len(data))
        return data

    _pools: dict[int, ThreadPoolExecutor] = {}  # per process: threads do not survive fork

    def cat_ranges(self, paths, starts, ends, max_gap=None, on_error="return", **kwargs):
        # An object store serves ranges concurrently (s3fs gathers them with asyncio).
        pool = self._pools.get(os.getpid())
        if pool is None:
            pool = self._pools[os.getpid()] = ThreadPoolExecutor(64, thread_name_prefix="slowfile")
        futures = [pool.submit(self.cat_file, p, s, e) for p, s, e in zip(paths, starts, ends)]
        out = []
        for f in futures:
            try:
                out.append(f.result())
            except Exception as exc:  # noqa: BLE001 - fsspec's on_error="return" contract
                if on_error != "return":
                    raise
                out.append(exc)
        return out

    def get_file(self, rpath, lpath, **kwargs):
        super().get_file(rpath, lpath, **kwargs)
        _Link.charge(os.path.getsize(lpath))


fsspec.register_implementation("slowfile", SlowFileSystem, clobber=True)


class FileDataset(Dataset):
    """Plain PyTorch: one file per sample, opened with ``opener``."""

    def __init__(self, paths: list[str], opener=open) -> None:
        self.paths = paths
        self.opener = opener

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with self.opener(self.paths[i], "rb") as f:
            return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def decode(view: memoryview) -> torch.Tensor:
    return as_tensor(view)  # no copy: collate makes the one copy a batch needs


def train(loader, sampler, epochs: int, step_s: float, client=None) -> list[dict]:
    rows = []
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        meter = DataStallMeter()
        before = client.stats() if client else None
        for _ in meter.iterate(loader):
            time.sleep(step_s)  # the GPU's share of the step
        rep = meter.report()
        row = {"epoch": epoch + 1, "samples_per_s": rep.samples_per_s, "stall_pct": 100 * rep.stall_fraction}
        if client is not None:
            d = delta(client.stats(), before)
            row["hit_pct"] = 100 * (1 - d["origin"]["hits"] / max(1, rep.samples))
        rows.append(row)
    return rows


def first_batch_s(loader: BlobDataLoader, state: dict | None = None) -> float:
    """Seconds from (loading ``state`` and) starting a pass to its first batch."""
    t0 = time.perf_counter()
    if state is not None:
        loader.load_state_dict(state)
    it = iter(loader)
    next(it)
    elapsed = time.perf_counter() - t0
    del it
    loader._iterator = None  # its persistent workers stop now, not during the next measurement
    gc.collect()
    return elapsed


def resume_rows(client, args, repeats: int = 5) -> list[dict]:
    """A fresh epoch's first batch against a mid-epoch resume's, each in a new loader (its
    workers start, as after a restart). Each repeat first consumes ``--resume-batches`` of
    an epoch and checkpoints; then both are measured, in alternating order, after the same
    activity and on the same cache."""
    def loader() -> BlobDataLoader:
        ds = BlobDataset("bench/e2e/", client=client, decode=decode)
        return BlobDataLoader(ds, batch_size=args.batch, shuffle=True, seed=0,
                              num_workers=args.workers, persistent_workers=True)

    rows = []
    for r in range(repeats):
        source = loader()
        source.sampler.set_epoch(10 + r)
        it = iter(source)
        for _ in range(args.resume_batches):
            next(it)
        state = source.state_dict()
        del it
        source._iterator = None
        gc.collect()

        def fresh(r=r) -> float:
            ds = loader()
            ds.sampler.set_epoch(100 + r)
            return first_batch_s(ds)

        if r % 2:
            fresh_s, resume_s = fresh(), first_batch_s(loader(), state)
        else:
            resume_s, fresh_s = first_batch_s(loader(), state), fresh()
        rows.append({"repeat": r + 1, "fresh_first_batch_ms": 1000 * fresh_s,
                     "resume_first_batch_ms": 1000 * resume_s, "ratio": resume_s / fresh_s})
    return rows


def main() -> None:
    p = h.parser(__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=20_000)
    p.add_argument("--size", default="100KiB")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--step-ms", type=float, default=20.0)
    p.add_argument("--latency-ms", type=float, default=10.0)
    p.add_argument("--bandwidth", default="1GiB", help="origin bandwidth cap per process, per second")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cache-share", type=float, default=0.5, help="L1 size / dataset size")
    p.add_argument("--baseline-samples", type=int, default=4000)
    p.add_argument("--prefetch-threads", type=int, default=None,
                   help="client.prefetch_threads (default: the config's)")
    p.add_argument("--resume-batches", type=int, default=20,
                   help="batches consumed before the resume row's checkpoint")
    p.add_argument("--only", default=None, metavar="TEXT",
                   help="run only the blobtier configs whose name contains TEXT (no baselines)")
    args = p.parse_args()
    size = parse_size(args.size)
    _Link.latency_s = args.latency_ms / 1000
    _Link.bytes_per_s = parse_size(args.bandwidth)
    step_s = args.step_ms / 1000
    work = args.dir or tempfile.mkdtemp(prefix="bench-e2e-")
    results: dict[str, list[dict]] = {}
    resume: list[dict] = []
    try:
        src = os.path.join(work, "origin")
        os.makedirs(src)
        block = os.urandom(size + 4096)
        paths = []
        for i in range(args.samples):
            path = os.path.join(src, f"{i:06d}.bin")
            with open(path, "wb") as f:
                f.write(block[i % 4096:i % 4096 + size])
            paths.append(path)
        print(f"dataset: {args.samples:,} samples of {size:,} bytes; origin {args.latency_ms} ms "
              f"per request, {args.bandwidth}/s; step {args.step_ms} ms; batch {args.batch}, "
              f"{args.workers} workers", flush=True)

        def loader(ds, sampler=None):
            return DataLoader(ds, batch_size=args.batch, sampler=sampler, shuffle=sampler is None,
                              num_workers=args.workers, persistent_workers=True,
                              generator=torch.Generator().manual_seed(0))

        if not args.only:
            results["local files"] = train(loader(FileDataset(paths)), None, args.epochs, step_s)
        base = paths[:args.baseline_samples]
        for name, url in [] if args.only else [("simplecache", "simplecache::slowfile://{}"),
                          ("blockcache", "blockcache::slowfile://{}")]:
            cache_dir = os.path.join(work, name)
            opts = {name: {"cache_storage": cache_dir}}

            def opener(path, mode, url=url, opts=opts):
                return fsspec.open(url.format(path), mode, **opts).open()

            results[name] = train(loader(FileDataset(base, opener)), None, min(2, args.epochs), step_s)
            print(f"{name}: done", flush=True)

        region = os.path.join(work, "region")
        with blobtier.connect(region) as client:
            t = time.perf_counter()
            register(client, f"slowfile://{src}", "bench/e2e", threads=32)
            print(f"registered {args.samples:,} origin objects in {time.perf_counter() - t:.1f}s",
                  flush=True)
        l1 = int(args.cache_share * args.samples * size)
        for name, policy, prefetch in [("blobtier prefetch clairvoyant", "clairvoyant", True),
                                       ("blobtier prefetch lru", "lru", True),
                                       ("blobtier no-prefetch clairvoyant", "clairvoyant", False),
                                       ("blobtier no-prefetch keep", "keep", False),
                                       ("blobtier no-prefetch lru", "lru", False)]:
            if args.only and args.only not in name:
                continue
            with blobtier.connect(region, cache={"l1_bytes": l1, "l1_policy": policy},
                                  client={} if args.prefetch_threads is None else
                                  {"prefetch_threads": args.prefetch_threads}) as client:
                ds = BlobDataset("bench/e2e/", client=client, decode=decode)
                if not prefetch:  # the policy still learns the order; nothing is fetched ahead
                    ds.announce = lambda indices, progress=None, ds=ds: ds.client.announce(
                        [ds.keys[i] for i in indices])
                sampler = BlobSampler(ds, seed=0)
                results[name] = train(loader(ds, sampler), sampler, args.epochs, step_s, client)
            print(f"{name}: done", flush=True)
        name = "blobtier mixture 70/30 clairvoyant"
        if not args.only or args.only in name:
            with blobtier.connect(region, cache={"l1_bytes": l1, "l1_policy": "clairvoyant"}) as client:
                keys = BlobDataset("bench/e2e/", client=client).keys
                half = len(keys) // 2
                mix = BlobMixture([(BlobDataset(keys[:half], client=client, decode=decode), 0.7),
                                   (BlobDataset(keys[half:], client=client, decode=decode), 0.3)],
                                  seed=0)
                sampler = BlobSampler(mix, seed=0)
                results[name] = train(loader(mix, sampler), sampler, args.epochs, step_s, client)
            print(f"{name}: done", flush=True)
        if not args.only or args.only in "resume":
            with blobtier.connect(region, cache={"l1_bytes": l1, "l1_policy": "clairvoyant"}) as client:
                resume = resume_rows(client, args)
            print("resume: done", flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    rows = [{"config": name, **row} for name, epochs in results.items() for row in epochs]
    if rows:
        print(h.table(rows, ["config", "epoch", "samples_per_s", "stall_pct", "hit_pct"],
                      "DataLoader end to end (hit_pct: samples served without an origin read)"))
    resume_note = ""
    if resume:
        print(h.table(resume, ["repeat", "fresh_first_batch_ms", "resume_first_batch_ms", "ratio"],
                      f"first batch: a fresh epoch vs a resume after {args.resume_batches} batches "
                      "(new loader each, from load_state_dict)"))
        ratio = sorted(r["ratio"] for r in resume)[len(resume) // 2]
        resume_note = f"; resume's first batch {ratio:.2f}x a fresh epoch's (median, expected <= 1.2x)"
    if args.only:
        summary = "; ".join(f"{name}: " + ", ".join(f"{r['samples_per_s']:,.0f}/s {r['stall_pct']:.1f}%"
                                                   for r in rows) for name, rows in results.items())
    else:
        best = results["blobtier prefetch clairvoyant"]
        cold_ratio = best[0]["samples_per_s"] / results["simplecache"][0]["samples_per_s"]
        later = best[1:] or best
        summary = (f"blobtier prefetch+clairvoyant: cold epoch {best[0]['samples_per_s']:,.0f} samples/s, "
                   f"stall {best[0]['stall_pct']:.1f}% ({cold_ratio:.1f}x fsspec simplecache); "
                   f"later epochs stall {max(r['stall_pct'] for r in later):.1f}%, hit ratio "
                   f"{min(r['hit_pct'] for r in later):.1f}% at a {args.cache_share:.0%} cache "
                   f"(LRU {results['blobtier prefetch lru'][-1]['hit_pct']:.1f}%)")
    mix = results.get("blobtier mixture 70/30 clairvoyant")
    if mix and not args.only:
        later = mix[1:] or mix
        summary += (f"; mixture 70/30: later epochs stall {max(r['stall_pct'] for r in later):.1f}%, "
                    f"hit ratio {min(r['hit_pct'] for r in later):.1f}%")
    summary = (summary + resume_note).removeprefix("; ")
    print(summary)
    h.write_json(args.out, "dataloader_e2e", vars(args), {**results, "resume": resume}, summary)


if __name__ == "__main__":
    main()
