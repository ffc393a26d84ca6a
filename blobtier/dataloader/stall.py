"""Data stall: how long the training loop waits for its next batch.

A step is the time from one batch being handed to the loop to the next one; its wait is
the part spent inside the DataLoader's ``__next__``. The stall fraction is
wait / step time: 0 when data is always ready, 1 when the GPU only ever waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from blobtier.metrics import StallMetrics, default_stall_metrics

T = TypeVar("T")


@dataclass(frozen=True)
class StallReport:
    steps: int
    samples: int
    wait_s: float
    total_s: float

    @property
    def stall_fraction(self) -> float:
        return self.wait_s / self.total_s if self.total_s > 0 else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.total_s if self.total_s > 0 else 0.0


def _batch_len(batch: Any) -> int:
    """Samples in a batch: a collated (inputs, targets) tuple, a tensor, or a plain list."""
    if isinstance(batch, (list, tuple)) and batch:
        shape = getattr(batch[0], "shape", None)
        return int(shape[0]) if shape else len(batch)
    shape = getattr(batch, "shape", None)
    if shape:
        return int(shape[0])
    try:
        return len(batch)
    except TypeError:
        return 1


class DataStallMeter:
    """Wraps a batch iterator and measures the time the consumer waits for it.

    >>> meter = DataStallMeter()
    >>> for batch in meter.iterate(loader):
    ...     train_step(batch)
    >>> meter.report().stall_fraction
    """

    def __init__(self, count: Callable[[Any], int] = _batch_len,
                 metrics: StallMetrics | None = None) -> None:
        """Args:
            count: samples in a batch (default: the leading dimension of its first tensor).
            metrics: Prometheus series to feed (default: ``blobtier_data_stall_seconds``
                and friends on the default registry).
        """
        self.count = count
        self.metrics = metrics if metrics is not None else default_stall_metrics()
        self.reset()

    def reset(self) -> None:
        self._steps = self._samples = 0
        self._wait = self._total = 0.0

    def iterate(self, batches: Iterable[T]) -> Iterator[T]:
        it = iter(batches)
        handed_out = None  # when the consumer got its last batch
        while True:
            start = time.perf_counter()
            if handed_out is not None:
                self._total += start - handed_out  # the consumer's compute on that batch
                self.metrics.step.inc(start - handed_out)
            try:
                batch = next(it)
            except StopIteration:
                return
            handed_out = time.perf_counter()
            wait, n = handed_out - start, self.count(batch)
            self._wait += wait
            self._total += wait
            self._steps += 1
            self._samples += n
            self.metrics.wait.inc(wait)
            self.metrics.step.inc(wait)
            self.metrics.wait_per_step.observe(wait)
            self.metrics.samples.inc(n)
            yield batch

    def report(self) -> StallReport:
        return StallReport(self._steps, self._samples, self._wait, self._total)
