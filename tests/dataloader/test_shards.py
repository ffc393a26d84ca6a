"""BlobIterableDataset over tar shards in WebDataset layout."""

from __future__ import annotations

import io
import tarfile

import pytest
from torch.utils.data import DataLoader

from blobtier import InvalidRequest
from blobtier.dataloader import BlobIterableDataset
from blobtier.dataloader.shards import iter_tar_samples


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
    mine = [p.my_shards() for p in parts]
    assert sorted(s for m in mine for s in m) == sorted(p for p in parts[0].shards)
    keys = [s["__key__"] for p in parts for s in p]
    assert sorted(keys) == sorted(shards)


def test_decode(client, shards):
    ds = BlobIterableDataset(["wds/train-000.tar"], client=client, shuffle=False,
                             decode=lambda s: int(s["cls"]))
    assert list(ds) == [i % 3 for i in range(10)]
