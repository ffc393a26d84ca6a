"""SharedL1Cache: zero-copy pinned views of an arena, in its owner's process and in others."""

from __future__ import annotations

import contextlib
import functools
import gc
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

import numpy as np
import pytest

from blobtier.cache_l1_l2 import l1 as l1_mod
from blobtier.cache_l1_l2 import owner as owner_mod
from blobtier.cache_l1_l2.l1 import OwnedArena, SharedL1Cache
from blobtier.cache_l1_l2.owner import SESSION_GRACE_S, ArenaOwner
from blobtier.cache_l1_l2.wire import OwnerServer
from blobtier.chunks import ChunkCache, ChunkKey
from blobtier.errors import TierUnavailable

N_KEYS = 160
SIZES = [6000, 20_000, 40_000, 60_000]  # about 5 MiB of chunks in all


def key(i: int) -> ChunkKey:
    return ChunkKey(b"blob-%d" % (i % 7), 1, i)


@functools.cache
def payload(i: int) -> bytes:
    return random.Random(i).randbytes(SIZES[i % 4] + i % 3)


def address(view: memoryview) -> int:
    return np.frombuffer(view, np.uint8).ctypes.data


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def flushed(cache: SharedL1Cache) -> dict:
    """The owner's stats once this cache's queued releases have reached it."""
    gc.collect()
    cache.get_many([])  # releases ride on the next request
    return cache.stats()


@pytest.fixture
def owner():
    o = ArenaOwner(1 << 20, "lru")  # 16 pages of 64 KiB
    yield o
    o.close()


@pytest.fixture
def arena():
    a = OwnedArena(2 << 20, "sieve")
    yield a
    a.close()


@pytest.fixture(params=["local", "remote"])
def cache(request, owner, tmp_path):
    """A cache in the owner's process, or one reaching it over its socket."""
    if request.param == "local":
        c = SharedL1Cache(owner=owner)
        yield c
        c.close()
        return
    server = OwnerServer(owner, str(tmp_path / "o.sock"))
    c = SharedL1Cache(socket_path=server.path)
    yield c
    c.close()
    server.close()


# -- the ChunkCache surface -------------------------------------------------------------------
def test_is_a_chunk_cache(owner):
    c = SharedL1Cache(owner=owner)
    assert isinstance(c, ChunkCache)
    assert c.name == "l1" and c.trusted
    c.close()


def test_exactly_one_of_owner_and_socket_path(owner):
    with pytest.raises(ValueError):
        SharedL1Cache()
    with pytest.raises(ValueError):
        SharedL1Cache(owner=owner, socket_path="/nowhere")


def test_put_then_get_many(cache, owner):
    keys = [key(i) for i in range(6)]
    assert cache.get_many(keys) == {}
    assert not cache.contains(keys[0])
    for i, k in enumerate(keys[:4]):
        cache.put(k, payload(i))
    found = cache.get_many(keys)
    assert set(found) == set(keys[:4])
    assert all(found[k] == payload(i) for i, k in enumerate(keys[:4]))
    assert cache.contains(keys[0]) and not cache.contains(keys[5])
    cache.put(keys[0], b"other bytes")  # already held: ignored
    assert cache.get_many([keys[0]])[keys[0]] == payload(0)
    del found
    assert flushed(cache)["chunks"] == 4
    assert owner.check() == []


def test_empty_and_oversized_puts_are_declined(cache):
    cache.put(key(1), b"")
    cache.put(key(2), bytes((64 << 10) + 1))  # bigger than a page of this arena
    assert cache.get_many([key(1), key(2)]) == {}


def test_views_are_read_only(cache):
    cache.put(key(1), payload(1))
    view = cache.get_many([key(1)])[key(1)]
    assert view.readonly
    with pytest.raises(TypeError):
        view[0] = 1
    with pytest.raises(ValueError):
        np.frombuffer(view, np.uint8)[0] = 1


