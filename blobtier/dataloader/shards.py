"""``BlobIterableDataset``: stream tar shards (WebDataset layout) out of blobtier.

Samples are grouped by name (``tars.py``). Each epoch the shard order is a seeded
permutation (``set_epoch``); the samples of the shards, in that order, form the epoch's
stream. Every rank takes an equal contiguous part of it, as ``DistributedSampler`` does
for map-style data: padded by wrapping to the stream's start, or trimmed with
``drop_last``, so that DDP never waits at an epoch's end for a rank with fewer samples.
That takes each shard's sample count, which the shard index keeps. Ranks may share a
shard (fewer shards than ranks works); a rank's part is split again, contiguously, over
its DataLoader workers (more workers than shards works too). While a worker streams a
shard, the next one it needs is hydrated in the background; samples can be mixed further
in a seeded per-worker shuffle buffer.

Persistent workers keep their copy of the dataset from the first epoch, so the epoch and
the resume point reach them through shared memory, read when each pass begins.

Resume: under a ``BlobDataLoader`` the state is the batches the loop consumed. Workers'
batches come out round robin, so that count gives each worker's consumed prefix, and a
resumed pass continues every worker where it stopped, in the same interleaving (with a
shuffle buffer, a worker replays its part up to there without decoding it).
"""

from __future__ import annotations

import bisect
import json
import multiprocessing
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

import blobtier
from blobtier.dataloader.decoding import DataOnly, key_decoder
from blobtier.dataloader.sampler import _world
from blobtier.dataloader.tars import Sample, iter_tar_samples, list_shards, shard_counts

__all__ = ["BlobIterableDataset", "iter_tar_samples"]


