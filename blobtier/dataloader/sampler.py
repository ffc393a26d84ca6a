"""``BlobSampler``: a seeded, resumable, distributed sampler that tells the cache the future.

Semantics are ``DistributedSampler``'s: one permutation per epoch from ``seed + epoch``,
identical on every rank; padded (or, with ``drop_last``, trimmed) to a multiple of the
world size; rank ``r`` takes positions ``r, r + world, ...``. ``state_dict`` /
``load_state_dict`` resume mid-epoch with exactly the remaining order.

When an epoch starts, the sampler announces this rank's order for the rest of the
epoch and the next one to the dataset's client: the cache's clairvoyant policy learns
every chunk's next use, and the prefetcher fetches the next samples ahead of the
DataLoader, following the position the sampler has reached.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Sampler


def _world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        dist = torch.distributed
        initialised = dist.is_available() and dist.is_initialized()
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        if world_size is None:
            world_size = dist.get_world_size() if initialised else 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    return rank, world_size


class BlobSampler(Sampler[int]):
    """Args:
        dataset: the dataset to sample; if it has ``announce(indices)`` (``BlobDataset``
            does), the sampler announces each epoch's order to it.
        shuffle: a new seeded permutation each epoch, else the dataset order.
        seed: the same on every rank.
        rank, world_size: default from ``torch.distributed`` when initialised, else 0 and 1.
        drop_last: trim the tail so ranks get equal counts, instead of padding.
    """

    def __init__(self, dataset: Sized, shuffle: bool = True, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, drop_last: bool = False) -> None:
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = _world(rank, world_size)
        self.drop_last = drop_last
        self.epoch = 0
        self._offset = 0  # samples of this epoch already handed out (resume point)
        self._handed_out = 0
        n = len(dataset)
        if drop_last:
            self.num_samples = n // self.world_size
        else:
            self.num_samples = -(-n // self.world_size)
        self.total_size = self.num_samples * self.world_size

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (as with DistributedSampler); resets the resume point."""
        if epoch != self.epoch:
            self._offset = 0
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch``, in order."""
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            indices = torch.randperm(n, generator=g).tolist()
        else:
            indices = list(range(n))
        if self.drop_last:
            indices = indices[:self.total_size]
        elif len(indices) < self.total_size:
            pad = self.total_size - len(indices)
            indices += (indices * (pad // len(indices) + 1))[:pad] if indices else []
        return indices[self.rank:self.total_size:self.world_size]

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)
        start = self._offset
        announce = getattr(self.dataset, "announce", None)
        if announce is not None:
            # Progress counts the announced samples handed out; it keeps counting into
            # the next epoch's order, which is announced too.
            announce(order[start:] + self.order(self.epoch + 1),
                     progress=lambda: self._handed_out - start)
        self._handed_out = start
        return self._walk(order, start)

    def _walk(self, order: list[int], start: int) -> Iterator[int]:
        for i in range(start, len(order)):
            self._offset = i + 1
            self._handed_out = i + 1
            yield order[i]
        self._offset = 0

    @property
    def position(self) -> int:
        """Samples of the current epoch handed out so far."""
        return self._offset

    def state_dict(self, samples_seen: int | None = None) -> dict[str, Any]:
        """The resume point. With a DataLoader, pass the number of samples of this epoch the
        training loop has consumed: the loader draws indices ahead of the loop."""
        seen = self._offset if samples_seen is None else samples_seen
        if not 0 <= seen <= self.num_samples:
            raise ValueError(f"samples_seen {seen} is outside this epoch (0..{self.num_samples})")
        return {"epoch": self.epoch, "samples_seen": seen, "seed": self.seed,
                "shuffle": self.shuffle, "rank": self.rank, "world_size": self.world_size,
                "dataset_len": len(self.dataset), "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("seed", "shuffle", "world_size", "drop_last", "dataset_len"):
            mine = len(self.dataset) if name == "dataset_len" else getattr(self, name)
            if state[name] != mine:
                raise ValueError(f"cannot resume: {name} was {state[name]!r}, is now {mine!r}")
        self.epoch = state["epoch"]
        self._offset = state["samples_seen"]
