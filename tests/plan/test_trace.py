"""The planner's traces: the sampler's own order, SHARDS sampling, recorded traces."""

from __future__ import annotations

import numpy as np
import pytest

from blobtier import placement
from blobtier.errors import InvalidRequest
from blobtier.plan.trace import Recorder, Synthetic, padded, permutation, recorded

torch = pytest.importorskip("torch")
from blobtier.dataloader.sampler import BlobSampler  # noqa: E402  (needs torch)


@pytest.mark.parametrize("n,world", [(10, 1), (103, 4), (7, 3)])
def test_the_planned_order_is_the_samplers(n, world):
    for epoch in (0, 1):
        order = padded(permutation(n, 5, epoch), world)
        for rank in range(world):
            real = BlobSampler(range(n), seed=5, rank=rank, world_size=world).order(epoch)
            assert order[rank::world].tolist() == real


def test_a_synthetic_trace_reads_each_kept_chunk_once_per_epoch_per_job():
    spec = Synthetic(hosts=4, jobs=2, samples=5000, sample_bytes=300_000, chunk_bytes=128 * 1024, epochs=2,
                     seeds=(1, 2))
    whole = spec.reads(1.0)
    assert len(whole.t) == 5000 * 3 * 2 * 2 and whole.total_bytes == 5000 * 300_000
    sampled = spec.reads(0.1)
    kept = len(sampled.key_ids)
    assert 0.07 * 15000 < kept < 0.13 * 15000  # SHARDS keeps about rate of the chunks
    assert sampled.rate == pytest.approx(sampled.sizes.sum() / whole.total_bytes)
    # Every read of a kept chunk is kept: once per epoch per job, on that job's hosts.
    counts = np.bincount(sampled.key, minlength=kept)
    assert (counts == 2 * 2).all()
    job0 = sampled.job == 0
    assert set(sampled.host[job0].tolist()) == {0, 1} and set(sampled.host[~job0].tolist()) == {2, 3}
    # Both jobs read every kept chunk in each epoch; their times lie within the epoch.
    assert ((sampled.t >= sampled.epoch) & (sampled.t < sampled.epoch + 1)).all()


def test_numpy_orders_when_exactness_is_off_keep_the_same_reads():
    spec = Synthetic(hosts=1, jobs=1, samples=2000, sample_bytes=1000, chunk_bytes=4096, epochs=2)
    exact, drawn = spec.reads(0.5, exact=True), spec.reads(0.5, exact=False)
    assert not drawn.exact_order and exact.exact_order
    assert sorted(exact.key.tolist()) == sorted(drawn.key.tolist())


def test_a_recorded_trace_round_trips(tmp_path):
    path = str(tmp_path / "trace.jsonl")
    with Recorder(path) as rec:
        for _ in range(2):  # no epoch field: the first repeated key starts epoch 1
            for i in range(50):
                rec.record(host=i % 2, job=0, key=f"ds/{i}", size=1000 + i)
    reads = recorded(path, 1.0)
    assert (reads.hosts, reads.jobs, reads.epochs) == (2, 1, 2)
    assert len(reads.t) == 100 and reads.total_chunks == 50
    assert reads.total_bytes == sum(1000 + i for i in range(50))
    assert (reads.epoch == np.repeat([0, 1], 50)).all()  # an epoch ends at the first repeat


@pytest.mark.parametrize("line,named", [('{"host": 0, "job": 0, "key": "a"}', "'size'"),
                                        ('{"host": -1, "job": 0, "key": "a", "size": 1}', "'host'"),
                                        ('{"host": 0, "job": 0, "key": "", "size": 1}', "'key'"),
                                        ("not json", "not JSON")])
def test_a_bad_recorded_line_is_named(tmp_path, line, named):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"host": 0, "job": 0, "key": "ok", "size": 5}\n' + line + "\n")
    with pytest.raises(InvalidRequest, match=f"line 2: .*{named}|{named}.*line 2|line 2: not JSON"):
        recorded(str(path), 1.0)


def test_batch_placement_picks_ranks_first_node():
    rng = np.random.default_rng(3)
    keys = [rng.bytes(16) for _ in range(2000)]
    nodes = [f"host-{i}" for i in range(9)]
    weights = [1, 2, 1, 0.5, 1, 1, 3, 1, 1]
    for ws in (None, weights):
        homes = placement.best(keys, nodes, ws)
        assert [nodes[i] for i in homes] == [placement.rank(k, nodes, ws)[0] for k in keys]
