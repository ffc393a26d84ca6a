"""``BlobMixture``: several datasets mixed by weight, the same way on every rank and run.

Each epoch draws ``counts[j]`` samples from source ``j``: a proportion of the epoch's
samples (largest remainder, so the counts add up exactly) or an absolute count, as
Mosaic Streaming's ``proportion`` and ``choose``. A source's draws walk through seeded
permutations of it, epoch after epoch, so no sample repeats before every sample of its
source has been drawn (a source drawn beyond its size repeats whole permutations). The
draws of all sources are then shuffled into one order, seeded by (seed, epoch).

The mixture is a map-style dataset whose index space is the sources laid end to end; its
``epoch_order`` is the merged order. ``BlobSampler`` follows it, so the sampler's
resume, elastic resume and ``BlobDataLoader`` work unchanged, and the sampler announces
the merged order: each source's client learns its own keys in the order the mixture will
read them, and its prefetcher follows the mixture's progress through them.
"""

from __future__ import annotations

import bisect
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

import blobtier
from blobtier.dataloader.dataset import BlobDataset


def _counts(weights: Sequence[float], total: int) -> list[int]:
    """``total`` split in proportion to ``weights``, by largest remainder."""
    scale = sum(weights)
    exact = [w / scale * total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda j: counts[j] - exact[j])
    for j in by_remainder[:total - sum(counts)]:
        counts[j] += 1
    return counts


def _generator(*seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(hash(seed) & ((1 << 63) - 1))  # a tuple of ints hashes alike in every process
    return g


class BlobMixture(Dataset):
    """Args:
        sources: ``(dataset_or_prefix, weight)`` pairs; a prefix becomes
            ``BlobDataset(prefix, client, decode=decode)``.
        seed: the same on every rank.
        by: ``"proportion"``: weights are relative shares of each epoch;
            ``"count"``: weights are samples per epoch (ints).
        samples_per_epoch: with proportions, the epoch's size (default: every source's
            samples added up).
        client, decode, with_keys: for the sources given as prefixes.

    Raises:
        ValueError: no sources, a weight that is not positive (or not an int with
            ``by="count"``), an unknown ``by``, an empty source or an iterable one.
    """

    def __init__(self, sources: Sequence[tuple[Dataset | str, float]], seed: int = 0,
                 by: str = "proportion", samples_per_epoch: int | None = None,
                 client: blobtier.Client | None = None, decode: Callable[..., Any] | None = None,
                 with_keys: bool | None = None) -> None:
        if not sources:
            raise ValueError("BlobMixture needs at least one (dataset_or_prefix, weight)")
        if client is None and any(isinstance(src, str) for src, _ in sources):
            client = blobtier.connect()
        self.datasets = [BlobDataset(src, client=client, decode=decode, with_keys=with_keys)
                         if isinstance(src, str) else src for src, _ in sources]
        for j, ds in enumerate(self.datasets):
            if isinstance(ds, IterableDataset):
                raise ValueError(f"source {j} is an IterableDataset: BlobMixture draws samples "
                                 "by index from map-style datasets")
        self.weights = [w for _, w in sources]
        self.seed = seed
        self.sizes = [len(ds) for ds in self.datasets]
        self.offsets = [0]
        for j, n in enumerate(self.sizes):
            if n == 0:
                raise ValueError(f"source {j} of the mixture is empty")
            self.offsets.append(self.offsets[-1] + n)
        self.counts = self._epoch_counts(by, samples_per_epoch)

    def _epoch_counts(self, by: str, samples_per_epoch: int | None) -> list[int]:
        for j, w in enumerate(self.weights):
            # numpy's integers count as ints (weights often come from an array); bools not.
            whole = isinstance(w, numbers.Integral) and not isinstance(w, bool)
            if not w > 0 or (by == "count" and not whole):
                raise ValueError(f"weight {w!r} of source {j} must be a positive "
                                 f"{'int' if by == 'count' else 'number'}")
        if by == "count":
            if samples_per_epoch is not None:
                raise ValueError("samples_per_epoch is the sum of the counts with by='count'")
            return [int(w) for w in self.weights]
        if by != "proportion":
            raise ValueError(f"by must be 'proportion' or 'count', not {by!r}")
        if samples_per_epoch is None:
            samples_per_epoch = sum(self.sizes)
        if not isinstance(samples_per_epoch, numbers.Integral) or samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be a positive int, not {samples_per_epoch!r}")
        return _counts(self.weights, int(samples_per_epoch))

    def __len__(self) -> int:
        """Samples per epoch."""
        return sum(self.counts)

    def _draws(self, j: int, epoch: int) -> list[int]:
        """Source ``j``'s samples for ``epoch``: the next ``counts[j]`` of its endless run of
        seeded permutations."""
        n, c = self.sizes[j], self.counts[j]
        start, end = epoch * c, (epoch + 1) * c
        out: list[int] = []
        for k in range(start // n, -(-end // n)):
            perm = torch.randperm(n, generator=_generator(self.seed, j, k)).tolist()
            out += perm[max(start - k * n, 0):end - k * n]
        return out

    def epoch_order(self, epoch: int) -> list[int]:
        """The epoch's merged order (indices into the sources laid end to end)."""
        picks = [self.offsets[j] + i for j in range(len(self.datasets)) for i in self._draws(j, epoch)]
        perm = torch.randperm(len(picks), generator=_generator(self.seed, -1, epoch)).tolist()
        return [picks[k] for k in perm]

    def source_of(self, index: int) -> tuple[int, int]:
        """(source, index in it) of a mixture index."""
        j = bisect.bisect_right(self.offsets, index) - 1
        if not 0 <= j < len(self.datasets):
            raise IndexError(f"mixture index {index} is outside 0..{self.offsets[-1] - 1}")
        return j, index - self.offsets[j]

    def __getitem__(self, index: int) -> Any:
        j, i = self.source_of(index)
        return self.datasets[j][i]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """A batch with one batched fetch per source."""
        by_source: dict[int, list[tuple[int, int]]] = {}
        for pos, index in enumerate(indices):
            j, i = self.source_of(index)
            by_source.setdefault(j, []).append((pos, i))
        out: list[Any] = [None] * len(indices)
        for j, items in by_source.items():
            ds = self.datasets[j]
            local = [i for _, i in items]
            many = getattr(ds, "__getitems__", None)
            got = many(local) if many is not None else [ds[i] for i in local]
            for (pos, _), sample in zip(items, got):
                out[pos] = sample
        return out

    def announce(self, indices: Sequence[int], progress: Callable[[], int] | None = None) -> None:
        """The sampler's hook: tell each source's client its keys in the merged order."""
        per_client: dict[int, tuple[Any, list[str], list[int]]] = {}
        for pos, index in enumerate(indices):
            j, i = self.source_of(index)
            ds = self.datasets[j]
            keys, client = getattr(ds, "keys", None), getattr(ds, "client", None)
            if keys is None or client is None:
                continue  # not a blobtier dataset: nothing to tell
            entry = per_client.setdefault(id(client), (client, [], []))
            entry[1].append(keys[i])
            entry[2].append(pos)
        for client, keys, positions in per_client.values():
            # This client's progress: its keys among the merged positions reached so far.
            mine = None if progress is None else _Progress(progress, positions)
            client.announce(keys, mine)


class _Progress:
    """How many of one client's keys the mixture's reader has passed."""

    def __init__(self, merged: Callable[[], int], positions: list[int]) -> None:
        self.merged = merged
        self.positions = positions

    def __call__(self) -> int:
        return bisect.bisect_left(self.positions, self.merged())
