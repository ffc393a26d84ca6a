"""Descriptors and per-process state across fork and exec (issue 19, items 1 and 2)."""

from __future__ import annotations

import fcntl
import os

import blobtier
from blobtier import forks
from blobtier.cache_l1_l2.daemon import HostDaemon
from blobtier.cache_l1_l2.l1 import SharedL1Cache
from blobtier.cache_l1_l2.wire import OwnerClient
from blobtier.chunks import ChunkKey
from blobtier.metrics import serve_metrics, stop_metrics
from tests.fork_support import identities, in_child


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _inheritable(fds: set[int]) -> list[str]:
    out = []
    for fd in sorted(fds):
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed since the listing
        if not flags & fcntl.FD_CLOEXEC:
            out.append(f"fd {fd} -> {target}")
    return out


def test_every_descriptor_the_package_opens_is_close_on_exec(tmp_path):
    before = _open_fds()
    sock = str(tmp_path / "daemon.sock")
    daemon = HostDaemon(4 << 20, socket_path=sock, metrics_port=0)
    try:
        # A writer with an L1 of its own (arena, owner socket), RocksDB, volumes, the lock.
        with blobtier.connect(str(tmp_path / "region"), cache={"l1_bytes": "4MiB", "daemon": "off"},
                              client={"chunk_size": "64KiB"}) as writer:
            writer.put_many([(f"ns/{i}", os.urandom(100_000)) for i in range(8)])
            views = [writer.get(f"ns/{i}") for i in range(8)]
            # A reader of that arena in this process: its segment arrives over SCM_RIGHTS.
            reader = SharedL1Cache(socket_path=writer._arena.socket_path)
            reader.put(ChunkKey(b"k" * 16, 1, 0), b"x" * 5000)
            held = reader.get_many([ChunkKey(b"k" * 16, 1, 0)])
            # A client of the host daemon (probe and attach), reading a secondary's metadata.
            with blobtier.connect(str(tmp_path / "region"), cache={"daemon": sock}) as client:
                views += [client.get(f"ns/{i}") for i in range(8)]
                opened = _open_fds() - before
                problems = _inheritable(opened)
            reader.close()
        assert len(opened) > 10  # what was exercised did open descriptors
        assert not problems, problems
        del views, held
    finally:
        daemon.stop()


def test_a_segment_received_from_the_owner_is_close_on_exec(tmp_path):
    daemon = HostDaemon(1 << 20, socket_path=str(tmp_path / "d.sock"))
    try:
        info, fd = OwnerClient(daemon.socket_path).info()
        try:
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        finally:
            os.close(fd)
    finally:
        daemon.stop()


def _endpoint_in_child(server, ids: set) -> bool:
    held = bool(identities() & ids)
    stop_metrics(server)  # the parent's: nothing to stop here, and no waiting for its thread
    return held


def test_a_forked_child_holds_no_metrics_endpoint_socket():
    from prometheus_client import CollectorRegistry

    server = serve_metrics(0, CollectorRegistry())
    try:
        ids = identities([server.socket.fileno()])
        assert in_child(_endpoint_in_child, server, ids) is False
    finally:
        stop_metrics(server)


class _Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.events: list[str] = []
        forks.register(self)

    def _before_fork(self) -> None:
        self.events.append("before")

    def _after_fork_in_parent(self) -> None:
        self.events.append("parent")

    def _after_fork_in_child(self) -> None:
        self.events.append("child")
        if self.fail:
            raise RuntimeError("a reset that fails")


def _events(recorders: list[_Recorder]) -> list[list[str]]:
    return [r.events for r in recorders]


def test_hooks_run_around_every_fork_and_one_failure_skips_no_other():
    recorders = [_Recorder(fail=True), _Recorder(), _Recorder(fail=True)]
    in_child_events = in_child(_events, recorders)
    assert in_child_events == [["before", "child"]] * 3
    assert _events(recorders) == [["before", "parent"]] * 3
