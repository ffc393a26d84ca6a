"""Per-namespace shares of the L1 arena: a namespace within its share keeps its chunks
while its neighbours fill (as victims and through page moves), shares change while the
owner serves, and bad shares are refused by name."""

from __future__ import annotations

import pytest

from blobtier.cache_l1_l2.owner import ArenaOwner
from blobtier.errors import InvalidRequest

CHUNK = 64 << 10
CAPACITY = 16 * CHUNK  # 16 slots of one size


def fill(owner: ArenaOwner, session: int, ns: str, first: int, n: int, size: int = CHUNK) -> list[bytes]:
    """Offer ``n`` chunks of ``ns``; the digests admitted."""
    admitted = []
    for i in range(first, first + n):
        d = i.to_bytes(16, "little")
        offset = owner.reserve(d, size, session, ns)
        if offset is not None:
            owner.segment.view[offset:offset + size] = bytes([i % 251]) * size
            assert owner.commit(d, session)
            admitted.append(d)
    return admitted


@pytest.fixture
def owner():
    o = ArenaOwner(CAPACITY, "lru", namespace_shares={"train": 0.4})
    yield o
    o.close()


def test_a_namespace_within_its_share_survives_filling_neighbours(owner):
    s = owner.open_session()
    train = fill(owner, s, "train", 0, 6)  # 6 of 16 slots: within its 40%
    fill(owner, s, "logs", 100, 200)  # two neighbours fill far past the arena
    fill(owner, s, "eval", 1000, 200)
    assert all(owner.contains(d) for d in train)
    used = owner.namespace_bytes()
    assert used["train"] == 6 * CHUNK and used["logs"] + used["eval"] == 10 * CHUNK
    assert owner.check() == []


def test_above_its_share_it_gives_back_only_the_excess(owner):
    s = owner.open_session()
    fill(owner, s, "train", 0, 10)  # 10 slots: above its 40% (6.4)
    for i, ns in enumerate(("logs", "eval", "logs", "eval")):
        fill(owner, s, ns, 100 + 100 * i, 50)
    assert owner.namespace_bytes()["train"] == 6 * CHUNK  # down to its share, not below


def test_its_pages_are_not_moved_for_another_size(owner):
    s = owner.open_session()
    train = fill(owner, s, "train", 0, 6)
    fill(owner, s, "logs", 100, 10)  # the arena is full of 64 KiB slots
    fill(owner, s, "logs", 200, 60, size=20 << 10)  # another size class: pages move
    assert all(owner.contains(d) for d in train)
    assert owner.check() == []


def test_without_a_share_the_biggest_neighbour_is_evicted():
    """The rule shares change: with three namespaces and no share, the one holding the
    most (6 of 16 slots, over the equal third) is the first victim."""
    o = ArenaOwner(CAPACITY, "lru")
    try:
        s = o.open_session()
        train = fill(o, s, "train", 0, 6)
        fill(o, s, "logs", 100, 200)
        fill(o, s, "eval", 1000, 200)
        assert not all(o.contains(d) for d in train)
    finally:
        o.close()


def test_shares_and_policies_change_while_serving(owner):
    s = owner.open_session()
    train = fill(owner, s, "train", 0, 8)
    owner.configure_namespaces({"eval": 0.5}, {"train": "sieve"})  # train loses its share
    assert owner.namespace_policies["train"] == "sieve"
    fill(owner, s, "eval", 1000, 4)
    fill(owner, s, "logs", 100, 200)
    assert not all(owner.contains(d) for d in train)
    assert owner.namespace_bytes()["eval"] == 4 * CHUNK  # within its new share: kept
    assert owner.check() == []


@pytest.mark.parametrize("shares,named", [({"a": 1.5}, "a=1.5"), ({"a": 0}, "a=0"),
                                          ({"a/b": 0.1}, "a/b"), ({"a": 0.6, "b": 0.5}, "sum")])
def test_bad_shares_are_refused_by_name(owner, shares, named):
    with pytest.raises(InvalidRequest, match=named):
        owner.configure_namespaces(shares, {})
    assert owner.namespace_shares == {"train": 0.4}
