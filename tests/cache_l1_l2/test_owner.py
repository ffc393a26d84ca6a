"""ArenaOwner: the index, pins, fills, leases of ended sessions, and the memory cap."""

from __future__ import annotations

import random
import re
import threading
import time

import pytest

from blobtier import cli
from blobtier.cache_l1_l2 import owner as owner_mod
from blobtier.cache_l1_l2.daemon import HostDaemon
from blobtier.cache_l1_l2.owner import (
    BUSY,
    GRANTED,
    REFUSED,
    SESSION_GRACE_S,
    ArenaOwner,
    namespace_of,
    parse_namespace_policies,
)
from blobtier.errors import InvalidRequest

CHUNK = 64 << 10  # with a 256 KiB arena the pages are 64 KiB: one chunk per page, 4 slots


def digest(i: int) -> bytes:
    return i.to_bytes(16, "little")


def payload(d: bytes, length: int) -> bytes:
    return (d[:2] * (length // 2 + 1))[:length]


def read(owner: ArenaOwner, place: tuple[int, int]) -> bytes:
    offset, length = place
    return bytes(owner.segment.view[offset:offset + length])


def put(owner: ArenaOwner, session: int, d: bytes, length: int = CHUNK) -> int:
    offset = owner.reserve(d, length, session)
    assert offset is not None
    owner.segment.view[offset:offset + length] = payload(d, length)
    assert owner.commit(d, session)
    return offset


def accounted(owner: ArenaOwner) -> int:
    """The bytes the allocator should be holding: every indexed, filling and zombie slot."""
    slots = [p[0] for p in owner._index.values()] + [f[1] for f in owner._filling.values()]
    slots += owner._zombies
    return sum(owner.allocator.slot_size(o) for o in slots)


def sound(owner: ArenaOwner) -> None:
    assert owner.check() == []
    stats = owner.stats()
    assert stats["used_bytes"] <= stats["capacity"]
    assert stats["used_bytes"] == accounted(owner)


class Clock:
    """``owner.time`` for a test: real time plus whatever the test skips ahead."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.skipped


class SignallingCondition(threading.Condition):
    """The owner's condition, telling the test when a lookup starts waiting for a fill."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait_for(self, predicate, timeout=None):
        self.waiting.set()
        return super().wait_for(predicate, timeout)


@pytest.fixture
def make_owner():
    owners = []

    def make(capacity: int = 4 * CHUNK, policy: str = "lru") -> ArenaOwner:
        owners.append(ArenaOwner(capacity, policy))
        return owners[-1]

    yield make
    for o in owners:
        o.close()


@pytest.fixture
def owner(make_owner) -> ArenaOwner:
    o = make_owner()
    assert o.allocator.page == o.allocator.max_chunk == CHUNK and o.allocator.n_pages == 4
    return o


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(owner_mod, "time", c)
    return c


# -- reading and filling -------------------------------------------------------------------
def test_lookup_miss_then_hit(owner):
    s = owner.open_session()
    assert owner.lookup([digest(1)], s) == [None]
    offset = put(owner, s, digest(1), 1000)
    assert owner.lookup([digest(2), digest(1)], s) == [None, (offset, 1000)]
    stats = owner.stats()
    assert (stats["misses"], stats["hits"], stats["pinned"], stats["chunks"]) == (2, 1, 1, 1)
    assert read(owner, (offset, 1000)) == payload(digest(1), 1000)
    owner.release([offset], s)
    assert owner.stats()["pinned"] == 0
    sound(owner)


def test_a_fill_is_visible_only_once_committed(owner):
    writer, reader = owner.open_session(), owner.open_session()
    offset = owner.reserve(digest(1), 5000, writer)
    assert offset is not None
    owner.segment.view[offset:offset + 5000] = payload(digest(1), 5000)
    assert not owner.contains(digest(1))
    assert owner.lookup([digest(1)], writer) == [None]  # its own fill: no wait
    assert owner.lookup([digest(1)], reader, wait_s=0) == [None]
    assert owner.commit(digest(1), writer)
    assert owner.contains(digest(1))
    place = owner.lookup([digest(1)], reader)[0]
    assert place == (offset, 5000)
    assert read(owner, place) == payload(digest(1), 5000)
    assert not owner.commit(digest(1), writer)  # already published
    sound(owner)


def test_reserve_of_a_present_or_filling_digest_is_busy(owner):
    a, b = owner.open_session(), owner.open_session()
    put(owner, a, digest(1))
    owner.reserve(digest(2), 100, a)
    for session in (a, b):
        assert owner.reserve(digest(1), 100, session) is None
        assert owner.reserve(digest(2), 100, session) is None
        assert owner.claim(digest(1), 100, session) == (BUSY, None)
        assert owner.claim(digest(2), 100, session) == (BUSY, None)
    sound(owner)


def test_reserve_refuses_bad_lengths_and_unknown_sessions(owner):
    s = owner.open_session()
    assert owner.claim(digest(1), 0, s) == (REFUSED, None)
    assert owner.claim(digest(1), owner.allocator.page + 1, s) == (REFUSED, None)
    assert owner.claim(digest(1), 100, 999) == (REFUSED, None)
    status, offset = owner.claim(digest(1), owner.allocator.page, s)
    assert status == GRANTED and offset is not None
    sound(owner)


def test_abort_frees_the_slot(owner):
    a, b = owner.open_session(), owner.open_session()
    offset = owner.reserve(digest(1), 100, a)
    assert owner.stats()["used_bytes"] > 0
    owner.abort(digest(1), b)  # not b's fill
    assert not owner.commit(digest(1), b)
    assert owner.stats()["used_bytes"] > 0
    owner.abort(digest(1), a)
    assert owner.stats()["used_bytes"] == 0
    assert not owner.commit(digest(1), a)
    assert not owner.contains(digest(1))
    assert owner.reserve(digest(1), 100, b) == offset
    owner.abort(digest(99), a)  # nothing to abort
    sound(owner)


def test_a_pinned_chunk_evicted_keeps_its_slot_until_released(owner):
    writer, reader = owner.open_session(), owner.open_session()
    slots = [put(owner, writer, digest(i)) for i in range(4)]
    pinned = owner.lookup([digest(0)], reader, touch=False)[0]
    assert pinned == (slots[0], CHUNK)

    put(owner, writer, digest(4))  # LRU evicts 0 (pinned: a zombie), then 1
    stats = owner.stats()
    assert not owner.contains(digest(0))
    assert (stats["evictions"], stats["zombies"], stats["pinned"]) == (2, 1, 1)
    for i in range(5, 12):  # the arena turns over twice; slot 0 is never handed out
        assert put(owner, writer, digest(i)) != slots[0]
        assert read(owner, pinned) == payload(digest(0), CHUNK)
        sound(owner)
    assert owner.stats()["used_bytes"] == owner.allocator.capacity

    owner.release([slots[0]], reader)
    stats = owner.stats()
    assert (stats["zombies"], stats["pinned"]) == (0, 0)
    assert stats["used_bytes"] == 3 * CHUNK
    sound(owner)
    assert put(owner, writer, digest(12)) == slots[0]
    sound(owner)


def test_release_from_a_wrong_session_or_twice_is_ignored(owner):
    writer, reader = owner.open_session(), owner.open_session()
    offset = put(owner, writer, digest(1))
    owner.lookup([digest(1)], reader)
    owner.release([offset], writer)
    owner.release([offset], 999)
    owner.release([offset + 1, 12345], reader)
    assert owner.stats()["pinned"] == 1
    owner.release([offset], reader)
    owner.release([offset], reader)
    assert owner.stats()["pinned"] == 0
    sound(owner)


def test_pins_are_counted_per_lookup(owner):
    writer, reader = owner.open_session(), owner.open_session()
    offset = put(owner, writer, digest(1))
    owner.lookup([digest(1), digest(1)], reader)
    owner.lookup([digest(1)], writer)
    owner.release([offset, offset], reader)
    assert owner.stats()["pinned"] == 1
    owner.release([offset], writer)
    assert owner.stats()["pinned"] == 0
    sound(owner)


def test_drop_forgets_every_chunk_and_pinned_ones_stay_readable(owner):
    writer, reader = owner.open_session(), owner.open_session()
    offsets = [put(owner, writer, digest(i)) for i in range(3)]
    place = owner.lookup([digest(1)], reader)[0]
    owner.drop()
    stats = owner.stats()
    assert (stats["chunks"], stats["zombies"], stats["used_bytes"]) == (0, 1, CHUNK)
    assert read(owner, place) == payload(digest(1), CHUNK)
    sound(owner)
    owner.release([offsets[1]], reader)
    assert owner.stats()["used_bytes"] == 0
    sound(owner)


# -- sessions --------------------------------------------------------------------------------
def test_end_session_without_grace_releases_pins_and_aborts_fills(owner):
    writer, reader = owner.open_session(), owner.open_session()
    offset = put(owner, writer, digest(1))
    owner.lookup([digest(1)], reader)
    owner.reserve(digest(2), 100, reader)
    owner.end_session(reader, grace_s=0)
    stats = owner.stats()
    assert (stats["pinned"], stats["used_bytes"]) == (0, CHUNK)
    assert owner.reserve(digest(2), 100, writer) is not None
    assert owner.reserve(digest(3), 100, reader) is None  # the session is gone
    owner.release([offset], reader)
    sound(owner)


def test_end_session_keeps_pins_for_the_grace_period(owner, clock):
    writer, reader = owner.open_session(), owner.open_session()
    slots = [put(owner, writer, digest(i)) for i in range(4)]
    place = owner.lookup([digest(0)], reader, touch=False)[0]
    owner.reserve(digest(9), CHUNK, reader)  # evicts 0 (pinned: a zombie) and 1
    owner.end_session(reader)  # default grace: the reader may still be reading
    stats = owner.stats()
    assert stats["pinned"] == 1
    assert not owner._filling  # fills are aborted at once
    sound(owner)

    clock.skipped = SESSION_GRACE_S / 2
    put(owner, writer, digest(4))  # into 1's slot, which the aborted fill gave back
    assert owner.stats()["zombies"] == 1  # 0, still leased
    assert read(owner, place) == payload(digest(0), CHUNK)
    sound(owner)

    clock.skipped = SESSION_GRACE_S + 1
    put(owner, writer, digest(5))  # a reservation expires the lease first
    stats = owner.stats()
    assert (stats["pinned"], stats["zombies"]) == (0, 0)
    assert owner.reserve(digest(6), 100, writer) in slots  # the released slot is in use again
    sound(owner)


def test_a_short_grace_expires_on_the_next_reservation(owner):
    writer, reader = owner.open_session(), owner.open_session()
    put(owner, writer, digest(1))
    owner.lookup([digest(1)], reader)
    owner.end_session(reader, grace_s=0.01)
    assert owner.stats()["pinned"] == 1
    time.sleep(0.05)
    owner.reserve(digest(2), 100, writer)
    assert owner.stats()["pinned"] == 0
    sound(owner)


def _lookup_in_thread(owner: ArenaOwner, d: bytes, session: int, wait_s: float):
    result: list = []
    thread = threading.Thread(target=lambda: result.append(owner.lookup([d], session, wait_s=wait_s)))
    thread.start()
    return thread, result


@pytest.fixture
def signalling(owner) -> SignallingCondition:
    owner._cv = SignallingCondition()
    return owner._cv


def test_a_lookup_waits_for_a_fill_in_flight(owner, signalling):
    a, b = owner.open_session(), owner.open_session()
    offset = owner.reserve(digest(1), 100, a)
    thread, result = _lookup_in_thread(owner, digest(1), b, wait_s=30)
    assert signalling.waiting.wait(10)
    owner.segment.view[offset:offset + 100] = payload(digest(1), 100)
    owner.commit(digest(1), a)
    thread.join(10)
    assert result == [[(offset, 100)]]
    assert owner.stats()["pinned"] == 1
    sound(owner)


def test_a_lookup_waiting_for_an_aborted_fill_misses(owner, signalling):
    a, b = owner.open_session(), owner.open_session()
    owner.reserve(digest(1), 100, a)
    thread, result = _lookup_in_thread(owner, digest(1), b, wait_s=30)
    assert signalling.waiting.wait(10)
    owner.abort(digest(1), a)
    thread.join(10)
    assert result == [[None]]
    sound(owner)


def test_a_lookup_stops_waiting_after_wait_s(owner):
    a, b = owner.open_session(), owner.open_session()
    owner.reserve(digest(1), 100, a)
    assert owner.lookup([digest(1)], b, wait_s=0.02) == [None]
    assert owner.stats()["misses"] == 1
    sound(owner)


def test_ending_a_session_while_its_lookup_waits_leaks_no_pin(owner, signalling):
    a, b = owner.open_session(), owner.open_session()
    offset = owner.reserve(digest(1), 100, a)
    thread, result = _lookup_in_thread(owner, digest(1), b, wait_s=30)
    assert signalling.waiting.wait(10)
    owner.end_session(b, grace_s=0)
    owner.commit(digest(1), a)
    thread.join(10)
    assert result == [[(offset, 100)]]
    assert owner.check() == []
    assert owner.stats()["pinned"] == 0


# -- the memory cap ---------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["sieve", "lru", "clairvoyant", "keep"])
def test_the_cap_and_invariants_hold_under_a_random_workload(make_owner, policy):
    rng = random.Random(42)
    owner = make_owner(16 << 20, policy)
    sessions = [owner.open_session() for _ in range(3)]
    held: list[tuple[int, tuple[int, int], bytes]] = []  # (session, place, digest)
    filling: list[tuple[int, bytes, int]] = []
    for step in range(1500):
        op = rng.random()
        s = rng.choice(sessions)
        if op < 0.5:
            d, length = digest(rng.randrange(300)), rng.randrange(4 << 10, 300 << 10)
            offset = owner.reserve(d, length, s)
            if offset is not None:
                owner.segment.view[offset:offset + length] = payload(d, length)
                filling.append((s, d, length))
        elif op < 0.6 and filling:
            s, d, _ = filling.pop(rng.randrange(len(filling)))
            if rng.random() < 0.8:
                assert owner.commit(d, s)
            else:
                owner.abort(d, s)
        elif op < 0.85:
            batch = [digest(rng.randrange(300)) for _ in range(rng.randrange(1, 5))]
            for d, place in zip(batch, owner.lookup(batch, s, wait_s=0)):
                if place is not None:
                    assert read(owner, place) == payload(d, place[1])
                    held.append((s, place, d))
        elif op < 0.98 and held:
            s, place, d = held.pop(rng.randrange(len(held)))
            assert read(owner, place) == payload(d, place[1]), "a pinned slot was overwritten"
            owner.release([place[0]], s)
        elif op >= 0.98:
            s = sessions.pop(rng.randrange(len(sessions)))
            owner.end_session(s, grace_s=0)
            held = [h for h in held if h[0] != s]
            filling = [f for f in filling if f[0] != s]
            sessions.append(owner.open_session())
        if policy == "clairvoyant" and step % 200 == 0:
            owner.announce([digest(i) for i in rng.sample(range(300), 300)], job=0)
        sound(owner)
    stats = owner.stats()
    assert stats["inserts"] > 50 and stats["hits"] > 0
    if policy == "keep":
        assert stats.get("evictions", 0) == 0 and stats["rejected"] > 0
    else:
        assert stats["evictions"] > 50


# -- policies -----------------------------------------------------------------------------------
def test_keep_stops_admitting_when_full(make_owner):
    owner = make_owner(4 * CHUNK, "keep")
    s = owner.open_session()
    for i in range(4):
        put(owner, s, digest(i))
    for i in range(4, 8):
        assert owner.reserve(digest(i), CHUNK, s) is None
        assert owner.reserve(digest(i), 100, s) is None
    stats = owner.stats()
    assert stats["rejected"] == 8
    assert stats.get("evictions", 0) == 0
    assert all(owner.contains(digest(i)) for i in range(4))
    sound(owner)


@pytest.mark.parametrize(("order", "evicted"), [
    ([4, 0, 1, 2, 3], 3),
    ([4, 3, 2, 1, 0], 0),
    ([0, 4, 3, 1, 2], 2),
])
def test_clairvoyant_evicts_the_chunk_announced_farthest_ahead(make_owner, order, evicted):
    owner = make_owner(4 * CHUNK, "clairvoyant")
    s = owner.open_session()
    for i in range(4):
        put(owner, s, digest(i))
    owner.announce([digest(i) for i in order], job=7)
    put(owner, s, digest(4))
    assert not owner.contains(digest(evicted))
    assert all(owner.contains(digest(i)) for i in range(5) if i != evicted)
    assert owner.stats()["evictions"] == 1
    sound(owner)


def test_clairvoyant_refuses_a_chunk_needed_after_every_cached_one(make_owner):
    owner = make_owner(4 * CHUNK, "clairvoyant")
    s = owner.open_session()
    for i in range(4):
        put(owner, s, digest(i))
    owner.announce([digest(i) for i in [0, 1, 2, 3, 4]], job=0)
    assert owner.claim(digest(4), CHUNK, s) == (REFUSED, None)
    assert owner.stats()["rejected"] == 1
    assert all(owner.contains(digest(i)) for i in range(4))
    sound(owner)


def test_chunks_of_mixed_sizes_fill_most_of_the_arena(make_owner):
    """A dataset of one-chunk samples (images of 4-300 KiB): once warm, the arena should be
    mostly in use. It keeps about 5% of 64 MiB in use (1% of 1 GiB) today."""
    rng = random.Random(1)
    owner = make_owner(64 << 20, "sieve")
    s = owner.open_session()
    for _ in range(3000):
        d = digest(rng.randrange(900))  # about twice the arena
        place = owner.lookup([d], s, wait_s=0)[0]
        if place is not None:
            owner.release([place[0]], s)
        elif owner.reserve(d, rng.randrange(4 << 10, 300 << 10), s) is not None:
            owner.commit(d, s)
    sound(owner)
    assert owner.stats()["used_bytes"] >= owner.allocator.capacity // 2


def test_chunks_of_mixed_sizes_under_pressure_keep_the_cap_and_fill_the_arena(make_owner):
    """Sizes from 4 KiB to slabs of many pages, readers holding pins, fills aborted: the
    arena stays sound at every step, moves pages between classes, and ends mostly in use."""
    rng = random.Random(5)
    owner = make_owner(16 << 20, "lru")  # 256 pages of 64 KiB; chunks up to 1 MiB
    assert (owner.allocator.page, owner.allocator.max_chunk) == (64 << 10, 1 << 20)
    s = owner.open_session()
    held: list[tuple[int, bytes]] = []
    for step in range(2500):
        d = digest(rng.randrange(600))
        place = owner.lookup([d], s, wait_s=0)[0]
        if place is not None:
            assert read(owner, place) == payload(d, place[1])
            held.append((place[0], d))
        else:
            small = rng.random() < 0.7
            length = rng.randrange(1, 64 << 10) if small else rng.randrange(64 << 10, 1 << 20)
            offset = owner.reserve(d, length, s)
            if offset is not None:
                owner.segment.view[offset:offset + length] = payload(d, length)
                if rng.random() < 0.1:
                    owner.abort(d, s)
                else:
                    assert owner.commit(d, s)
        while len(held) > 20:  # readers keep a few views a while
            offset, _ = held.pop(rng.randrange(len(held)))
            owner.release([offset], s)
        if step % 50 == 0:
            sound(owner)
    sound(owner)
    stats = owner.stats()
    assert stats["pages_moved"] > 20 and stats["evictions"] > 100
    assert stats["used_bytes"] >= owner.allocator.capacity * 0.7


def fill_small(owner: ArenaOwner, session: int, n: int, namespace: str = "") -> list[int]:
    """``n`` chunks of 4 KiB, 16 to a 64 KiB page, digest i at slot i."""
    offsets = []
    for i in range(n):
        offset = owner.reserve(digest(i), 4096, session, namespace)
        assert offset == i * 4096
        assert owner.commit(digest(i), session)
        offsets.append(offset)
    return offsets


def test_a_chunk_of_another_size_takes_the_page_of_the_policy_s_victim(make_owner):
    owner = make_owner(1 << 20, "lru")  # 16 pages of 64 KiB
    s = owner.open_session()
    fill_small(owner, s, 256)
    owner.release([p for p, _ in owner.lookup([digest(i) for i in range(80)], s)], s)  # pages 0-4
    assert owner.reserve(digest(1000), CHUNK, s) == 5 * CHUNK  # the page of the LRU chunk, 80
    stats = owner.stats()
    assert (stats["evictions"], stats["pages_moved"]) == (16, 1)
    held = [owner.contains(digest(i)) for i in (0, 79, 80, 95, 96, 255)]
    assert held == [True, True, False, False, True, True]
    sound(owner)


def test_pages_holding_a_pinned_chunk_are_not_moved_and_nothing_is_evicted_in_vain(make_owner):
    owner = make_owner(1 << 20, "lru")
    writer, reader = owner.open_session(), owner.open_session()
    fill_small(owner, writer, 256)
    owner.lookup([digest(16 * p + 3) for p in range(16)], reader, touch=False)  # one per page
    assert owner.claim(digest(1000), CHUNK, writer) == (REFUSED, None)
    stats = owner.stats()
    assert (stats["rejected"], stats.get("evictions", 0)) == (1, 0)
    assert all(owner.contains(digest(i)) for i in range(256))
    # The victims it passed over are still evictable for chunks of their own size.
    assert owner.reserve(digest(1001), 4096, writer) is not None
    assert owner.stats()["evictions"] == 1
    sound(owner)


def test_the_session_grace_is_read_when_a_session_ends(owner, monkeypatch):
    writer, reader = owner.open_session(), owner.open_session()
    put(owner, writer, digest(1))
    owner.lookup([digest(1)], reader)
    monkeypatch.setattr(owner_mod, "SESSION_GRACE_S", 0.0)  # as an operator or a test may
    owner.end_session(reader)
    assert owner.stats()["pinned"] == 0
    sound(owner)


def test_releases_queued_by_a_finaliser_apply_on_the_next_call(owner):
    writer, reader = owner.open_session(), owner.open_session()
    offset = put(owner, writer, digest(1))
    owner.lookup([digest(1)], reader)
    with owner._cv:  # held, as when a view's finaliser runs inside an owner call
        owner.release_later([offset], reader)
    assert owner.stats()["pinned"] == 0
    sound(owner)


# -- namespaces --------------------------------------------------------------------------------
def test_each_namespace_follows_its_own_policy(make_owner):
    """``keep`` for one dataset, ``lru`` for another: the kept one is never evicted and
    refuses chunks once the arena is full; the other turns over by LRU among its own."""
    owner = ArenaOwner(8 * CHUNK, "sieve", namespace_policies={"imagenet": "keep", "text": "lru"})
    try:
        s = owner.open_session()
        kept = [digest(i) for i in range(4)]
        text = [digest(100 + i) for i in range(4)]
        for d in kept:
            assert owner.reserve(d, CHUNK, s, "imagenet") is not None and owner.commit(d, s)
        for d in text:
            assert owner.reserve(d, CHUNK, s, "text") is not None and owner.commit(d, s)
        assert owner.namespace_bytes() == {"imagenet": 4 * CHUNK, "text": 4 * CHUNK}
        assert owner.reserve(digest(50), CHUNK, s, "imagenet") is None  # keep: full, refused
        owner.release([p for p, _ in owner.lookup([text[0], text[2]], s)], s)  # LRU: 1, 3, 0, 2
        for i, evicted in zip(range(4, 8), [text[1], text[3], text[0], text[2]]):
            d = digest(100 + i)
            assert owner.reserve(d, CHUNK, s, "text") is not None and owner.commit(d, s)
            assert not owner.contains(evicted)
        assert all(owner.contains(d) for d in kept)
        stats = owner.stats()
        assert (stats["evictions"], stats["rejected"]) == (4, 1)
        assert owner.namespace_bytes() == {"imagenet": 4 * CHUNK, "text": 4 * CHUNK}
        sound(owner)
    finally:
        owner.close()


def test_a_namespace_below_its_share_evicts_from_the_largest_one(make_owner):
    owner = make_owner(8 * CHUNK, "lru")
    s = owner.open_session()
    for i in range(8):
        put_ns(owner, s, digest(i), "a")
    for i in range(100, 106):  # b takes from a until it holds its half, then from itself
        put_ns(owner, s, digest(i), "b")
    assert owner.namespace_bytes() == {"a": 4 * CHUNK, "b": 4 * CHUNK}
    assert [owner.contains(digest(i)) for i in range(8)] == [False] * 4 + [True] * 4
    assert [owner.contains(digest(i)) for i in range(100, 106)] == [False] * 2 + [True] * 4
    sound(owner)


def test_chunks_with_no_namespace_use_the_default_policy(make_owner):
    owner = ArenaOwner(4 * CHUNK, "keep", namespace_policies={"text": "lru"})
    try:
        s = owner.open_session()
        for i in range(4):
            put(owner, s, digest(i))
        assert owner.reserve(digest(9), CHUNK, s) is None  # "": the default, keep
        # lru admits for text, but text holds nothing and "" gives nothing up
        assert owner.reserve(digest(10), CHUNK, s, "text") is None
        stats = owner.stats()
        assert (stats["rejected"], stats.get("evictions", 0)) == (2, 0)
    finally:
        owner.close()


def put_ns(owner: ArenaOwner, session: int, d: bytes, namespace: str, length: int = CHUNK) -> None:
    offset = owner.reserve(d, length, session, namespace)
    assert offset is not None
    owner.segment.view[offset:offset + length] = payload(d, length)
    assert owner.commit(d, session)


@pytest.mark.parametrize(("entries", "message"), [
    (["imagenet"], "'imagenet': expected NAMESPACE=POLICY"),
    (["imagenet=fifo"], "imagenet=fifo: unknown policy 'fifo'"),
    (["=keep"], "=keep: '' is not a namespace"),
    (["a/b=keep"], "a/b=keep: 'a/b' is not a namespace"),
    (["a=keep", "a=lru"], "'a=lru': namespace 'a' is given twice"),
])
def test_bad_namespace_policies_are_named(entries, message):
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        parse_namespace_policies(entries)
    if "=" in entries[-1] and "twice" not in message:
        with pytest.raises(InvalidRequest, match=re.escape(message.split(": ", 1)[-1])):
            ArenaOwner(1 << 20, namespace_policies=dict([entries[-1].split("=", 1)]))


def test_namespace_policies_parse_and_the_namespace_is_a_key_s_first_component():
    assert parse_namespace_policies([" imagenet = keep", "text=lru"]) == {"imagenet": "keep", "text": "lru"}
    assert namespace_of("imagenet/train/0001.jpg") == "imagenet"


def test_the_daemon_and_its_cli_take_namespace_policies(tmp_path, capsys):
    daemon = HostDaemon(1 << 20, "lru", socket_path=str(tmp_path / "d.sock"),
                        namespace_policies={"imagenet": "keep"})
    try:
        assert daemon.owner.namespace_policies == {"imagenet": "keep"}
    finally:
        daemon.stop()
    assert cli.main(["daemon", "--socket", str(tmp_path / "e.sock"),
                     "--namespace-policy", "imagenet=keep", "--namespace-policy", "text=fifo"]) == 1
    assert "--namespace-policy text=fifo: unknown policy 'fifo'" in capsys.readouterr().err
    assert not (tmp_path / "e.sock").exists()  # refused before anything started
