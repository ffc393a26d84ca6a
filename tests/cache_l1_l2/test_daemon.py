"""The host daemon as a real process: shared L1 for several clients, faults, cleanup."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile

import pytest

import blobtier
from blobtier.cache_l1_l2.daemon import find_daemon
from blobtier.cache_l1_l2.wire import OwnerClient


def start_daemon(sock: str, memory: str = "32MiB", *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "blobtier.cli", "daemon", "--memory", memory,
                             "--socket", sock, *extra], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "blobtier daemon" in line, line
    return proc


@pytest.fixture
def sock():
    run = tempfile.mkdtemp(prefix="bt-test-")  # 0700 and ours (trust.py); sun_path is short
    yield os.path.join(run, "d.sock")
    shutil.rmtree(run, ignore_errors=True)


@pytest.fixture
def daemon(sock):
    proc = start_daemon(sock)
    yield proc
    proc.terminate()
    assert proc.wait(30) == 0


def payload(i: int) -> bytes:
    return bytes([i % 251]) * (60_000 + (i * 7919) % 90_000)


def reader(region: str, sock: str, keys: list[str], rounds: int, seed: int, out) -> None:
    import random

    rng = random.Random(seed)
    bad = 0
    with blobtier.connect(region, cache={"daemon": sock}) as c:
        for _ in range(rounds):
            batch = rng.sample(keys, 8)
            for key, view in zip(batch, c.get_many(batch)):
                bad += bytes(view) != payload(int(key.rsplit("/", 1)[1]))
    out.put(bad)


def test_clients_share_the_daemon_l1_under_memory_pressure(region, sock, daemon):
    keys = [f"ns/{i}" for i in range(120)]  # ~12 MiB of chunks... per pass, arena 32 MiB
    with blobtier.connect(region) as c:
        c.put_many([(k, payload(i)) for i, k in enumerate(keys)] +
                   [(f"ns/{i}", payload(i)) for i in range(120, 600)])
    keys = [f"ns/{i}" for i in range(600)]  # ~60 MiB: twice the arena
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=reader, args=(region, sock, keys, 40, s, out)) for s in range(4)]
    for p in procs:
        p.start()
    bad = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert bad == [0, 0, 0, 0]
    stats = OwnerClient(sock).stats()
    assert stats["evictions"] > 0 and stats["hits"] > 0
    assert stats["used_bytes"] <= stats["capacity"] == 32 << 20


def test_kill_9_of_the_daemon_during_reads_fails_no_read(region, sock):
    proc = start_daemon(sock)
    keys = [f"ns/{i}" for i in range(50)]
    with blobtier.connect(region) as c:
        c.put_many([(k, payload(i)) for i, k in enumerate(keys)])
    with blobtier.connect(region, cache={"daemon": sock}) as c:
        for round_ in range(30):
            if round_ == 10:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            if round_ == 20:
                proc = start_daemon(sock)
            for i, view in enumerate(c.get_many(keys)):
                assert bytes(view) == payload(i)
        assert c.stats()["l1"]["errors"] > 0  # the dead daemon was skipped, not fatal
        assert c.stats()["l1"]["hits"] > 0
    proc.terminate()
    proc.wait(30)


def test_malformed_messages_do_not_crash_the_daemon(sock, daemon):
    for junk in [b"\xff" * 9, struct.pack("<BII", 2, 3, 5) + b"short", struct.pack("<BII", 77, 0, 0),
                 struct.pack("<BII", 2, 1 << 30, 1 << 30)]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock)
        s.sendall(junk)
        s.settimeout(5)
        try:
            s.recv(100)
        except OSError:
            pass
        s.close()
    assert find_daemon(sock) == sock
    assert daemon.poll() is None


def test_daemon_leaves_no_shared_memory_and_no_socket(sock):
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    proc = start_daemon(sock)
    assert find_daemon(sock) == sock
    proc.terminate()
    assert proc.wait(30) == 0
    assert not os.path.exists(sock)
    after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert after <= before


def test_second_daemon_on_the_same_socket_is_refused(sock, daemon):
    proc = subprocess.run([sys.executable, "-m", "blobtier.cli", "daemon", "--socket", sock],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "already serves" in proc.stderr


def test_daemon_imports_no_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import blobtier.cache_l1_l2.daemon, blobtier.cli\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_client_without_daemon_uses_its_own_arena(region, sock):
    assert find_daemon(sock) is None
    with blobtier.connect(region, cache={"daemon": sock}) as c:
        assert c._arena is not None
