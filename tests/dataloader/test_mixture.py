"""BlobMixture: weighted, deterministic, resumable, and the cache is told the merged order."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from torch.utils.data import Dataset, IterableDataset

from blobtier.dataloader import BlobDataLoader, BlobMixture, BlobSampler


class Tagged(Dataset):
    def __init__(self, tag: str, n: int) -> None:
        self.tag, self.n = tag, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.tag, i


@pytest.fixture
def sources(client):
    client.put_many({f"mix/{tag}/{i:03d}": tag.encode() for tag, n in (("a", 40), ("b", 30))
                     for i in range(n)})
    return client


def source_tag(key: str, view: memoryview) -> str:
    return key.split("/")[1]


def test_proportions_within_one_percent_over_10k_draws(sources):
    mix = BlobMixture([("mix/a/", 0.5), ("mix/b/", 0.3), (Tagged("c", 20), 0.2)], seed=1,
                      samples_per_epoch=10_000, client=sources, decode=source_tag)
    loader = BlobDataLoader(mix, batch_size=500, seed=0, collate_fn=list)
    drawn = Counter(s if isinstance(s, str) else s[0] for batch in loader for s in batch)
    assert sum(drawn.values()) == 10_000
    for tag, weight in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(drawn[tag] / 10_000 - weight) < 0.01


def test_the_same_order_on_every_run():
    m = BlobMixture([(Tagged("a", 50), 2), (Tagged("b", 7), 1)], seed=9, samples_per_epoch=300)
    # Recorded from another process: the order depends on nothing but the arguments.
    assert m.epoch_order(0)[:16] == [16, 54, 5, 56, 51, 47, 30, 40, 24, 54, 14, 5, 1, 36, 48, 10]
    assert m.epoch_order(3)[:16] == [7, 17, 56, 21, 55, 21, 50, 55, 28, 27, 51, 10, 56, 46, 24, 52]
    assert m.epoch_order(0) != m.epoch_order(1)
    again = BlobMixture([(Tagged("a", 50), 2), (Tagged("b", 7), 1)], seed=9, samples_per_epoch=300)
    assert again.epoch_order(5) == m.epoch_order(5)


def test_counts_per_epoch_walk_each_source_without_repeats():
    m = BlobMixture([(Tagged("a", 40), 10), (Tagged("b", 20), 25)], by="count", seed=0)
    assert len(m) == 35
    a_draws = []
    for epoch in range(4):
        got = Counter(m[i][0] for i in m.epoch_order(epoch))
        assert got == {"a": 10, "b": 25}
        a_draws += [m[i][1] for i in m.epoch_order(epoch) if m[i][0] == "a"]
    assert sorted(a_draws) == list(range(40))  # four epochs of 10: every sample of a once
    b0 = Counter(m[i][1] for i in m.epoch_order(0) if m[i][0] == "b")
    assert set(b0) == set(range(20)) and max(b0.values()) == 2  # 25 of 20: one pass and 5


def test_bad_weights():
    with pytest.raises(ValueError, match="source 1"):
        BlobMixture([(Tagged("a", 4), 1.0), (Tagged("b", 4), 0)])
    with pytest.raises(ValueError, match="int"):
        BlobMixture([(Tagged("a", 4), 1.5)], by="count")
    with pytest.raises(ValueError, match="by must"):
        BlobMixture([(Tagged("a", 4), 1)], by="share")
    with pytest.raises(ValueError, match="source 1 is an IterableDataset"):
        BlobMixture([(Tagged("a", 4), 1), (Stream(), 1)])


def test_count_weights_from_numpy_and_a_bad_epoch_size():
    m = BlobMixture([(Tagged("a", 4), np.int64(3)), (Tagged("b", 4), np.int32(5))], by="count")
    assert m.counts == [3, 5] and all(type(c) is int for c in m.counts)
    with pytest.raises(ValueError, match="source 0"):
        BlobMixture([(Tagged("a", 4), True)], by="count")  # a flag, not a count
    with pytest.raises(ValueError, match="samples_per_epoch"):
        BlobMixture([(Tagged("a", 4), 1.0)], samples_per_epoch=0)  # was the default size


class Stream(IterableDataset):
    def __len__(self) -> int:
        return 3

    def __iter__(self):
        return iter(range(3))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_a_mixture_mid_epoch(sources, workers):
    def loader():
        mix = BlobMixture([("mix/a/", 3), ("mix/b/", 1)], seed=4, samples_per_epoch=64,
                          client=sources, decode=lambda key, v: key)
        return BlobDataLoader(mix, batch_size=8, num_workers=workers, collate_fn=list)

    first = loader()
    it = iter(first)
    before = [k for _, b in zip(range(3), it) for k in b]
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    mix = resumed.dataset
    expected = [mix.datasets[j].keys[i] for j, i in map(mix.source_of, mix.epoch_order(0))]
    assert before + [k for b in resumed for k in b] == expected


def test_announces_the_merged_order_to_the_cache(sources):
    told = []
    real = sources.announce
    sources.announce = lambda keys, progress=None, job=0: told.append((list(keys), progress)) or real(
        keys, progress, job)
    mix = BlobMixture([("mix/a/", 1), ("mix/b/", 1)], seed=2, samples_per_epoch=50, client=sources)
    sampler = BlobSampler(mix)
    it = iter(sampler)
    (keys, progress), = told  # one client: one announcement of both sources' keys
    merged = [mix.datasets[j].keys[i] for j, i in map(mix.source_of, mix.epoch_order(0) + mix.epoch_order(1))]
    assert keys == merged
    assert progress() == 0
    [next(it) for _ in range(7)]
    assert progress() == 7
