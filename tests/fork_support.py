"""Run code in a forked child and see what it holds: for the fork-safety tests.

``in_child`` forks (``os.fork``, as a DataLoader does), runs a function in the child and
returns what it returned, or fails the test with the child's error or because it hung
(a lock copied while held). ``identities`` names open descriptors by what they are
(device and inode), so a child can be asked whether it still holds the parent's socket
or file whatever numbers its descriptors have.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import time
from collections.abc import Callable, Iterable

HANG_S = 60.0  # a child that has not answered by then is hung, not slow


def identities(fds: Iterable[int] | None = None) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of the given descriptors (default: every one this process has)."""
    if fds is None:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    out = set()
    for fd in fds:
        try:
            st = os.fstat(fd)
        except OSError:
            continue  # the listing's own descriptor, gone already
        out.add((st.st_dev, st.st_ino))
    return out


def in_child(fn: Callable[..., object], *args: object) -> object:
    """``fn(*args)`` in a forked child; its result, which must pickle."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanups
        try:
            os.close(r)
            try:
                reply = ("ok", fn(*args))
            except BaseException as exc:  # noqa: BLE001 - reported to the test process
                reply = ("error", repr(exc))
            data = pickle.dumps(reply)
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = _read_all(r, pid)
    finally:
        os.close(r)
    os.waitpid(pid, 0)
    status, value = pickle.loads(data)
    assert status == "ok", f"the forked child failed: {value}"
    return value


def _read_all(fd: int, pid: int) -> bytes:
    chunks = []
    deadline = time.monotonic() + HANG_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the forked child hung for {HANG_S:.0f} s")
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
