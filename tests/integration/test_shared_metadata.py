"""Many writers on one region (issue 13 item 4): with the metadata in a metadata service
or in Redis and the chunks on chunk servers, writer processes write at once with no lock,
and ``gc`` runs while they commit without losing any committed chunk.

Real parts throughout: chunk servers and a metadata service (over RocksDB) as gRPC
servers on loopback, a ``redis-server``, and writers as separate processes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time

import pytest

import blobtier
from blobtier.errors import InvalidRequest, TimedOut
from tests import redis_cluster

GRACE_S = 1.0


@pytest.fixture(params=["service", "redis"])
def region_toml(request, tmp_path, chunk_servers):
    """A region file whose clients share the metadata: through a metadata service, or
    straight to Redis; the chunks are on the chunk servers."""
    if request.param == "service":
        where = f"endpoints = [\"{request.getfixturevalue('meta_service').address}\"]"
    else:
        node = redis_cluster.RedisNode(str(tmp_path / "redis"))
        request.addfinalizer(node.stop)
        where = f"redis = [\"{node.address}\"]"
    path = tmp_path / "region.toml"
    path.write_text(textwrap.dedent(f"""\
        root = "{tmp_path / 'region'}"
        [metadata]
        {where}
        [block]
        endpoints = {chunk_servers.addresses!r}
        replicas = 2
        [client]
        chunk_size = "64KiB"
        [cache]
        l1_bytes = "8MiB"
        """).replace("'", '"'))
    return str(path)


def data_of(name: str, n: int) -> bytes:
    return hashlib.sha256(f"{name}/{n}".encode()).digest() * (1 + n % 5) * 1000  # 32k..160k


def run_writer(region: str, code: str, *args: str) -> subprocess.Popen:
    prelude = textwrap.dedent("""\
        import hashlib, sys, blobtier
        def data_of(name, n):
            return hashlib.sha256(f"{name}/{n}".encode()).digest() * (1 + n % 5) * 1000
        c = blobtier.connect(sys.argv[1])
        """)
    return subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code), region, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


# -- any number of writers at once ---------------------------------------------------------------
WRITER = """
name, rounds = sys.argv[2], int(sys.argv[3])
sys.stdin.readline()  # start together
acked = 0
for i in range(rounds):
    c.put(f"ns/{name}/{i:03d}", data_of(name, i))
    try:  # every writer overwrites one key too: a put that keeps losing raises
        c.put("ns/shared", data_of("shared", i))
        acked += 1
    except blobtier.VersionConflict:
        pass
