"""A long-lived reader sees every commit, whatever the writer processes do.

Short-lived writer processes each open the region as the writer, change one key and
exit, while two reader processes poll ``get``, ``exists`` and ``ls``. Every round is the
pattern that left a RocksDB secondary on an old version for good: a writer commits
version A (the readers see it), a second writer commits B and exits, and a third opens
the region as the writer without writing any record (``gc``) before the readers happen
to catch up. That third open flushes the second writer's WAL into a table file and
deletes it; a secondary that had replayed A from the WAL into its memtable kept
answering A while B sat in the table file below it.

The test asserts eventual observation only (each reader must show each committed state
within ``catch_up_s`` plus a generous slack), never how fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CATCH_UP_S = 0.2
SLACK_S = 15.0  # generous: a loaded CI machine must not fail a correct build

# One process that imports blobtier once, then forks a fresh writer process per command:
# each child opens the region, does one thing, and exits (closing or not).
WRITERS = r"""
import json, os, signal, sys
import blobtier
region = sys.argv[1]
for line in sys.stdin:
    op, key, value, ending = json.loads(line)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            c = blobtier.connect(region)
            if op == "put":
                out = c.put(key, value.encode()).version
            elif op == "delete":
                c.delete(key)
                out = None
            else:
                c.gc(grace_s=3600)  # takes the writer lock, writes no record
                out = None
            os.write(w, json.dumps(out).encode())
            if ending == "close":
                c.close()
            elif ending == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
        except BaseException as exc:
            os.write(w, json.dumps({"error": repr(exc)}).encode())
        os._exit(0)
    os.close(w)
    reply = os.read(r, 4096)
    os.close(r)
    os.waitpid(pid, 0)
    print(reply.decode(), flush=True)
"""

# Polls get, exists and ls of one key and prints each operation's answer when it changes.
READER = r"""
import json, sys, time
import blobtier
region, key, catch_up = sys.argv[1], sys.argv[2], float(sys.argv[3])
last = {}
with blobtier.connect(region, client={"metadata_staleness_s": catch_up}) as c:
    while True:
        try:
            got = bytes(c.get(key)).decode()
        except FileNotFoundError:
            got = None
        seen = {"get": got, "exists": c.exists(key),
                "ls": [[i.key, i.version] for i in c.ls(key.split("/")[0] + "/")]}
        for op, answer in seen.items():
            if last.get(op, "unset") != answer:
                last[op] = answer
                print(json.dumps([op, answer]), flush=True)
        time.sleep(0.1)
"""


class Reader:
    def __init__(self, region: str, key: str, env: dict) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", READER, region, key, str(CATCH_UP_S)],
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.latest: dict[str, object] = {}
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        for line in self.proc.stdout:
            op, answer = json.loads(line)
            self.latest[op] = answer

    def shows(self, want: dict) -> bool:
        return all(self.latest.get(op, "unset") == answer for op, answer in want.items())


@pytest.fixture
def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def test_two_polling_readers_see_every_commit_of_24_writer_processes(tmp_path, env):
    region = str(tmp_path / "region")
    writers = subprocess.Popen([sys.executable, "-c", WRITERS, region], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def write(op: str, value: str = "", ending: str = "close") -> object:
        writers.stdin.write(json.dumps([op, "ns/k", value, ending]) + "\n")
        writers.stdin.flush()
        reply = json.loads(writers.stdout.readline())
        assert not (isinstance(reply, dict) and "error" in reply), reply
        return reply

    readers: list[Reader] = []
    try:
        write("put", "start")
        readers = [Reader(region, "ns/k", env) for _ in range(2)]
        processes = 1
        for i in range(8):
            endings = ("close", "exit", "kill")
            version = write("put", f"a{i}", endings[i % 3])
            expect(readers, {"get": f"a{i}", "exists": True, "ls": [["ns/k", version]]}, f"round {i}: a{i}")
            # Back to back: a commit, then an open that writes no record.
            if i % 4 == 3:
                write("delete", ending=endings[(i + 1) % 3])
                want = {"get": None, "exists": False, "ls": []}
            else:
                version = write("put", f"b{i}", endings[(i + 1) % 3])
                want = {"get": f"b{i}", "exists": True, "ls": [["ns/k", version]]}
            write("gc", ending=endings[(i + 2) % 3])
            processes += 3
            expect(readers, want, f"round {i}: after b{i} and an open that wrote nothing")
        assert processes >= 20
    finally:
        for r in readers:
            r.proc.kill()
            r.proc.wait()
        writers.stdin.close()
        writers.wait(30)


def expect(readers: list[Reader], want: dict, what: str) -> None:
    deadline = time.monotonic() + CATCH_UP_S + SLACK_S
    while not all(r.shows(want) for r in readers):
        for r in readers:
            assert r.proc.poll() is None, f"a reader process died (exit {r.proc.returncode})"
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: readers still show {[r.latest for r in readers]}, want {want}")
        time.sleep(0.01)
