from __future__ import annotations

import time

import torch

from blobtier.dataloader import DataStallMeter


def test_counts_steps_samples_and_waits():
    def slow_batches():
        for _ in range(3):
            time.sleep(0.02)
            yield torch.zeros(4, 2), torch.zeros(4)

    meter = DataStallMeter()
    for _ in meter.iterate(slow_batches()):
        pass
    rep = meter.report()
    assert (rep.steps, rep.samples) == (3, 12)
    assert 0.05 < rep.wait_s <= rep.total_s
    assert 0.5 < rep.stall_fraction <= 1.0


def test_no_wait_when_data_is_ready():
    meter = DataStallMeter()
    for _ in meter.iterate([[1, 2]] * 3):
        time.sleep(0.01)  # compute
    rep = meter.report()
    assert rep.samples == 6
    assert rep.stall_fraction < 0.5
    meter.reset()
    assert meter.report().steps == 0
