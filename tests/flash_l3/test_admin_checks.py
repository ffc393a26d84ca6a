"""A flash node's admin RPC checks its fields as the config does: Resize to a negative or
absurd capacity is refused with the field named, and the node keeps its capacity."""

from __future__ import annotations

import grpc
import pytest

from blobtier.config import FlashNodeConfig
from blobtier.errors import InvalidRequest
from blobtier.flash_l3.service import FlashNode
from blobtier.rpc.gen import flash_pb2 as pb
from blobtier.rpc.gen import flash_pb2_grpc as pb_grpc
from blobtier.rpc.remote_cache import RemoteChunkCache
from tests.flash_l3.helpers import MemorySource

REGION = 1 << 20


@pytest.fixture
def node(tmp_path):
    n = FlashNode(FlashNodeConfig(str(tmp_path / "flash"), 8 * REGION, region_bytes=REGION), MemorySource())
    yield n
    n.stop(0)


def test_resize_to_a_negative_capacity_is_refused_naming_the_field(node):
    remote = RemoteChunkCache(node.address, timeout_s=10)
    try:
        with pytest.raises(InvalidRequest, match="capacity_bytes"):
            remote.resize(-1)
        assert remote.resize(4 * REGION)["capacity"] == 4 * REGION  # a good one still works
    finally:
        remote.close()


@pytest.mark.parametrize("capacity", [2 ** 64 - 1, 2 ** 63, REGION])
def test_resize_to_an_absurd_capacity_is_invalid_argument(node, capacity):
    with grpc.insecure_channel(node.address) as channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.CacheAdminStub(channel).Resize(pb.ResizeRequest(capacity_bytes=capacity), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "capacity_bytes must be between" in err.value.details()
    assert node.cache.capacity == 8 * REGION
