"""Parquet through ``blobtier://`` with pyarrow: the way training pipelines read tables."""

from __future__ import annotations

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from blobtier.sdk.fs import BlobtierFileSystem


@pytest.fixture
def fs(client):
    yield BlobtierFileSystem(client=client)  # 64 KiB chunks: row groups span several
    BlobtierFileSystem.clear_instance_cache()


def table(rows: int, offset: int = 0) -> pa.Table:
    ids = pa.array(range(offset, offset + rows), pa.int64())
    return pa.table({"id": ids, "label": pa.array([f"img_{i:07d}" for i in ids.to_pylist()]),
                     "score": pa.array([i * 0.5 for i in ids.to_pylist()])})


def test_pyarrow_writes_and_reads_a_parquet_file(fs):
    want = table(50_000)
    pq.write_table(want, "ds/train/part-0.parquet", filesystem=fs, row_group_size=10_000)
    assert fs.info("ds/train/part-0.parquet")["size"] > 4 * 64 << 10
    assert pq.read_table("ds/train/part-0.parquet", filesystem=fs).equals(want)
    # Column projection and a row-group read: ranged reads of the footer and column chunks.
    pf = pq.ParquetFile("ds/train/part-0.parquet", filesystem=fs)
    assert pf.metadata.num_row_groups == 5
    assert pf.read_row_group(3, columns=["label"]).column("label").to_pylist() == \
        want.column("label").to_pylist()[30_000:40_000]


def test_parquet_through_a_blobtier_url(client):
    pq.write_table(table(1000), "ds/one.parquet", filesystem=BlobtierFileSystem(client=client))
    with fsspec.open("blobtier://ds/one.parquet", client=client) as f:
        assert pq.read_table(f).column("id").to_pylist() == list(range(1000))
    BlobtierFileSystem.clear_instance_cache()


def test_a_directory_of_parquet_files_reads_as_one_dataset(fs):
    for part in range(3):
        pq.write_table(table(1000, part * 1000), f"ds/multi/part-{part}.parquet", filesystem=fs)
    fs.pipe_file("ds/multi/_SUCCESS", b"")
    got = ds.dataset("ds/multi", filesystem=fs, format="parquet",
                     exclude_invalid_files=True).to_table()
    assert sorted(got.column("id").to_pylist()) == list(range(3000))
