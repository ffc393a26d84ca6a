"""``BlobSampler``: a seeded, resumable, distributed sampler that tells the cache the future.

Semantics are ``DistributedSampler``'s: one permutation per epoch from ``seed + epoch``,
identical on every rank; padded (or, with ``drop_last``, trimmed) to a multiple of the
world size; rank ``r`` takes positions ``r, r + world, ...``. ``state_dict`` /
``load_state_dict`` resume mid-epoch with exactly the remaining order.

The resume point is global: the state counts the positions of the epoch's one global order
that every rank together has consumed (in DDP every rank consumes the same count, so any
rank's state will do). A job resumed with another world size continues that same global
order: the rest of the epoch is split over the new ranks, and every sample of the epoch is
seen once across the old and the new ranks (Mosaic Streaming's "elastic determinism").

Under a DataLoader the sampler cannot see what the training loop consumed (workers draw
indices ahead): ``BlobDataLoader`` counts it and the sampler's ``state_dict()`` asks it.

When an epoch starts, the sampler announces this rank's order for the rest of the
epoch and the next one to the dataset's client: the cache's clairvoyant policy learns
every chunk's next use, and the prefetcher fetches the next samples ahead of the
DataLoader, following the position the sampler has reached.
"""

from __future__ import annotations

import sys
import weakref
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
        self._global_start = 0  # positions of this epoch's global order consumed before a resume
        self._loader: weakref.ref | None = None  # the BlobDataLoader counting consumption
        self._by_dataloader = False  # a DataLoader iterates this sampler (draws ahead)
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
            self._global_start = 0
        self.epoch = epoch

    def global_order(self, epoch: int) -> list[int]:
        """The epoch's permutation of every index, the same on every rank (unpadded); a
        dataset with its own ``epoch_order(epoch)`` (``BlobMixture``) gives it."""
        own = getattr(self.dataset, "epoch_order", None)
        if own is not None:
            return list(own(epoch))
        n = len(self.dataset)
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        return torch.randperm(n, generator=g).tolist()

    def order(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch``, in order (after a resume, of the rest of it)."""
        everything = self.global_order(epoch)
        start = self._global_start if epoch == self.epoch else 0
        rest = everything[start:]
        # Pad (cyclically from the epoch's start, as DistributedSampler does) or trim the
        # rest to a multiple of the world: with start 0 this is DistributedSampler's split,
        # and with the same world size, resuming at start k * world gives what was left.
        if self.drop_last:
            rest = rest[:len(rest) // self.world_size * self.world_size]
        elif everything and len(rest) % self.world_size:
            pad = self.world_size - len(rest) % self.world_size
            rest += (everything * (pad // len(everything) + 1))[:pad]
        return rest[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        # A DataLoader calls this from torch's own code and draws indices ahead of the loop.
        self._by_dataloader = sys._getframe(1).f_globals.get("__name__", "").startswith("torch.")
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
        self._offset = 0  # the next pass starts the epoch over
        self._global_start = 0

    def pass_length(self) -> int:
        """Samples of this rank's order in the current pass (less after a resume)."""
        rest = max(0, len(self.dataset) - self._global_start)
        if self.drop_last:
            return rest // self.world_size
        return -(-rest // self.world_size)

    @property
    def position(self) -> int:
        """Samples of the current epoch handed out so far."""
        return self._offset

    def state_dict(self, samples_seen: int | None = None) -> dict[str, Any]:
        """The resume point: where the training loop is in this rank's order.

        Args:
            samples_seen: samples of this pass the loop has consumed. Default: what the
                ``BlobDataLoader`` iterating this sampler counted, or, when the loop
                iterates the sampler itself, what it handed out.

        Raises:
            ValueError: ``samples_seen`` is outside the epoch, or it is omitted while a
                plain ``DataLoader`` iterates the sampler (it draws indices ahead of the
                loop, so what was handed out is not what was consumed).
        """
        loader = self._loader() if self._loader is not None else None
        epoch, start, seen = self.epoch, self._global_start, samples_seen
        if seen is None and loader is not None:
            epoch, start, seen = loader.resume_point()
        if seen is None and self._by_dataloader:
            raise ValueError("a DataLoader draws indices ahead of the training loop: iterate "
                             "a BlobDataLoader, or pass samples_seen (samples consumed)")
        seen = self._offset if seen is None else seen
        if not 0 <= seen <= self.num_samples:
            raise ValueError(f"samples_seen {seen} is outside this epoch (0..{self.num_samples})")
        return {"epoch": epoch, "samples_seen": seen,
                "global_seen": start + seen * self.world_size, "seed": self.seed,
                "shuffle": self.shuffle, "rank": self.rank, "world_size": self.world_size,
                "dataset_len": len(self.dataset), "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the epoch of ``state``, with this sampler's rank and world size.

        Raises:
            ValueError: the state was taken with another seed, shuffle, drop_last or
                dataset length (its order is not this sampler's).
        """
        for name in ("seed", "shuffle", "drop_last", "dataset_len"):
            mine = len(self.dataset) if name == "dataset_len" else getattr(self, name)
            if state[name] != mine:
                raise ValueError(f"cannot resume: {name} was {state[name]!r}, is now {mine!r}")
        self.epoch = state["epoch"]
        self._global_start = state.get("global_seen", state["samples_seen"] * state["world_size"])
        self._offset = 0
