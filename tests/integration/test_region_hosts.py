"""A region of three simulated hosts on one machine (``services.hosts = 3``), run as a user
runs it: `blobtier up` starts a daemon per host (its own arena, socket, loopback address
and L2 port), each the others' L2 peer and each reading the chunks homed at it through
from the flash node and chunk servers. One job (a process) per host reads a dataset
larger than one host's L1 but smaller than the three L1s for two epochs; the chunk
servers' and flash node's own counters show each chunk read from below once.

Without L2 fan-out each host would read every chunk from L3 itself (three L3 reads per
chunk), so the counts below fail with the feature off."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

import blobtier
from blobtier import runstate as state
from tests.integration.region_support import blobtier as run_cli
from tests.integration.region_support import free_base_port, kill_leftovers

HOSTS = 3
SAMPLES, SAMPLE_BYTES = 80, 128 << 10  # 10 MiB: above one host's 6 MiB L1, below three
BURST_BYTES = 256 << 20

# One job on one host: reads every sample once per epoch in its own shuffled order, in
# batches, checking every byte; prints a JSON line of what it delivered. With a `go` file
# it stops half way through its first epoch until the file exists (a daemon is killed then).
JOB = r"""
import hashlib, json, os, random, sys, time
import blobtier

config, n, epochs, seed, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

def data(i):
    return hashlib.sha256(str(i).encode()).digest() * (131072 // 32)

keys = [f"ds/{i:04d}" for i in range(n)]
delivered = [[0] * n for _ in range(epochs)]
client = blobtier.connect(config)
for epoch in range(epochs):
    order = list(range(n))
    random.Random(seed * 1000 + epoch).shuffle(order)
    for start in range(0, n, 8):
        if epoch == 0 and start == n // 2 and go != "-":
            print("half", flush=True)
            while not os.path.exists(go):
                time.sleep(0.02)
        batch = order[start:start + 8]
        for i, view in zip(batch, client.get_many([keys[i] for i in batch])):
            if bytes(view) != data(i):
                raise SystemExit(f"wrong bytes for {keys[i]}")
            delivered[epoch][i] += 1
print(json.dumps({"delivered": delivered, "daemon": client.config.cache.daemon,
                  "stats": client.stats()}), flush=True)
client.close()
"""

# One reader of the checkpoint: the whole blob through a file object, hashed.
READER = r"""
import hashlib, sys
import blobtier

with blobtier.connect(sys.argv[1]) as client, client.open("ckpt/model.bin") as f:
    digest = hashlib.sha256()
    while chunk := f.read(8 << 20):
        digest.update(chunk)
print(digest.hexdigest(), flush=True)
"""


def sample(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (SAMPLE_BYTES // 32)


def metrics(port: int) -> dict[str, float]:
    """The service's Prometheus samples, ``name{labels}`` -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def below_hosts(root: str) -> dict[str, float]:
    """Reads the tiers below the hosts served, from their own counters: chunk-server Get
    requests and bytes sent, flash-node gets (hits + misses)."""
    region = state.read(root)
    total = {"block_gets": 0.0, "block_bytes": 0.0, "l3_gets": 0.0}
    for s in region.services:
        m = metrics(s.metrics_port)
        if s.kind == "block":
            total["block_gets"] += m['blobtier_chunkserver_requests_total{method="Get"}']
            total["block_bytes"] += m.get("blobtier_chunkserver_sent_bytes_total",
                                          m.get("blobtier_chunkserver_bytes_sent_total"))  # its old name
        elif s.kind == "flash":
            total["l3_gets"] += m["blobtier_flash_hits_total"] + m["blobtier_flash_misses_total"]
    return total


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def start_up(tmp_path, memory: str, chunk: str) -> tuple[str, str]:
    """`blobtier up` of three hosts over 2 chunk servers (one replica: no hedged second
    read of a chunk) and a flash node."""
    root, base = tmp_path / "region", free_base_port()
    path = tmp_path / "region.toml"
    path.write_text(f'''root = "{root}"
[block]
servers = 2
replicas = 1
[client]
chunk_size = "{chunk}"
[services]
hosts = {HOSTS}
base_port = {base}
metrics_base_port = {base + 10}
flash_capacity_bytes = "512MiB"
flash_region_bytes = "8MiB"
daemon_memory_bytes = "{memory}"
''')
    up = run_cli("up", "-c", str(path))
    assert up.returncode == 0, up.stdout + up.stderr
    return str(path), str(root)


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hosts")
    path, root = start_up(tmp, "6MiB", "256KiB")
    with blobtier.connect(path, cache={"daemon": "off", "l1_bytes": 0}) as client:
        client.put_many([(f"ds/{i:04d}", sample(i)) for i in range(SAMPLES)])
    yield path, root
    run_cli("down", "-c", path)
    kill_leftovers(root)


def run_jobs(path: str, go: str = "-", epochs: int = 2, on_half=None) -> list[dict]:
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, path, str(SAMPLES), str(epochs), str(h), go],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "BLOBTIER_HOST": f"host-{h}"})
            for h in range(HOSTS)]
    try:
        if on_half is not None:
            for job in jobs:
                line = job.stdout.readline()
                assert line == "half\n", line + job.stderr.read()
            on_half()
        results = []
        for h, job in enumerate(jobs):
            out, err = job.communicate(timeout=300)
            assert job.returncode == 0, f"job on host-{h}: {err}"
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
            job.wait()