def test_views_are_zero_copy(cache, owner):
    cache.put(key(1), payload(1))
    a = cache.get_many([key(1)])[key(1)]
    b = cache.get_many([key(1)])[key(1)]
    assert a is not b and address(a) == address(b)
    offset = owner._index[key(1).digest()][0]
    owner.segment.view[offset:offset + 4] = b"\0\1\2\3"  # seen through the reader's mapping
    assert bytes(a[:4]) == bytes(b[:4]) == b"\0\1\2\3"


def test_dropping_every_view_releases_the_pin(cache, owner):
    cache.put(key(1), payload(1))
    first = cache.get_many([key(1)])
    second = cache.get_many([key(1)])
    sliced = first[key(1)][100:200]
    assert owner.stats()["pinned"] == 1
    del first, second
    assert flushed(cache)["pinned"] == 1  # the slice still holds it
    assert bytes(sliced) == payload(1)[100:200]
    del sliced
    assert flushed(cache)["pinned"] == 0
    assert owner.check() == []


def test_a_view_outlives_the_eviction_of_its_chunk(cache, owner):
    cache.put(key(3), payload(3))  # 60 KiB: one 64 KiB page
    view = cache.get_many([key(3)])[key(3)]
    for i in range(7, 7 + 4 * 16, 4):  # 16 more pages' worth: the arena turns over
        cache.put(key(i), payload(i))
    assert not cache.contains(key(3))
    assert owner.stats()["zombies"] == 1
    assert view == payload(3)
    del view
    stats = flushed(cache)
    assert (stats["pinned"], stats["zombies"]) == (0, 0)
    assert owner.check() == []


