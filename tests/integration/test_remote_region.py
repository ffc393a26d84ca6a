"""A client whose block layer is gRPC chunk servers: started in-process, or as
``blobtier block serve`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import blobtier
from blobtier import cli
from blobtier.blockstore_sim.chunk_server import ChunkServer
from blobtier.blockstore_sim.faults import FaultProfile
from blobtier.blockstore_sim.remote import RemoteChunkStore


@pytest.fixture
def servers(tmp_path):
    started = [ChunkServer(str(tmp_path / f"s{i}"), server_id=i) for i in range(4)]
    yield started
    for s in started:
        s.stop(0)


def test_client_reads_and_writes_through_chunk_servers(region, servers, monkeypatch):
    endpoints = [s.address for s in servers]
    blobs = {f"ns/{i}": os.urandom(i * 50_000 + 7) for i in range(8)}
    with blobtier.connect(region, block={"endpoints": endpoints},
                          client={"chunk_size": "64KiB"}) as c:
        assert all(isinstance(s, RemoteChunkStore) for s in c._blocks.servers.values())
        assert [c._blocks.servers[i].addr for i in range(4)] == endpoints
        c.put_many(blobs)
        with c.open("ns/stream", "wb") as f:
            f.write(b"s" * 300_000)
        assert not os.path.exists(os.path.join(region, "blocks"))  # no local volumes
        assert sum(s.faults.counters()["bytes_received"] for s in servers) == 3 * (
            sum(map(len, blobs.values())) + 300_000)
    servers[0].faults.update(down=True)
    monkeypatch.setenv("BLOBTIER_BLOCK_ENDPOINTS", ",".join(endpoints))
    with blobtier.connect(region, client={"chunk_size": "64KiB"}) as c:
        assert {k: bytes(v) for k, v in zip(blobs, c.get_many(list(blobs)))} == blobs
        assert bytes(c.get("ns/stream")) == b"s" * 300_000
        servers[0].faults.update(down=False)
        c.delete("ns/0")
        report = c.gc(grace_s=0)
        assert report.live_chunks > 0


def test_write_quorum_from_config(region, servers):
    endpoints = [s.address for s in servers[:3]]
    servers[1].faults.update(down=True)
    with blobtier.connect(region, block={"endpoints": endpoints}) as c:
        with pytest.raises(blobtier.TierUnavailable, match="write quorum is 3"):
            c.put("ns/x", b"needs all three")
        assert not c.exists("ns/x")  # nothing committed
    with blobtier.connect(region, block={"endpoints": endpoints, "write_quorum": 2}) as c:
        c.put("ns/x", b"two will do")
        assert bytes(c.get("ns/x")) == b"two will do"


def test_cli_faults_command(servers, capsys):
    addr = servers[0].address
    assert cli.main(["block", "faults", addr, "--latency-ms", "5", "--tail-p", "0.05",
                     "--tail-factor", "20", "--bandwidth", "100MiB"]) == 0
    out = capsys.readouterr().out
    assert f"chunk server 0 at {addr}" in out and "tail_factor            20.0" in out
    assert servers[0].faults.profile.bandwidth_bytes_per_s == 100 * 2**20
    assert cli.main(["block", "faults", addr, "--down"]) == 0
    assert servers[0].faults.profile.down
    assert cli.main(["block", "faults", addr, "--reset"]) == 0
    assert servers[0].faults.profile == FaultProfile()
    assert cli.main(["block", "faults", addr, "--error-rate", "7"]) == 1
    assert "error_rate" in capsys.readouterr().err


def serve_process(root: str, sid: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "blobtier.cli", "block", "serve", "--root", root,
                             "--port", "0", "--id", str(sid)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith(f"chunk server {sid} serving"), line
    return proc, line.split()[-1]


def test_block_serve_processes(region, tmp_path):
    procs = []
    try:
        for i in range(3):
            procs.append(serve_process(str(tmp_path / f"p{i}"), i))
        endpoints = [addr for _, addr in procs]
        data = os.urandom(500_000)
        with blobtier.connect(region, block={"endpoints": endpoints},
                              client={"chunk_size": "64KiB"}) as c:
            c.put("ns/big", data)
        procs[0][0].send_signal(signal.SIGKILL)  # a crashed server
        procs[0][0].wait(30)
        with blobtier.connect(region, block={"endpoints": endpoints},
                              client={"chunk_size": "64KiB"}) as c:
            assert bytes(c.get("ns/big")) == data
        for proc, _ in procs[1:]:
            proc.send_signal(signal.SIGTERM)  # a clean stop
            assert proc.wait(30) == 0
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