class _SharedState:
    """A small JSON value the parent writes and its (persistent) workers read.

    No lock (a lock made in a fork context cannot reach spawned workers): a sequence
    number, odd while a write is under way, tells a reader to read again.
    """

    SIZE = 4096

    def __init__(self) -> None:
        self._buf = multiprocessing.RawArray("c", self.SIZE)
        self._len = multiprocessing.RawValue("i", 0)
        self._seq = multiprocessing.RawValue("q", 0)

    def write(self, value: dict[str, Any]) -> None:
        data = json.dumps(value).encode()
        if len(data) > self.SIZE:
            raise ValueError(f"state of {len(data)} bytes is over {self.SIZE}")
        self._seq.value += 1
        self._buf[:len(data)] = data
        self._len.value = len(data)
        self._seq.value += 1

    def read(self) -> dict[str, Any]:
        while True:
            seq = self._seq.value
            data = self._buf[:self._len.value]
            if seq % 2 == 0 and self._seq.value == seq:
                return json.loads(data)

    def __getstate__(self) -> dict[str, Any]:
        # Starting a spawned worker passes the shared memory itself; any other pickle
        # (a copy, a checkpoint) gets the value, in memory of its own.
        if multiprocessing.context.get_spawning_popen() is not None:
            return self.__dict__
        return {"value": self.read()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "value" not in state:
            self.__dict__.update(state)
            return
        self.__init__()
        self.write(state["value"])


@dataclass(frozen=True)
class _Segment:
    """Positions [lo, hi) of a rank's stream one worker reads; ``skip`` outputs consumed."""

    lo: int
    hi: int
    mix_seed: int | None
    skip: int = 0


def _split(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    n = hi - lo
    return [(lo + n * i // parts, lo + n * (i + 1) // parts) for i in range(parts)]


def _batches(samples: int, batch_size: int, drop_last: bool) -> int:
    return samples // batch_size if drop_last else -(-samples // batch_size)


def _consumed(batches: list[int], count: int) -> tuple[list[int], int]:
    """Batches taken from each worker after ``count`` came out round robin (a worker with
    none left is skipped, as the DataLoader does), and the worker next in turn."""
    taken, w = [0] * len(batches), 0
    count = min(count, sum(batches))
    while count:
        if taken[w] < batches[w]:
            taken[w] += 1
            count -= 1
        w = (w + 1) % len(batches)
    return taken, w


class BlobIterableDataset(IterableDataset):
    """Args:
        shards: a key prefix (every blob under it) or a list of shard keys.
        client: ``blobtier.connect()`` when omitted.
        decode: turns a sample dict into what the DataLoader yields: ``decode(sample)``,
            or ``decode(key, sample)`` (detected by its signature, or ``with_keys``).
        shuffle: permute the shards each epoch (seeded) and mix samples in a buffer.
        seed: the same on every rank.
        shuffle_buffer: samples held for mixing per worker (0: shard-level shuffle only).
        rank, world_size: default from ``torch.distributed`` when initialised.
        drop_last: every rank gets the epoch's samples // world_size (the rest dropped)
            instead of padding to ceil (padded samples repeat the epoch's first ones).
        with_keys: whether ``decode`` takes the sample key first (None: by signature).

    Raises:
        BlobNotFound: no shards under the prefix.
        ValueError: the ranks would get no samples (fewer samples than ranks with
            ``drop_last``, or none at all).
        InvalidRequest: a shard is not a readable tar.
    """

    def __init__(self, shards: str | Sequence[str], client: blobtier.Client | None = None,
                 decode: Callable[..., Any] | None = None, shuffle: bool = True, seed: int = 0,
                 shuffle_buffer: int = 0, rank: int | None = None,
                 world_size: int | None = None, drop_last: bool = False,
                 with_keys: bool | None = None) -> None:
        self.client = client if client is not None else blobtier.connect()
        if isinstance(shards, str):
            infos = list_shards(self.client, shards)
        else:
            infos = [self.client.stat(key) for key in shards]
        self.shards = [info.key for info in infos]
        self.counts = dict(zip(self.shards, shard_counts(self.client, infos)))
        self.decode = key_decoder(decode, with_keys)
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.rank, self.world_size = _world(rank, world_size)
        self.drop_last = drop_last
        self.total = sum(self.counts.values())
        per = self.total // self.world_size if drop_last else -(-self.total // self.world_size)
        if per == 0:
            raise ValueError(f"{self.total} samples in {len(self.shards)} shards leave the "
                             f"{self.world_size} ranks nothing (drop_last={drop_last})")
        self.num_samples = per
        self.epoch = 0
        self._pending: dict[str, Any] | None = None  # a resume point not yet begun
        self._shared = _SharedState()
        self._publish(None)

    def __len__(self) -> int:
        """Samples this rank yields per epoch (the same on every rank)."""
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch; reaches persistent workers too."""
        if epoch != self.epoch:
            self._pending = None
        self.epoch = epoch
        self._publish(self._pending)

    def _publish(self, resume: dict[str, Any] | None) -> None:
        self._shared.write({"epoch": self.epoch, "resume": resume})

    # -- the epoch's plan ---------------------------------------------------------------
    def shard_order(self, epoch: int) -> list[str]:
        """The epoch's shard order, the same on every rank."""
        if not self.shuffle:
            return list(self.shards)
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        return [self.shards[i] for i in torch.randperm(len(self.shards), generator=g).tolist()]

    def _span(self) -> tuple[int, int]:
        lo = self.rank * self.num_samples
        return lo, lo + self.num_samples

    def _mix_seed(self, epoch: int, worker: int) -> int | None:
        if not (self.shuffle and self.shuffle_buffer > 1):
            return None
        return hash((self.seed, epoch, self.rank, worker))

    def _segments(self, epoch: int, workers: int, resume: dict[str, Any] | None) -> list[_Segment]:
        """What each worker reads this pass, in the order the DataLoader will ask them."""
        parts = _split(*self._span(), workers)
        if resume is None or resume["epoch"] != epoch:
            return [_Segment(lo, hi, self._mix_seed(epoch, w)) for w, (lo, hi) in enumerate(parts)]
        size, drop = resume["batch_size"], resume["drop_last"]
        taken, turn = _consumed([_batches(hi - lo, size, drop) for lo, hi in parts],
                                resume["batches"])
        segs = [_Segment(lo, hi, self._mix_seed(epoch, w),
                         hi - lo if resume["done"] else min(t * size, hi - lo))
                for w, ((lo, hi), t) in enumerate(zip(parts, taken))]
        return segs[turn:] + segs[:turn]  # the worker next in turn asks first

    def __iter__(self) -> Iterator[Any]:
        # Read the shared state now, not at the first next(): a persistent worker makes
        # its iterator when the pass is announced to it.
        state = self._shared.read()
        info = get_worker_info()
        workers, me = (info.num_workers, info.id) if info is not None else (1, 0)
        segment = self._segments(state["epoch"], workers, state["resume"])[me]
        return self._decoded(self._read_segment(state["epoch"], segment))

    def _decoded(self, samples: Iterator[Sample]) -> Iterator[Any]:
        # Which decode runs is settled once per pass: no extra Python call per sample.
        decode = self.decode
        if decode is None:
            return samples
        if type(decode) is DataOnly:
            return map(decode.decode, samples)
        return (decode(sample["__key__"], sample) for sample in samples)

    def _read_segment(self, epoch: int, seg: _Segment) -> Iterator[Sample]:
        if seg.mix_seed is None:
            yield from self._read_positions(epoch, seg.lo + seg.skip, seg.hi)
            return
        mixed = _mix(self._read_positions(epoch, seg.lo, seg.hi), self.shuffle_buffer,
                     random.Random(seg.mix_seed))
        for i, sample in enumerate(mixed):
            if i >= seg.skip:
                yield sample

    def _read_positions(self, epoch: int, lo: int, hi: int) -> Iterator[Sample]:
        """Positions [lo, hi) of the padded stream: position p is sample p % total."""
        order = self.shard_order(epoch)
        starts = [0]
        for shard in order:
            starts.append(starts[-1] + self.counts[shard])
        p = lo
        while p < hi:
            g = p % self.total
            i = bisect.bisect_right(starts, g) - 1  # never an empty shard: g < total
            take = min(hi - p, starts[i + 1] - g)
            if i + 1 < len(order) and p + take < hi:
                self.client.prefetch([order[i + 1]])  # the next shard, while this one streams
            with self.client.open(order[i]) as stream:
                yield from iter_tar_samples(stream, order[i], skip=g - starts[i], take=take)
            p += take

    # -- resume ---------------------------------------------------------------------------
    def begin_pass(self, batch_size: int, num_workers: int, drop_last: bool) -> int:
        """``BlobDataLoader``'s hook before each pass: the batches of the epoch consumed
        before it.

        Raises:
            ValueError: a pending resume point was taken with another batch size, worker
                count or drop_last (the workers' batches would not line up).
        """
        resume, self._pending = self._pending, None
        if resume is not None:
            for name, now in (("batch_size", batch_size), ("num_workers", max(1, num_workers)),
                              ("drop_last", drop_last)):
                if resume[name] != now:
                    raise ValueError(f"cannot resume: {name} was {resume[name]!r}, is now {now!r}")
        self._publish(resume)
        return resume["batches"] if resume is not None else 0

    def pending_state(self) -> dict[str, Any] | None:
        """The resume point loaded and not yet begun, if any."""
        return self._pending

    def resume_state(self, batches: int, done: bool, batch_size: int, num_workers: int,
                     drop_last: bool) -> dict[str, Any]:
        """The state after the loop consumed ``batches`` of this epoch (``done``: all)."""
        return {"epoch": self.epoch, "batches": batches, "done": done, "batch_size": batch_size,
                "num_workers": max(1, num_workers), "drop_last": drop_last, **self._identity()}

    def _identity(self) -> dict[str, Any]:
        return {"seed": self.seed, "shuffle": self.shuffle, "world_size": self.world_size,
                "samples": self.total, "shards": len(self.shards),
                "shuffle_buffer": self.shuffle_buffer, "drop_last_samples": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the epoch of ``state`` (a ``BlobDataLoader``'s) at the next pass.

        Raises:
            ValueError: the state was taken over other shards or with another seed,
                shuffle, world size or drop_last.
        """
        for name, mine in self._identity().items():
            if state[name] != mine:
                raise ValueError(f"cannot resume: {name} was {state[name]!r}, is now {mine!r}")
        self.epoch = state["epoch"]
        self._pending = dict(state)
        self._publish(self._pending)


def _mix(samples: Iterator[Sample], size: int, rng: random.Random) -> Iterator[Sample]:
    buffer: list[Sample] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        j = rng.randrange(size)
        buffer[j], sample = sample, buffer[j]
        yield sample
    rng.shuffle(buffer)
    yield from buffer
