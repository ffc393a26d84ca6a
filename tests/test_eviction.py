from __future__ import annotations

import random

import pytest

from blobtier.eviction import LRU, POLICIES, SIEVE, make_policy


def drain(policy) -> list:
    out = []
    while (k := policy.victim()) is not None:
        out.append(k)
    return out


def filled(cls, keys):
    p = cls()
    for k in keys:
        p.insert(k)
    return p


# -- LRU -----------------------------------------------------------------------------
def test_lru_evicts_least_recently_used():
    p = filled(LRU, "abcd")
    p.hit("a")
    p.hit("c")
    assert drain(p) == ["b", "d", "a", "c"]


def test_lru_remove_and_empty():
    p = filled(LRU, "abc")
    p.remove("a")
    p.remove("zz")
    p.hit("zz")
    assert p.victim() == "b"
    assert p.admit("x", full=True)
    assert drain(p) == ["c"]
    assert p.victim() is None


# -- SIEVE -----------------------------------------------------------------------------
def test_sieve_empty():
    p = SIEVE()
    assert p.victim() is None
    p.insert("a")
    assert p.victim() == "a"
    assert p.victim() is None


def test_sieve_unvisited_oldest_first():
    assert drain(filled(SIEVE, "abcd")) == list("abcd")


def test_sieve_duplicate_insert_and_unknown_keys():
    p = filled(SIEVE, "abc")
    p.insert("a")
    p.hit("zz")
    p.remove("zz")
    assert drain(p) == list("abc")


def test_sieve_hit_bit_cleared_when_hand_passes():
    p = filled(SIEVE, "ab")
    p.hit("a")
    assert p.victim() == "b"  # the hand passed "a", clearing its bit
    p.insert("c")
    assert p.victim() == "a"


def test_sieve_all_visited_evicts_oldest_after_full_pass():
    p = filled(SIEVE, "abc")
    for k in "abc":
        p.hit(k)
    assert p.victim() == "a"
    assert sorted(drain(p)) == ["b", "c"]


def test_sieve_hit_keys_survive_one_pass():
    p = filled(SIEVE, "abcd")
    p.hit("a")
    p.hit("b")
    assert p.victim() == "c"
    assert p.victim() == "d"  # the hand goes on from where it stopped, past the spared keys
    assert drain(p) == ["a", "b"]


def test_sieve_remove_key_under_hand_keeps_structure():
    p = filled(SIEVE, "abcd")
    p.hit("a")
    assert p.victim() == "b"
    p.remove("c")  # the key the hand points at after evicting "b"
    p.insert("e")
    assert sorted(drain(p)) == ["a", "d", "e"]
    assert p.victim() is None


def test_sieve_remove_key_under_hand_moves_hand():
    p = filled(SIEVE, "abcd")
    p.hit("a")
    assert p.victim() == "b"
    p.remove("c")
    assert p.victim() == "d"


def test_sieve_remove_oldest_and_newest():
    p = filled(SIEVE, "abcd")
    p.remove("a")
    p.remove("d")
    p.insert("e")
    assert drain(p) == ["b", "c", "e"]


class RefSieve:
    """SIEVE as the paper states it, on a plain list (oldest first)."""

    def __init__(self) -> None:
        self.queue: list = []
        self.visited: dict = {}
        self.hand = None  # a key, or None: start at the oldest

    def insert(self, key) -> None:
        if key not in self.visited:
            self.queue.append(key)
            self.visited[key] = False

    def hit(self, key) -> None:
        if key in self.visited:
            self.visited[key] = True

    def _drop(self, i: int) -> None:
        key = self.queue[i]
        if self.hand == key:
            self.hand = self.queue[i + 1] if i + 1 < len(self.queue) else None
        del self.queue[i]
        del self.visited[key]

    def remove(self, key) -> None:
        if key in self.visited:
            self._drop(self.queue.index(key))

    def victim(self):
        if not self.queue:
            return None
        i = self.queue.index(self.hand) if self.hand is not None else 0
        while self.visited[self.queue[i]]:
            self.visited[self.queue[i]] = False
            i = (i + 1) % len(self.queue)
        key = self.queue[i]
        self.hand = key
        self._drop(i)
        return key


def _compare(seed: int) -> None:
    rng = random.Random(seed)
    real, ref = SIEVE(), RefSieve()
    for step in range(400):
        op, key = rng.random(), rng.randrange(12)
        if op < 0.35:
            real.insert(key)
            ref.insert(key)
        elif op < 0.7:
            real.hit(key)
            ref.hit(key)
        elif op < 0.8:
            real.remove(key)
            ref.remove(key)
        else:
            assert real.victim() == ref.victim(), (seed, step)
    assert drain(real) == drain(ref)


def test_reference_sieve_sanity():
    ref = RefSieve()
    for k in "abcd":
        ref.insert(k)
    ref.hit("a")
    ref.hit("b")
    assert [ref.victim() for _ in range(5)] == ["c", "d", "a", "b", None]


def test_sieve_matches_reference():
    for seed in range(50):
        _compare(seed)


# -- factory -----------------------------------------------------------------------------
def test_make_policy():
    assert isinstance(make_policy("lru"), LRU)
    assert isinstance(make_policy("sieve"), SIEVE)
    assert make_policy("sieve") is not make_policy("sieve")
    assert set(POLICIES) == {"lru", "sieve", "keep", "clairvoyant"}
    with pytest.raises(ValueError, match="nope"):
        make_policy("nope")