def test_a_view_dropped_while_this_thread_holds_the_cache_s_locks_does_not_deadlock(
        cache, owner, monkeypatch):
    """A view's finaliser runs wherever its last reference goes, e.g. in a garbage
    collection inside one of the cache's own calls, with its locks held."""
    monkeypatch.setattr(l1_mod, "_FLUSH_RELEASES", 1)  # every release wants to go out at once
    cache.put(key(1), payload(1))
    views = [cache.get_many([key(1)])[key(1)]]
    locks = [cache._lock, owner._cv] + ([cache._client._lock] if cache._client else [])

    def drop_under_locks() -> None:
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            views.clear()  # the last reference: the pin's finaliser runs here

    thread = threading.Thread(target=drop_under_locks, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the view's finaliser deadlocked"
    assert flushed(cache)["pinned"] == 0
    assert owner.check() == []


def test_a_release_the_finaliser_could_not_send_goes_with_the_next_request(owner, tmp_path, monkeypatch):
    monkeypatch.setattr(l1_mod, "_FLUSH_RELEASES", 1)
    server = OwnerServer(owner, str(tmp_path / "o.sock"))
    cache = SharedL1Cache(socket_path=server.path)
    try:
        cache.put(key(1), payload(1))
        views = [cache.get_many([key(1)])[key(1)]]
        with cache._client._lock:  # the connection is busy: the release waits in the queue
            views.clear()
        assert list(cache._pending) and owner.stats()["pinned"] == 1
        del views
        assert flushed(cache)["pinned"] == 0
    finally:
        cache.close()
        server.close()


def test_chunks_are_filed_under_the_namespace_they_are_claimed_with(cache, owner):
    claimed, _ = cache.claim([(key(1), 6000, "imagenet"), (key(2), 6000), (key(3), 6000, "text")])
    assert claimed == {key(1), key(2), key(3)}
    for i in (1, 2, 3):
        cache.put(key(i), payload(0))
    cache.put(key(4), payload(0), namespace="text")  # claimed by the put itself
    cache.announce([key(4), key(3)], job=2, namespace="text")
    slot = owner.allocator.slot_size(owner._index[key(1).digest()][0])
    assert owner.namespace_bytes() == {"imagenet": slot, "": slot, "text": 2 * slot}
    assert owner._ns_of[key(4).digest()] == "text"
    assert owner.check() == []


def test_places_from_a_restarted_owner_are_read_in_its_own_segment(tmp_path):
    """A call that needs no segment (stats) may reconnect to a new owner: the next read
    must map the new owner's segment, not read its places in the old one."""
    path = str(tmp_path / "o.sock")
    first = ArenaOwner(1 << 20, "lru")
    server = OwnerServer(first, path)
    cache = SharedL1Cache(socket_path=path)
    second = ArenaOwner(1 << 20, "lru")
    try:
        cache.put(key(1), b"a" * 5000)
        old = cache.get_many([key(1)])[key(1)]
        server.close()
        with pytest.raises(TierUnavailable):
            cache.stats()
        server = OwnerServer(second, path)
        local = SharedL1Cache(owner=second)
        local.put(key(1), b"b" * 5000)
        local.close()
        assert cache.stats()["chunks"] == 1  # reconnected, to the second owner
        assert cache.get_many([key(1)])[key(1)] == b"b" * 5000
        assert old == b"a" * 5000
        del old
    finally:
        cache.close()
        server.close()
        first.close()
        second.close()


def test_a_release_of_a_pin_from_a_dead_owner_never_unpins_a_slot_of_the_next(tmp_path):
    """A view pinned on the first owner's connection is dropped after the reconnect to a
    second owner: its release must not reach the second, where the same offset is pinned
    by a live view (that slot would be reused under it)."""
    path = str(tmp_path / "o.sock")
    first, second = ArenaOwner(1 << 20, "lru"), ArenaOwner(1 << 20, "lru")
    server = OwnerServer(first, path)
    cache = SharedL1Cache(socket_path=path)
    try:
        cache.put(key(1), b"a" * 5000)
        old = cache.get_many([key(1)])[key(1)]
        server.close()
        with pytest.raises(TierUnavailable):
            cache.stats()  # the connection is found dead
        server = OwnerServer(second, path)
        cache.put(key(1), b"b" * 5000)  # same first slot of a fresh arena
        new = cache.get_many([key(1)])[key(1)]
        assert second._index[key(1).digest()][0] == first._index[key(1).digest()][0]
        del old
        assert flushed(cache)["pinned"] == 1  # only the live view's pin
        assert new == b"b" * 5000
        del new
        assert flushed(cache)["pinned"] == 0
    finally:
        cache.close()
        server.close()
        first.close()
        second.close()


def test_unclaim_announce_and_releases_on_a_dead_owner_raise_nothing(owner, tmp_path):
    server = OwnerServer(owner, str(tmp_path / "o.sock"))
    cache = SharedL1Cache(socket_path=server.path)
    try:
        cache.put(key(1), payload(1))
        view = cache.get_many([key(1)])[key(1)]
        assert cache.claim([(key(2), 6000)])[0] == {key(2)}
        server.close()
        del view
        gc.collect()
        cache.unclaim([key(2)])  # the claim died with the owner's session
        cache.announce([key(1), key(2)])  # a hint nobody is left to take
        with pytest.raises(TierUnavailable):
            cache.get_many([key(1)])  # a lookup is a miss for the chain, which catches this
    finally:
        cache.close()


def test_claim_busy_and_unclaim(owner):
    a, b = SharedL1Cache(owner=owner), SharedL1Cache(owner=owner)
    claimed, busy = a.claim([(key(1), 100), (key(2), 100), (key(3), 0)])
    assert claimed == {key(1), key(2)} and busy == set()
    assert b.claim([(key(1), 100)]) == (set(), {key(1)})
    a.put(key(1), b"x" * 100)
    a.unclaim([key(2), key(9)])
    assert b.get_many([key(1), key(2)]).keys() == {key(1)}
    assert b.claim([(key(2), 100)]) == ({key(2)}, set())
    a.close()
    b.close()
    assert owner.stats()["pinned"] == 0  # a local close ends the session at once
    assert owner.check() == []


def test_a_local_close_aborts_unfilled_claims(owner):
    c = SharedL1Cache(owner=owner)
    c.claim([(key(1), 100)])
    c.close()
    assert owner.stats()["used_bytes"] == 0


def test_announce_reaches_a_clairvoyant_owner(tmp_path):
    owner = ArenaOwner(4 * (64 << 10), "clairvoyant")
    server = OwnerServer(owner, str(tmp_path / "o.sock"))
    c = SharedL1Cache(socket_path=server.path)
    try:
        for i in (3, 7, 11, 15):
            c.put(key(i), payload(i))
        c.announce([key(i) for i in (19, 15, 3, 11, 7)], job=1)
        c.put(key(19), payload(19))
        assert [owner.contains(key(i).digest()) for i in (3, 7, 11, 15, 19)] == [True, False, True,
                                                                                 True, True]
    finally:
        c.close()
        server.close()
        owner.close()


def test_an_arena_leaves_nothing_in_dev_shm():
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    before = set(os.listdir("/dev/shm"))
    arena = OwnedArena(1 << 20, "sieve")
    try:
        c = SharedL1Cache(socket_path=arena.socket_path)
        c.put(key(1), payload(1))
        assert c.get_many([key(1)])[key(1)] == payload(1)
        assert set(os.listdir("/dev/shm")) == before
        assert os.readlink(f"/proc/self/fd/{arena.owner.segment.fd}").startswith("/memfd:")
        c.close()
    finally:
        arena.close()
    assert not os.path.exists(arena.socket_path)
    assert set(os.listdir("/dev/shm")) == before


# -- several processes ----------------------------------------------------------------------------
def reader(path: str, seed: int, rounds: int, out, ready=None) -> None:
    """Read random batches, fill misses, verify every byte; with ``ready``, run until killed."""
    try:
        cache = SharedL1Cache(socket_path=path)
        rng = random.Random(seed)
        counts: Counter[str] = Counter()
        held: dict[int, memoryview] = {}  # the last batch's views, read again a round later
        done = 0
        while ready is not None or done < rounds:
            batch = rng.sample(range(N_KEYS), 8)
            found = cache.get_many([key(i) for i in batch])
            for i in batch:
                if key(i) in found:
                    counts["hits"] += 1
                    counts["bad"] += found[key(i)] != payload(i)
                else:
                    counts["misses"] += 1
                    cache.put(key(i), payload(i))
            counts["bad"] += sum(view != payload(i) for i, view in held.items())
            held = {i: found[key(i)] for i in batch if key(i) in found}
            del found
            done += 1
            if ready is not None and done == 20:
                kept = {}
                while not kept:  # a view held until the process dies
                    cache.put(key(5000), payload(5000))
                    kept = cache.get_many([key(5000)])
                ready.put(os.getpid())
        del held
        gc.collect()
        cache.close()
        out.put((seed, dict(counts)))
    except BaseException as exc:  # noqa: BLE001 - reported to the test process
        out.put((seed, {"error": repr(exc)}))


def run_readers(path: str, contexts: list[str], rounds: int) -> list[dict]:
    procs = []
    for seed, kind in enumerate(contexts):
        ctx = multiprocessing.get_context(kind)
        out = ctx.Queue()  # one per process: a fork context's queue cannot go to a spawned child
        proc = ctx.Process(target=reader, args=(path, seed, rounds, out))
        proc.start()
        procs.append((proc, out))
    results = [out.get(timeout=120)[1] for _, out in procs]
    for proc, _ in procs:
        proc.join(60)
        assert proc.exitcode == 0
    return results


def test_readers_in_many_processes_share_the_arena_under_eviction(arena):
    results = run_readers(arena.socket_path, ["fork"] * 4 + ["spawn"], rounds=150)
    assert not [r for r in results if "error" in r], results
    assert [r.get("bad", 0) for r in results] == [0] * 5
    assert all(r["hits"] > 0 and r["misses"] > 0 for r in results)
    owner = arena.owner
    stats = owner.stats()
    assert stats["evictions"] > 100
    assert stats["used_bytes"] <= stats["capacity"] == 2 << 20
    wait_until(lambda: not owner._session_pins)  # every reader's session has ended
    assert owner.stats()["pinned"] == 0  # each closed with its views released
    assert owner.check() == []


class Clock:
    def __init__(self) -> None:
        self.skipped = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.skipped


def test_a_reader_killed_mid_run_loses_its_pins_after_the_grace(arena, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(owner_mod, "time", clock)
    ctx = multiprocessing.get_context("fork")
    out, ready = ctx.Queue(), ctx.Queue()
    victim = ctx.Process(target=reader, args=(arena.socket_path, 99, 0, ctx.Queue(), ready))
    victim.start()
    assert ready.get(timeout=60) == victim.pid
    others = [ctx.Process(target=reader, args=(arena.socket_path, s, 150, out)) for s in range(3)]
    for p in others:
        p.start()
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(30)
    assert victim.exitcode == -signal.SIGKILL
    results = [out.get(timeout=120) for _ in others]
    for p in others:
        p.join(60)
        assert p.exitcode == 0
    assert all("error" not in r and r.get("bad", 0) == 0 for _, r in results), results

    owner = arena.owner
    wait_until(lambda: not owner._session_pins)  # the dead reader's session ended too
    assert owner.stats()["pinned"] > 0  # its views' pins, kept for the grace period
    assert owner.check() == []

    clock.skipped = SESSION_GRACE_S + 1
    local = SharedL1Cache(owner=owner)
    local.put(key(1000), payload(0))  # a reservation expires old leases
    local.close()
    stats = owner.stats()
    assert (stats["pinned"], stats["zombies"]) == (0, 0)
    assert stats["used_bytes"] <= stats["capacity"]
    assert owner.check() == []


def owner_process(paths, go) -> None:
    arena = OwnedArena(1 << 20, "lru")
    cache = SharedL1Cache(owner=arena.owner)
    for i in range(8):
        cache.put(key(i), payload(i))
    paths.put(arena.socket_path)
    go.wait(60)
    os._exit(0)  # no cleanup: as if it crashed


def test_views_outlive_the_owner_process():
    ctx = multiprocessing.get_context("fork")
    paths, go = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=owner_process, args=(paths, go))
    proc.start()
    path = paths.get(timeout=60)
    cache = SharedL1Cache(socket_path=path)
    try:
        keys = [key(i) for i in range(8)]
        views = cache.get_many(keys)
        assert len(views) == 8
        go.set()
        proc.join(30)
        assert proc.exitcode == 0
        assert all(views[key(i)] == payload(i) for i in range(8))  # the mapping is ours
        with pytest.raises(TierUnavailable):
            cache.get_many(keys)
        with pytest.raises(TierUnavailable):
            cache.get_many(keys)  # and the next one, which tries to attach again
        assert all(views[key(i)] == payload(i) for i in range(8))
        del views
        gc.collect()
    finally:
        cache.close()
        if os.path.exists(path):
            os.unlink(path)


# -- the mapping must outlive every view -------------------------------------------------------------
def run_script(body: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent("""
        import gc
        from blobtier.cache_l1_l2.l1 import SharedL1Cache
        from blobtier.cache_l1_l2.owner import ArenaOwner
        from blobtier.cache_l1_l2.wire import OwnerServer
        from blobtier.chunks import ChunkKey
        k = ChunkKey(b"x", 1, 0)
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_a_view_survives_closing_its_local_owner():
    done = run_script("""
        owner = ArenaOwner(1 << 20)
        cache = SharedL1Cache(owner=owner)
        cache.put(k, b"z" * 5000)
        view = cache.get_many([k])[k]
        owner.close()
        print(bytes(view[:3]).decode())
    """)
    assert (done.returncode, done.stdout) == (0, "zzz\n")


def test_a_view_survives_attaching_to_a_restarted_owner(tmp_path):
    done = run_script(f"""
        path = {str(tmp_path / "o.sock")!r}
        owner = ArenaOwner(1 << 20, "lru")
        server = OwnerServer(owner, path)
        cache = SharedL1Cache(socket_path=path)
        cache.put(k, b"z" * 5000)
        view = cache.get_many([k])[k]
        server.close()
        try:
            cache.get_many([k])
        except OSError:
            pass
        server = OwnerServer(ArenaOwner(1 << 20, "lru"), path)  # a new owner, a new segment
        assert cache.get_many([k]) == {{}}
        gc.collect()
        print(bytes(view[:3]).decode())
        server.close()
    """)
    assert (done.returncode, done.stdout) == (0, "zzz\n")