@pytest.mark.slow
def test_up_runs_a_daemon_per_host_and_status_lists_them(region):
    path, root = region
    daemons = state.read(root).of_kind("daemon")
    assert [d.name for d in daemons] == [f"daemon-{h}" for h in range(HOSTS)]
    assert len({d.address for d in daemons}) == HOSTS and len({d.socket for d in daemons}) == HOSTS
    status = run_cli("status", "-c", path)
    assert status.returncode == 0, status.stdout
    for d in daemons:
        assert d.name in status.stdout
    # A client picks its host by BLOBTIER_HOST; an unknown host is refused by name.
    env = {**os.environ, "BLOBTIER_HOST": "host-2"}
    ls = subprocess.run([sys.executable, "-m", "blobtier.cli", "-r", path, "ls", "ds/"],
                        capture_output=True, text=True, env={**env, "BLOBTIER_HOST": "host-7"})
    assert ls.returncode == 1 and "BLOBTIER_HOST" in ls.stderr and "host-0, host-1, host-2" in ls.stderr
    ls = subprocess.run([sys.executable, "-m", "blobtier.cli", "-r", path, "--host", "host-9", "ls", "ds/"],
                        capture_output=True, text=True, env=env)  # --host wins over the environment
    assert ls.returncode == 1 and "'host-9'" in ls.stderr
    ls = subprocess.run([sys.executable, "-m", "blobtier.cli", "-r", path, "--host", "host-1", "ls", "ds/"],
                        capture_output=True, text=True, env=env)
    assert ls.returncode == 0 and "ds/0079" in ls.stdout, ls.stderr


@pytest.mark.slow
def test_three_hosts_two_epochs_read_each_chunk_from_below_once(region):
    path, root = region
    before = below_hosts(root)
    results = run_jobs(path)
    for h, result in enumerate(results):
        assert result["daemon"] == state.read(root).of_kind("daemon")[h].socket  # its own host's
        assert result["delivered"] == [[1] * SAMPLES, [1] * SAMPLES]  # once per epoch, right bytes
    moved = delta(below_hosts(root), before)
    # Each chunk (one per sample) reached the flash node and the chunk servers once over
    # both epochs and all three hosts: the home daemons held the dataset between them.
    assert moved == {"block_gets": SAMPLES, "block_bytes": SAMPLES * SAMPLE_BYTES, "l3_gets": SAMPLES}
    assert sum(r["stats"]["l2"]["hits"] for r in results) > SAMPLES  # served host to host


@pytest.mark.slow
def test_killing_one_hosts_daemon_mid_epoch_fails_no_read(region):
    path, root = region
    victim = state.read(root).of_kind("daemon")[1]
    go = os.path.join(os.path.dirname(path), "go")

    def kill() -> None:
        os.kill(victim.pid, signal.SIGKILL)
        open(go, "w").close()

    results = run_jobs(path, go=go, on_half=kill)
    for result in results:  # every read answered, with the right bytes (checked in the job)
        assert result["delivered"] == [[1] * SAMPLES, [1] * SAMPLES]
    restart = run_cli("restart", "-c", path)
    assert restart.returncode == 0 and "restarted daemon-1" in restart.stdout, restart.stderr


@pytest.mark.slow
def test_checkpoint_burst_reads_each_chunk_from_l3_and_the_block_layer_once(tmp_path):
    path, root = start_up(tmp_path, "160MiB", "4MiB")
    try:
        blob = os.urandom(BURST_BYTES)
        with blobtier.connect(path, cache={"daemon": "off", "l1_bytes": 0}) as client:
            client.put("ckpt/model.bin", blob)
        before = below_hosts(root)
        readers = [subprocess.Popen([sys.executable, "-c", READER, path], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, "BLOBTIER_HOST": f"host-{h}"})
                   for h in range(HOSTS) for _ in range(2)]
        for r in readers:
            out, err = r.communicate(timeout=300)
            assert r.returncode == 0, err
            assert out.strip() == hashlib.sha256(blob).hexdigest()
        chunks = BURST_BYTES // (4 << 20)
        assert delta(below_hosts(root), before) == {"block_gets": chunks, "block_bytes": BURST_BYTES,
                                                    "l3_gets": chunks}
    finally:
        run_cli("down", "-c", path)
        kill_leftovers(root)
