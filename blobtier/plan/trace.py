"""Traces for the planner: who reads which chunk when, already spatially sampled.

A trace is a list of reads ``(host, job, key, size)`` in time order. Two sources:

- ``synthetic``: J jobs, each a data-parallel job over its own share of the H hosts (one
  rank per host; with more jobs than hosts, each job runs on one host, round robin), each
  reading every sample of one dataset once per epoch in ``BlobSampler``'s order: one
  ``torch.randperm`` per epoch from ``seed + epoch``, padded to the world size, rank ``r``
  taking positions ``r, r + world, ...`` (``permutation`` mirrors
  ``BlobSampler.order``; a test holds them equal). Every rank of every job moves through
  its epoch at the same pace, so a read's time is ``epoch + step / steps_per_epoch``.
- ``recorded``: JSON lines ``{"host": h, "job": j, "key": "...", "size": n}`` in read
  order (``Recorder`` writes them, e.g. from a training loop's reads); a line may carry
  ``"epoch": e`` (otherwise one epoch is the reads until a job's first repeated key).

Sampling is spatial, as in SHARDS (Waldspurger et al., "Efficient MRC Construction with
SHARDS", FAST '15): a chunk is kept when a hash of its key falls below ``rate`` of the
hash range, so every read of a kept chunk is kept and none of the others is. A cache of
capacity ``C`` over the whole trace behaves like a cache of ``rate * C`` over the sampled
one; the simulator scales every capacity by ``rate`` and every count back by ``1 / rate``.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import xxhash

from blobtier.errors import InvalidRequest

_HASH_RANGE = float(1 << 64)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit mix of each integer (vectorised): the spatial-sampling hash of a
    synthetic chunk id, uniform over 0 .. 2**64 - 1."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def kept(hashes: np.ndarray, rate: float) -> np.ndarray:
    """SHARDS' test: the hashes below ``rate`` of the hash range."""
    if rate >= 1.0:
        return np.ones(len(hashes), dtype=bool)
    return hashes < np.uint64(int(rate * _HASH_RANGE))


def permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation ``BlobSampler(shuffle=True, seed=seed)`` draws for ``epoch``
    (before padding and rank slicing)."""
    import torch  # the exact order needs torch's generator, as the sampler uses it

    g = torch.Generator()
    g.manual_seed(seed + epoch)
    return torch.randperm(n, generator=g).numpy()


def padded(perm: np.ndarray, world: int) -> np.ndarray:
    """``perm`` padded with its own head to a multiple of ``world`` (the sampler's
    ``drop_last=False``)."""
    total = -(-len(perm) // world) * world
    pad = total - len(perm)
    if not pad:
        return perm
    reps = pad // len(perm) + 1
    return np.concatenate([perm, np.tile(perm, reps)[:pad]])


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


@dataclass(frozen=True)
class Reads:
    """A sampled trace: one row per kept chunk read, in no particular order.

    ``t`` is the read's time in epochs (``epoch + step / steps``); ``key`` indexes
    ``keys`` (the kept chunks' ids), ``sizes`` holds each kept chunk's bytes.
    """

    t: np.ndarray  # float64
    host: np.ndarray  # int32
    job: np.ndarray  # int32
    key: np.ndarray  # int64, index into key_ids
    epoch: np.ndarray  # int32
    key_ids: list[bytes]  # the bytes placement hashes, per kept chunk
    sizes: np.ndarray  # int64 bytes per kept chunk
    steps: np.ndarray  # int64 steps per epoch of each job (its ranks' samples per epoch)
    hosts: int
    jobs: int
    epochs: int
    rate: float
    total_chunks: int  # distinct chunks in the whole trace
    total_bytes: int  # their bytes (the dataset)
    reads_full: int  # reads in the whole trace
    exact_order: bool  # True: the sampler's own permutations; False: drawn with numpy


@dataclass(frozen=True)
class Synthetic:
    """The workload: ``hosts`` hosts, ``jobs`` jobs each reading ``samples`` samples of
    ``sample_bytes`` (in chunks of ``chunk_bytes``) for ``epochs`` epochs; job ``j``
    shuffles with seed ``seeds[j % len(seeds)]``."""

    hosts: int
    jobs: int
    samples: int
    sample_bytes: int
    chunk_bytes: int
    epochs: int
    seeds: tuple[int, ...] = (0,)

    @property
    def chunks_per_sample(self) -> int:
        return -(-self.sample_bytes // self.chunk_bytes)

    def job_hosts(self) -> list[np.ndarray]:
        """The hosts of each job, rank order."""
        if self.jobs <= self.hosts:
            return list(np.array_split(np.arange(self.hosts, dtype=np.int32), self.jobs))
        return [np.array([j % self.hosts], dtype=np.int32) for j in range(self.jobs)]

    def chunk_sizes(self) -> np.ndarray:
        """Bytes of each chunk of a sample (the last one may be short)."""
        cps = self.chunks_per_sample
        sizes = np.full(cps, self.chunk_bytes, dtype=np.int64)
        sizes[-1] = self.sample_bytes - self.chunk_bytes * (cps - 1)
        return sizes

    def reads(self, rate: float, exact: bool | None = None, draw_seed: int = 0) -> Reads:
        """The reads of the chunks SHARDS keeps at ``rate``.

        ``exact``: draw each epoch's order with the sampler's own generator (needs torch;
        ``randperm`` of the whole dataset per job and epoch); False draws the kept
        samples' positions with numpy (the same distribution, not the same order); None:
        exact when torch is importable.
        """
        if exact is None:
            exact = torch_available()
        cps = self.chunks_per_sample
        n = self.samples
        chunk_ids = np.arange(n * cps, dtype=np.uint64)
        keep = kept(splitmix64(chunk_ids), rate)
        kept_ids = chunk_ids[keep]
        index_of = np.full(n * cps, -1, dtype=np.int64)
        index_of[keep] = np.arange(len(kept_ids))
        sample_kept = keep.reshape(n, cps)
        any_kept = sample_kept.any(axis=1)
        rows: list[tuple[np.ndarray, ...]] = []
        groups = self.job_hosts()
        steps = np.array([-(-n // len(g)) for g in groups], dtype=np.int64)
        rng = np.random.default_rng(draw_seed)
        for j, hosts in enumerate(groups):
            seed = self.seeds[j % len(self.seeds)]
            for e in range(self.epochs):
                pos, sample = _kept_positions(n, len(hosts), seed, e, any_kept, exact, rng)
                rank, step = pos % len(hosts), pos // len(hosts)
                for c in range(cps):  # each kept chunk of each sample read
                    k = index_of[sample * cps + c]
                    m = k >= 0
                    rows.append((e + step[m] / steps[j], hosts[rank[m]], np.full(m.sum(), j),
                                 k[m], np.full(m.sum(), e)))
        t, host, job, key, epoch = (np.concatenate([r[i] for r in rows]) if rows else np.empty(0)
                                    for i in range(5))
        sizes = self.chunk_sizes()[(kept_ids % np.uint64(cps)).astype(np.int64)]
        return Reads(t.astype(np.float64), host.astype(np.int32), job.astype(np.int32),
                     key.astype(np.int64), epoch.astype(np.int32),
                     [int(i).to_bytes(8, "little") for i in kept_ids], sizes, steps,
                     self.hosts, self.jobs, self.epochs, _effective(sizes, n * self.sample_bytes, rate),
                     n * cps, n * self.sample_bytes,
                     int(steps @ np.array([len(g) for g in groups])) * cps * self.epochs, exact)


def _effective(kept_sizes: np.ndarray, total_bytes: int, rate: float) -> float:
    """The share of the trace's bytes the sample kept: the rate capacities and counts
    are scaled by (it differs from ``rate`` by chance; SHARDS adjusts for it too)."""
    if rate >= 1.0 or not len(kept_sizes):
        return min(rate, 1.0)
    return float(kept_sizes.sum()) / total_bytes


def _kept_positions(n: int, world: int, seed: int, epoch: int, any_kept: np.ndarray, exact: bool,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(position in the padded epoch order, sample) of every read of a kept sample."""
    if exact:
        order = padded(permutation(n, seed, epoch), world)
        pos = np.flatnonzero(any_kept[order])
        return pos, order[pos]
    sample = np.flatnonzero(any_kept)  # each at a uniform position; padding left out
    return rng.permutation(n)[:len(sample)] if n < 4 * len(sample) else \
        _distinct(rng, n, len(sample)), rng.permutation(sample)


def _distinct(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``k`` distinct uniform integers below ``n`` (``k`` much smaller than ``n``)."""
    out = np.unique(rng.integers(0, n, size=k + k // 8 + 16))
    while len(out) < k:
        out = np.unique(np.concatenate([out, rng.integers(0, n, size=k)]))
    return rng.permutation(out)[:k]


# -- recorded traces ------------------------------------------------------------------


class Recorder:
    """Writes a recorded trace: one JSON line per chunk read, in read order.

    Args:
        path: the file (created or truncated).

    Use as a context manager; ``record(host, job, key, size, epoch)`` per read.
    """

    def __init__(self, path: str) -> None:
        self._f = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def record(self, host: int, job: int, key: str, size: int, epoch: int | None = None) -> None:
        row = {"host": host, "job": job, "key": key, "size": size}
        if epoch is not None:
            row["epoch"] = epoch
        self._f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rows(path: str) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidRequest(f"--trace {path} line {lineno}: not JSON ({exc.msg})") from None


def _field(row: dict, name: str, path: str, lineno: int, kind: type, minimum: int = 0):
    value = row.get(name)
    if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise InvalidRequest(f"--trace {path} line {lineno}: {name!r} must be an integer >= {minimum}, "
                             f"not {value!r}")
    if kind is str and (not isinstance(value, str) or not value):
        raise InvalidRequest(f"--trace {path} line {lineno}: {name!r} must be a non-empty string")
    return value


def recorded(path: str, rate: float) -> Reads:
    """A recorded trace (``Recorder``'s format), sampled at ``rate`` by xxh3 of the key.

    A read's time is its epoch plus its place among its job's reads of that epoch.
    Raises ``InvalidRequest`` naming the line and field of a bad row, or an empty trace.
    """
    threshold = int(rate * _HASH_RANGE) if rate < 1 else None
    index: dict[str, int] = {}
    sizes: list[int] = []
    all_keys: dict[str, int] = {}
    cols: list[tuple[int, int, int, int, int]] = []  # host, job, key index, epoch, ordinal
    seen_per_job: dict[int, set[str]] = {}
    epoch_of_job: dict[int, int] = {}
    count: dict[tuple[int, int], int] = {}  # (job, epoch) -> reads
    hosts_of: dict[int, set[int]] = {}
    for lineno, row in _rows(path):
        host = _field(row, "host", path, lineno, int)
        job = _field(row, "job", path, lineno, int)
        key = _field(row, "key", path, lineno, str)
        size = _field(row, "size", path, lineno, int, 1)
        if "epoch" in row:
            epoch = _field(row, "epoch", path, lineno, int)
        else:  # a job's epoch ends at its first repeated key
            seen = seen_per_job.setdefault(job, set())
            if key in seen:
                epoch_of_job[job] = epoch_of_job.get(job, 0) + 1
                seen.clear()
            seen.add(key)
            epoch = epoch_of_job.get(job, 0)
        ordinal = count.get((job, epoch), 0)
        count[(job, epoch)] = ordinal + 1
        hosts_of.setdefault(job, set()).add(host)
        all_keys.setdefault(key, size)
        if threshold is not None and xxhash.xxh3_64_intdigest(key.encode()) >= threshold:
            continue
        if key not in index:
            index[key] = len(sizes)
            sizes.append(size)
        cols.append((host, job, index[key], epoch, ordinal))
    if not count:
        raise InvalidRequest(f"--trace {path}: no reads in it")
    arr = np.array(cols, dtype=np.int64).reshape(-1, 5)
    jobs = max(hosts_of) + 1
    epochs = max(e for _, e in count) + 1
    per = np.array([count.get((int(j), int(e)), 1) for j, e in zip(arr[:, 1], arr[:, 3])], dtype=np.float64)
    steps = np.ones(jobs, dtype=np.int64)  # reads per epoch of each rank (host) of a job
    for (j, _), n in count.items():
        steps[j] = max(steps[j], n // len(hosts_of[j]))
    return Reads(arr[:, 3] + arr[:, 4] / per, arr[:, 0].astype(np.int32), arr[:, 1].astype(np.int32),
                 arr[:, 2], arr[:, 3].astype(np.int32), [k.encode() for k in index],
                 np.array(sizes, dtype=np.int64), steps, max(max(h) for h in hosts_of.values()) + 1,
                 jobs, epochs, _effective(np.array(sizes), sum(all_keys.values()), rate), len(all_keys),
                 sum(all_keys.values()), sum(count.values()), True)
