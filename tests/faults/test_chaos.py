"""Chaos: readers keep reading right bytes while a nemesis kills services and flips bytes.

Three chunk servers, one flash node and the host daemon run as their own processes (the
``blobtier ... serve`` commands a region runs); three reader processes read random blobs
through L1 (the daemon's arena), L3 (the flash node) and the block layer for
``CHAOS_SECONDS``, and until ``MIN_FAULTS`` faults were injected. Meanwhile the nemesis, one
fault at a time, SIGKILLs and restarts a chunk server, the flash node or the daemon, and
flips bytes in chunk-server volumes and in flash region files. The test asserts what the
region promises: no read fails and none returns a wrong byte; and that the nemesis really
injected faults of every kind (a chaos test that injected nothing would pass for the wrong
reason).

Flips only ever hit one chunk server's files, and at most one chunk server is down at a
time, so every chunk keeps at least one good replica: the region is never asked for more
than replication can give.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import blobtier
from tests.integration.region_support import free_base_port

CHAOS_SECONDS = float(os.environ.get("BLOBTIER_CHAOS_SECONDS", "30"))
CHUNK = 64 * 1024

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READER = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {ROOT!r})
    import blobtier
    from tests.faults.reader_loop import read_until_stopped
    region, endpoints, flash, sock, expected_file, out, stop_file, seed = sys.argv[1:]
    client = blobtier.connect(region, block={{"endpoints": endpoints.split(",")}},
                              flash={{"endpoints": [flash], "request_timeout_s": 5,
                                     "retry_after_s": 0.2}},
                              client={{"chunk_size": "64KiB"}}, cache={{"daemon": sock}})
    read_until_stopped(client, expected_file, stop_file, out, int(seed), 4)
""")



class Service:
    """One ``blobtier`` server process that the nemesis may kill and start again."""

    def __init__(self, name: str, argv: list[str], ready: str, log_dir: str) -> None:
        self.name, self.argv, self.ready = name, argv, ready
        self.log = os.path.join(log_dir, f"{name}.log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "blobtier.cli", *self.argv],
                                     stdout=subprocess.PIPE, stderr=open(self.log, "ab"), text=True)
        line = self.proc.stdout.readline()
        assert self.ready in line, f"{self.name} did not start: {line!r}; see {self.log}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def flip_bytes(directory: str, rng: random.Random, n: int = 8) -> int:
    """Flip one bit in each of ``n`` random places of the largest files under ``directory``."""
    files = []
    for dirpath, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(dirpath, name)
            size = os.path.getsize(path)
            if size > 4096:
                files.append((size, path))
    if not files:
        return 0
    files.sort(reverse=True)
    flipped = 0
    for _ in range(n):
        size, path = rng.choice(files[:4])
        with open(path, "r+b") as f:
            offset = rng.randrange(size)
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ (1 << rng.randrange(8))]))
        flipped += 1
    return flipped


@pytest.fixture
def services(tmp_path):
    base = free_base_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    chunk_ports = [base + i for i in range(3)]
    endpoints = ",".join(f"127.0.0.1:{p}" for p in chunk_ports)
    chunks = [Service(f"chunks{i}", ["block", "serve", "--root", str(tmp_path / f"chunks{i}"),
                                     "--port", str(port), "--id", str(i)], "serving", str(logs))
              for i, port in enumerate(chunk_ports)]
    flash = Service("flash", ["flash", "serve", "--dir", str(tmp_path / "flash"), "--capacity", "32MiB",
                              "--region-size", "1MiB", "--port", str(base + 3),
                              "--block-endpoints", endpoints, "--hedge-after-ms", "-1"],
                    "serving", str(logs))
    sock = str(run / "daemon.sock")
    daemon = Service("daemon", ["daemon", "--memory", "4MiB", "--socket", sock], "daemon", str(logs))
    started = []
    try:
        for s in [*chunks, flash, daemon]:
            s.start()
            started.append(s)
        yield {"chunks": chunks, "flash": flash, "daemon": daemon, "endpoints": endpoints,
               "flash_addr": f"127.0.0.1:{base + 3}", "socket": sock, "root": tmp_path}
    finally:
        for s in started:
            s.stop()


