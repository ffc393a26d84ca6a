"""The [flash] config section: node endpoints with optional weights."""

from __future__ import annotations

import pytest

from blobtier.config import from_mapping, parse_endpoint
from blobtier.errors import InvalidRequest


def test_endpoints_with_weights_from_toml_and_environment():
    config = from_mapping({"flash": {"endpoints": ["10.0.0.1:7000@2", "10.0.0.2:7000"]}}, env={})
    assert config.flash.nodes() == [("10.0.0.1:7000", 2.0), ("10.0.0.2:7000", 1.0)]
    config = from_mapping({}, env={"BLOBTIER_FLASH_ENDPOINTS": "a:1,b:2@0.5",
                                   "BLOBTIER_FLASH_REQUEST_TIMEOUT_S": "3"})
    assert config.flash.nodes() == [("a:1", 1.0), ("b:2", 0.5)]
    assert config.flash.request_timeout_s == 3.0
    assert from_mapping({}, env={}).flash.endpoints == ()


@pytest.mark.parametrize("entry", ["nohost", "h:0", "h:99999", "h:1@0", "h:1@-2", "h:1@x", "h:1@inf"])
def test_bad_endpoints_are_refused(entry):
    with pytest.raises(InvalidRequest, match="flash.endpoints"):
        from_mapping({"flash": {"endpoints": [entry]}}, env={})


def test_a_node_listed_twice_or_bad_timeouts_are_refused():
    with pytest.raises(InvalidRequest, match="twice"):
        from_mapping({"flash": {"endpoints": ["h:1", "h:1@3"]}}, env={})
    with pytest.raises(InvalidRequest, match="retry_after_s"):
        from_mapping({"flash": {"retry_after_s": 0}}, env={})
    assert parse_endpoint("h:5") == ("h:5", 1.0)
