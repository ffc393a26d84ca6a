"""The [services] section: port plan, validation naming the bad field, env overlay, and
what `up` would run."""

from __future__ import annotations

import os
import pathlib

import pytest

from blobtier import config
from blobtier.config import MiB, from_mapping
from blobtier.errors import InvalidRequest
from blobtier.region import services

EXAMPLE = pathlib.Path(__file__).parents[2] / "examples" / "region.toml"


def cfg(tmp_path, env=None, **sections):
    return from_mapping({"root": str(tmp_path / "r"), **sections}, env=env or {})


def test_default_port_plan(tmp_path):
    c = cfg(tmp_path)
    ports = c.services.ports(c.block.servers)
    assert list(ports) == ["block-0", "block-1", "block-2", "block-3", "block-4", "flash-0", "daemon"]
    assert ports["block-0"] == (7400, 7500) and ports["block-4"] == (7404, 7504)
    assert ports["flash-0"] == (7405, 7505)
    assert ports["daemon"] == (None, 7506)


def test_explicit_ports_and_no_metrics(tmp_path):
    c = cfg(tmp_path, block={"servers": 2, "replicas": 2},
            services={"block_ports": [9001, 9000], "flash_ports": [9100, 9101], "flash_nodes": 2,
                      "metrics": False, "daemon": False})
    assert c.services.ports(2) == {"block-0": (9001, None), "block-1": (9000, None),
                                   "flash-0": (9100, None), "flash-1": (9101, None)}


@pytest.mark.parametrize("section, field_name, message", [
    ({"block_ports": [7000, 7000, 7001, 7002, 7003]}, "services.block_ports", "port 7000 to both"),
    ({"flash_ports": [7401]}, "services.flash_ports", "port 7401 to both block-1 and flash-0"),
    ({"metrics_base_port": 7403}, "services.metrics_base_port", "port 7403"),
    ({"base_port": 65534}, "services.base_port", "not between 1 and 65535"),
    ({"block_ports": [7000]}, "services.block_ports", "1 ports for 5 chunk servers"),
    ({"flash_nodes": 2, "flash_ports": [7000]}, "services.flash_ports", "1 ports for 2 flash nodes"),
    ({"flash_capacity_bytes": "lots"}, "services.flash_capacity_bytes", "not a size"),
    ({"flash_capacity_bytes": "8MiB", "flash_region_bytes": "8MiB"}, "services.flash_capacity_bytes",
     "two regions"),
    ({"flash_admission": "never"}, "services.flash_admission", "one of"),
    ({"daemon_policy": "fifo"}, "services.daemon_policy", "one of"),
    ({"daemon_memory_bytes": "1KiB"}, "services.daemon_memory_bytes", "between 1MiB and 4TiB"),
    ({"daemon": "maybe"}, "services.daemon", "not a valid bool"),
    ({"daemon_socket": "/tmp/" + "x" * 110}, "services.daemon_socket", "107 bytes"),
    ({"host": ""}, "services.host", "interface"),
    ({"bogus": 1}, "services.bogus", "known:"),
])
def test_validation_names_the_field(tmp_path, section, field_name, message):
    with pytest.raises(InvalidRequest, match=field_name.replace(".", r"\.")) as info:
        cfg(tmp_path, services=section)
    assert message in str(info.value)


def test_env_overrides_services(tmp_path):
    c = cfg(tmp_path, env={"BLOBTIER_SERVICES_FLASH_NODES": "2", "BLOBTIER_SERVICES_DAEMON": "off",
                           "BLOBTIER_SERVICES_BLOCK_PORTS": "9000,9001,9002,9003,9004",
                           "BLOBTIER_SERVICES_FLASH_CAPACITY_BYTES": "1GiB"},
            services={"daemon": True})
    assert c.services.flash_nodes == 2 and c.services.daemon is False
    assert c.services.block_ports == (9000, 9001, 9002, 9003, 9004)
    assert c.services.flash_capacity_bytes == 1024 * MiB
    with pytest.raises(InvalidRequest, match=r"services\.block_ports"):
        cfg(tmp_path, env={"BLOBTIER_SERVICES_BLOCK_PORTS": "nine"})


def test_the_example_config_is_valid(tmp_path):
    c = config.load(str(EXAMPLE))
    assert c.root == os.path.join(os.environ["BLOBTIER_HOME"], "example-region")  # not in the repo
    assert c.block.servers == 3 and c.services.flash_nodes == 1 and c.services.daemon


def test_specs_serve_the_embedded_directories(tmp_path):
    c = cfg(tmp_path, block={"servers": 3}, services={"base_port": 8000})
    specs = services.specs(c)
    assert [s.name for s in specs] == ["block-0", "block-1", "block-2", "flash-0", "daemon"]
    block2 = specs[2]
    assert block2.argv[block2.argv.index("--root") + 1] == str(tmp_path / "r" / "blocks" / "002")
    assert block2.address == "127.0.0.1:8002" and block2.metrics_port == 8102
    flash = specs[3]
    # The flash node reads misses from the chunk servers in id order (records name them by id).
    assert flash.argv[flash.argv.index("--block-endpoints") + 1] == \
        "127.0.0.1:8000,127.0.0.1:8001,127.0.0.1:8002"
    assert specs[4].socket == str(tmp_path / "r" / "run" / "daemon.sock")
    assert specs[4].log == str(tmp_path / "r" / "logs" / "daemon.log")


def test_a_root_too_deep_for_a_socket_gets_a_short_one(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    c = from_mapping({"root": str(deep)}, env={})
    sock = services.daemon_socket(c)
    assert len(os.fsencode(sock)) <= 107 and not sock.startswith(str(deep))
    assert sock == services.daemon_socket(c)  # the same every time: clients find it


def test_check_directories(tmp_path):
    with pytest.raises(InvalidRequest, match=r"services\.flash_dir.*not a directory"):
        services.check_directories(cfg(tmp_path, services={"flash_dir": str(tmp_path / "nope")}))
    (tmp_path / "r" / "blocks" / "004").mkdir(parents=True)
    services.check_directories(cfg(tmp_path))  # 5 servers by default: 004 is served
    with pytest.raises(InvalidRequest, match=r"block\.servers is 3.*server 4"):
        services.check_directories(cfg(tmp_path, block={"servers": 3}))