print(c._wiring.stores.lock is not None, acked, flush=True)
c.close()
"""


def test_writer_processes_write_one_region_at_once(region_toml):
    rounds = 10
    writers = [run_writer(region_toml, WRITER, f"w{n}", str(rounds)) for n in range(3)]
    try:
        for w in writers:
            w.stdin.write("go\n")
            w.stdin.flush()
        with blobtier.connect(region_toml) as here:  # and this process writes meanwhile
            for i in range(rounds):
                here.put(f"ns/here/{i:03d}", data_of("here", i))
            outs = [finish(w).split() for w in writers]
            assert [lock for lock, _ in outs] == ["False"] * 3  # no writer lock was taken
            for name in ("w0", "w1", "w2", "here"):
                for i in range(rounds):
                    assert bytes(here.get(f"ns/{name}/{i:03d}")) == data_of(name, i)
            # Every acknowledged put of the shared key committed once: none lost, none doubled.
            acked = sum(int(n) for _, n in outs)
            assert acked > 0 and here.stat("ns/shared").version == acked
            assert here.ls("ns/")[-1].key == f"ns/w2/{rounds - 1:03d}"
            assert not os.path.exists(os.path.join(here.config.root, "writer.lock"))
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()


# -- gc while writers commit ------------------------------------------------------------------
SLOW_WRITER = """
w = c._write_path()
(p,) = w._begin([("ns/slow", {})])
w._store([p], w._stage(p, memoryview(data_of("slow", 7))))
print("stored", flush=True)
sys.stdin.readline()  # commit when told
((ok, rec),) = w._commit([p])
print("committed", ok, rec.version, flush=True)
sys.stdin.readline()
c.close()
"""


def wait_older_than_grace(started: float) -> None:
    """Chunk write times are whole seconds (rounded up by gc): past this, chunks stored
    after ``started`` are old enough for gc to take if nothing references them."""
    time.sleep(max(0.0, started + GRACE_S + 1.1 - time.time()))


def test_gc_spares_a_commit_landing_during_its_listing(region_toml, monkeypatch):
    """A writer stored its chunks long ago (older than gc's grace) and commits while gc
    lists the metadata, after the listing passed its key: the second pass sees the
    commit, and its chunks stay. A single listing would have collected them."""
    with blobtier.connect(region_toml) as c:
        c.put("ns/old", data_of("old", 1))
        c.put("ns/old", data_of("old", 2))  # version 1's chunks are garbage now
        writer = run_writer(region_toml, SLOW_WRITER)
        try:
            assert writer.stdout.readline() == "stored\n"
            wait_older_than_grace(time.time())
            store = c._write_path().metadata
            listing, listed = store.listing, []

            def listing_then_commit(prefix=""):
                yield from listing(prefix)
                if not listed:  # the first full listing is over: now the writer commits
                    listed.append(1)
                    writer.stdin.write("commit\n")
                    writer.stdin.flush()
                    assert writer.stdout.readline() == "committed True 1\n"

            monkeypatch.setattr(store, "listing", listing_then_commit)
            report = c.gc(grace_s=GRACE_S)
            assert listed and report.deleted_chunks >= 2  # the old version's chunk, 2 replicas
            writer.stdin.write("exit\n")
            writer.stdin.flush()
            finish(writer)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    with blobtier.connect(region_toml) as fresh:
        assert bytes(fresh.get("ns/slow")) == data_of("slow", 7)
        assert bytes(fresh.get("ns/old")) == data_of("old", 2)


LOOP_WRITER = """
i = 0
while not os.path.exists(sys.argv[2]):
    key = f"ns/loop/{i % 8}"
    info = c.put(key, data_of("loop", i))
    print(key, info.version, i, flush=True)
    i += 1
c.close()
"""


def test_gc_runs_while_a_writer_process_commits(region_toml, tmp_path):
    """A writer overwrites keys as fast as it can while gc runs again and again: every
    version it was told is committed stays readable until replaced, the last ones at the
    end, and gc does collect the versions it replaced."""
    stop = tmp_path / "stop"
    writer = run_writer(region_toml, "import os\n" + LOOP_WRITER, str(stop))
    deleted = 0
    try:
        assert writer.stdout.readline()  # it commits
        wait_older_than_grace(time.time())  # the first versions are old garbage by now
        with blobtier.connect(region_toml) as c:
            for _ in range(3):
                deleted += c.gc(grace_s=GRACE_S).deleted_chunks
                for k in range(8):  # whatever is current now reads whole
                    info = c.stat(f"ns/loop/{k}")
                    assert len(bytes(c.get(f"ns/loop/{k}"))) == info.size
        stop.write_text("")
        acked = [line.split() for line in finish(writer).splitlines()]
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert deleted > 0
    last = {key: (int(version), int(i)) for key, version, i in acked}
    with blobtier.connect(region_toml) as c:
        c.gc(grace_s=GRACE_S)
        for key, (version, i) in last.items():
            assert c.stat(key).version == version
            assert bytes(c.get(key)) == data_of("loop", i)


def test_gc_without_a_grace_period_is_refused(region_toml):
    with blobtier.connect(region_toml) as c:
        c.put("ns/a", b"a")
        with pytest.raises(InvalidRequest, match="grace period of 0"):
            c.gc(grace_s=0)
        assert bytes(c.get("ns/a")) == b"a"


def test_a_write_slower_than_half_the_grace_commits_nothing(region_toml):
    """gc elsewhere spares unreferenced chunks only while younger than its grace: a write
    that took longer than half of it is not committed (its chunks may be gone)."""
    with blobtier.connect(region_toml, client={"gc_grace_s": 1.0}) as c:
        c.put("ns/quick", b"in time")
        out = c.open("ns/late", "wb")
        out.write(b"x" * 100_000)
        time.sleep(0.6)
        with pytest.raises(TimedOut, match="ns/late: not committed"):
            out.close()
        assert not c.exists("ns/late") and bytes(c.get("ns/quick")) == b"in time"
