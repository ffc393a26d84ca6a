"""The owner's Unix-socket protocol: round trips, the segment's fd, bad frames, dead peers."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from blobtier.cache_l1_l2.arena import Segment
from blobtier.cache_l1_l2.owner import BUSY, GRANTED, REFUSED, ArenaOwner
from blobtier.cache_l1_l2.wire import (
    ANNOUNCE,
    ANNOUNCE_NS,
    CLAIM,
    COMMIT,
    LOOKUP,
    MAX_BODY,
    MAX_COUNT,
    RELEASE,
    RESERVE,
    OwnerClient,
    OwnerServer,
    Refused,
)
from blobtier.checksum import crc32c, xxh3
from blobtier.errors import InvalidRequest, TierUnavailable

CHUNK = 64 << 10


def digest(i: int) -> bytes:
    return i.to_bytes(16, "little")


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


@pytest.fixture
def owner():
    o = ArenaOwner(4 << 20, "lru")
    yield o
    o.close()


@pytest.fixture
def sock_path(tmp_path) -> str:
    path = str(tmp_path / "o.sock")
    assert len(path) < 100  # sun_path is 108 bytes
    return path


@pytest.fixture
def server(owner, sock_path):
    s = OwnerServer(owner, sock_path)
    yield s
    s.close()


@pytest.fixture
def client(server):
    c = OwnerClient(server.path, timeout_s=10)
    yield c
    c.close()


def fill(d: bytes, data: bytes, algo: str = "xxh3") -> tuple[bytes, int, str, int]:
    """What COMMIT says of a slot written with ``data``."""
    return d, len(data), algo, (xxh3 if algo == "xxh3" else crc32c)(data)


def zeros(d: bytes, n: int) -> tuple[bytes, int, str, int]:
    """A COMMIT of a slot left as the fresh arena has it."""
    return fill(d, bytes(n))


def put(client: OwnerClient, segment: Segment, d: bytes, data: bytes) -> int:
    [offset] = client.reserve([(d, len(data))])
    assert offset is not None
    segment.view[offset:offset + len(data)] = data
    client.commit([fill(d, data)])
    return offset


@pytest.fixture
def segment(client):
    info, fd = client.info()
    seg = Segment.from_fd(fd, info["name"])
    yield seg
    seg.close()


# -- round trips --------------------------------------------------------------------------
def test_info_sends_a_descriptor_of_the_segment(owner, client):
    info, fd = client.info()
    assert info == {"name": owner.segment.name, "size": owner.segment.size, "policy": "lru",
                    "pid": os.getpid()}
    assert fd != owner.segment.fd
    seg = Segment.from_fd(fd, info["name"])
    try:
        assert seg.size == owner.segment.size
        owner.segment.view[10:15] = b"owner"
        assert bytes(seg.view[10:15]) == b"owner"
        seg.view[20:26] = b"reader"
        assert bytes(owner.segment.view[20:26]) == b"reader"
    finally:
        seg.close()
    info2, fd2 = client.info()  # again, on the same connection
    assert info2 == info
    os.close(fd2)


def test_lookup_reserve_commit_release(owner, client, segment):
    assert client.lookup([digest(1)]) == [None]
    offset = put(client, segment, digest(1), b"x" * 5000)
    assert owner.contains(digest(1))
    assert client.lookup([digest(2), digest(1)]) == [None, (offset, 5000)]
    assert bytes(segment.view[offset:offset + 5000]) == b"x" * 5000
    stats = client.stats()
    assert (stats["pinned"], stats["chunks"], stats["hits"], stats["misses"]) == (1, 1, 1, 2)
    client.release([offset])
    assert client.stats()["pinned"] == 0
    assert owner.check() == []


def test_peek_and_stage(owner, client, segment):
    [offset] = client.reserve([(digest(1), 100)])
    client.commit([zeros(digest(1), 100)], accessed=False)  # STAGE
    assert client.lookup([digest(1)], touch=False) == [(offset, 100)]  # PEEK still pins
    assert client.stats()["pinned"] == 1


def test_claim_statuses(owner, client, segment):
    put(client, segment, digest(1), b"a" * 100)
    answers = client.claim([(digest(1), 100), (digest(2), 100), (digest(2), 100),
                            (digest(3), 0), (digest(4), (4 << 20) + 1)])
    assert [status for status, _ in answers] == [BUSY, GRANTED, BUSY, REFUSED, REFUSED]
    assert answers[1][1] is not None
    assert [off for _, off in answers if off is not None] == [answers[1][1]]
    with pytest.raises(Refused, match="never claimed"):
        client.commit([zeros(digest(2), 100), zeros(digest(9), 100)])
    assert owner.contains(digest(2)) and not owner._filling  # the one before it was committed


def test_abort(owner, client):
    [offset] = client.reserve([(digest(1), 100)])
    assert owner.stats()["used_bytes"] > 0
    client.abort([digest(1)])
    assert owner.stats()["used_bytes"] == 0
    with pytest.raises(Refused):
        client.commit([zeros(digest(1), 100)])
    assert client.reserve([(digest(1), 100)]) == [offset]


def test_batches_of_many_digests(owner, client, segment):
    offsets = [put(client, segment, digest(i), bytes([i]) * 4096) for i in range(64)]
    places = client.lookup([digest(i) for i in range(64)] + [digest(999)])
    assert places == [(o, 4096) for o in offsets] + [None]
    client.release(offsets)
    assert client.stats()["pinned"] == 0


def test_sessions_are_per_connection(owner, server, client, segment):
    offset = put(client, segment, digest(1), b"a" * 100)
    other = OwnerClient(server.path)
    try:
        assert other.lookup([digest(1)]) == [(offset, 100)]
        client.release([offset])  # not this session's pin
        client.stats()  # a release has no reply: a later call on the connection orders it
        assert owner.stats()["pinned"] == 1
        other.release([offset])
        other.stats()
        assert owner.stats()["pinned"] == 0
        with pytest.raises(Refused, match="cached already"):
            other.commit([fill(digest(1), b"a" * 100)])
    finally:
        other.close()


def test_announce_reaches_the_policy(sock_path):
    owner = ArenaOwner(4 * CHUNK, "clairvoyant")
    server = OwnerServer(owner, sock_path)
    client = OwnerClient(sock_path)
    try:
        info, fd = client.info()
        seg = Segment.from_fd(fd, info["name"])
        for i in range(4):
            put(client, seg, digest(i), b"c" * CHUNK)
        client.announce([digest(i) for i in (4, 2, 0, 3, 1)], job=3)
        put(client, seg, digest(4), b"c" * CHUNK)
        assert [owner.contains(digest(i)) for i in range(5)] == [True, False, True, True, True]
        seg.close()
    finally:
        client.close()
        server.close()
        owner.close()


def test_claims_and_announcements_carry_their_namespace(sock_path):
    owner = ArenaOwner(4 * CHUNK, "lru", namespace_policies={"imagenet": "clairvoyant"})
    server = OwnerServer(owner, sock_path)
    client = OwnerClient(sock_path)
    try:
        answers = client.claim([(digest(1), 100), (digest(2), 200)], namespace="imagenet")
        assert [status for status, _ in answers] == [GRANTED, GRANTED]
        assert client.claim([(digest(3), 100)])[0][0] == GRANTED  # RESERVE: namespace ""
        client.commit([zeros(digest(1), 100), zeros(digest(2), 200), zeros(digest(3), 100)])
        slot = owner.allocator.slot_size(answers[0][1])
        assert owner.namespace_bytes() == {"imagenet": 2 * slot, "": slot}
        client.announce([digest(2), digest(1)], job=5, namespace="imagenet")
        assert owner._policy("imagenet")._jobs == {5: [digest(2), digest(1)]}
        assert owner._policy("")._order  # lru: order-blind, told nothing
        with pytest.raises(InvalidRequest, match="longer than 255 bytes"):
            client.claim([(digest(4), 100)], namespace="n" * 256)
        assert owner.check() == []
    finally:
        client.close()
        server.close()
        owner.close()


def test_a_call_bound_to_a_connection_is_not_sent_on_another(owner, server, client):
    _, fd, generation = client.info_of_connection()
    os.close(fd)
    assert client.lookup([digest(1)], generation=generation) == [None]
    client.close()  # the next call would reach the owner on a new connection
    with pytest.raises(TierUnavailable, match="connection changed"):
        client.lookup([digest(1)], generation=generation)
    assert client.lookup([digest(1)]) == [None]  # unbound calls reconnect
    assert client.generation == generation + 1
    with pytest.raises(TierUnavailable, match="connection changed"):
        client.claim([(digest(1), 100)], generation=generation)
    assert owner.stats()["misses"] == 2 and not owner._filling


# -- commits the owner refuses ------------------------------------------------------------------
def test_a_commit_of_a_slot_never_claimed_is_refused_and_the_session_goes_on(owner, client):
    client.stats()
    generation = client.generation
    with pytest.raises(Refused, match="never claimed"):
        client.commit([zeros(digest(1), 100)])
    assert client.connected and client.generation == generation  # same connection, same session
    assert client.lookup([digest(1)]) == [None] and not owner.contains(digest(1))


def test_a_commit_of_another_session_s_claim_is_refused_and_leaves_it_alone(owner, server, client,
                                                                             segment):
    [offset] = client.reserve([(digest(1), 100)])
    segment.view[offset:offset + 100] = b"m" * 100
    intruder = OwnerClient(server.path)
    try:
        with pytest.raises(Refused, match="another session"):
            intruder.commit([fill(digest(1), b"m" * 100)])
    finally:
        intruder.close()
    assert not owner.contains(digest(1)) and digest(1) in owner._filling
    client.commit([fill(digest(1), b"m" * 100)])  # the claimer still can
    assert client.lookup([digest(1)]) == [(offset, 100)]


def test_a_second_commit_of_a_chunk_is_refused(owner, client, segment):
    put(client, segment, digest(1), b"a" * 100)
    with pytest.raises(Refused, match="cached already"):
        client.commit([fill(digest(1), b"a" * 100)])
    assert owner.stats()["inserts"] == 1 and owner.check() == []


@pytest.mark.parametrize("written, committed", [
    (b"w" * 100, b"w" * 99),  # a length other than the claim's
    (b"w" * 50, b"w" * 100),  # half written: the rest of the slot is not what was announced
    (b"w" * 100, b"v" * 100),  # other bytes (a stray write), announced as the right ones
], ids=["wrong length", "not fully written", "other bytes"])
def test_a_commit_of_a_slot_that_does_not_hold_its_bytes_drops_the_fill(owner, client, segment,
                                                                         written, committed):
    [offset] = client.reserve([(digest(1), 100)])
    segment.view[offset:offset + len(written)] = written
    with pytest.raises(Refused, match="fill is dropped"):
        client.commit([fill(digest(1), committed)])
    assert not owner._filling and owner.stats()["used_bytes"] == 0
    assert client.lookup([digest(1)]) == [None]  # never published, to anyone
    assert owner.counters["refused_commits"] == 1 and owner.check() == []


def test_a_commit_is_checked_with_the_record_s_algorithm(owner, client, segment):
    [offset] = client.reserve([(digest(1), 100)])
    segment.view[offset:offset + 100] = b"c" * 100
    client.commit([fill(digest(1), b"c" * 100, "crc32c")])
    assert owner.contains(digest(1))


def test_a_refused_commit_drops_the_rest_of_its_batch(owner, client, segment):
    offsets = client.reserve([(digest(i), 100) for i in range(3)])
    for offset in offsets:
        segment.view[offset:offset + 100] = b"b" * 100
    with pytest.raises(Refused):
        client.commit([fill(digest(0), b"b" * 100), fill(digest(1), b"x" * 100),
                       fill(digest(2), b"b" * 100)])
    assert [owner.contains(digest(i)) for i in range(3)] == [True, False, False]
    assert not owner._filling and owner.check() == []


def test_a_refused_frame_is_answered_and_the_next_on_the_connection_too(owner, server):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(server.path)
        body = struct.pack("<16sIBQ", digest(1), 100, 2, 0)
        s.sendall(struct.pack("<BII", COMMIT, 1, len(body)) + body)
        status, size = struct.unpack("<BI", s.recv(5))
        assert status == 2 and b"never claimed" in s.recv(size)
        s.sendall(struct.pack("<BII", LOOKUP, 1, 16) + digest(1))
        assert struct.unpack("<BIBQI", s.recv(18)) == (0, 13, 0, 0, 0)


def test_discard_forgets_chunks_found_corrupt(owner, client, segment):
    offset = put(client, segment, digest(1), b"d" * 100)
    assert client.lookup([digest(1)]) == [(offset, 100)]  # pinned by this reader
    assert client.discard([digest(1), digest(2)]) == [True, False]
    assert client.lookup([digest(1)]) == [None]
    assert owner.stats()["corrupt"] == 1 and owner.stats()["zombies"] == 1  # reused once released
    client.release([offset])
    assert client.stats()["used_bytes"] == 0 and owner.check() == []


# -- bad frames -------------------------------------------------------------------------------
BAD_FRAMES = {
    "unknown op": struct.pack("<BII", 99, 0, 0),
    "op zero": struct.pack("<BII", 0, 0, 0),
    "lookup body short": struct.pack("<BII", LOOKUP, 2, 16) + b"x" * 16,
    "commit body long": struct.pack("<BII", COMMIT, 1, 17) + b"x" * 17,
    "reserve body short": struct.pack("<BII", RESERVE, 1, 16) + b"x" * 16,
    "release body short": struct.pack("<BII", RELEASE, 2, 8) + b"x" * 8,
    "announce without a job": struct.pack("<BII", ANNOUNCE, 0, 4) + b"x" * 4,
    "announce body short": struct.pack("<BII", ANNOUNCE, 2, 24) + b"x" * 24,
    "claim without its namespace": struct.pack("<BII", CLAIM, 0, 0),
    "claim namespace cut short": struct.pack("<BII", CLAIM, 0, 3) + b"\x05ab",
    "claim namespace not utf-8": struct.pack("<BII", CLAIM, 1, 22) + b"\x01\xff" + b"x" * 20,
    "claim body short": struct.pack("<BII", CLAIM, 1, 18) + b"\x01a" + b"x" * 16,
    "announce_ns without a job": struct.pack("<BII", ANNOUNCE_NS, 0, 3) + b"\x01ax",
    "huge count": struct.pack("<BII", LOOKUP, MAX_COUNT + 1, 0),
    "huge body": struct.pack("<BII", LOOKUP, 0, MAX_BODY + 1),
}


def raw_exchange(path: str, frame: bytes) -> tuple[int, bytes, bytes]:
    """Send one frame; return (status, message, whatever follows before the close)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(frame)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status, size = struct.unpack_from("<BI", data)
    return status, data[5:5 + size], data[5 + size:]


