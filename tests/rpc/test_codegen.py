"""The committed stubs are exactly what ``python -m blobtier.rpc.codegen`` generates."""

from __future__ import annotations

import os

import pytest

from blobtier.rpc import codegen

pytest.importorskip("grpc_tools")


def test_committed_stubs_are_fresh(tmp_path):
    written = codegen.generate(str(tmp_path))
    assert written == ["block_pb2.py", "block_pb2.pyi", "block_pb2_grpc.py",
                       "flash_pb2.py", "flash_pb2.pyi", "flash_pb2_grpc.py",
                       "meta_pb2.py", "meta_pb2.pyi", "meta_pb2_grpc.py"]
    for name in written:
        with open(tmp_path / name) as fresh, open(os.path.join(codegen.GEN, name)) as committed:
            assert fresh.read() == committed.read(), (
                f"blobtier/rpc/gen/{name} is stale: run `python -m blobtier.rpc.codegen`")


def test_stubs_import_from_the_package():
    from blobtier.rpc.gen import block_pb2, block_pb2_grpc

    assert block_pb2.DESCRIPTOR.package == "blobtier.block.v1"
    assert hasattr(block_pb2_grpc, "ChunkServiceStub") and hasattr(block_pb2_grpc, "ChunkAdminStub")


def test_flash_stubs_import_from_the_package():
    from blobtier.rpc.gen import flash_pb2, flash_pb2_grpc

    assert flash_pb2.DESCRIPTOR.package == "blobtier.flash.v1"
    assert hasattr(flash_pb2_grpc, "CacheServiceStub") and hasattr(flash_pb2_grpc, "CacheAdminStub")


def test_meta_stubs_import_from_the_package():
    from blobtier.rpc.gen import meta_pb2, meta_pb2_grpc

    assert meta_pb2.DESCRIPTOR.package == "blobtier.meta.v1"
    assert hasattr(meta_pb2_grpc, "MetadataServiceStub")
