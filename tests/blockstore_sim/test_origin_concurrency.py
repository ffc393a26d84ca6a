"""Origin reads are concurrent whatever the filesystem (issue 20 item 0): a batch of
misses against a synchronous filesystem (whose ``cat_ranges`` is serial) keeps its
requests in flight together, and an async one goes through ``cat_ranges``."""

from __future__ import annotations

import os

import fsspec

from blobtier import checksum
from blobtier.blockstore_sim import slow_origin
from blobtier.blockstore_sim.origin import FsspecOrigin
from blobtier.records import BlobRecord

CHUNK = 4096


def _record(url: str, data: bytes, blob_id: int) -> BlobRecord:
    n = -(-len(data) // CHUNK)
    sums = [checksum.compute("xxh3", data[i * CHUNK:(i + 1) * CHUNK]) for i in range(n)]
    return BlobRecord(blob_id.to_bytes(16, "big"), 1, len(data), CHUNK, sums, checksum_algo="xxh3",
                      origin=f"{url}\nsize:{len(data)}")


def test_batch_of_misses_on_a_sync_filesystem_is_one_round_trip(tmp_path):
    slow_origin.register()
    data = {f"o{i}.bin": os.urandom(CHUNK) for i in range(64)}
    for name, blob in data.items():
        (tmp_path / name).write_bytes(blob)
    origin = FsspecOrigin({"slowfile": {"latency_s": 0.05}})
    refs = [(_record(f"slowfile://{tmp_path}/{name}", blob, i), 0)
            for i, (name, blob) in enumerate(data.items())]
    views = origin.read_many(refs)
    assert [bytes(v) for v in views] == list(data.values())
    fs, _ = origin._locate(f"slowfile://{tmp_path}/o0.bin")
    assert not fs.async_impl and fs.requests == 64
    # All (up to the pool's bound) in flight at once: the batch costs ~2 round trips, not 64.
    assert fs.max_in_flight >= min(32, origin.concurrency)
    origin.close()


def test_failures_of_a_sync_filesystem_keep_their_kind(tmp_path):
    slow_origin.register()
    blob = os.urandom(CHUNK)
    (tmp_path / "a.bin").write_bytes(blob)
    origin = FsspecOrigin({"slowfile": {"latency_s": 0.0}})
    good = _record(f"slowfile://{tmp_path}/a.bin", blob, 1)
    gone = _record(f"slowfile://{tmp_path}/gone.bin", blob, 2)
    try:
        origin.read_many([(good, 0), (gone, 0)])
    except FileNotFoundError as exc:  # BlobNotFound is a FileNotFoundError
        assert "gone.bin" in str(exc)
    else:
        raise AssertionError("a missing origin object must fail the read")
    origin.close()


def test_async_filesystem_goes_through_cat_ranges(tmp_path):
    """An async filesystem runs a batch concurrently on its loop: no pool is made."""
    from tests.http_origin import HttpStore

    data = {f"o{i}.bin": os.urandom(CHUNK) for i in range(8)}
    for name, blob in data.items():
        (tmp_path / name).write_bytes(blob)
    store = HttpStore(str(tmp_path))
    try:
        origin = FsspecOrigin()
        refs = [(_record(f"{store.url}/{name}", blob, i), 0) for i, (name, blob) in enumerate(data.items())]
        assert [bytes(v) for v in origin.read_many(refs)] == list(data.values())
        assert fsspec.filesystem("http").async_impl and origin._threads is None
        origin.close()
    finally:
        store.close()
