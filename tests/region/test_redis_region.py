"""A region with its metadata on a Redis Cluster: the config fields and their port plan,
what `up` runs (the Redis nodes, the metadata servers over them), how clients attach to it,
and the cluster's forming and layout checks against real redis-server processes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from blobtier import config, runstate
from blobtier import runstate as state
from blobtier.config import from_mapping
from blobtier.errors import InvalidRequest
from blobtier.region import redis
from blobtier.region.services import specs
from blobtier.runstate import RegionState, ServiceRecord
from tests.redis_cluster import require_redis
from tests.region import test_state

sleeper = test_state.sleeper  # a fixture: a live process that looks like a blobtier service


def cfg(tmp_path, metadata=None, **services):
    return from_mapping({"root": str(tmp_path / "r"), "block": {"servers": 2, "replicas": 2},
                         "metadata": metadata or {"backend": "redis-cluster"},
                         "services": {"meta_servers": 2, "flash_nodes": 1, **services}}, env={})


# -- config ---------------------------------------------------------------------------------
def test_port_plan_puts_meta_servers_and_redis_nodes_after_the_flash_nodes(tmp_path):
    c = cfg(tmp_path, metadata={"backend": "redis-cluster", "replicas": 1})
    ports = c.services.ports(c.block.servers, c.metadata.redis_nodes)
    assert c.metadata.redis_nodes == 6
    assert list(ports) == ["block-0", "block-1", "flash-0", "daemon", "meta-0", "meta-1",
                           *(f"redis-{n}" for n in range(6))]
    # Adding them moves no port of the services that were there before.
    assert ports["flash-0"] == (7402, 7502) and ports["daemon"] == (None, 7503)
    assert ports["meta-0"] == (7403, 7504) and ports["meta-1"] == (7404, 7505)
    assert [ports[f"redis-{n}"] for n in range(6)] == [(7405 + n, None) for n in range(6)]
    embedded = cfg(tmp_path, metadata={"replicas": 1}, meta_servers=0)
    assert embedded.metadata.redis_nodes == 0 and "redis-0" not in embedded.services.ports(2, 0)


def test_explicit_meta_and_redis_ports(tmp_path):
    c = cfg(tmp_path, meta_ports=[9001, 9000], redis_ports=[9100, 9101, 9102], metrics=False)
    ports = c.services.ports(2, c.metadata.redis_nodes)
    assert (ports["meta-0"], ports["meta-1"]) == ((9001, None), (9000, None))
    assert [ports[f"redis-{n}"][0] for n in range(3)] == [9100, 9101, 9102]


@pytest.mark.parametrize("metadata, services, field_name, message", [
    ({"backend": "rocks"}, {}, "metadata.backend", "one of embedded, redis-cluster"),
    ({"backend": "redis-cluster", "replicas": 2}, {}, "metadata.replicas", "between 0 and 1"),
    ({"backend": "embedded"}, {"meta_servers": 2}, "services.meta_servers", "one writer"),
    ({"backend": "redis-cluster"}, {"meta_ports": [9000]}, "services.meta_ports",
     "1 ports for 2 metadata servers"),
    ({"backend": "redis-cluster"}, {"redis_ports": [9000]}, "services.redis_ports", "1 ports for 3 Redis"),
    ({"backend": "embedded"}, {"meta_servers": 1, "redis_ports": [9000, 9001, 9002]},
     "services.redis_ports", "3 ports for 0 Redis"),
    ({"backend": "redis-cluster"}, {"meta_ports": [7400, 9000]}, "services.meta_ports",
     "port 7400 to both block-0 and meta-0"),
    ({"backend": "redis-cluster"}, {"redis_ports": [9100, 9101, 7401]}, "services.redis_ports",
     "port 7401 to both block-1 and redis-2"),
    # A node's cluster bus is 10000 above its port: on the metrics port of chunk server 0 here.
    ({"backend": "redis-cluster"}, {"redis_ports": [9100, 9101, 7500], "metrics_base_port": 17500},
     "services.metrics_base_port", "port 17500 to both redis-2 cluster bus and block-0 metrics"),
    ({"backend": "redis-cluster"}, {"base_port": 60000}, "services.base_port", "not between 1 and 65535"),
    ({"backend": "redis-cluster"}, {"meta_servers": 65}, "services.meta_servers", "between 0 and 64"),
])
def test_validation_names_the_field(tmp_path, metadata, services, field_name, message):
    with pytest.raises(InvalidRequest, match=field_name.replace(".", r"\.")) as info:
        cfg(tmp_path, metadata=metadata, **services)
    assert message in str(info.value)


def test_bus_port_clash_is_named(tmp_path):
    # redis-2's bus (its port + 10000) lands on meta-0's explicit port.
    with pytest.raises(InvalidRequest, match=r"services\.redis_ports gives port 19000 to both meta-0 "
                                             r"and redis-2 cluster bus"):
        cfg(tmp_path, meta_ports=[19000, 19001], redis_ports=[9100, 9101, 9000])


def test_env_overlay(tmp_path):
    c = from_mapping({"root": str(tmp_path)}, env={"BLOBTIER_METADATA_BACKEND": "redis-cluster",
                                                   "BLOBTIER_METADATA_REPLICAS": "1",
                                                   "BLOBTIER_SERVICES_META_SERVERS": "3"})
    assert (c.metadata.backend, c.metadata.replicas, c.services.meta_servers) == ("redis-cluster", 1, 3)


# -- what `up` runs -------------------------------------------------------------------------
def test_specs_start_the_redis_nodes_then_meta_servers_over_them(tmp_path, monkeypatch):
    monkeypatch.setattr(redis.shutil, "which", lambda name: f"/opt/bin/{name}")
    c = cfg(tmp_path, metadata={"backend": "redis-cluster", "replicas": 1}, host="10.0.0.5")
    todo = specs(c)
    assert [s.name for s in todo][:8] == [*(f"redis-{n}" for n in range(6)), "meta-0", "meta-1"]
    node = todo[0]
    argv = node.argv
    assert argv[0] == "/opt/bin/redis-server" and node.kind == "redis" and node.metrics_port is None
    # Loopback whatever services.host says; noeviction; every write fsynced; files under root.
    opts = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1, 2)}
    assert node.address == "127.0.0.1:7405" and opts["--bind"] == "127.0.0.1" and opts["--port"] == "7405"
    assert opts["--maxmemory-policy"] == "noeviction"
    assert (opts["--appendonly"], opts["--appendfsync"]) == ("yes", "always")
    assert opts["--dir"] == os.path.join(c.root, "redis", "000") and opts["--cluster-port"] == "17405"
    assert node.log == os.path.join(c.root, "logs", "redis-0.log") and opts["--logfile"] == ""
    meta = todo[6]
    assert meta.kind == "meta" and meta.address == "10.0.0.5:7403" and meta.metrics_port == 7504
    backend = meta.argv[meta.argv.index("--backend") + 1]
    assert backend == "redis://" + ",".join(f"127.0.0.1:{7405 + n}" for n in range(6)) + "?wait_replicas=1"


def test_without_replicas_commits_wait_for_none(tmp_path, monkeypatch):
    monkeypatch.setattr(redis.shutil, "which", lambda name: f"/opt/bin/{name}")
    meta = next(s for s in specs(cfg(tmp_path)) if s.kind == "meta")
    assert meta.argv[meta.argv.index("--backend") + 1] == "redis://127.0.0.1:7405,127.0.0.1:7406,127.0.0.1:7407"


def test_one_meta_server_over_the_embedded_rocksdb(tmp_path):
    c = cfg(tmp_path, metadata={"backend": "embedded"}, meta_servers=1)
    todo = specs(c)
    assert [s.kind for s in todo][:2] == ["meta", "block"]
    assert todo[0].argv[todo[0].argv.index("--backend") + 1] == "rocksdb:" + os.path.join(c.root, "metadata")


def test_up_without_redis_server_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(redis.shutil, "which", lambda name: None)
    with pytest.raises(InvalidRequest, match="apt-get install redis-server"):
        specs(cfg(tmp_path))


# -- attaching ------------------------------------------------------------------------------
def _write_state(root: str, pid: int, meta: int) -> None:
    def rec(name, kind, port):
        return ServiceRecord(name, kind, pid, f"127.0.0.1:{port}", None, None, time.time(), "/l")

    services = [rec(f"redis-{n}", "redis", 9100 + n) for n in range(3)]
    services += [rec(f"meta-{i}", "meta", 9000 + i) for i in range(meta)]
    services += [rec(f"block-{i}", "block", 9200 + i) for i in range(3)]
    state.write(RegionState(root, services=services))


def test_clients_find_the_metadata_servers(tmp_path, sleeper):
    root = str(tmp_path)
    _write_state(root, sleeper, meta=2)
    c = runstate.resolve_running(root)
    assert c.metadata.endpoints == ("127.0.0.1:9000", "127.0.0.1:9001") and c.metadata.redis == ()
    assert c.block.endpoints == ("127.0.0.1:9200", "127.0.0.1:9201", "127.0.0.1:9202")
    assert config.resolve(root).metadata.endpoints == ()


def test_without_metadata_servers_clients_go_to_the_redis_nodes(tmp_path, sleeper):
    root = str(tmp_path)
    _write_state(root, sleeper, meta=0)
    c = runstate.resolve_running(root)
    assert c.metadata.redis == ("127.0.0.1:9100", "127.0.0.1:9101", "127.0.0.1:9102")
    assert c.metadata.endpoints == ()


def test_metadata_the_config_names_wins(tmp_path, sleeper):
    root = str(tmp_path)
    _write_state(root, sleeper, meta=2)
    for md in ({"endpoints": ["10.0.0.9:7000"]}, {"redis": ["10.0.0.9:6379"]}):
        c = runstate.resolve_running(from_mapping({"root": root, "metadata": md}, env={}))
        assert (c.metadata.endpoints, c.metadata.redis) == (tuple(md.get("endpoints", ())),
                                                            tuple(md.get("redis", ())))


def test_a_region_whose_processes_died_is_opened_as_configured(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    _write_state(str(tmp_path), proc.pid, meta=2)
    assert runstate.resolve_running(str(tmp_path)).metadata.endpoints == ()


# -- forming the cluster (real redis-server processes) -------------------------------------
def _port_with_bus() -> int:
    """A free port whose cluster bus (port + 10000, as a region's nodes use) is free too."""
    import socket

    while True:
        port = redis.free_ports(1)[0]
        if port + redis.REDIS_BUS_OFFSET > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + redis.REDIS_BUS_OFFSET))
            except OSError:
                continue
        return port


