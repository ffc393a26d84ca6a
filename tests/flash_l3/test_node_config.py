"""``FlashNodeConfig``: one flash node's settings, checked when made, naming the field."""

from __future__ import annotations

import dataclasses

import pytest

from blobtier.config import FlashNodeConfig
from blobtier.errors import InvalidRequest

MiB = 1 << 20


def test_defaults_and_units():
    c = FlashNodeConfig("/tmp/f", 256 * MiB)
    assert (c.region_bytes, c.admission, c.reinsert_hits, c.addr, c.node_id, c.workers,
            c.metrics_port) == (64 * MiB, "all", 0, "127.0.0.1:0", 0, 32, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.workers = 8  # type: ignore[misc]


@pytest.mark.parametrize("changes, field, why", [
    ({"root": ""}, "flash_node.root", "must name a directory"),
    ({"root": 7}, "flash_node.root", "must be a string"),
    ({"capacity_bytes": 100 * MiB}, "flash_node.capacity_bytes", "at least two regions of 64MiB"),
    ({"capacity_bytes": -1}, "flash_node.capacity_bytes", "between 0 and 1PiB"),
    ({"region_bytes": 4096}, "flash_node.region_bytes", "between 1MiB and 4GiB"),
    ({"reinsert_hits": -1}, "flash_node.reinsert_hits", "between"),
    ({"node_id": 2 ** 32}, "flash_node.node_id", "between 0 and"),
    ({"workers": 0}, "flash_node.workers", "between 1 and 4096"),
    ({"workers": 2.5}, "flash_node.workers", "an integer"),
    ({"metrics_port": 70000}, "flash_node.metrics_port", "between 0 and 65535"),
    ({"addr": "localhost"}, "flash_node.addr", "is not host:port"),
    ({"addr": "h:99999"}, "flash_node.addr", "is not host:port"),
])
def test_a_bad_field_is_refused_by_name(changes, field, why):
    with pytest.raises(InvalidRequest, match=rf"{field}.*{why}"):
        FlashNodeConfig(**{"root": "/tmp/f", "capacity_bytes": 256 * MiB, **changes})


def test_replace_checks_again():
    c = FlashNodeConfig("/tmp/f", 256 * MiB)
    assert dataclasses.replace(c, metrics_port=0).metrics_port == 0
    with pytest.raises(InvalidRequest, match="flash_node.region_bytes"):
        dataclasses.replace(c, region_bytes=0)
