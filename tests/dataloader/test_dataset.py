"""BlobDataset under a real DataLoader with worker processes."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from blobtier import BlobNotFound
from blobtier.dataloader import BlobDataset


@pytest.fixture
def samples(client):
    data = {f"ds/train/{i:04d}": os.urandom(1000 + 37 * i) for i in range(96)}
    client.put_many(data)
    client.put("ds/other", b"not in the prefix")
    return data


def key_and_bytes(view: memoryview):
    return bytes(view)


def test_items_are_sorted_keys_bytes(client, samples):
    ds = BlobDataset("ds/train/", client=client)
    assert ds.keys == sorted(samples)
    assert len(ds) == 96
    assert ds[5] == samples[ds.keys[5]]
    assert ds.__getitems__([3, 1]) == [samples[ds.keys[3]], samples[ds.keys[1]]]


def test_decode_and_key_list(client, samples):
    keys = ["ds/train/0007", "ds/train/0003"]
    ds = BlobDataset(keys, client=client, decode=len)
    assert [ds[0], ds[1]] == [len(samples[k]) for k in keys]


def test_empty_prefix_is_an_error(client):
    with pytest.raises(BlobNotFound, match="nothing/"):
        BlobDataset("nothing/", client=client)


def test_dataloader_with_two_workers_returns_every_sample_once_per_epoch(client, samples):
    ds = BlobDataset("ds/train/", client=client)
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2,
                        collate_fn=list, generator=torch.Generator().manual_seed(0))
    before = client.stats()["origin"]["hits"]
    for _ in range(2):
        seen = [item for batch in loader for item in batch]
        assert len(seen) == len(samples)
        assert sorted(seen) == sorted(samples.values())
    # Workers are forked processes: their reads still land in the parent's counters.
    assert client.stats()["origin"]["hits"] - before >= len(samples)


def test_batches_use_one_batched_fetch(client, samples, monkeypatch):
    calls = []
    real = client.get_many
    monkeypatch.setattr(client, "get_many", lambda keys: calls.append(len(keys)) or real(keys))
    loader = DataLoader(BlobDataset("ds/train/", client=client), batch_size=32, num_workers=0,
                        collate_fn=list)
    assert sum(len(b) for b in loader) == 96
    assert calls == [32, 32, 32]


def test_a_data_only_decode_is_called_straight_from_the_batch_fetch(client):
    # decode(view) must not gain a wrapper call per sample (it was wrapped as decode(key, view)).
    client.put_many({f"dd/{i}": bytes([i]) for i in range(4)})
    callers = []

    def decode(view):
        callers.append(sys._getframe(1).f_code.co_filename)
        return view[0]

    ds = BlobDataset("dd/", client=client, decode=decode)
    assert ds.__getitems__([0, 1, 2, 3]) == [0, 1, 2, 3]
    assert {os.path.basename(c) for c in callers} == {"dataset.py"}
