"""Announce and prefetch: samples fetched ahead, within the memory bound, in order."""

from __future__ import annotations

import os
import time
import warnings

import torch
from torch.utils.data import DataLoader

import blobtier
from blobtier.dataloader import BlobDataset, BlobSampler
from blobtier.sdk.prefetch import Prefetcher
from tests.fork_support import in_child


def fill(client, n=200, size=20_000):
    data = {f"ds/{i:04d}": os.urandom(size) for i in range(n)}
    client.put_many(data)
    return data


def test_client_prefetch_hydrates_l1(client):
    data = fill(client)
    job = client.prefetch(sorted(data))
    assert job.wait(30)
    assert job.fetched == len(data)
    before = client.stats()
    assert [bytes(v) for v in client.get_many(sorted(data))] == [data[k] for k in sorted(data)]
    after = client.stats()
    assert after["origin"]["hits"] == before["origin"]["hits"]
    assert after["l1"]["hits"] - before["l1"]["hits"] == len(data)


def test_prefetch_deadline_in_the_past_fetches_nothing(client):
    data = fill(client, n=20)
    job = client.prefetch(sorted(data), deadline=time.time() - 1)
    assert job.wait(10)
    assert job.fetched == 0


def test_follower_stays_within_the_memory_bound(client):
    data = fill(client, n=300, size=10_000)
    samples = client._samples(sorted(data))
    reads = []
    pf = Prefetcher(lambda refs: reads.append(len(refs)) or client._chain.read(refs),
                    memory_bytes=50_000, concurrency=4, batch=2)
    consumed = [0]
    try:
        job = pf.follow(samples, lambda: consumed[0])
        while consumed[0] < len(samples):
            time.sleep(0.002)
            consumed[0] += 3
        assert job.wait(30)
    finally:
        pf.close()
    assert 0 < job.max_ahead_bytes <= 50_000
    assert job.settled == len(samples)
    assert max(reads) <= 2


def test_dataloader_with_workers_and_prefetch_under_origin_latency(region):
    with blobtier.connect(region) as client:
        data = fill(client, n=192, size=30_000)
    with blobtier.connect(region) as client:
        real = client._blocks.read_many

        def slow(refs):
            time.sleep(0.005)  # an origin 5 ms away
            return real(refs)

        client._blocks.read_many = slow
        ds = BlobDataset("ds/", client=client)
        sampler = BlobSampler(ds, seed=11)
        loader = DataLoader(ds, batch_size=16, sampler=sampler, num_workers=2, collate_fn=list)
        for epoch in range(2):
            sampler.set_epoch(epoch)
            got = [item for batch in loader for item in batch]
            assert got == [data[ds.keys[i]] for i in sampler.order(epoch)]
        stats = client.stats()
        assert stats["origin"]["hits"] >= len(data)
        assert stats["l1"]["hits"] >= len(data)  # the workers found prefetched samples


def test_pin_memory_works(client):
    fill(client, n=16, size=1000)
    ds = BlobDataset("ds/", client=client, decode=lambda v: torch.tensor(len(v)))
    loader = DataLoader(ds, batch_size=8, num_workers=0, pin_memory=True)
    with warnings.catch_warnings():  # no accelerator here: pinning is skipped, loading works
        warnings.simplefilter("ignore")
        total = sum(int(b.sum()) for b in loader)
    assert total == 16_000


def _in_forked_child(client, pf: Prefetcher, keys: list[str], samples: list) -> tuple[str, int]:
    try:
        pf.hydrate(samples)  # the parent's: no thread of it runs here
        refused = "accepted"
    except ValueError:
        refused = "refused"
    pf.close()  # returns: nothing of the parent's to wait for
    job = client.prefetch(keys)  # the child's client makes a prefetcher of its own
    assert job.wait(30)
    return refused, job.fetched


def test_a_forked_childs_copy_of_a_prefetcher_refuses_work_and_the_client_makes_its_own(client):
    data = fill(client, n=20)
    keys = sorted(data)
    pf = Prefetcher(lambda refs: client._chain.read(refs), memory_bytes=1 << 20)
    try:
        assert client.prefetch(keys[:5]).wait(30)  # the client's prefetcher runs in the parent
        samples = client._samples(keys)
        assert in_child(_in_forked_child, client, pf, keys, samples) == ("refused", len(keys))
        assert pf.hydrate(samples).wait(30)  # the parent's still works
    finally:
        pf.close()
