from __future__ import annotations

import random

import pytest

from blobtier.eviction import LRU, POLICIES, SIEVE, Clairvoyant, Keep, make_policy


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


def test_sieve_keeps_prefetched_chunks_until_they_are_read():
    """A random-order epoch through a cache a third of the dataset, each read preceded by a
    prefetch of the next 8 samples: every sample is fetched once. Before, prefetched chunks
    entered unvisited behind chunks whose reads had set their bits, the hand took them first
    and the epoch fetched each sample ~3.8 times."""
    n, capacity, window = 300, 100, 8
    p, cached, fetches = SIEVE(), set(), []

    def bring(k, accessed: bool) -> None:
        if k in cached:
            return
        while len(cached) >= capacity:
            cached.discard(p.victim())
        p.insert(k, accessed=accessed)
        cached.add(k)
        fetches.append(k)

    order = list(range(n))
    random.Random(3).shuffle(order)
    for i, k in enumerate(order):
        for ahead in order[i + 1:i + 1 + window]:
            bring(ahead, accessed=False)
        bring(k, accessed=True)
        p.hit(k)
    assert len(fetches) == n


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


# -- Keep --------------------------------------------------------------------------------------
def test_keep_admits_until_full_then_refuses():
    p = Keep()
    for k in "abc":
        assert p.admit(k, full=False)
        p.insert(k)
        assert p.victim() is None
    assert not p.admit("d", full=True)
    p.hit("a")
    p.remove("b")
    p.remove("zz")
    assert p.victim() is None
    assert p.admit("d", full=False)  # room again once the cache dropped a key itself


def test_keep_in_a_cache_loop_keeps_the_first_keys():
    cache = SimCache(Keep(), 3)
    hits = [cache.access(k) for k in "abcdefabcdef"]
    assert cache.keys == set("abc")
    assert hits == [False] * 6 + [True] * 3 + [False] * 3


# -- Clairvoyant ---------------------------------------------------------------------------------
def clairvoyant(keys, order=None) -> Clairvoyant:
    p = Clairvoyant()
    for k in keys:
        p.insert(k, accessed=False)
    if order is not None:
        p.announce(order, job=0)
    return p


def test_clairvoyant_evicts_the_key_needed_farthest_ahead():
    assert drain(clairvoyant("abcd", list("cadb"))) == list("bdac")
    assert drain(clairvoyant("abcd", list("dcba"))) == list("abcd")


def test_clairvoyant_evicts_unannounced_keys_first_oldest_first():
    assert drain(clairvoyant("xaybz", list("ab"))) == list("xyzba")


def test_clairvoyant_without_announcements_is_fifo():
    assert drain(clairvoyant("dbca")) == list("dbca")


def test_clairvoyant_a_hit_consumes_the_next_use():
    p = clairvoyant("ab", list("aba"))
    p.hit("a")  # a's next use is now the third access, after b's
    assert drain(p) == ["a", "b"]
    assert drain(clairvoyant("ab", list("aba"))) == ["b", "a"]


def test_clairvoyant_a_new_announcement_replaces_the_job_s_order():
    p = clairvoyant("abc", list("abc"))
    p.announce(list("cba"), job=0)
    assert drain(p) == list("abc")


def test_clairvoyant_removed_keys_are_never_victims():
    p = clairvoyant("abc", list("abc"))
    p.remove("c")
    p.remove("zz")
    assert drain(p) == ["b", "a"]
    assert p.victim() is None


def test_clairvoyant_admit_refuses_a_key_needed_after_every_cached_one():
    p = clairvoyant("ab", list("abc"))
    assert not p.admit("c", full=True)
    assert not p.admit("zz", full=True)  # never needed at all
    assert p.admit("c", full=False)
    p = clairvoyant("ab", list("cab"))
    assert p.admit("c", full=True)  # needed before b: worth b's place
    assert p.victim() == "b"


def test_clairvoyant_keeps_oldest_first_after_its_heap_is_compacted():
    p = clairvoyant(["m", "c", "x", "a"], ["hot"] * 5000)
    p.insert("hot")
    for _ in range(3000):  # every hit refiles "hot": the heap grows until it is compacted
        p.hit("hot")
    assert drain(p)[:4] == ["m", "c", "x", "a"]


def test_clairvoyant_with_nothing_announced_keeps_caching_fifo():
    """An unannounced cache is a FIFO cache: once full, a new key replaces the oldest."""
    cache = SimCache(Clairvoyant(), 3)
    hits = [cache.access(k) for k in "abcdab"]
    assert hits == [False] * 6  # FIFO on a cyclic trace larger than the cache
    assert cache.keys == {"d", "a", "b"}
    assert cache.access("d")


def test_clairvoyant_admits_unannounced_keys_only_in_place_of_unannounced_ones():
    p = clairvoyant("xa", list("a"))
    assert p.admit("y", full=True)  # x is never needed either: y may take its place
    assert p.victim() == "x"
    p = clairvoyant("ab", list("ab"))
    assert not p.admit("y", full=True)  # every cached key is needed: y is not


def test_policies_say_whether_they_give_up_keys():
    assert {name: make_policy(name).evicts for name in POLICIES} == {
        "lru": True, "sieve": True, "keep": False, "clairvoyant": True}


# -- trace simulation ------------------------------------------------------------------------------
class SimCache:
    """The loop a cache runs around a policy, counting keys instead of bytes."""

    def __init__(self, policy, capacity: int) -> None:
        self.policy = policy
        self.capacity = capacity
        self.keys: set = set()

    def access(self, key) -> bool:
        """True on a hit; on a miss, the key goes in if the policy admits it."""
        if key in self.keys:
            self.policy.hit(key)
            return True
        if self.policy.admit(key, len(self.keys) >= self.capacity):
            while len(self.keys) >= self.capacity:
                victim = self.policy.victim()
                assert victim is not None, "admitted into a full cache with nothing to evict"
                self.keys.remove(victim)
            self.keys.add(key)
            self.policy.insert(key)
        return False


def epochs_hit_ratio(name: str, keys: int, share: float, jobs: int, epochs: int) -> float:
    """Jobs reading a fresh random permutation per epoch in lock step, each announcing its
    epoch's order when the epoch starts; the hit ratio after the first (warm-up) epoch."""
    cache = SimCache(make_policy(name), int(keys * share))
    rngs = [random.Random(1000 + j) for j in range(jobs)]
    hits = total = 0
    for epoch in range(epochs):
        orders = [rng.sample(range(keys), keys) for rng in rngs]
        for job, order in enumerate(orders):
            cache.policy.announce(order, job)
        for i in range(keys):
            for order in orders:
                hit = cache.access(order[i])
                if epoch > 0:
                    hits += hit
                    total += 1
    return hits / total


def test_one_job_keep_and_clairvoyant_reach_the_cache_share():
    for name in ("keep", "clairvoyant"):
        assert abs(epochs_hit_ratio(name, 2000, 0.5, 1, 4) - 0.5) <= 0.02, name
    assert epochs_hit_ratio("lru", 2000, 0.5, 1, 4) < 0.25


def test_jobs_sharing_a_cache_do_best_with_clairvoyant():
    ratios = {name: epochs_hit_ratio(name, 2000, 0.35, 4, 3) for name in ("keep", "lru", "clairvoyant")}
    assert ratios["clairvoyant"] > ratios["keep"] + 0.1, ratios
    assert ratios["clairvoyant"] > ratios["lru"] + 0.1, ratios
