"""BlobSampler: DistributedSampler semantics, resumable, and it announces the future."""

from __future__ import annotations

import pytest

from blobtier.dataloader import BlobSampler


class Items:
    def __init__(self, n: int) -> None:
        self.n = n
        self.announced: list[tuple[list[int], object]] = []

    def __len__(self) -> int:
        return self.n


class Announcing(Items):
    def announce(self, indices, progress=None):
        self.announced.append((list(indices), progress))


def test_same_seed_same_order_on_every_rank_and_run():
    a = [list(BlobSampler(Items(100), seed=3, rank=r, world_size=4)) for r in range(4)]
    b = [list(BlobSampler(Items(100), seed=3, rank=r, world_size=4)) for r in range(4)]
    assert a == b
    assert sorted(i for part in a for i in part) == list(range(100))
    assert list(BlobSampler(Items(100), seed=4)) != list(BlobSampler(Items(100), seed=3))


@pytest.mark.parametrize("drop_last", [False, True])
def test_uneven_split_pads_or_trims(drop_last):
    parts = [list(BlobSampler(Items(10), seed=0, rank=r, world_size=3, drop_last=drop_last))
             for r in range(3)]
    assert len({len(p) for p in parts}) == 1
    flat = [i for p in parts for i in p]
    if drop_last:
        assert len(flat) == 9 and len(set(flat)) == 9
    else:
        assert len(flat) == 12 and set(flat) == set(range(10))


def test_epochs_reshuffle_and_unshuffled_is_in_order():
    s = BlobSampler(Items(50), seed=1)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first and sorted(list(s)) == sorted(first)
    assert list(BlobSampler(Items(5), shuffle=False)) == [0, 1, 2, 3, 4]


def test_resume_mid_epoch_yields_exactly_the_rest():
    s = BlobSampler(Items(40), seed=9, rank=1, world_size=2)
    s.set_epoch(2)
    full = s.order(2)
    it = iter(s)
    head = [next(it) for _ in range(7)]
    state = s.state_dict()
    assert state["samples_seen"] == 7 and state["epoch"] == 2
    resumed = BlobSampler(Items(40), seed=9, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert head + list(resumed) == full
    assert list(resumed) == resumed.order(2)  # the next pass starts the epoch over


def test_resume_from_the_consumed_count():
    s = BlobSampler(Items(30), seed=0)
    list(s)  # a DataLoader drew everything ahead of the loop...
    state = s.state_dict(samples_seen=12)  # ...which consumed only 12
    again = BlobSampler(Items(30), seed=0)
    again.load_state_dict(state)
    assert list(again) == s.order(0)[12:]
    with pytest.raises(ValueError):
        s.state_dict(samples_seen=31)


def test_resume_refuses_a_different_setup():
    state = BlobSampler(Items(30), seed=0).state_dict()
    with pytest.raises(ValueError, match="seed"):
        BlobSampler(Items(30), seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="dataset_len"):
        BlobSampler(Items(31), seed=0).load_state_dict(state)


def test_bad_rank():
    with pytest.raises(ValueError):
        BlobSampler(Items(3), rank=2, world_size=2)


def test_announces_this_epoch_and_the_next_with_progress():
    ds = Announcing(20)
    s = BlobSampler(ds, seed=5)
    it = iter(s)
    (order, progress), = ds.announced
    assert order == s.order(0) + s.order(1)
    assert progress() == 0
    next(it), next(it), next(it)
    assert progress() == 3
    s2 = BlobSampler(ds, seed=5)
    s2.load_state_dict({**s.state_dict(), "samples_seen": 3})
    iter(s2)
    assert ds.announced[-1][0] == s.order(0)[3:] + s.order(1)
