from __future__ import annotations

from collections import Counter

from blobtier import placement


def keys(n: int) -> list[bytes]:
    return [i.to_bytes(8, "little") for i in range(n)]


def test_choose_k_distinct():
    nodes = list(range(10))
    for key in keys(200):
        got = placement.choose(key, nodes, 3)
        assert len(got) == 3 and len(set(got)) == 3 and set(got) <= set(nodes)


def test_choose_fewer_nodes_than_k():
    assert sorted(placement.choose(b"k", ["a", "b"], 5)) == ["a", "b"]
    assert placement.choose(b"k", [], 3) == []


def test_deterministic():
    nodes = [f"server-{i}" for i in range(7)]
    for key in keys(100):
        first = placement.choose(key, nodes, 3)
        assert placement.choose(key, nodes, 3) == first
        assert placement.choose(key, list(reversed(nodes)), 3) == first
        assert placement.rank(key, nodes)[:3] == first


def test_hash_node_is_not_salted():
    # Python's hash() of a str changes per process; placement must not.
    assert placement.hash_node("node-1") == placement.hash_node("node-1")
    assert placement.hash_node("node-1") != placement.hash_node("node-2")
    assert placement.hash_node(1) != placement.hash_node("1")


def test_removing_a_node_moves_only_its_keys():
    nodes = list(range(10))
    ks = keys(10_000)
    before = {k: placement.choose(k, nodes, 1)[0] for k in ks}
    after = {k: placement.choose(k, [n for n in nodes if n != 3], 1)[0] for k in ks}
    moved = [k for k in ks if before[k] != after[k]]
    assert all(before[k] == 3 for k in moved)
    assert all(after[k] == before[k] for k in ks if before[k] != 3)
    assert 0.06 <= len(moved) / len(ks) <= 0.14


def test_spread_is_roughly_even():
    counts = Counter(placement.choose(k, list(range(5)), 1)[0] for k in keys(10_000))
    assert all(1600 <= c <= 2400 for c in counts.values())


def test_weights_skew_ownership():
    nodes = ["heavy", "a", "b", "c"]
    weights = [2.0, 1.0, 1.0, 1.0]
    counts = Counter(placement.choose(k, nodes, 1, weights)[0] for k in keys(20_000))
    for light in ("a", "b", "c"):
        assert 1.6 <= counts["heavy"] / counts[light] <= 2.4


def test_score_is_positive_and_weighted():
    assert placement.score(b"k", "n") > 0
    assert placement.score(b"k", "n", 2.0) == 2 * placement.score(b"k", "n", 1.0)
