"""The block section's remote-server fields: endpoints, quorum, hedging, retries."""

from __future__ import annotations

import pytest

from blobtier.config import from_mapping, with_overrides
from blobtier.errors import InvalidRequest


def block(**fields):
    return from_mapping({"root": "/tmp/r", "block": fields}, env={}).block


def test_defaults_keep_the_embedded_layout():
    b = block()
    assert (b.endpoints, b.write_quorum, b.hedge_after_ms, b.max_retries) == ((), 0, 0.0, 3)


def test_endpoints_from_toml_list_and_env():
    assert block(endpoints=["127.0.0.1:7001", "host-b:7002", "[::1]:7003"]).endpoints == (
        "127.0.0.1:7001", "host-b:7002", "[::1]:7003")
    env = {"BLOBTIER_BLOCK_ENDPOINTS": "a:1, b:2,c:3", "BLOBTIER_BLOCK_WRITE_QUORUM": "2",
           "BLOBTIER_BLOCK_HEDGE_AFTER_MS": "-1"}
    b = from_mapping({"root": "/tmp/r"}, env=env).block
    assert (b.endpoints, b.write_quorum, b.hedge_after_ms) == (("a:1", "b:2", "c:3"), 2, -1.0)


@pytest.mark.parametrize("fields, field", [
    ({"endpoints": ["no-port"]}, "block.endpoints"),
    ({"endpoints": ["h:99999", "a:1", "b:2"]}, "block.endpoints"),
    ({"endpoints": [1, 2, 3]}, "block.endpoints"),
    ({"endpoints": ["a:1", "a:1", "b:2"]}, "block.endpoints"),
    ({"endpoints": ["a:1", "b:2"]}, "block.replicas"),  # 3 replicas need 3 servers
    ({"write_quorum": 4}, "block.write_quorum"),
    ({"read_concurrency": 0}, "block.read_concurrency"),
    ({"max_retries": -1}, "block.max_retries"),
    ({"request_timeout_s": 0}, "block.request_timeout_s"),
])
def test_bad_values_name_the_field(fields, field):
    with pytest.raises(InvalidRequest, match=field):
        block(**fields)


def test_overrides_accept_lists():
    base = from_mapping({"root": "/tmp/r"}, env={})
    changed = with_overrides(base, block={"endpoints": ["a:1", "b:2", "c:3"], "replicas": 2})
    assert changed.block.endpoints == ("a:1", "b:2", "c:3") and changed.block.replicas == 2
