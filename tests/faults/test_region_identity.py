"""A region has an identity: lost, damaged or foreign metadata is an error, never an empty
region, and gc deletes nothing on it (blobtier/region_id.py, issue 12 items 1 and 4)."""

from __future__ import annotations

import glob
import os
import shutil

import pytest
from rocksdict import Options, Rdict

import blobtier
from blobtier import region_id
from blobtier.errors import BlobNotFound, MetadataCorrupt
from blobtier.metadata.schema import REGION_ID_KEY

N = 40


def _region(root: str) -> str:
    with blobtier.connect(root) as c:
        for i in range(N):
            c.put(f"ns/k{i:03d}", b"%03d" % i * 3000)
    return root


def _chunk_bytes(root: str) -> int:
    return sum(os.path.getsize(p) for p in glob.glob(f"{root}/blocks/*/*.dat"))


@pytest.fixture
def region(tmp_path) -> str:
    return _region(str(tmp_path / "r"))


def _lose_metadata_dir(root: str) -> None:
    shutil.rmtree(f"{root}/metadata")


def _keep_only_tables(root: str) -> None:
    for p in glob.glob(f"{root}/metadata/*"):
        if not p.endswith(".sst"):
            os.remove(p)


def _metadata_is_a_file(root: str) -> None:
    shutil.rmtree(f"{root}/metadata")
    open(f"{root}/metadata", "w").close()


def _remove_a_table(root: str) -> None:
    os.remove(sorted(glob.glob(f"{root}/metadata/*.sst"))[0])


def _truncate_a_table(root: str) -> None:
    sst = sorted(glob.glob(f"{root}/metadata/*.sst"))[0]
    os.truncate(sst, os.path.getsize(sst) // 2)


DAMAGES = [_lose_metadata_dir, _keep_only_tables, _metadata_is_a_file, _remove_a_table,
           _truncate_a_table]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__.strip("_"))
def test_damaged_metadata_is_an_error_and_gc_deletes_nothing(region, damage):
    before = _chunk_bytes(region)
    damage(region)
    with pytest.raises(MetadataCorrupt, match="metadata"):
        with blobtier.connect(region) as c:
            list(c.ls("ns/"))
    with pytest.raises(MetadataCorrupt):
        with blobtier.connect(region) as c:
            c.gc(0, force=True)  # force overrides only the empty-listing rule, never damage
    assert _chunk_bytes(region) == before
    assert not os.path.isdir(f"{region}/metadata") or damage is not _lose_metadata_dir


def test_region_gets_an_id_in_root_metadata_and_stores(region):
    rid = region_id.read(region)
    assert rid and os.stat(f"{region}/{region_id.MARKER}").st_mode & 0o777 == 0o600
    with blobtier.connect(region) as c:
        c.gc(0)
    for store in glob.glob(f"{region}/blocks/*"):
        assert region_id.read(store) == rid


def test_a_region_never_created_is_empty(tmp_path):
    with blobtier.connect(str(tmp_path / "new")) as c:
        assert list(c.ls("ns/")) == []
        with pytest.raises(BlobNotFound):
            c.get("ns/k000")


def test_metadata_of_another_region_is_refused(tmp_path):
    a, b = _region(str(tmp_path / "a")), _region(str(tmp_path / "b"))
    shutil.rmtree(f"{a}/metadata")
    shutil.copytree(f"{b}/metadata", f"{a}/metadata")
    for writable in (False, True):
        with pytest.raises(MetadataCorrupt, match="not the metadata of region"):
            with blobtier.connect(a) as c:
                c.gc(0) if writable else c.get("ns/k001")


def test_gc_refuses_an_empty_listing_over_chunks_of_no_region_unless_forced(region):
    """Metadata and marker both gone, stores not bound yet (no gc ran): a fresh region
    is made, and its empty listing must not make every chunk garbage."""
    before = _chunk_bytes(region)
    shutil.rmtree(f"{region}/metadata")
    os.remove(f"{region}/{region_id.MARKER}")
    with blobtier.connect(region) as c:
        with pytest.raises(MetadataCorrupt, match="lists no blob"):
            c.gc(0)
        assert _chunk_bytes(region) == before
        report = c.gc(0, force=True)
    assert report.deleted_chunks > 0


def test_gc_refuses_stores_bound_to_another_region(region):
    with blobtier.connect(region) as c:
        c.gc(0)  # binds the stores
    shutil.rmtree(f"{region}/metadata")
    os.remove(f"{region}/{region_id.MARKER}")
    before = _chunk_bytes(region)
    with blobtier.connect(region) as c:
        with pytest.raises(MetadataCorrupt, match="holds the chunks of region"):
            c.gc(0, force=True)
    assert _chunk_bytes(region) == before


def test_an_older_region_without_id_is_adopted(region):
    """A region of an older version: no marker, no id in the metadata."""
    os.remove(f"{region}/{region_id.MARKER}")
    db = Rdict(f"{region}/metadata", Options(raw_mode=True))
    db.delete(REGION_ID_KEY)
    db.close()
    with blobtier.connect(region) as c:
        assert len(list(c.ls("ns/"))) == N  # a reader takes it as it is
        c.put("ns/new", b"x")  # the first writer adopts it
        rid = region_id.read(region)
        assert rid is not None
        assert c.get("ns/k001") == b"001" * 3000
    with blobtier.connect(region) as c:
        assert len(list(c.ls("ns/"))) == N + 1
