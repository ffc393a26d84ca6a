"""An arena's owner, its server and its readers across fork (issue 19, items 1 and 2).

A forked child's copy of an owner refuses every call (it would hand out slots the
parent's owner hands out too); the child holds none of the owner's sockets nor a reader's
session, and a reader inherited through fork reattaches with a session of its own.
"""

from __future__ import annotations

import os
import socket

import pytest

from blobtier.cache_l1_l2.l1 import OwnedArena, SharedL1Cache
from blobtier.cache_l1_l2.owner import ArenaOwner
from blobtier.chunks import ChunkKey
from blobtier.errors import TierUnavailable
from tests.fork_support import identities, in_child

CHUNK = 64 << 10


def key(i: int) -> ChunkKey:
    return ChunkKey(b"blob-%d" % i, 1, 0)


def payload(i: int) -> bytes:
    return bytes([i % 251]) * CHUNK


@pytest.fixture
def arena():
    a = OwnedArena(1 << 20, "sieve")
    yield a
    a.close()


def _use_the_copy(owner: ArenaOwner, session: int, offset: int) -> list[str]:
    calls = {
        "open_session": lambda: owner.open_session(),
        "lookup": lambda: owner.lookup([key(1).digest()], session),
        "claim": lambda: owner.claim(key(2).digest(), CHUNK, session),
        "commit": lambda: owner.commit(key(2).digest(), session),
        "release": lambda: owner.release([offset], session),
        "end_session": lambda: owner.end_session(session),
        "stats": lambda: owner.stats(),
    }
    used = []
    for name, call in calls.items():
        try:
            call()
            used.append(name)
        except TierUnavailable:
            pass
    owner.release_later([offset], session)  # a view's finaliser: never raises, does nothing
    return used


def test_a_forked_copy_of_the_owner_refuses_every_call():
    owner = ArenaOwner(1 << 20)
    try:
        session = owner.open_session()
        offset = owner.reserve(key(1).digest(), CHUNK, session)
        owner.segment.view[offset:offset + CHUNK] = payload(1)
        assert owner.commit(key(1).digest(), session)
        [place] = owner.lookup([key(1).digest()], session)  # pinned by the parent's session
        assert in_child(_use_the_copy, owner, session, offset) == []
        # The parent's owner is untouched: its pin, its chunk, its next fill.
        assert owner.stats()["pinned"] == 1 and owner.check() == []
        assert bytes(owner.segment.view[place[0]:place[0] + CHUNK]) == payload(1)
        owner.release([offset], session)
        assert owner.reserve(key(2).digest(), CHUNK, session) is not None
    finally:
        owner.close()


def _held(wanted: set[tuple[int, int]]) -> set[tuple[int, int]]:
    return identities() & wanted


def test_a_forked_child_holds_no_socket_of_the_owner_or_of_a_reader(arena):
    reader = SharedL1Cache(socket_path=arena.socket_path)
    try:
        reader.put(key(1), payload(1))
        assert bytes(reader.get_many([key(1)])[key(1)]) == payload(1)
        server = arena.server
        sockets = {"listening": server._sock.fileno(), "reader's session": reader._client._sock.fileno()}
        sockets |= {f"session {i}": c.fileno() for i, c in enumerate(server._conns)}
        assert len(sockets) == 3
        ids = {name: next(iter(identities([fd]))) for name, fd in sockets.items()}
        held = in_child(_held, set(ids.values()))
        assert not [name for name, i in ids.items() if i in held]
        # The parent goes on serving, on the same session.
        assert bytes(reader.get_many([key(1)])[key(1)]) == payload(1)
    finally:
        reader.close()


def _close_the_copy(arena: OwnedArena) -> bool:
    arena.server.close()
    return os.path.exists(arena.socket_path)


def test_closing_a_forked_copy_of_the_server_leaves_the_parents_socket(arena):
    assert in_child(_close_the_copy, arena)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(arena.socket_path)  # still there, and still the parent's


def _read_again(reader: SharedL1Cache) -> tuple[bytes, int]:
    return bytes(reader.get_many([key(1)])[key(1)]), reader._client.generation


def test_a_reader_inherited_through_fork_reattaches_even_with_its_locks_held(arena):
    reader = SharedL1Cache(socket_path=arena.socket_path)
    try:
        reader.put(key(1), payload(1))
        generation = reader._client.generation
        # Another parent thread in the middle of an attach and of a claim at the fork.
        with reader._attach_lock, reader._lock, reader._client._lock:
            data, child_generation = in_child(_read_again, reader)
        assert data == payload(1)
        assert child_generation > generation  # a session of the child's own
        assert bytes(reader.get_many([key(1)])[key(1)]) == payload(1)
    finally:
        reader.close()
