"""A region of three simulated hosts on one machine (``services.hosts = 3``), run as a user
runs it: `blobtier up` starts a daemon per host (its own arena, socket, loopback address
and L2 port), each the others' L2 peer and each reading the chunks homed at it through
from the flash node and chunk servers. One job (a process) per host reads a dataset
larger than one host's L1 but smaller than the three L1s for two epochs; the chunk
servers' and flash node's own counters show each chunk read from below once. A second
region, with tokens and grants, takes a checkpoint burst: every host's daemon fills the
chunks homed at it under the grants its peers' requests carried.

The two regions start (and stop) at once.

Without L2 fan-out each host would read every chunk from L3 itself (three L3 reads per
chunk), so the counts below fail with the feature off."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import xxhash

import blobtier
from blobtier import runstate as state
from blobtier.rpc.auth import digest
from tests.integration.region_support import SPAN, free_base_port, kill_leftovers
from tests.integration.region_support import blobtier as run_cli

HOSTS = 3
SAMPLES, SAMPLE_BYTES = 80, 128 << 10  # 10 MiB: above one host's 6 MiB L1, below three
BURST_BYTES, BURST_CHUNK = 256 << 20, 8 << 20  # 32 chunks: ~11 homed per host's 160 MiB L1

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

# One reader of the checkpoint: the whole blob through a file object, hashed (a 128-bit
# xxh3: 256 MiB in a few ms where sha256 took a second of each reader's CPU).
READER = r"""
import sys
import xxhash
import blobtier

with blobtier.connect(sys.argv[1]) as client, client.open("ckpt/model.bin") as f:
    digest, buf = xxhash.xxh3_128(), bytearray(8 << 20)
    while n := f.readinto(buf):
        digest.update(memoryview(buf)[:n])
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


def region_toml(tmp, memory: str, chunk: str, base: int, extra: str = "") -> tuple[str, str]:
    """A region of three hosts over 2 chunk servers (one replica: no hedged second read of
    a chunk) and a flash node: its config file and root."""
    root, path = tmp / "region", tmp / "region.toml"
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
{extra}''')
    return str(path), str(root)


def with_grants(tmp) -> str:
    """Config lines for tokens, a metadata service and so grants (``blobtier/grants.py``):
    every client and daemon presents ``ops``; chunk servers, the flash node and the daemons'
    peer servers serve a chunk only under a grant the metadata service signed."""
    tokens = tmp / "tokens.toml"
    tokens.write_text(f'[[token]]\nname = "ops"\nsha256 = "{digest("ops-secret")}"\n'
                      'rights = ["read", "write", "admin"]\n')
    return f'meta_servers = 1\n[auth]\ntoken_file = "{tokens}"\ntoken = "ops-secret"\n'


def up_at_once(configs: list[str]) -> None:
    """`blobtier up` of every config, all at once."""
    ups = [subprocess.Popen([sys.executable, "-m", "blobtier.cli", "up", "-c", path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for path in configs]
    for up in ups:
        out, err = up.communicate(timeout=180)
        assert up.returncode == 0, out + err


def down_at_once(regions: list[tuple[str, str]]) -> None:
    with ThreadPoolExecutor(len(regions)) as pool:
        list(pool.map(lambda r: run_cli("down", "-c", r[0]), regions))
    for _, root in regions:
        kill_leftovers(root)


@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    """Both regions, started at once: the dataset's (6 MiB L1s, 256 KiB chunks) and the
    burst's (160 MiB L1s, 8 MiB chunks, grants)."""
    base = free_base_port()
    burst_base = free_base_port()
    while abs(burst_base - base) < SPAN:
        burst_base = free_base_port()
    data_tmp, burst_tmp = tmp_path_factory.mktemp("hosts"), tmp_path_factory.mktemp("burst")
    made = [region_toml(data_tmp, "6MiB", "256KiB", base),
            region_toml(burst_tmp, "160MiB", "8MiB", burst_base, with_grants(burst_tmp))]
    try:
        up_at_once([path for path, _ in made])
        yield made
    finally:
        down_at_once(made)


@pytest.fixture(scope="module")
def region(regions):
    path, root = regions[0]
    with blobtier.connect(path, cache={"daemon": "off", "l1_bytes": 0}) as client:
        client.put_many([(f"ds/{i:04d}", sample(i)) for i in range(SAMPLES)])
    return path, root


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
    # A client picks its host by BLOBTIER_HOST (--host wins over it); an unknown host is
    # refused by name. The four commands run at once.
    cli = [sys.executable, "-m", "blobtier.cli"]
    env = {**os.environ, "BLOBTIER_HOST": "host-2"}
    runs = {"status": (cli + ["status", "-c", path], env),
            "env-7": (cli + ["-r", path, "ls", "ds/"], {**env, "BLOBTIER_HOST": "host-7"}),
            "flag-9": (cli + ["-r", path, "--host", "host-9", "ls", "ds/"], env),
            "flag-1": (cli + ["-r", path, "--host", "host-1", "ls", "ds/"], env)}
    with ThreadPoolExecutor(len(runs)) as pool:
        done = dict(zip(runs, pool.map(lambda r: subprocess.run(r[0], capture_output=True, text=True,
                                                                env=r[1], timeout=120), runs.values())))
    assert done["status"].returncode == 0, done["status"].stdout
    for d in daemons:
        assert d.name in done["status"].stdout
    ls = done["env-7"]
    assert ls.returncode == 1 and "BLOBTIER_HOST" in ls.stderr and "host-0, host-1, host-2" in ls.stderr
    ls = done["flag-9"]
    assert ls.returncode == 1 and "'host-9'" in ls.stderr
    ls = done["flag-1"]
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
def test_checkpoint_burst_reads_each_chunk_from_l3_and_the_block_layer_once(regions):
    """Under grants: a daemon filling a chunk homed at it for another host reads the flash
    node and chunk servers under the grant that host's request carried (without it the
    fill is refused there and every reader goes below L2 itself)."""
    path, root = regions[1]
    rng = random.Random(15)  # each chunk its own bytes: no dedup
    blob = b"".join(rng.randbytes(1 << 20) for _ in range(BURST_BYTES >> 20))
    with blobtier.connect(path, cache={"daemon": "off", "l1_bytes": 0}) as client:
        client.put("ckpt/model.bin", blob)
    before = below_hosts(root)
    readers = [subprocess.Popen([sys.executable, "-c", READER, path], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "BLOBTIER_HOST": f"host-{h}"})
               for h in range(HOSTS) for _ in range(2)]
    try:
        for r in readers:
            out, err = r.communicate(timeout=300)
            assert r.returncode == 0, err
            assert out.strip() == xxhash.xxh3_128_hexdigest(blob)
    finally:
        for r in readers:
            if r.poll() is None:
                r.kill()
            r.wait()
    chunks = BURST_BYTES // BURST_CHUNK
    assert delta(below_hosts(root), before) == {"block_gets": chunks, "block_bytes": BURST_BYTES,
                                                "l3_gets": chunks}
