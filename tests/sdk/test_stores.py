"""Several processes on one embedded region: readers need no lock, one writer at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import blobtier
from blobtier import RegionLocked


def run_py(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_second_writer_gets_an_error_naming_the_holder(region):
    with blobtier.connect(region) as writer:
        writer.put("ns/a", b"one")
        proc = run_py("""
            import sys, blobtier
            c = blobtier.connect(sys.argv[1])
            print(bytes(c.get("ns/a")).decode())      # reading needs no lock
            try:
                c.put("ns/b", b"two")
            except blobtier.RegionLocked as exc:
                print("LOCKED", exc)
            """, region)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0] == "one"
        assert lines[1].startswith("LOCKED") and f"pid {os.getpid()}" in lines[1]
        writer.put("ns/c", b"the holder keeps writing")
    # Closing releases the lock: now another process may write.
    proc = run_py("""
        import sys, blobtier
        with blobtier.connect(sys.argv[1]) as c:
            c.put("ns/b", b"two")
        """, region)
    assert proc.returncode == 0, proc.stderr
    with blobtier.connect(region) as c:
        assert bytes(c.get("ns/b")) == b"two"


def test_reader_process_sees_commits_made_after_it_opened(region):
    with blobtier.connect(region) as writer:
        writer.put("ns/first", b"1")
        reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
            import sys, blobtier
            c = blobtier.connect(sys.argv[1])
            print(bytes(c.get("ns/first")).decode(), flush=True)
            sys.stdin.readline()
            print(bytes(c.get("ns/second")).decode(), [i.key for i in c.ls("ns/")], flush=True)
            """), region], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert reader.stdout.readline().strip() == "1"
            writer.put("ns/second", b"2" * 100_000)
            writer.put("ns/second", b"2")  # overwritten: the reader must see the new version
            reader.stdin.write("go\n")
            reader.stdin.flush()
            assert reader.stdout.readline().strip() == "2 ['ns/first', 'ns/second']"
        finally:
            reader.kill()
            reader.wait()


def test_lock_is_released_when_the_holder_is_killed(region):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time, blobtier
        c = blobtier.connect(sys.argv[1])
        c.put("ns/x", b"x")
        print("holding", flush=True)
        time.sleep(600)
        """), region], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with blobtier.connect(region) as c, pytest.raises(RegionLocked):
            c.put("ns/y", b"y")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with blobtier.connect(region) as c:
        c.put("ns/y", b"y")
        assert bytes(c.get("ns/x")) == b"x"


def test_a_fresh_region_reads_as_empty(region):
    with blobtier.connect(region) as c:
        assert c.ls() == []
        assert not c.exists("ns/x")
        with pytest.raises(FileNotFoundError):
            c.get("ns/x")
