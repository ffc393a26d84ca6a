"""BlobDataLoader: resume from what the training loop consumed, with workers and prefetch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from blobtier.dataloader import BlobDataLoader, BlobDataset, BlobSampler


@pytest.fixture
def dataset(client):
    client.put_many({f"ld/{i:03d}": i.to_bytes(2, "little") * 50 for i in range(60)})
    return BlobDataset("ld/", client=client, decode=lambda v: int.from_bytes(v[:2], "little"))


def flat(batches) -> list[int]:
    return [int(i) for b in batches for i in b]


def make_loader(ds, workers: int, **kw) -> BlobDataLoader:
    extra = {"persistent_workers": True, "prefetch_factor": 3} if workers else {}
    return BlobDataLoader(ds, batch_size=4, shuffle=True, seed=7, num_workers=workers,
                          **extra, **kw)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_yields_exactly_what_the_loop_did_not_consume(dataset, workers):
    loader = make_loader(dataset, workers)
    it = iter(loader)
    before = flat(next(it) for _ in range(5))  # the workers have drawn further ahead
    state = loader.state_dict()
    assert state["sampler"]["samples_seen"] == 20
    assert loader.sampler.state_dict() == state["sampler"]  # the sampler asks the loader
    resumed = make_loader(dataset, workers)
    resumed.load_state_dict(state)
    after = flat(resumed)
    epoch = BlobSampler(dataset, seed=7).order(0)
    assert before + after == epoch  # the rest, in the same order, each sample once
    assert flat(resumed) == epoch  # and the next pass is the whole epoch again


@pytest.mark.parametrize("workers", [0, 2])
def test_breaking_out_and_iterating_again_continues(dataset, workers):
    loader = make_loader(dataset, workers)
    head = []
    for batch in loader:
        head += flat([batch])
        if len(head) == 12:
            break
    assert head + flat(loader) == BlobSampler(dataset, seed=7).order(0)


def test_epochs_and_a_checkpoint_at_the_end_of_one(dataset):
    loader = make_loader(dataset, 2)
    loader.sampler.set_epoch(3)
    first = flat(loader)
    state = loader.state_dict()  # the epoch is done: a resume must not replay it
    resumed = make_loader(dataset, 2)
    resumed.load_state_dict(state)
    assert flat(resumed) == []
    resumed.sampler.set_epoch(4)
    assert flat(resumed) == BlobSampler(dataset, seed=7).order(4) != first


def test_plain_dataloader_state_without_a_count_is_refused(dataset):
    sampler = BlobSampler(dataset, seed=7)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=2)
    it = iter(loader)
    next(it)
    # Workers drew far more than the loop's 4: a silent resume point would lose samples.
    with pytest.raises(ValueError, match="BlobDataLoader"):
        sampler.state_dict()
    assert sampler.state_dict(samples_seen=4)["samples_seen"] == 4
    del it


def test_refuses_other_samplers_and_out_of_order(dataset):
    with pytest.raises(ValueError, match="BlobSampler"):
        BlobDataLoader(dataset, batch_size=2, sampler=torch.utils.data.SequentialSampler(dataset))
    with pytest.raises(ValueError, match="in_order"):
        BlobDataLoader(dataset, batch_size=2, num_workers=2, in_order=False)
