"""The host daemon dies under its readers: no read fails and none returns a wrong byte.

Three reader processes read random blobs through the daemon's L1 (small enough that they
keep filling it: claims, commits and releases all the time) while the test SIGKILLs the
daemon twenty times, starting it again after each kill. Each read is checked against the
bytes written. Every path that talks to the daemon (lookup, claim, unclaim, fill, release,
announce) must turn a dead daemon into a miss and go on below.

The daemon is forked from a small launcher process that has already imported it, so a
restart takes milliseconds and twenty kills fit in a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

import blobtier

KILLS = 20

# Reads stdin lines: "start" forks a daemon on SOCK and prints its pid once it listens.
LAUNCHER = textwrap.dedent("""
    import os, sys
    from blobtier.cache_l1_l2.daemon import HostDaemon
    sock = sys.argv[1]
    for line in sys.stdin:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            daemon = HostDaemon(6 << 20, "sieve", socket_path=sock)
            os.write(w, b"up")
            os.close(w)
            daemon.serve_until_signalled()
            os._exit(0)
        os.close(w)
        ok = os.read(r, 2) == b"up"
        os.close(r)
        print(pid if ok else -1, flush=True)
        while True:  # reap the daemons killed so far
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
""")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READER = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {ROOT!r})
    import blobtier
    from tests.faults.reader_loop import read_until_stopped
    region, sock, expected_file, stop_file, out, seed = sys.argv[1:]
    client = blobtier.connect(region, cache={{"daemon": sock}})
    assert client._l1 is not None and client._arena is None, "not attached to the daemon"
    print("ready", flush=True)
    read_until_stopped(client, expected_file, stop_file, out, int(seed), 3, announce=0.1)
""")



class Launcher:
    """A process that forks a fresh daemon on ``sock`` whenever asked."""

    def __init__(self, sock: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, sock], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = 0

    def start(self) -> None:
        self.proc.stdin.write("start\n")
        self.proc.stdin.flush()
        self.pid = int(self.proc.stdout.readline())
        assert self.pid > 0, "the daemon did not start"

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.pid = 0

    def close(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGTERM)
        self.proc.stdin.close()
        self.proc.wait(30)
        self.proc.stdout.close()


@pytest.fixture
def sock():
    run = tempfile.mkdtemp(prefix="bt-run-")  # 0700, ours; short enough for sun_path
    yield os.path.join(run, "daemon.sock")
    shutil.rmtree(run, ignore_errors=True)


def write_dataset(region: str) -> dict[str, str]:
    rng = random.Random(11)
    # 160 blobs of 1 to 4 chunks, ~19 MiB: three times the daemon's arena, so readers fill it.
    blobs = {f"kill/{i:03d}": rng.randbytes(20_000 + 1_571 * i) for i in range(160)}
    with blobtier.connect(region, client={"chunk_size": "64KiB"}, cache={"daemon": "off"}) as c:
        c.put_many(blobs)
    return {k: hashlib.sha256(v).hexdigest() for k, v in blobs.items()}


def test_twenty_kills_of_the_daemon_under_three_readers_fail_no_read(tmp_path, region, sock):
    expected = write_dataset(region)
    expected_file, stop_file = tmp_path / "expected.json", tmp_path / "stop"
    expected_file.write_text(json.dumps(expected))
    launcher = Launcher(sock)
    readers: list[subprocess.Popen] = []
    try:
        launcher.start()
        for seed in range(3):
            readers.append(subprocess.Popen(
                [sys.executable, "-c", READER, region, sock, str(expected_file), str(stop_file),
                 str(tmp_path / f"reader{seed}.json"), str(seed)], stdout=subprocess.PIPE, text=True))
        for r in readers:
            assert r.stdout.readline().strip() == "ready"
        rng = random.Random(5)
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.1, 0.3))  # readers reattach and fill while it lives
            launcher.kill()
            time.sleep(rng.uniform(0.0, 0.1))  # ... and read from below while it is dead
            launcher.start()
        time.sleep(0.3)
    finally:
        stop_file.write_text("")
        for r in readers:
            r.wait(60)
            r.stdout.close()
        launcher.close()
    results = [json.loads((tmp_path / f"reader{seed}.json").read_text()) for seed in range(3)]
    failed = [f for r in results for f in r["failed"]]
    assert not failed, f"{len(failed)} reads failed, e.g. {failed[:3]}"
    assert not [w for r in results for w in r["wrong"]]
    assert all(r["reads"] > 100 for r in results), [r["reads"] for r in results]
