"""``BlobDataLoader``: a DataLoader whose ``state_dict`` is what the training loop consumed.

A DataLoader draws indices ahead of the loop (``prefetch_factor`` batches per worker), so
the sampler's own position overstates progress: a resume from it would skip the batches
in flight. This loader counts the batches it hands to the loop. Batches come out in the
order of the sampler (``in_order=True``), so ``k`` batches are exactly the first
``k * batch_size`` samples of the pass; that count is the resume point, with any number
of workers, persistent or not.

It speaks torchdata's ``StatefulDataLoader`` protocol (``state_dict`` /
``load_state_dict``). Over a map-style dataset the state is its ``BlobSampler``'s (elastic:
see ``sampler.py``); over a ``BlobIterableDataset`` it is the dataset's (``shards.py``).
A pass left unfinished (the loop broke out) is continued, not skipped, by the next one.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, IterableDataset

from blobtier.dataloader.sampler import BlobSampler


@dataclass
class _Pass:
    """One iteration over the loader: where it started and the batches handed out."""

    epoch: int
    global_start: int  # the sampler's resume point in the epoch's global order
    start: int  # samples of this rank's order before the pass (map-style) or batches (shards)
    length: int  # samples of this rank's order in the pass (map-style)
    batches: int = 0
    done: bool = False


class _Counting:
    """The DataLoader's iterator, counting the batches the loop has received."""

    def __init__(self, it: Iterator[Any], current: _Pass) -> None:
        self._it = it
        self._pass = current

    def __iter__(self) -> _Counting:
        return self

    def __len__(self) -> int:
        return len(self._it)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        try:
            batch = next(self._it)
        except StopIteration:
            self._pass.done = True
            raise
        self._pass.batches += 1
        return batch


class BlobDataLoader(DataLoader):
    """A ``torch.utils.data.DataLoader`` that resumes exactly where the loop stopped.

    Args are ``DataLoader``'s, plus ``seed``. Over a map-style dataset with neither
    ``sampler`` nor ``batch_sampler``, a ``BlobSampler(dataset, shuffle=shuffle, seed=seed)``
    is made (rank and world size from ``torch.distributed``); a given sampler must be a
    ``BlobSampler`` (or a batch sampler over one, with a fixed ``batch_size``).

    Raises:
        ValueError: the sampler is not a ``BlobSampler``, ``in_order=False`` (batches
            out of order cannot be counted as a prefix), or an iterable dataset that
            cannot resume (not a ``BlobIterableDataset``).
    """

    def __init__(self, dataset: Any, batch_size: int | None = 1, shuffle: bool | None = None,
                 sampler: Any = None, batch_sampler: Any = None, *, seed: int = 0,
                 **kwargs: Any) -> None:
        if kwargs.get("in_order", True) is False:
            raise ValueError("BlobDataLoader needs in_order=True: it counts batches as a prefix")
        iterable = isinstance(dataset, IterableDataset)
        if not iterable and sampler is None and batch_sampler is None:
            sampler, shuffle = BlobSampler(dataset, shuffle=bool(shuffle), seed=seed), None
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                         batch_sampler=batch_sampler, **kwargs)
        self._pass: _Pass | None = None
        self._per_batch = self._batch_samples()
        self._blob_sampler: BlobSampler | None = None
        if iterable:
            if not hasattr(dataset, "resume_state"):
                raise ValueError(f"BlobDataLoader cannot resume a {type(dataset).__name__}: "
                                 "use a BlobIterableDataset")
            return
        inner = self.batch_sampler.sampler if self.batch_sampler is not None else self.sampler
        if not isinstance(inner, BlobSampler):
            raise ValueError(f"BlobDataLoader resumes through a BlobSampler, not a "
                             f"{type(inner).__name__}: pass sampler=BlobSampler(dataset)")
        self._blob_sampler = inner
        inner._loader = weakref.ref(self)

    def _batch_samples(self) -> int:
        """Samples per batch handed to the loop (1 without automatic batching)."""
        if self.batch_size is not None:
            return self.batch_size
        if self.batch_sampler is None:
            return 1
        size = getattr(self.batch_sampler, "batch_size", None)
        if not isinstance(size, int):
            raise ValueError("BlobDataLoader needs a batch_sampler with a fixed batch_size")
        return size

    def __iter__(self) -> _Counting:  # type: ignore[override]
        if self._blob_sampler is not None:
            self._pass = self._begin_sampler_pass(self._blob_sampler)
        else:
            self._pass = self._begin_dataset_pass()
        return _Counting(super().__iter__(), self._pass)

    # -- map-style: the sampler's order ------------------------------------------------
    def _unfinished(self, epoch: int) -> _Pass | None:
        p = self._pass
        return p if p is not None and not p.done and p.epoch == epoch else None

    def _begin_sampler_pass(self, s: BlobSampler) -> _Pass:
        left = self._unfinished(s.epoch)
        if left is not None:  # the loop broke out: go on from what it consumed
            s._global_start, s._offset = left.global_start, self._seen(left)
        return _Pass(s.epoch, s._global_start, s._offset, s.pass_length())

    def _seen(self, p: _Pass) -> int:
        return p.length if p.done else min(p.start + p.batches * self._per_batch, p.length)

    def resume_point(self) -> tuple[int, int, int]:
        """(epoch, global start, samples of this rank's pass consumed) for the sampler."""
        s = self._blob_sampler
        assert s is not None
        p = self._pass
        if p is None or p.epoch != s.epoch:  # nothing consumed since a load or set_epoch
            return s.epoch, s._global_start, s._offset
        return p.epoch, p.global_start, self._seen(p)

    # -- iterable: the dataset's plan --------------------------------------------------
    def _shape(self) -> dict[str, Any]:
        return {"batch_size": self._per_batch, "num_workers": self.num_workers,
                "drop_last": bool(self.drop_last) and self.batch_size is not None}

    def _begin_dataset_pass(self) -> _Pass:
        ds = self.dataset
        left = self._unfinished(ds.epoch)
        if left is not None:
            ds.load_state_dict(self.state_dict())
        start = ds.begin_pass(**self._shape())
        return _Pass(ds.epoch, 0, start, 0)

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The resume point: the samples the training loop has received, no more."""
        if self._blob_sampler is not None:
            return {"sampler": self._blob_sampler.state_dict()}
        p, ds = self._pass, self.dataset
        if p is None or p.epoch != ds.epoch:  # nothing consumed since a load or set_epoch
            pending = ds.pending_state()
            return {"dataset": pending if pending is not None
                    else ds.resume_state(0, done=False, **self._shape())}
        return {"dataset": ds.resume_state(p.start + p.batches, done=p.done, **self._shape())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``'s result; the next pass yields exactly the rest.

        Raises:
            ValueError: the state is another kind of loader's, or its sampler or dataset
                refuses it (another seed, dataset, ...).
        """
        kind = "sampler" if self._blob_sampler is not None else "dataset"
        if kind not in state:
            raise ValueError(f"cannot resume: the state has no {kind!r} (keys {sorted(state)})")
        target = self._blob_sampler if self._blob_sampler is not None else self.dataset
        target.load_state_dict(state[kind])
        self._pass = None