@pytest.fixture
def three(tmp_path):
    """Three fresh cluster nodes as a region runs them (AOF off: nothing here needs it)."""
    require_redis()
    procs = []
    try:
        for i in range(3):
            port = _port_with_bus()
            argv = redis.server_argv(redis.redis_server(), port, str(tmp_path / f"n{i}"), aof=False)
            os.makedirs(tmp_path / f"n{i}")
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True))
            procs[-1].address = f"127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while not redis.ping(port):
                assert procs[-1].poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        yield [p.address for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_nodes_run_as_the_regions_processes(three):
    pid = int(redis._command(three[0], "INFO", "server")["process_id"])
    assert state.pid_alive(pid)  # "blobtier" in its title: `down` and `status` know it as ours


def test_form_joins_fresh_nodes_then_waits_for_a_formed_cluster(three):
    assert redis.form(three, 3) is True
    assert redis.healthy(three, 3) == (True, [])
    assert redis.form(three, 3) is False  # formed already: nothing to join
    assert {int(redis.cluster_info(a)["cluster_size"]) for a in three} == {3}


def test_a_node_that_lost_its_data_is_refused_not_rejoined(three):
    redis.join(three[:2], [int(a.rpartition(":")[2]) + redis.REDIS_BUS_OFFSET for a in three[:2]], 2)
    redis.wait_healthy(three[:2], 2)
    with pytest.raises(InvalidRequest, match=f"Redis nodes {three[2]} start empty"):
        redis.form(three, 3, timeout_s=1)


def test_an_interrupted_join_is_reset_when_no_node_holds_data(three):
    other = int(three[1].rpartition(":")[2])
    redis._command(three[0], "CLUSTER MEET", "127.0.0.1", other, other + redis.REDIS_BUS_OFFSET)
    redis._command(three[0], "CLUSTER ADDSLOTSRANGE", 0, 100)  # and then `up` died
    redis.reset_unused(three)
    assert all(redis._fresh(a) for a in three)
    assert redis.form(three, 3) is True


def test_layout_check_names_what_moved(tmp_path):
    root = str(tmp_path / "redis")
    redis.check_layout(root, [7405, 7406, 7407], 0)  # nothing recorded yet: anything goes
    redis.write_layout(root, [7405, 7406, 7407], 0)
    assert stat.S_IMODE(os.stat(redis.layout_path(root)).st_mode) == 0o600
    assert json.load(open(redis.layout_path(root)))["ports"] == [7405, 7406, 7407]
    redis.check_layout(root, [7405, 7406, 7407], 0)
    with pytest.raises(InvalidRequest, match=r"metadata\.replicas is 1.*made with 0"):
        redis.check_layout(root, [7405 + n for n in range(6)], 1)
    with pytest.raises(InvalidRequest, match=r"services\.base_port"):
        redis.check_layout(root, [8405, 8406, 8407], 0)


def test_up_refuses_a_new_cluster_over_blobs_of_the_embedded_metadata(tmp_path):
    from blobtier import connect
    from blobtier.region import supervisor

    require_redis()
    c = cfg(tmp_path)
    supervisor._check_metadata_data(c, specs(c))  # nothing recorded anywhere: fine
    with connect(c.root, cache={"daemon": "off"}) as client:
        client.put("ns/a", b"x")
    with pytest.raises(InvalidRequest, match=r"metadata\.backend is redis-cluster, but the region's blobs"):
        supervisor._check_metadata_data(c, specs(c))
    redis.write_layout(os.path.join(c.root, "redis"), [7405, 7406, 7407], 0)
    supervisor._check_metadata_data(c, specs(c))  # the cluster holds the region's metadata already
