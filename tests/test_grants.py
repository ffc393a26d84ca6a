"""Grants: signing, checking, the key file and its rotation (blobtier/grants.py)."""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest

from blobtier.errors import Forbidden, InvalidRequest
from blobtier.grants import ANY_VERSION, READ, WRITE, GrantBook, GrantCheck, KeyRing, check_chunk, parse
from blobtier.records import ChunkKey

BLOB, OTHER = b"\x01" * 16, b"\x02" * 16


@pytest.fixture
def key_file(tmp_path):
    path = str(tmp_path / "grant.key")
    KeyRing.create(path)
    return path


def test_key_file_is_private_and_refused_when_open_to_others(key_file):
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    KeyRing.load(key_file)
    os.chmod(key_file, 0o644)
    with pytest.raises(InvalidRequest, match="readable by other users") as err:
        KeyRing.load(key_file)
    secret = open(key_file).read().split(":")[1].strip()
    assert secret not in str(err.value)


def test_a_signed_grant_verifies_and_covers_only_its_blob_version_and_rights(key_file):
    ring = KeyRing.load(key_file)
    grant = ring.verify(ring.sign(BLOB, 3, "team-a", READ))
    assert (grant.blob_id, grant.version, grant.namespace) == (BLOB, 3, "team-a")
    assert grant.covers(BLOB, 3, READ)
    assert not grant.covers(BLOB, 4, READ) and not grant.covers(OTHER, 3, READ)
    assert not grant.covers(BLOB, 3, WRITE)
    write = ring.verify(ring.sign(BLOB, ANY_VERSION, "team-a", READ | WRITE))
    assert write.covers(BLOB, 7, WRITE) and write.covers(BLOB, 1, READ)


@pytest.mark.parametrize("tamper", ["blob", "version", "namespace", "rights", "expiry", "mac"])
def test_a_changed_byte_is_a_forged_grant(key_file, tamper):
    ring = KeyRing.load(key_file)
    raw = bytearray(ring.sign(BLOB, 3, "ns", READ))
    at = {"blob": 10, "version": 26, "rights": 31, "expiry": 36, "namespace": 42, "mac": -1}[tamper]
    raw[at] ^= 0x01
    with pytest.raises(Forbidden):
        ring.verify(bytes(raw))


def test_expired_and_foreign_grants_are_refused(key_file, tmp_path):
    ring = KeyRing.load(key_file)
    with pytest.raises(Forbidden, match="expired"):
        ring.verify(ring.sign(BLOB, 1, "ns", READ, expires=time.time() - 1))
    other = str(tmp_path / "other.key")
    KeyRing.create(other)
    with pytest.raises(Forbidden, match="key this server does not hold"):
        ring.verify(KeyRing.load(other).sign(BLOB, 1, "ns", READ))
    with pytest.raises(Forbidden, match="malformed"):
        ring.verify(b"not a grant")


def test_rotation_keeps_old_grants_until_the_old_key_is_retired(key_file):
    old = KeyRing.load(key_file).sign(BLOB, 1, "ns", READ)
    KeyRing.rotate(key_file)
    ring = KeyRing.load(key_file)
    assert len(ring.keys) == 2
    assert ring.verify(old).blob_id == BLOB  # signed before the rotation: still good
    new = ring.sign(BLOB, 1, "ns", READ)
    assert parse(new).key_id != parse(old).key_id  # new grants use the new key
    KeyRing.retire(key_file)
    ring = KeyRing.load(key_file)
    assert ring.verify(new).blob_id == BLOB
    with pytest.raises(Forbidden, match="key this server does not hold"):
        ring.verify(old)


def test_check_chunk_ties_the_grant_to_the_chunk_servers_digest(key_file):
    ring = KeyRing.load(key_file)
    raw = ring.sign(BLOB, 2, "ns", READ)
    digest = ChunkKey(BLOB, 2, 5).digest()
    assert check_chunk(ring, raw, digest, 2, 5, READ).blob_id == BLOB
    with pytest.raises(Forbidden):  # the index claimed is not the chunk asked for
        check_chunk(ring, raw, digest, 2, 4, READ)
    with pytest.raises(Forbidden):  # another blob's chunk
        check_chunk(ring, raw, ChunkKey(OTHER, 2, 5).digest(), 2, 5, READ)
    with pytest.raises(Forbidden, match="only under a grant"):
        check_chunk(ring, b"", digest, 2, 5, READ)


def test_grant_check_needs_a_grant_per_blob_and_nothing_without_a_ring(key_file):
    ring = KeyRing.load(key_file)
    check = GrantCheck(ring)
    raw = ring.sign(BLOB, 1, "ns", READ)
    assert len(check.covered([raw, raw], [(BLOB, 1), (BLOB, 1)])) == 1  # each grant checked once
    with pytest.raises(Forbidden, match="no valid read grant"):
        check.covered([raw], [(BLOB, 1), (OTHER, 1)])
    assert GrantCheck(None).covered([], [(OTHER, 1)]) == []


def test_the_book_refreshes_a_grant_near_its_expiry(key_file):
    ring = KeyRing.load(key_file)
    book = GrantBook()
    calls = []

    def refetch() -> None:
        calls.append(1)
        book.add(ring.sign(BLOB, 1, "ns", READ))

    book.add(ring.sign(BLOB, 1, "ns", READ, expires=time.time() + 5), lambda: refetch)
    fresh = book.get(BLOB)
    assert calls == [1] and parse(fresh).expires > time.time() + 600
    assert book.get(BLOB) == fresh and calls == [1]  # fresh now: no second fetch
    assert book.get(OTHER) is None


def test_a_forked_child_reads_the_book_while_a_parent_thread_held_its_lock(key_file):
    book = GrantBook()
    raw = KeyRing.load(key_file).sign(BLOB, 1, "ns", READ)
    book.add(raw)
    with book._lock:  # as a parent thread may hold it at a DataLoader worker's fork
        pid = os.fork()
        if pid == 0:  # the child: a deadlock on the inherited lock ends by the alarm
            signal.alarm(10)
            os._exit(0 if book.get(BLOB) == raw else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
