"""Registering an fsspec location by reference: reads through blobtier, nothing copied."""

from __future__ import annotations

import os
import time
import uuid
from types import SimpleNamespace

import fsspec
import pytest

import blobtier
from blobtier import cli
from blobtier.errors import OriginChanged
from blobtier.sdk import gc
from blobtier.sdk.ingest import register

FILES = {"a.bin": 200_000, "sub/b.bin": 10, "sub/deeper/c.bin": 65_536, "empty": 0}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "src"
    data = {}
    for name, size in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        data[name] = os.urandom(size)
        (root / name).write_bytes(data[name])
    return root, data


def stored_chunks(client) -> int:
    return sum(len(s.digests()) for s in client._blocks.servers.values())


def test_register_local_tree_reads_and_copies_nothing(client, tree):
    root, data = tree
    report = register(client, f"file://{root}", "ds/local")
    assert (report.files, report.bytes) == (4, sum(FILES.values()))
    assert stored_chunks(client) == 0
    assert sorted(i.key for i in client.ls("ds/")) == sorted(f"ds/local/{n}" for n in FILES)
    for name, blob in data.items():
        assert bytes(client.get(f"ds/local/{name}")) == blob
    assert bytes(client.read_range("ds/local/a.bin", 70_000, 100_000)) == data["a.bin"][70_000:170_000]
    with client.open("ds/local/a.bin") as f:
        f.seek(199_990)
        assert f.read() == data["a.bin"][-10:]
    rec = client._metadata.get("ds/local/a.bin")
    assert rec.placement == () and rec.origin.startswith(f"file://{root}/a.bin\n")


def test_register_memory_prefix(client):
    fs = fsspec.filesystem("memory")
    prefix = f"/bucket-{uuid.uuid4().hex}/train"
    blobs = {f"{prefix}/{i:03d}.jpg": os.urandom(1000 * i + 1) for i in range(20)}
    for path, blob in blobs.items():
        fs.pipe(path, blob)
    try:
        assert register(client, f"memory://{prefix}", "imgs/train").files == 20
        keys = [f"imgs/train/{i:03d}.jpg" for i in range(20)]
        assert [bytes(v) for v in client.get_many(keys)] == list(blobs.values())
    finally:
        fs.rm(prefix.rsplit("/", 1)[0], recursive=True)


def test_changed_origin_is_reported_through_the_client(region, tree):
    root, data = tree
    with blobtier.connect(region, client={"chunk_size": "64KiB"}) as c:
        register(c, f"file://{root}", "ds/x")
    (root / "a.bin").write_bytes(b"Z" + data["a.bin"][1:])
    with blobtier.connect(region, client={"chunk_size": "64KiB"}) as c:
        with pytest.raises(OriginChanged, match="ds/x/a.bin"):
            c.get("ds/x/a.bin")
        assert bytes(c.get("ds/x/sub/b.bin")) == data["sub/b.bin"]  # untouched objects still read


def test_mixed_batch_of_origin_and_stored_blobs(client, tree):
    root, data = tree
    register(client, f"file://{root}", "ds/ref")
    client.put("ds/copy", b"stored in the block layer")
    got = client.get_many(["ds/ref/sub/b.bin", "ds/copy", "ds/ref/a.bin"])
    assert [bytes(v) for v in got] == [data["sub/b.bin"], b"stored in the block layer", data["a.bin"]]


def test_gc_never_touches_origin_objects(client, tree, monkeypatch):
    root, data = tree
    register(client, f"file://{root}", "ds/ref")
    client.put("ds/copy", b"x" * 1000)
    client.delete("ds/copy")
    monkeypatch.setattr(gc, "time", SimpleNamespace(time=lambda: time.time() + 7200))
    report = client.gc(grace_s=0)
    assert report.deleted_chunks == client.config.block.replicas  # only the stored blob's replicas
    client.delete("ds/ref/a.bin")
    client.gc(grace_s=0)
    assert all((root / name).read_bytes() == blob for name, blob in data.items())
    assert bytes(client.get("ds/ref/sub/deeper/c.bin")) == data["sub/deeper/c.bin"]


def test_reregistering_makes_a_new_version(client, tree):
    root, data = tree
    register(client, f"file://{root}", "ds/r")
    (root / "a.bin").write_bytes(b"new bytes")
    register(client, f"file://{root}/a.bin", "ds/r")
    assert client.stat("ds/r/a.bin").version == 2
    assert bytes(client.get("ds/r/a.bin")) == b"new bytes"


def test_cli_ingest_reference(region, tree, capsys):
    root, data = tree
    assert cli.main(["--region", region, "ingest", "--reference", "-q", str(root), "cli/ds"]) == 0
    assert "registered by reference 4 files" in capsys.readouterr().out
    with blobtier.connect(region) as c:
        assert bytes(c.get("cli/ds/a.bin")) == data["a.bin"]
        assert sum(len(s.digests()) for s in c._blocks.servers.values()) == 0