@pytest.mark.parametrize("frame", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_a_bad_frame_gets_an_error_and_the_connection_closed(owner, server, client, frame):
    status, message, rest = raw_exchange(server.path, frame)
    assert status == 1 and message
    assert rest == b""  # closed right after the error
    assert client.stats()["capacity"] == 4 << 20  # others are still served
    wait_until(lambda: len(owner._session_pins) == 1)  # the bad session is gone


def test_a_client_sending_a_bad_frame_raises_and_reconnects(owner, server, client):
    assert client.stats()["chunks"] == 0
    with pytest.raises(TierUnavailable, match="unknown op"):
        client._call(99, 0, b"")
    assert not client.connected
    with pytest.raises(TierUnavailable, match="expected"):
        client._call(LOOKUP, 3, b"x" * 16)
    assert client.stats()["chunks"] == 0  # a new connection
    fresh = OwnerClient(server.path)
    assert fresh.lookup([digest(1)]) == [None]
    fresh.close()
    assert owner.check() == []


def test_a_connection_closed_mid_session_aborts_its_fills(owner, server, client, segment):
    offset = put(client, segment, digest(1), b"a" * 100)
    other = OwnerClient(server.path)
    assert other.lookup([digest(1)]) == [(offset, 100)]
    assert other.reserve([(digest(2), 100), (digest(3), 200)])[0] is not None
    assert len(owner._filling) == 2
    used_before = owner.stats()["used_bytes"]
    other.close()
    wait_until(lambda: not owner._filling)
    stats = owner.stats()
    assert stats["used_bytes"] < used_before
    assert stats["pinned"] == 1  # the pin outlives the session for its grace period
    assert client.reserve([(digest(2), 100)])[0] is not None  # free to fill again
    assert owner.check() == []


def test_a_peer_killed_mid_frame_ends_its_session(owner, server):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(server.path)
        s.sendall(struct.pack("<BII", LOOKUP, 4, 64) + b"x" * 10)  # then gone
    wait_until(lambda: not owner._session_pins)
    assert owner.check() == []


# -- the socket file ------------------------------------------------------------------------------
def test_no_socket_means_tier_unavailable(tmp_path):
    client = OwnerClient(str(tmp_path / "none.sock"))
    for call in (client.stats, client.info, lambda: client.lookup([digest(1)])):
        with pytest.raises(TierUnavailable):
            call()
    assert not client.connected


def test_close_removes_the_socket_file_and_clients_see_it_gone(owner, sock_path):
    server = OwnerServer(owner, sock_path)
    client = OwnerClient(sock_path)
    assert client.stats()["chunks"] == 0
    server.close()
    assert not os.path.exists(sock_path)
    with pytest.raises(TierUnavailable):
        client.stats()
    with pytest.raises(TierUnavailable):
        OwnerClient(sock_path).stats()
    server.close()  # twice is harmless


def test_a_stale_socket_file_is_replaced(owner, sock_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(sock_path)  # a file left by an owner that died
    server = OwnerServer(owner, sock_path)
    try:
        assert oct(os.stat(sock_path).st_mode & 0o777) == "0o600"
        assert OwnerClient(sock_path).stats()["chunks"] == 0
    finally:
        server.close()
