"""Elastic resume: another world size continues the same global order; DDP through a resume."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import socket
from collections import Counter

import pytest
import torch
from torch.utils.data import Dataset

from blobtier.dataloader import BlobDataLoader, BlobSampler


class Numbers(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def consume(n: int, world: int, k: int, state=None, drop_last: bool = False):
    """Every rank takes ``k`` samples (all, when None) after loading ``state``; returns what
    each rank took and rank 0's state after it."""
    taken, samplers = [], []
    for rank in range(world):
        s = BlobSampler(Numbers(n), seed=11, rank=rank, world_size=world, drop_last=drop_last)
        if state is not None:
            s.load_state_dict(state)
        it = iter(s)
        taken.append([i for _, i in zip(range(k), it)] if k is not None else list(it))
        samplers.append(s)
    return taken, samplers[0].state_dict()


def flat(parts: list[list[int]]) -> list[int]:
    return [i for p in parts for i in p]


@pytest.mark.parametrize(("n", "old", "new"), [(100, 4, 2), (100, 2, 3), (37, 4, 2), (37, 2, 3)])
def test_another_world_size_sees_every_sample_of_the_epoch_once(n, old, new):
    before, state = consume(n, old, 6)
    assert state["global_seen"] == 6 * old
    after, _ = consume(n, new, None, state)
    counts = Counter(flat(before) + flat(after))
    assert set(counts) == set(range(n))
    # Exactly once, but for the padding the new world needs to split the rest evenly.
    assert sum(c - 1 for c in counts.values()) == (-(n - 6 * old)) % new
    # The rest follows the epoch's global order: the new ranks interleave it.
    rest = BlobSampler(Numbers(n), seed=11).global_order(0)[6 * old:]
    for rank, part in enumerate(after):
        assert part[:len(rest[rank::new])] == rest[rank::new]


def test_drop_last_resume_trims_the_rest():
    before, state = consume(37, 4, 3, drop_last=True)
    after, _ = consume(37, 3, None, state, drop_last=True)
    seen = flat(before) + flat(after)
    assert len(set(seen)) == len(seen) == 12 + (37 - 12) // 3 * 3


def test_same_world_size_resumes_the_same_order():
    full, _ = consume(37, 3, None)
    before, state = consume(37, 3, 5)
    after, _ = consume(37, 3, None, state)
    assert [b + a for b, a in zip(before, after)] == full


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, world: int, port: int, state: dict | None, k: int | None, out) -> None:
    """One DDP rank: gloo on loopback, a BlobDataLoader with workers, ``k`` batches."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        loader = BlobDataLoader(Numbers(50), batch_size=3, shuffle=True, seed=5, num_workers=1)
        assert loader.sampler.world_size == world  # from torch.distributed
        if state is not None:
            loader.load_state_dict(state)
        mine = [i for batch in itertools.islice(loader, k) for i in batch.tolist()]
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
        if rank == 0:
            out.put((everyone, loader.state_dict()))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ddp(world: int, state: dict | None, k: int | None):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_rank, args=(r, world, port, state, k, out)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        result = out.get(timeout=120)
    finally:
        for p in procs:
            p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    return result


def test_ddp_two_ranks_through_a_resume():
    torch.set_num_threads(1)
    before, state = run_ddp(2, None, 4)  # 4 batches of 3 on each rank
    assert state["sampler"]["global_seen"] == 2 * 4 * 3
    state = json.loads(json.dumps(state))  # as a checkpoint file would hold it
    after, _ = run_ddp(2, state, None)
    seen = [i for part in before + after for i in part]
    assert sorted(seen) == list(range(50))
