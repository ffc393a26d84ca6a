"""Config numbers are ASCII: int(), float() and regex \\d take any Unicode digit, so "１GiB"
(fullwidth) or "٣" (Arabic-Indic) passed as 1 GiB and 3 (issue 12 item 12)."""

from __future__ import annotations

import pytest

from blobtier.config import from_mapping, parse_size
from blobtier.errors import InvalidRequest


@pytest.mark.parametrize("value", ["１GiB", "٣MiB", "1.٥GiB", "１２３"])
def test_size_in_non_ascii_digits_is_refused(value):
    with pytest.raises(InvalidRequest, match="cache.l1_bytes"):
        parse_size(value, "cache.l1_bytes")


@pytest.mark.parametrize("section, field, value", [
    ("block", "replicas", "٣"), ("client", "prefetch_threads", "４"),
    ("client", "metadata_staleness_s", "٠.٥"), ("cache", "l1_bytes", "１GiB"),
])
def test_env_number_in_non_ascii_digits_names_the_field(section, field, value):
    env = {f"BLOBTIER_{section.upper()}_{field.upper()}": value}
    with pytest.raises(InvalidRequest, match=f"{section}.{field}"):
        from_mapping({}, env=env)


def test_endpoint_port_in_non_ascii_digits_is_refused():
    with pytest.raises(InvalidRequest, match="block.endpoints"):
        from_mapping({"block": {"endpoints": ["localhost:７０００"]}}, env={})


def test_ascii_numbers_still_pass():
    cfg = from_mapping({}, env={"BLOBTIER_BLOCK_REPLICAS": "2", "BLOBTIER_CACHE_L1_BYTES": "1GiB"})
    assert cfg.block.replicas == 2 and cfg.cache.l1_bytes == 1 << 30
