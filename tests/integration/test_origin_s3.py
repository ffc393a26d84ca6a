"""Registering an S3 prefix by reference, against a local S3-compatible server (moto)."""

from __future__ import annotations

import os

import fsspec
import pytest

import blobtier
from blobtier.errors import OriginChanged
from blobtier.sdk.ingest import register

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """An s3fs filesystem on the local server, also what fsspec builds for ``s3://`` URLs."""
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing",
               "client_kwargs": {"region_name": "eu-west-1"}}
    monkeypatch.setitem(fsspec.config.conf, "s3", options)
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3")
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


def test_register_s3_prefix_and_read_it(region, s3):
    s3.mkdir("train-data")
    blobs = {f"train-data/imagenet/{i:03d}.jpg": os.urandom(30_000 * i + 5) for i in range(6)}
    for path, blob in blobs.items():
        s3.pipe(path, blob)
    with blobtier.connect(region, client={"chunk_size": "64KiB"}) as c:
        report = register(c, "s3://train-data/imagenet", "imagenet/train")
        assert report.files == 6
        keys = [f"imagenet/train/{i:03d}.jpg" for i in range(6)]
        assert [bytes(v) for v in c.get_many(keys)] == list(blobs.values())
        rec = c._metadata.get(keys[5])
        assert rec.origin.startswith("s3://train-data/imagenet/005.jpg\netag:")
        assert sum(len(s.digests()) for s in c._blocks.servers.values()) == 0
    s3.pipe("train-data/imagenet/003.jpg", b"overwritten")  # a new ETag
    # Without the embedded L3: chunks of the registered version it kept (filled in the
    # background, so present or not by timing) would be served, verified against the
    # record, and the origin never asked; here the origin is read.
    with blobtier.connect(region, client={"chunk_size": "64KiB"}, flash={"local_l3": False}) as c:
        with pytest.raises(OriginChanged, match="003.jpg"):
            c.get("imagenet/train/003.jpg")
        assert bytes(c.get("imagenet/train/004.jpg")) == blobs["train-data/imagenet/004.jpg"]
