"""``BlobIterableDataset``: stream tar shards (WebDataset layout) out of blobtier.

A shard is a tar blob whose members are grouped into samples by name: ``a/0001.jpg`` and
``a/0001.cls`` are the fields ``jpg`` and ``cls`` of sample ``a/0001``. Each epoch the
shard order is a seeded permutation (``set_epoch``), split first over ranks and then
over DataLoader workers so every shard is read by exactly one worker. While a worker
streams one shard, the next one it will read is hydrated in the background; samples
can be mixed further in a seeded shuffle buffer.
"""

from __future__ import annotations

import random
import tarfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

import blobtier
from blobtier.dataloader.sampler import _world
from blobtier.errors import BlobNotFound, InvalidRequest

Sample = dict[str, Any]


def iter_tar_samples(stream, shard: str) -> Iterator[Sample]:
    """Samples of one tar stream, grouping consecutive members that share a base name."""
    current: Sample | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base, dot, ext = member.name.rpartition(".")
                if not dot or "/" in ext:
                    base, ext = member.name, ""
                if current is None or current["__key__"] != base:
                    if current is not None:
                        yield current
                    current = {"__key__": base, "__shard__": shard}
                current[ext] = tar.extractfile(member).read()
    except tarfile.TarError as exc:
        raise InvalidRequest(f"shard {shard} is not a readable tar: {exc}") from exc
    if current is not None:
        yield current


class BlobIterableDataset(IterableDataset):
    """Args:
        shards: a key prefix (every blob under it) or a list of shard keys.
        client: ``blobtier.connect()`` when omitted.
        decode: turns a sample dict into what the DataLoader yields.
        shuffle: permute the shards each epoch (seeded) and mix samples in a buffer.
        seed: the same on every rank.
        shuffle_buffer: samples held for mixing (0: shard-level shuffle only).
        rank, world_size: default from ``torch.distributed`` when initialised.
    """

    def __init__(self, shards: str | Sequence[str], client: blobtier.Client | None = None,
                 decode: Callable[[Sample], Any] | None = None, shuffle: bool = True, seed: int = 0,
                 shuffle_buffer: int = 0, rank: int | None = None,
                 world_size: int | None = None) -> None:
        self.client = client if client is not None else blobtier.connect()
        if isinstance(shards, str):
            self.shards = [info.key for info in self.client.iter_ls(shards)]
            if not self.shards:
                raise BlobNotFound(f"no shards under prefix {shards!r}")
        else:
            self.shards = list(shards)
        self.decode = decode
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.rank, self.world_size = _world(rank, world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def my_shards(self) -> list[str]:
        """This rank's and this worker's shards for the current epoch, in order."""
        order = list(self.shards)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = [order[i] for i in torch.randperm(len(order), generator=g).tolist()]
        mine = order[self.rank::self.world_size]
        info = get_worker_info()
        if info is not None:
            mine = mine[info.id::info.num_workers]
        return mine

    def __iter__(self) -> Iterator[Any]:
        shards = self.my_shards()
        samples = self._samples(shards)
        if self.shuffle and self.shuffle_buffer > 1:
            info = get_worker_info()
            worker = info.id if info is not None else 0
            samples = _mix(samples, self.shuffle_buffer,
                           random.Random(hash((self.seed, self.epoch, self.rank, worker))))
        for sample in samples:
            yield self.decode(sample) if self.decode is not None else sample

    def _samples(self, shards: list[str]) -> Iterator[Sample]:
        for i, shard in enumerate(shards):
            if i + 1 < len(shards):
                self.client.prefetch([shards[i + 1]])  # the next shard, while this one streams
            with self.client.open(shard) as stream:
                yield from iter_tar_samples(stream, shard)


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
