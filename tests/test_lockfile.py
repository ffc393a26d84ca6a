"""The writer lock across fork: a child never keeps it, the parent keeps it (issue 19, item 2)."""

from __future__ import annotations

import fcntl
import os
import signal

import pytest

import blobtier
from blobtier.errors import RegionLocked
from blobtier.lockfile import LockFile
from tests.fork_support import identities, in_child


def _writer(region: str, report: int) -> None:
    """Take the writer lock, fork a child that never touches the client, report both pids,
    then wait to be killed."""
    client = blobtier.connect(region)
    client.put("ns/k", b"written")
    child = os.fork()
    if child == 0:
        # The child's at-fork resets have run once any of its code runs: say so, so that
        # the test does not race them (the copy is closed right after fork, not at once).
        os.write(report, b"child ready\n")
        os.close(report)
        signal.pause()  # lives on, never using the client
        os._exit(0)
    os.write(report, f"{os.getpid()} {child}\n".encode())
    signal.pause()


def test_a_sigkilled_writer_leaves_the_region_unlocked_while_its_child_lives(region):
    r, w = os.pipe()
    writer = os.fork()
    if writer == 0:
        try:
            os.close(r)
            _writer(region, w)
        finally:
            os._exit(1)
    os.close(w)
    pids = [writer]
    try:
        with os.fdopen(r) as f:
            lines = [f.readline(), f.readline()]
        pids = [int(p) for line in lines if line[0].isdigit() for p in line.split()]
        assert "child ready\n" in lines and pids[0] == writer and len(pids) == 2
        with pytest.raises(RegionLocked):
            LockFile(os.path.join(region, "writer.lock"), "region").acquire()  # the writer's
        os.kill(writer, signal.SIGKILL)
        os.waitpid(writer, 0)
        os.kill(pids[1], 0)  # the writer's child lives on...
        lock = LockFile(os.path.join(region, "writer.lock"), "region")
        lock.acquire()  # ...and the lock is free at once
        lock.release()
        with blobtier.connect(region) as c:
            c.put("ns/k", b"next writer")
            assert bytes(c.get("ns/k")) == b"next writer"
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(writer, 0)
        except ChildProcessError:
            pass  # reaped above


def _lock_state(path: str, ids: set) -> tuple[bool, bool]:
    """(holds a copy of the parent's descriptor, could take the lock itself)."""
    held = bool(identities() & ids)
    try:
        LockFile(path, "region").acquire()
        return held, True
    except RegionLocked:
        return held, False


def test_a_forked_child_closes_its_copy_and_the_parent_keeps_the_lock(tmp_path):
    path = str(tmp_path / "writer.lock")
    lock = LockFile(path, "region")
    lock.acquire()
    try:
        fd = lock._fd
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        held, took = in_child(_lock_state, path, identities([fd]))
        assert not held  # closed in the child, before any of its code ran
        assert not took  # and not unlocked: the parent still holds it
        assert lock.held
        with pytest.raises(RegionLocked):
            LockFile(path, "region").acquire()
    finally:
        lock.release()
    LockFile(path, "region").acquire()