def write_dataset(region: str, endpoints: str) -> dict[str, str]:
    rng = random.Random(7)
    blobs = {f"chaos/{i:03d}": rng.randbytes(40_000 + 3_001 * i) for i in range(48)}
    with blobtier.connect(region, block={"endpoints": endpoints.split(",")},
                          client={"chunk_size": "64KiB"}, cache={"daemon": "off", "l1_bytes": 0}) as c:
        c.put_many(blobs)
    return {k: hashlib.sha256(v).hexdigest() for k, v in blobs.items()}


MIN_FAULTS = 15


def nemesis(svc: dict, seconds: float, rng: random.Random) -> dict[str, int]:
    """Inject one fault at a time until ``seconds`` have passed and at least ``MIN_FAULTS``
    were injected (a slow machine gets more time, not fewer faults); count each kind."""
    injected = {"kill_chunk_server": 0, "kill_flash": 0, "kill_daemon": 0,
                "flip_chunk_file": 0, "flip_flash_file": 0}
    kinds = list(injected)
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline or sum(injected.values()) < MIN_FAULTS:
        kind = kinds[i % len(kinds)] if i < len(kinds) else rng.choice(kinds)
        i += 1
        time.sleep(rng.uniform(0.2, 0.6))
        if kind == "kill_chunk_server":
            victim = rng.choice(svc["chunks"])
            victim.kill()
            time.sleep(rng.uniform(0.2, 0.8))
            victim.start()
        elif kind == "kill_flash":
            svc["flash"].kill()
            time.sleep(rng.uniform(0.2, 0.8))
            svc["flash"].start()
        elif kind == "kill_daemon":
            svc["daemon"].kill()
            time.sleep(rng.uniform(0.1, 0.5))
            svc["daemon"].start()
        elif kind == "flip_chunk_file":  # only server 0's files: see the module docstring
            if not flip_bytes(str(svc["root"] / "chunks0"), rng):
                continue
        elif kind == "flip_flash_file":
            if not flip_bytes(str(svc["root"] / "flash"), rng):
                continue
        injected[kind] += 1
    return injected


@pytest.mark.slow
def test_readers_get_right_bytes_while_services_die_and_bytes_flip(tmp_path, region, services):
    expected = write_dataset(region, services["endpoints"])
    expected_file = tmp_path / "expected.json"
    expected_file.write_text(json.dumps(expected))
    stop_file = tmp_path / "stop"
    readers = []
    for i in range(3):
        out = tmp_path / f"reader{i}.json"
        readers.append((out, subprocess.Popen(
            [sys.executable, "-c", READER, region, services["endpoints"], services["flash_addr"],
             services["socket"], str(expected_file), str(out), str(stop_file), str(i)],
            stderr=open(tmp_path / f"reader{i}.log", "wb"))))
    try:
        injected = nemesis(services, CHAOS_SECONDS, random.Random(11))
    finally:
        stop_file.touch()
        for _, proc in readers:
            proc.wait(120)
    results = []
    for out, proc in readers:
        assert proc.returncode == 0, (tmp_path / f"{out.stem}.log").read_text()[-3000:]
        results.append(json.loads(out.read_text()))
    total = sum(r["reads"] for r in results)
    failed = [f for r in results for f in r["failed"]]
    wrong = [w for r in results for w in r["wrong"]]
    print(f"chaos: {total} reads, {len(failed)} failed, {len(wrong)} wrong, injected {injected}")
    assert sum(injected.values()) >= MIN_FAULTS and all(injected.values()), injected
    assert total > 0
    assert not wrong, wrong[:10]
    assert not failed, failed[:10]
