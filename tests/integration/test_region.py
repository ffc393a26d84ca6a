"""A whole region from one config file, run as a user runs it: `blobtier up` in its own
process, the services detached on loopback, then status, reads, metrics, top, warmup,
the demo, and `down` leaving nothing behind."""

from __future__ import annotations

import os

import pytest

import blobtier
from blobtier import runstate as state
from blobtier.cache_l1_l2.daemon import HostDaemon
from blobtier.cli import main
from blobtier.region.top import fetch
from tests.integration.region_support import (
    blobtier as run_cli,
)
from tests.integration.region_support import (
    free_base_port,
    kill_leftovers,
    port_free,
    processes_under,
    write_config,
)

NO_L1 = {"l1_bytes": 0, "daemon": "off"}
CHUNK = 64 * 1024


def chunks_of(blobs: dict[str, bytes]) -> int:
    return sum(-(-len(b) // CHUNK) for b in blobs.values())


def metrics(root: str, kind: str) -> list[dict]:
    return [fetch(s.metrics_port) for s in state.read(root).of_kind(kind)]


def total(samples: list[dict], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for m in samples for (n, lab), v in m.items() if n == name and want <= set(lab))


@pytest.fixture
def region_config(tmp_path):
    root = tmp_path / "region"
    path = write_config(tmp_path / "region.toml", root, free_base_port())
    yield path, str(root)
    kill_leftovers(str(root))


def test_up_status_read_down_then_a_warm_restart(region_config, tmp_path, capsys):
    path, root = region_config
    shm_before = set(os.listdir("/dev/shm"))
    up = run_cli("up", "-c", path)
    assert up.returncode == 0, up.stderr
    assert "started flash-0" in up.stdout and "is up: 5 services" in up.stdout
    again = run_cli("up", "-c", path)
    assert again.returncode == 1 and "is already up" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    assert main(["status", "-c", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and all("SERVING" in line for line in lines[2:])

    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    src.write_bytes(os.urandom(300_000))
    assert main(["-r", path, "put", str(src), "ds/cli"]) == 0
    assert main(["-r", path, "get", "ds/cli", str(dst)]) == 0
    assert dst.read_bytes() == src.read_bytes()
    capsys.readouterr()

    region = state.read(root)
    blobs = {f"ds/{i:02d}": os.urandom(100_000 + 5000 * i) for i in range(12)}
    with blobtier.connect(path) as c:
        assert c.config.block.endpoints == tuple(s.address for s in region.of_kind("block"))
        assert c.config.cache.daemon == region.of_kind("daemon")[0].socket
        assert c.tiers == ["l1", "l3"]
        c.put_many(blobs)
        assert [bytes(v) for v in c.get_many(list(blobs))] == list(blobs.values())

    assert main(["down", "-c", path]) == 0
    assert "is down (5 services stopped)" in capsys.readouterr().out
    assert not any(state.pid_alive(s.pid) for s in region.services)
    assert processes_under(root) == []
    assert state.read(root) is None
    assert not os.path.exists(region.of_kind("daemon")[0].socket)
    assert all(port_free(p) for s in region.services
               for p in (s.metrics_port, int(s.address.rsplit(":", 1)[1]) if s.address else None) if p)
    assert set(os.listdir("/dev/shm")) <= shm_before  # the L1 arena was a memfd
    with blobtier.connect(path, cache=NO_L1) as c:  # down: the same directories, read embedded
        assert c.config.block.endpoints == () and bytes(c.get("ds/cli")) == src.read_bytes()

    up = run_cli("up", "-c", path)
    assert up.returncode == 0, up.stderr
    try:
        flash = metrics(root, "flash")
        assert total(flash, "blobtier_flash_entries") >= chunks_of(blobs)  # from the snapshot
        with blobtier.connect(path, cache=NO_L1) as c:
            for key, data in blobs.items():
                assert bytes(c.get(key)) == data
            assert c.stats()["l3"]["hits"] == chunks_of(blobs) and c.stats()["origin"]["hits"] == 0
        assert total(metrics(root, "flash"), "blobtier_flash_hits_total") == chunks_of(blobs)
        assert total(metrics(root, "flash"), "blobtier_flash_misses_total") == 0
        block = metrics(root, "block")
        assert total(block, "blobtier_chunkserver_requests_total", method="Get") == 0
        assert total(block, "blobtier_chunkserver_sent_bytes_total") == 0
    finally:
        assert main(["down", "-c", path]) == 0
    assert processes_under(root) == []


def test_a_service_that_fails_to_start_stops_the_others(region_config):
    path, root = region_config
    sock = os.path.join(root, "run", "daemon.sock")
    os.makedirs(os.path.dirname(sock))
    squatter = HostDaemon(4 << 20, socket_path=sock)  # the region's daemon cannot have its socket
    try:
        up = run_cli("up", "-c", path)
    finally:
        squatter.stop()
    assert up.returncode == 1
    assert "daemon exited with status 1 while starting" in up.stderr
    assert "a daemon already serves" in up.stderr  # the tail of its log
    assert state.read(root) is None
    assert processes_under(root) == []


@pytest.mark.parametrize("extra, field_name", [
    ("flash_ports = [1]\nblock_ports = [1, 2, 3]", "services.flash_ports"),
    ("bogus = 1", "services.bogus"),
    ("daemon_policy = \"fifo\"", "services.daemon_policy"),
    ("[cache]\nl1_bytes = \"lots\"", "cache.l1_bytes"),
    ("flash_dir = \"/nonexistent/flash\"", "services.flash_dir"),
])
def test_bad_configs_are_refused_naming_the_field(tmp_path, capsys, extra, field_name):
    path = write_config(tmp_path / "bad.toml", tmp_path / "region", free_base_port(), extra)
    assert main(["up", "-c", path]) == 1
    err = capsys.readouterr().err
    assert err.startswith("blobtier: error: ") and field_name in err and len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "region" / "run" / "region.json")


def test_status_and_down_without_a_region(tmp_path, capsys):
    assert main(["status", "-c", str(tmp_path / "nothing")]) == 1
    assert main(["down", "-c", str(tmp_path / "nothing")]) == 1
    assert capsys.readouterr().err.count("no region is up") == 2


# -- one region shared by the tests below ---------------------------------------------------
@pytest.fixture(scope="module")
def running(tmp_path_factory):
    d = tmp_path_factory.mktemp("running")
    root = str(d / "region")
    path = write_config(d / "region.toml", root, free_base_port())
    up = run_cli("up", "-c", path)
    assert up.returncode == 0, up.stderr
    yield path, root
    try:
        assert main(["down", "-c", path]) == 0
    finally:
        kill_leftovers(root)


SERIES = {
    "block": ["blobtier_chunkserver_requests_total", "blobtier_chunkserver_errors_total",
              "blobtier_chunkserver_request_seconds_bucket", "blobtier_chunkserver_sent_bytes_total",
              "blobtier_chunkserver_received_bytes_total", "blobtier_chunkserver_faults_total"],
    "flash": ["blobtier_flash_hits_total", "blobtier_flash_misses_total", "blobtier_flash_read_bytes_total",
              "blobtier_flash_evicted_regions_total", "blobtier_flash_admissions_rejected_total",
              "blobtier_flash_fills_total", "blobtier_flash_get_seconds_bucket",
              "blobtier_flash_fill_seconds_bucket", "blobtier_flash_used_bytes"],
    "daemon": ["blobtier_l1_hits_total", "blobtier_l1_misses_total", "blobtier_l1_evictions_total",
               "blobtier_l1_used_bytes", "blobtier_l1_capacity_bytes"],
}


def test_metrics_endpoints_expose_series_that_move(running):
    path, root = running
    for kind, names in SERIES.items():
        for samples in metrics(root, kind):
            assert set(names) <= {n for n, _ in samples}, kind
    blobs = {f"metrics/{i}": os.urandom(200_000) for i in range(5)}
    with blobtier.connect(path) as c:
        c.put_many(blobs)
    snap = {kind: metrics(root, kind) for kind in SERIES}
    with blobtier.connect(path) as c:
        c.get_many(list(blobs))
    moved = {kind: metrics(root, kind) for kind in SERIES}
    n = chunks_of(blobs)

    def grew(kind: str, name: str, **labels: str) -> float:
        return total(moved[kind], name, **labels) - total(snap[kind], name, **labels)

    assert grew("block", "blobtier_chunkserver_requests_total", method="Get") >= n
    # At least every byte once (a flash node may hedge a slow read to a second replica).
    assert grew("block", "blobtier_chunkserver_sent_bytes_total") >= sum(map(len, blobs.values()))
    assert grew("block", "blobtier_chunkserver_request_seconds_count", method="Get") >= n
    assert grew("flash", "blobtier_flash_misses_total") == n  # counted once, by the Get
    assert grew("flash", "blobtier_flash_fills_total") == n
    assert grew("flash", "blobtier_flash_get_seconds_count") >= 1
    assert grew("daemon", "blobtier_l1_misses_total") == n
    with blobtier.connect(path) as c:
        c.get_many(list(blobs))
    assert total(metrics(root, "daemon"), "blobtier_l1_hits_total") - \
        total(moved["daemon"], "blobtier_l1_hits_total") == n


def test_top_once_renders_every_tier(running, capsys):
    path, _ = running
    assert main(["top", "-c", path, "--once"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0] for line in out.splitlines()[2:]}
    assert {"L1", "L3", "block"} <= rows
    assert "hit ratio" in out and "p99 ms" in out and "block egress" in out
    assert "not answering" not in out and "dead" not in out
    assert main(["top", "-c", path, "--once", "--trainer", "127.0.0.1:1"]) == 0  # a trainer not there
    assert capsys.readouterr().out.splitlines()[-1] == "not answering: trainer 127.0.0.1:1"


def test_warmup_hydrates_l3_then_reads_hit_it(running, capsys):
    path, root = running
    blobs = {f"warm/{i:02d}": os.urandom(90_000) for i in range(10)}
    with blobtier.connect(path) as c:
        c.put_many(blobs)
    assert main(["-r", path, "warmup", "warm/", "--quiet"]) == 0
    out = capsys.readouterr().out
    n = chunks_of(blobs)
    assert f"warmed 10 blobs ({n} chunks" in out and f"0 already there, {n} fetched" in out
    gets = total(metrics(root, "block"), "blobtier_chunkserver_requests_total", method="Get")
    with blobtier.connect(path, cache=NO_L1) as c:
        assert [bytes(v) for v in c.get_many(list(blobs))] == list(blobs.values())
        assert c.stats()["l3"]["hits"] == n
    assert total(metrics(root, "block"), "blobtier_chunkserver_requests_total", method="Get") == gets
    assert main(["-r", path, "warmup", "warm/", "--quiet"]) == 0
    assert f"{n} already there, 0 fetched" in capsys.readouterr().out


def test_warmup_into_the_daemons_l1(running, capsys):
    path, _ = running
    blobs = {f"warm1/{i}": os.urandom(70_000) for i in range(6)}
    with blobtier.connect(path) as c:
        c.put_many(blobs)
    assert main(["-r", path, "warmup", "warm1/", "--tier", "l1", "-q"]) == 0
    out = capsys.readouterr().out
    assert f"into L1: 0 already there, {chunks_of(blobs)} fetched, 0 not admitted" in out
    with blobtier.connect(path) as c:
        c.get_many(list(blobs))
        assert c.stats()["l1"]["hits"] == chunks_of(blobs)
    assert main(["warmup", "warm1/", "--tier", "l1", "-c", path, "-q"]) == 0  # -c works too
    capsys.readouterr()


def test_demo_against_the_region_shows_the_tiers_filling(running):
    pytest.importorskip("torch")
    import io

    from blobtier import demo

    path, _ = running
    out = io.StringIO()
    with blobtier.connect(path) as c:
        rows = demo.run(c, samples=60, epochs=2, workers=0, batch_size=20, out=out)
    first, second = rows
    assert first["served"]["origin"] == 1.0  # cold: every sample from the block layer (through L3)
    assert second["served"]["origin"] == 0.0 and second["served"]["l1"] > 0.5
    assert "L3" in out.getvalue() and "block" in out.getvalue()
