"""Volumes survive a writer killed at any point, and a power cut on top of it.

A child process writes (or compacts) a volume directory and dies by SIGKILL: at a named
step through the volume module's test hook (``CRASH_ENV``), or wherever it is when the
parent kills it. The parent then reopens the directory: every acknowledged write is
there with its exact bytes, every acknowledged delete stays deleted, and a write that was
in flight is either whole and valid or absent.
"""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest

from blobtier.blockstore_sim.volume import CRASH_ENV, VolumeStore
from tests.blockstore_sim.test_volume import assert_all_readable, digest, payload
from tests.faults.test_disk_faults import flip

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KiB = 1024

_PRELUDE = """
import json, os, sys
from blobtier.blockstore_sim.volume import CRASH_ENV, VolumeStore
from tests.blockstore_sim.test_volume import digest, item

def say(**msg):
    print(json.dumps(msg), flush=True)
"""


def child(code: str, *, crash_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop(CRASH_ENV, None)
    source = _PRELUDE + textwrap.dedent(code)
    if crash_at:
        source = source.replace("CRASH_HERE", f"os.environ[CRASH_ENV] = {crash_at!r}")
    err = tempfile.TemporaryFile()  # a file, not a pipe: nothing the child logs can block it
    proc = subprocess.Popen([sys.executable, "-c", source], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=err, text=True)
    proc.errfile = err
    return proc


def stderr_of(proc: subprocess.Popen) -> str:
    proc.errfile.seek(0)
    return proc.errfile.read()[-2000:].decode(errors="replace")


def finish(proc: subprocess.Popen) -> list[dict]:
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGKILL, f"child did not die at its step: {stderr_of(proc)}"
    return [json.loads(line) for line in out.splitlines()]


def valid_or_absent(s: VolumeStore, i: int, n: int = 1000) -> None:
    if s.exists(digest(i)):
        assert bytes(s.get(digest(i))) == payload(i, n)


@pytest.mark.parametrize("step", ["data-synced", "index-written"])
def test_crash_between_data_and_index_write(tmp_path, step):
    root = str(tmp_path / "vol")
    proc = child(f"""
        s = VolumeStore({root!r}, writable=True)
        for i in range(10):
            s.put_many([item(i)])
        say(acked=10)
        CRASH_HERE
        s.put_many([item(10), item(11)])
        say(acked=12)
        """, crash_at=step)
    assert finish(proc) == [{"acked": 10}]
    reader = VolumeStore(root)  # before any writer recovers the volume
    try:
        assert_all_readable(reader, range(10))
        for i in (10, 11):
            valid_or_absent(reader, i)
    finally:
        reader.close()
    s = VolumeStore(root, writable=True)
    try:
        assert_all_readable(s, range(10))
        for i in (10, 11):  # its data was synced: it is recovered whole from the data
            assert bytes(s.get(digest(i))) == payload(i)
    finally:
        s.close()


def test_sigkill_under_load_then_power_cut_loses_no_acknowledged_write(tmp_path):
    root = str(tmp_path / "vol")
    proc = child(f"""
        import random
        rng = random.Random(5)
        s = VolumeStore({root!r}, writable=True, volume_bytes=256 * 1024)
        n = 0
        while True:
            ids = list(range(n, n + 4))
            s.put_many([item(i, rng.randrange(1, 20_000)) for i in ids])
            say(put={{i: len(s.get(digest(i))) for i in ids}})
            if n >= 8:
                gone = [n - 8, n - 5]
                s.delete_many([digest(i) for i in gone])
                say(deleted=gone)
            n += 4
        """)
    acked: dict[int, int] = {}
    deleted: set[int] = set()

    def note(line: str) -> None:
        msg = json.loads(line)
        acked.update({int(i): n for i, n in msg.get("put", {}).items()})
        deleted.update(msg.get("deleted", []))

    while len(acked) < 240:
        line = proc.stdout.readline()
        assert line, f"the writer died first: {stderr_of(proc)}"
        note(line)
    proc.send_signal(signal.SIGKILL)
    rest = proc.stdout.read()  # what it acknowledged before it died (buffered here too)
    proc.wait(60)
    for line in rest.splitlines():
        try:
            note(line)
        except json.JSONDecodeError:  # cut short by the kill: not an acknowledgement
            pass
    n = max(acked) - 3  # the child may have been deleting two, or writing the next four
    in_flight = [i for i in (n - 8, n - 5, *range(n + 4, n + 8)) if i not in deleted]
    for i in in_flight:
        acked.pop(i, None)

    damaged: set[int] = set()

    def check() -> None:
        s = VolumeStore(root, writable=True, volume_bytes=256 * 1024)
        try:
            for i, n in acked.items():
                if i in deleted or i in damaged:
                    assert not s.exists(digest(i)), i
                else:
                    assert bytes(s.get(digest(i))) == payload(i, n), i
            for i in in_flight:
                if s.exists(digest(i)):  # whole and valid, or not there
                    data = bytes(s.get(digest(i)))
                    assert data == payload(i, len(data)), i
        finally:
            s.close()

    check()
    # A power cut also takes whatever of the indexes was not yet on disk: here, all of
    # the newest volume's and a random tail of another. The data decides, and a byte the
    # disk flipped in one chunk of the unindexed volume costs that chunk alone.
    s = VolumeStore(root)
    newest = max(loc[0] for loc in s._index.values())
    victim = next(i for i in sorted(acked) if i not in deleted and acked[i] > 100
                  and s._locate(digest(i))[0] == newest)
    vol, offset, length = s._locate(digest(victim))[:3]
    s.close()
    flip(os.path.join(root, f"{vol:08d}.dat"), offset + length // 2)
    damaged.add(victim)
    indexes = sorted(glob.glob(os.path.join(root, "*.idx")))
    assert len(indexes) >= 3 and indexes[-1].endswith(f"{newest:08d}.idx")
    os.unlink(indexes[-1])
    with open(indexes[0], "r+b") as f:
        f.truncate(random.Random(1).randrange(os.path.getsize(indexes[0]) // 48) * 48)
    check()


COMPACT_STEPS = ["compact-rolled", "compact-copying", "data-synced", "index-written",
                 "compact-copied", "compact-index-removed", "compact-data-removed"]


@pytest.mark.parametrize("step", COMPACT_STEPS)
def test_compaction_killed_at_each_step_keeps_every_live_chunk(tmp_path, step):
    root = str(tmp_path / "vol")
    proc = child(f"""
        s = VolumeStore({root!r}, writable=True, volume_bytes=64 * 1024)
        s.put_many([item(100, 4096)])
        for start in range(0, 60, 6):
            s.put_many([item(i, 4096) for i in range(start, start + 6)])
        s.put_many([item(i, 4096) for i in range(10)])  # written again: older copies dead
        s.delete_many([digest(i) for i in range(1, 60, 2)] + [digest(100)])
        say(file_bytes=s.stats()["file_bytes"])
        CRASH_HERE
        s.compact(min_dead_ratio=0.0)
        say(done=True)
        """, crash_at=step)
    (before,) = finish(proc)
    live, dead = range(0, 60, 2), [*range(1, 60, 2), 100]

    def check() -> VolumeStore:
        s = VolumeStore(root, writable=True, volume_bytes=64 * 1024)
        assert_all_readable(s, live, 4096)
        assert all(s.stored_checksum(digest(i)) for i in live)
        assert not any(s.exists(digest(i)) for i in dead)
        return s

    s = check()
    try:
        s.compact(min_dead_ratio=0.0)  # the next run finishes the job
        assert s.stats()["file_bytes"] <= 0.6 * before["file_bytes"]
    finally:
        s.close()
    check().close()
