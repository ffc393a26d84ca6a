"""Whatever an origin store raises reaches the caller in blobtier's exception tree, with an
errno (issue 19, item 5); ingest leaves out a bad file and goes on (item 7)."""

from __future__ import annotations

import errno
import os

import pytest

import blobtier
from blobtier.blockstore_sim.origin import FsspecOrigin
from blobtier.errors import BlobNotFound, Forbidden, InvalidRequest, TierUnavailable
from blobtier.sdk.ingest import ingest, register
from tests.http_origin import HttpStore


@pytest.fixture
def web(tmp_path):
    (tmp_path / "web").mkdir()
    store = HttpStore(str(tmp_path / "web"))
    yield store, tmp_path / "web"
    store.close()


@pytest.fixture
def uncached(region):
    """A client that reads every chunk from the origin (no L1 to answer from)."""
    with blobtier.connect(region, client={"chunk_size": "64KiB"}, cache={"l1_bytes": 0}) as c:
        yield c


@pytest.mark.parametrize("status, kind, number", [
    (403, Forbidden, errno.EACCES),
    (401, Forbidden, errno.EACCES),
    (500, TierUnavailable, errno.EIO),
    (404, BlobNotFound, errno.ENOENT),
])
def test_an_http_origins_refusal_is_a_blobtier_error(web, uncached, status, kind, number):
    store, root = web
    (root / "a.bin").write_bytes(os.urandom(200_000))
    register(uncached, f"{store.url}/a.bin", "ns/web")
    store.refuse["/a.bin"] = status
    with pytest.raises(kind) as err:  # was aiohttp's ClientResponseError, outside the tree
        uncached.get("ns/web/a.bin")
    assert type(err.value) is kind and err.value.errno == number
    assert "a.bin" in str(err.value)


def test_a_deleted_file_origin_is_not_found_with_enoent(tmp_path, uncached):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.bin").write_bytes(os.urandom(100_000))
    register(uncached, f"file://{tmp_path}/src", "ns/local")
    os.remove(tmp_path / "src" / "f.bin")
    with pytest.raises(BlobNotFound) as err:
        uncached.get("ns/local/f.bin")
    assert err.value.errno == errno.ENOENT


@pytest.mark.parametrize("url", ["oci://bucket@ns/k", "nosuchprotocol://b/k"])
def test_an_origin_fsspec_cannot_reach_is_a_bad_request(url):
    with pytest.raises(InvalidRequest, match="oci|nosuchprotocol"):  # was ImportError / ValueError
        FsspecOrigin().current_tag(url)


@pytest.mark.parametrize("run", [ingest, register])
def test_ingest_skips_a_file_whose_name_makes_no_key_and_stores_the_rest(client, tmp_path, run):
    root = os.fsencode(tmp_path / "data")
    os.mkdir(root)
    for name, data in ((b"a.bin", b"a"), (b"not-utf8-\xff", b"bad"), (b"z.bin", b"zz")):
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    report = run(client, str(tmp_path / "data"), "ds/in")
    assert (report.files, report.bytes) == (2, 3)
    ((path, why),) = report.skipped
    assert path.endswith("not-utf8-\udcff") and "UTF-8" in why
    assert [i.key for i in client.ls("ds/")] == ["ds/in/a.bin", "ds/in/z.bin"]
