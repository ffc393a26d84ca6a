"""BlobIterableDataset over tar shards in WebDataset layout."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from collections import Counter

import pytest
from torch.utils.data import DataLoader

from blobtier import InvalidRequest
from blobtier.dataloader import BlobDataLoader, BlobIterableDataset
from blobtier.dataloader.shards import iter_tar_samples
from blobtier.dataloader.tars import index_key


def make_shard(samples: dict[str, dict[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, fields in samples.items():
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def shards(client):
    expected = {}
    for s in range(6):
        samples = {f"s{s}/{i:03d}": {"img": bytes([s, i]) * 100, "cls": str(i % 3).encode()}
                   for i in range(10)}
        client.put(f"wds/train-{s:03d}.tar", make_shard(samples))
        expected.update(samples)
    return expected


def test_groups_members_into_samples():
    data = make_shard({"a/1": {"jpg": b"x", "cls": b"1"}, "a/2": {"jpg": b"y"}})
    got = list(iter_tar_samples(io.BytesIO(data), "shard"))
    assert got == [{"__key__": "a/1", "__shard__": "shard", "jpg": b"x", "cls": b"1"},
                   {"__key__": "a/2", "__shard__": "shard", "jpg": b"y"}]
    assert list(iter_tar_samples(io.BytesIO(data), "shard", skip=1)) == got[1:]


def test_sample_key_ends_at_the_first_dot_of_the_base_name():
    # As WebDataset: "0001.seg.jpg" and "0001.cls" are one sample; dots in folders count not.
    data = make_shard({"d.v1/0001": {"seg.jpg": b"m", "cls": b"3"}, "d.v1/0002": {"seg.jpg": b"n"}})
    got = list(iter_tar_samples(io.BytesIO(data), "s"))
    assert [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in got] == [
        ("d.v1/0001", ["cls", "seg.jpg"]), ("d.v1/0002", ["seg.jpg"])]
    with pytest.raises(InvalidRequest, match="tar"):
        list(iter_tar_samples(io.BytesIO(b"not a tar" * 100), "bad"))


def test_every_sample_once_per_epoch_with_workers(client, shards):
    ds = BlobIterableDataset("wds/", client=client, shuffle_buffer=8)
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    orders = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        got = list(loader)
        assert sorted(s["__key__"] for s in got) == sorted(shards)
        assert all(s["img"] == shards[s["__key__"]]["img"] for s in got)
        orders.append([s["__key__"] for s in got])
    assert orders[0] != orders[1]


def test_ranks_split_the_shards(client, shards):
    parts = [BlobIterableDataset("wds/", client=client, rank=r, world_size=3, seed=1) for r in range(3)]
    keys = [s["__key__"] for p in parts for s in p]
    assert sorted(keys) == sorted(shards)
    assert [len(p) for p in parts] == [20, 20, 20]


def test_decode(client, shards):
    ds = BlobIterableDataset(["wds/train-000.tar"], client=client, shuffle=False,
                             decode=lambda s: int(s["cls"]))
    assert list(ds) == [i % 3 for i in range(10)]


def test_decode_with_the_key(client, shards):
    ds = BlobIterableDataset(["wds/train-001.tar"], client=client, shuffle=False,
                             decode=lambda key, s: (key, int(s["cls"])))
    assert list(ds)[:2] == [("s1/000", 0), ("s1/001", 1)]
    by_option = BlobIterableDataset(["wds/train-001.tar"], client=client, shuffle=False,
                                    decode=lambda *a: a[0], with_keys=True)
    assert next(iter(by_option)) == "s1/000"


@pytest.fixture
def five_shards(client):
    """5 shards of 10, 10, 10, 10 and 7 samples: 47, odd on purpose."""
    keys = []
    for s in range(5):
        n = 7 if s == 4 else 10
        client.put(f"five/part-{s}.tar", make_shard({f"p{s}/{i:02d}": {"x": b"%d" % i} for i in range(n)}))
        keys += [f"p{s}/{i:02d}" for i in range(n)]
    return keys


def rank_loaders(client, world: int, workers: int, **kw):
    return [DataLoader(BlobIterableDataset("five/", client=client, rank=r, world_size=world,
                                           seed=3, **kw), batch_size=None, num_workers=workers)
            for r in range(world)]


@pytest.mark.parametrize("drop_last", [False, True])
def test_five_shards_two_ranks_three_workers_equal_counts(client, five_shards, drop_last):
    per_rank = [[s["__key__"] for s in loader]
                for loader in rank_loaders(client, 2, 3, drop_last=drop_last)]
    counts = [len(p) for p in per_rank]
    assert counts == [23, 23] if drop_last else counts == [24, 24]
    seen = Counter(k for p in per_rank for k in p)
    if drop_last:  # one sample dropped, none twice
        assert len(seen) == 46 and set(seen) < set(five_shards) and max(seen.values()) == 1
    else:  # every sample, one repeated to pad
        assert set(seen) == set(five_shards) and sum(seen.values()) == 48


def test_fewer_shards_than_ranks_still_gives_every_rank_its_share(client, five_shards):
    ds = [BlobIterableDataset(["five/part-4.tar"], client=client, rank=r, world_size=3)
          for r in range(3)]
    parts = [[s["__key__"] for s in d] for d in ds]
    assert [len(p) for p in parts] == [3, 3, 3] and len(d := {k for p in parts for k in p}) == 7, d
    with pytest.raises(ValueError, match="ranks nothing"):
        BlobIterableDataset(["five/part-4.tar"], client=client, rank=0, world_size=8, drop_last=True)


def test_len_from_the_index_written_once(client, five_shards, monkeypatch):
    ds = BlobIterableDataset("five/", client=client, world_size=2, rank=0)
    assert len(ds) == 24 and ds.counts["five/part-4.tar"] == 7
    assert client.exists(index_key("five/part-4.tar"))
    import blobtier.dataloader.tars as tars

    def no_read(*a):
        raise AssertionError("a shard with an index was read again")

    monkeypatch.setattr(tars, "count_samples", no_read)
    again = BlobIterableDataset("five/", client=client, world_size=2, rank=0)  # index only
    assert again.shards == ds.shards and len(again) == 24
    monkeypatch.undo()
    client.put("five/part-4.tar", make_shard({"p4/x": {"x": b"1"}}))  # rewritten: counted again
    assert BlobIterableDataset("five/", client=client).counts["five/part-4.tar"] == 1


def test_set_epoch_reaches_persistent_workers(client, five_shards):
    ds = BlobIterableDataset("five/", client=client, seed=2, shuffle_buffer=4)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    first = [s["__key__"] for s in loader]
    ds.set_epoch(1)
    second = [s["__key__"] for s in loader]
    fresh = BlobIterableDataset("five/", client=client, seed=2, shuffle_buffer=4)
    fresh.set_epoch(1)
    assert second != first
    assert second == [s["__key__"] for s in DataLoader(fresh, batch_size=None, num_workers=2)]


@pytest.mark.parametrize(("workers", "buffer"), [(0, 0), (3, 0), (3, 5)])
def test_resume_mid_epoch_yields_the_rest_in_order(client, five_shards, workers, buffer):
    def loader():
        ds = BlobIterableDataset("five/", client=client, seed=4, shuffle_buffer=buffer)
        extra = {"persistent_workers": True, "prefetch_factor": 2} if workers else {}
        return BlobDataLoader(ds, batch_size=4, num_workers=workers, collate_fn=keys_of, **extra)

    first = loader()
    full = [k for b in first for k in b]
    it = iter(first)  # the epoch again (no set_epoch), on the same (persistent) workers
    before = [k for _, b in zip(range(5), it) for k in b]
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    after = [k for b in resumed for k in b]
    assert before + after == full and sorted(full) == sorted(five_shards)


def keys_of(batch):
    return [s["__key__"] for s in batch]


def test_pickles_with_its_epoch_outside_a_worker_start(client, five_shards):
    import pickle

    ds = BlobIterableDataset("five/", client=client, seed=2)
    ds.set_epoch(3)
    copy = pickle.loads(pickle.dumps(ds))
    assert [s["__key__"] for s in copy] == [s["__key__"] for s in ds]
    copy.set_epoch(4)  # its own memory: the original keeps its epoch
    assert ds._shared.read()["epoch"] == 3


def test_a_data_only_decode_gets_no_wrapper_call_per_sample(client, shards):
    callers = []

    def decode(sample):
        callers.append(os.path.basename(sys._getframe(1).f_code.co_filename))
        return sample["__key__"]

    ds = BlobIterableDataset("wds/", client=client, decode=decode, shuffle=False)
    assert sorted(ds) == sorted(shards)
    assert "decoding.py" not in callers  # it was called through a (key, sample) adapter
