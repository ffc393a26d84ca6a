"""The ``blobtier://`` fsspec filesystem: registration, reads, writes, listing, errors."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import random
import re
import subprocess
import sys
import weakref

import fsspec
import pytest

import blobtier
from blobtier.config import resolve
from blobtier.errors import Forbidden
from blobtier.sdk.client import Client
from blobtier.sdk.fs import BlobtierFileSystem

CHUNK = 64 << 10  # the `client` fixture's chunk size


@pytest.fixture(autouse=True)
def _fresh_instances():
    yield
    BlobtierFileSystem.clear_instance_cache()


@pytest.fixture
def fs(client):
    return BlobtierFileSystem(client=client)


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


# -- registration and options ---------------------------------------------------------
def test_fsspec_finds_it_by_entry_point_without_importing_blobtier(tmp_path):
    # A fresh interpreter: nothing has imported blobtier before fsspec resolves the URL.
    code = (
        "import sys, fsspec\n"
        "assert 'blobtier' not in sys.modules\n"
        "with fsspec.open('blobtier://ns/a/b.txt', 'wb') as f:\n"
        "    f.write(b'hi')\n"
        "print(fsspec.open('blobtier://ns/a/b.txt').open().read().decode(),\n"
        "      type(fsspec.filesystem('blobtier')).__name__)\n"
        "assert 'torch' not in sys.modules  # the filesystem stays light\n"
    )
    env = {**os.environ, "BLOBTIER_HOME": str(tmp_path / "sub")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["hi", "BlobtierFileSystem"]


def test_region_option_picks_the_region(tmp_path):
    a = BlobtierFileSystem(str(tmp_path / "a"))
    b = fsspec.filesystem("blobtier", region=str(tmp_path / "b"))
    a.pipe_file("ns/k", b"in a")
    assert a.cat_file("ns/k") == b"in a"
    assert not b.exists("ns/k")
    with blobtier.connect(str(tmp_path / "a")) as reader:
        assert bytes(reader.get("ns/k")) == b"in a"


def test_region_toml_and_token_are_accepted(tmp_path):
    toml = tmp_path / "region.toml"
    toml.write_text('root = "r"\n[client]\nchunk_size = "64KiB"\n')
    fs = BlobtierFileSystem(str(toml), token="any")  # the embedded region checks no token
    fs.pipe_file("ns/k", blob(3 * CHUNK))
    assert fs.client.config.root == str(tmp_path / "r")
    assert fs.client.stat("ns/k").chunks == 3
    assert fs.token == "any"


def test_default_region_follows_blobtier_home(tmp_path, monkeypatch):
    fs = fsspec.filesystem("blobtier")
    fs.pipe_file("ns/k", b"first home")
    monkeypatch.setenv("BLOBTIER_HOME", str(tmp_path / "other"))
    assert fsspec.filesystem("blobtier") is fs  # fsspec's instance cache...
    assert not fs.exists("ns/k")  # ...still opens the region $BLOBTIER_HOME names now


def test_region_and_client_together_are_refused(client, region):
    with pytest.raises(ValueError, match="not both"):
        BlobtierFileSystem(region, client=client)


def test_instances_of_one_region_share_one_client(tmp_path):
    fs1 = BlobtierFileSystem(str(tmp_path / "r"))
    fs2 = BlobtierFileSystem(str(tmp_path / "r"), skip_instance_cache=True)
    assert fs1 is not fs2 and fs1.client is fs2.client
    fs1.pipe_file("ns/a", b"1")
    fs2.pipe_file("ns/b", b"2")  # one writer handle, so no RegionLocked
    assert fs1.cat(["ns/a", "ns/b"]) == {"ns/a": b"1", "ns/b": b"2"}


def test_pickles_by_config_and_reads_in_a_forked_worker(fs):
    fs.pipe_file("ns/k", b"shared bytes")
    copy = pickle.loads(pickle.dumps(fs))
    assert copy.client.config == fs.client.config
    assert copy.cat_file("ns/k") == b"shared bytes"
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_cat, (fs, "ns/k")) == b"shared bytes"


def _cat(fs: BlobtierFileSystem, path: str) -> bytes:
    return fs.cat_file(path)


# -- reading ---------------------------------------------------------------------------
def test_open_reads_across_chunks_with_seek_readline_and_readinto(fs):
    data = b"".join(b"line %05d\n" % i for i in range(30_000))  # ~5 chunks
    fs.pipe_file("ns/lines.txt", data)
    with fs.open("ns/lines.txt", "rb") as f:
        assert f.size == len(data)
        assert f.read(7) == data[:7]
        f.seek(CHUNK - 3)
        assert f.read(10) == data[CHUNK - 3:CHUNK + 7]
        f.seek(-11, os.SEEK_END)
        assert f.readline() == data[-11:]
        assert f.read() == b""
        f.seek(100)
        buf = bytearray(3 * CHUNK)
        assert f.readinto(buf) == 3 * CHUNK and bytes(buf) == data[100:100 + 3 * CHUNK]
        f.seek(0)
        assert f.read() == data
    with fs.open("blobtier://ns/lines.txt", "r") as text:
        assert text.readline() == "line 00000\n"


def test_an_open_file_keeps_reading_the_version_it_opened(fs):
    old, new = blob(4 * CHUNK, 1), blob(2 * CHUNK, 2)
    fs.pipe_file("ns/k", old)
    with fs.open("ns/k") as f:
        first = f.read(CHUNK)
        fs.pipe_file("ns/k", new)
        assert first + f.read() == old
    assert fs.cat_file("ns/k") == new


@pytest.mark.parametrize("start,end", [(None, None), (0, 10), (5, None), (None, 7), (-10, None),
                                       (-10, -2), (CHUNK - 1, CHUNK + 1), (3, 3), (9, 2),
                                       (10, 10**9), (10**9, None), (-10**9, 4)])
def test_cat_file_slices_like_python(fs, start, end):
    data = blob(3 * CHUNK + 17)
    fs.pipe_file("ns/k", data)
    assert fs.cat_file("ns/k", start, end) == data[start:end]


def test_cat_ranges_match_slices_across_blobs(fs):
    blobs = {"ns/a": blob(5 * CHUNK + 3, 1), "ns/b": blob(777, 2), "ns/c": blob(2 * CHUNK, 3)}
    fs.pipe(blobs)
    rng = random.Random(7)
    paths, starts, ends = [], [], []
    for _ in range(400):
        key = rng.choice(list(blobs))
        lo = rng.randrange(len(blobs[key]))
        paths.append(key)
        starts.append(lo)
        ends.append(lo + rng.choice([1, 4096, CHUNK + 5]))
    paths += ["ns/a", "ns/a"]
    starts += [-100, None]
    ends += [None, 50]
    want = [blobs[p][s:e] for p, s, e in zip(paths, starts, ends)]
    assert fs.cat_ranges(paths, starts, ends) == want
    assert fs.cat_ranges(paths, starts, ends, max_gap=CHUNK) == want


def test_cat_ranges_returns_or_raises_errors_per_blob(fs):
    fs.pipe_file("ns/a", b"0123456789")
    out = fs.cat_ranges(["ns/a", "ns/missing", "ns/a", "bad ns/x"], [0, 0, 5, 0], [2, 2, 7, 2])
    assert out[0] == b"01" and out[2] == b"56"
    assert isinstance(out[1], FileNotFoundError) and isinstance(out[3], ValueError)
    with pytest.raises(FileNotFoundError):
        fs.cat_ranges(["ns/missing"], 0, 1, on_error="raise")
    with pytest.raises(ValueError, match="same length"):
        fs.cat_ranges(["ns/a"], [0, 1], [2])


def test_cat_of_many_paths_and_directories(fs):
    fs.pipe({"ns/d/a": b"A", "ns/d/b": b"B", "ns/d/sub/c": b"C"})
    assert fs.cat("ns/d", recursive=True) == {"ns/d/a": b"A", "ns/d/b": b"B", "ns/d/sub/c": b"C"}
    assert fs.cat("ns/d/*") == {"ns/d/a": b"A", "ns/d/b": b"B"}
    assert fs.cat(["ns/d/a", "ns/d/b"]) == {"ns/d/a": b"A", "ns/d/b": b"B"}
    out = fs.cat(["ns/d/a", "ns/d/nope"], on_error="return")
    assert out["ns/d/a"] == b"A" and isinstance(out["ns/d/nope"], FileNotFoundError)
    assert fs.cat(["ns/d/a", "ns/d/nope"], on_error="omit") == {"ns/d/a": b"A"}
    with pytest.raises(IsADirectoryError):
        fs.cat_file("ns/d")


def test_get_file_and_put_file_round_trip(fs, tmp_path):
    data = blob(3 * CHUNK + 1)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    fs.put_file(str(src), "ns/up/k.bin")
    assert fs.cat_file("ns/up/k.bin") == data
    fs.get_file("ns/up/k.bin", str(tmp_path / "down" / "k.bin"))
    assert (tmp_path / "down" / "k.bin").read_bytes() == data
    assert sorted(os.listdir(tmp_path / "down")) == ["k.bin"]  # the .part file was renamed
    with pytest.raises(FileExistsError):
        fs.put_file(str(src), "ns/up/k.bin", mode="create")


def test_get_file_of_a_missing_blob_leaves_no_local_file(fs, tmp_path):
    with pytest.raises(FileNotFoundError):
        fs.get_file("ns/missing", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_copy_keeps_bytes_and_attrs(fs, client):
    client.put("ns/src", blob(2 * CHUNK + 9), attrs={"label": "cat"})
    fs.cp("ns/src", "ns/dst")
    assert fs.cat_file("ns/dst") == fs.cat_file("ns/src")
    assert fs.info("ns/dst")["attrs"] == {"label": "cat"}
    assert fs.checksum("ns/dst") == fs.checksum("ns/src")


# -- listing ---------------------------------------------------------------------------
@pytest.fixture
def tree(fs):
    fs.pipe({"ns/top": b"t", "ns/d/a": b"aa", "ns/d/b": b"bbb", "ns/d/sub/c": b"c",
             "ns/d.txt": b"x", "other/k": b"k"})
    return fs


def test_ls_shows_pseudo_directories(tree):
    assert tree.ls("", detail=False) == ["ns", "other"]
    assert tree.ls("ns", detail=False) == ["ns/d", "ns/d.txt", "ns/top"]
    assert tree.ls("blobtier://ns/d/", detail=False) == ["ns/d/a", "ns/d/b", "ns/d/sub"]
    entries = {e["name"]: e for e in tree.ls("ns/d")}
    assert entries["ns/d/sub"] == {"name": "ns/d/sub", "size": 0, "type": "directory"}
    assert entries["ns/d/b"]["size"] == 3 and entries["ns/d/b"]["type"] == "file"
    assert tree.ls("ns/d/a", detail=False) == ["ns/d/a"]
    with pytest.raises(FileNotFoundError):
        tree.ls("ns/nothing")


def test_info_of_blobs_and_directories(tree):
    info = tree.info("ns/d/b")
    assert (info["name"], info["size"], info["type"], info["version"]) == ("ns/d/b", 3, "file", 1)
    assert info["created"] == tree.created("ns/d/b") == tree.modified("ns/d/b")
    assert info["checksum"] == tree.client.stat("ns/d/b").checksum
    assert tree.info("ns/d") == {"name": "ns/d", "size": 0, "type": "directory"}
    assert tree.info("ns")["type"] == "directory"
    assert tree.isdir("ns/d") and not tree.isfile("ns/d")
    assert tree.isfile("ns/d/a") and not tree.isdir("ns/d/a")
    with pytest.raises(IsADirectoryError):
        tree.created("ns/d")


def test_find_glob_and_du(tree):
    assert tree.find("ns") == ["ns/d.txt", "ns/d/a", "ns/d/b", "ns/d/sub/c", "ns/top"]
    assert tree.find("ns", maxdepth=1) == ["ns/d.txt", "ns/top"]
    assert tree.find("ns", maxdepth=2, withdirs=True) == [
        "ns", "ns/d", "ns/d.txt", "ns/d/a", "ns/d/b", "ns/d/sub", "ns/top"]
    assert tree.find("ns/d/a") == ["ns/d/a"]
    assert tree.find("ns/none") == []
    assert tree.glob("ns/d*") == ["ns/d", "ns/d.txt"]
    assert tree.glob("ns/**/c") == ["ns/d/sub/c"]
    assert tree.glob("*/k") == ["other/k"]
    assert tree.du("ns") == 1 + 2 + 3 + 1 + 1
    assert tree.du("ns/d", total=False) == {"ns/d/a": 2, "ns/d/b": 3, "ns/d/sub/c": 1}


def test_a_key_can_be_a_blob_and_a_directory(fs):
    fs.pipe({"ns/x": b"blob", "ns/x/y": b"under"})
    assert fs.isfile("ns/x") and fs.isdir("ns/x")
    assert fs.info("ns/x")["type"] == "file"
    fs.rm("ns/x", recursive=True)
    assert not fs.exists("ns/x") and not fs.exists("ns/x/y")


def test_ukey_changes_with_every_version_and_checksum_follows_content(fs):
    fs.pipe_file("ns/a", b"same")
    fs.pipe_file("ns/b", b"same")
    first = fs.ukey("ns/a")
    assert fs.checksum("ns/a") == fs.checksum("ns/b")
    fs.pipe_file("ns/a", b"different")
    assert fs.ukey("ns/a") != first and fs.checksum("ns/a") != fs.checksum("ns/b")
    fs.pipe_file("ns/a", b"same")
    assert fs.ukey("ns/a") not in (first, fs.ukey("ns/b"))  # same bytes, newer version
    assert fs.checksum("ns/a") == fs.checksum("ns/b")


# -- directories and removal -------------------------------------------------------------
def test_directories_exist_only_through_keys(fs):
    fs.mkdir("ns/empty")
    fs.makedirs("ns/empty/deeper", exist_ok=True)
    assert not fs.exists("ns/empty")  # as in an object store: nothing was stored
    fs.pipe_file("ns/full/k", b"1")
    with pytest.raises(FileExistsError):
        fs.makedirs("ns/full")
    with pytest.raises(OSError, match="not empty"):
        fs.rmdir("ns/full")
    fs.rm_file("ns/full/k")
    assert not fs.exists("ns/full")
    fs.rmdir("ns/full")  # gone with its last key; removing it again is fine
    with pytest.raises(ValueError):
        fs.mkdir("ns//bad")


def test_rm_files_directories_and_globs(tree):
    with pytest.raises(IsADirectoryError):
        tree.rm("ns/d")
    with pytest.raises(FileNotFoundError):
        tree.rm("ns/nothing")
    tree.rm("ns/d/*")  # the files of ns/d only: a glob without recursive keeps directories
    assert tree.find("ns/d") == ["ns/d/sub/c"]
    tree.rm(["ns/top", "ns/d.txt"])
    tree.rm("ns", recursive=True)
    assert tree.ls("", detail=False) == ["other"]
    with pytest.raises(FileNotFoundError):
        tree.rm("ns/*")


def test_rm_recursive_honours_maxdepth(tree):
    tree.rm("ns", recursive=True, maxdepth=2)
    assert tree.find("ns") == ["ns/d/sub/c"]


# -- writing -----------------------------------------------------------------------------
def test_write_commits_on_close_only(fs):
    f = fs.open("ns/w", "wb")
    f.write(blob(3 * CHUNK))
    assert not fs.exists("ns/w")  # full chunks are stored, but nothing is visible yet
    f.close()
    assert fs.cat_file("ns/w") == blob(3 * CHUNK)


def test_a_failed_write_leaves_nothing_visible(fs):
    fs.pipe_file("ns/old", b"previous version")
    for key in ["ns/new", "ns/old"]:
        with pytest.raises(RuntimeError), fs.open(key, "wb") as f:
            f.write(blob(2 * CHUNK + 5))
            raise RuntimeError("the writer crashed")
    assert not fs.exists("ns/new")
    assert fs.cat_file("ns/old") == b"previous version"
    with pytest.raises(RuntimeError), fs.open("ns/text", "w") as t:
        t.write("partial")
        raise RuntimeError("the writer crashed")
    assert not fs.exists("ns/text")


def test_discard_and_garbage_collection_commit_nothing(fs):
    f = fs.open("ns/d", "wb")
    f.write(b"abc")
    f.discard()
    assert f.closed and not fs.exists("ns/d")
    g = fs.open("ns/g", "wb")
    g.write(b"abc")
    collected = weakref.ref(g)
    del g
    gc.collect()
    assert collected() is None and not fs.exists("ns/g")


def test_transaction_commits_together_or_not_at_all(fs):
    with fs.transaction:
        fs.pipe_file("ns/t1", b"1")
        with fs.open("ns/t2", "wb") as f:
            f.write(b"2")
        assert not fs.exists("ns/t1") and not fs.exists("ns/t2")
    assert fs.cat(["ns/t1", "ns/t2"]) == {"ns/t1": b"1", "ns/t2": b"2"}
    with pytest.raises(RuntimeError), fs.transaction:
        fs.pipe_file("ns/t3", b"3")
        raise RuntimeError("abort")
    assert not fs.exists("ns/t3")


def test_fsspec_open_commits_on_any_exit_unless_in_a_transaction():
    # fsspec's OpenFile closes its file however the block ends; the transaction is the
    # documented way to make a failing block discard.
    fs = fsspec.filesystem("blobtier")
    with pytest.raises(RuntimeError), fsspec.open("blobtier://ns/plain", "wb") as f:
        f.write(b"partial")
        raise RuntimeError("the writer crashed")
    assert fs.cat_file("ns/plain") == b"partial"
    with pytest.raises(RuntimeError), fs.transaction:
        with fsspec.open("blobtier://ns/guarded", "wb") as f:
            f.write(b"partial")
            raise RuntimeError("the writer crashed")
    assert not fs.exists("ns/guarded")


def test_exclusive_create_and_append(fs):
    with fs.open("ns/x", "xb") as f:
        f.write(b"once")
    with pytest.raises(FileExistsError):
        fs.open("ns/x", "xb")
    with pytest.raises(FileExistsError):
        fs.pipe_file("ns/x", b"again", mode="create")
    with fs.open("ns/x", "ab") as f:
        f.write(b" more")
    with fs.open("ns/fresh", "ab") as f:
        f.write(b"new")
    assert fs.cat(["ns/x", "ns/fresh"]) == {"ns/x": b"once more", "ns/fresh": b"new"}
    assert fs.info("ns/x")["version"] == 2


def test_append_keeps_the_blobs_attributes(fs, client):
    client.put("ns/log", b"one\n", attrs={"content-type": "text/plain", "owner": "a"})
    with fs.open("ns/log", "ab") as f:
        f.write(b"two\n")
    with fs.open("ns/log", "a") as f:  # text mode appends the same way
        f.write("three\n")
    info = client.stat("ns/log")
    assert (info.attrs, info.version) == ({"content-type": "text/plain", "owner": "a"}, 3)
    assert fs.cat_file("ns/log") == b"one\ntwo\nthree\n"
    with fs.open("ns/log", "ab", attrs={"owner": "b"}) as f:  # given attributes replace them
        f.write(b"four\n")
    assert client.stat("ns/log").attrs == {"owner": "b"}


@pytest.mark.parametrize("mode", ["r+b", "w+b", "a+", "zb"])
def test_an_unsupported_mode_is_a_value_error_naming_it(fs, mode):
    fs.pipe_file("ns/m", b"x")
    with pytest.raises(ValueError, match=f"ns/m: mode '{re.escape(mode)}"):  # was NotImplementedError
        fs.open("ns/m", mode)


def test_exclusive_write_loses_to_a_commit_made_while_it_was_open(fs):
    f = fs.open("ns/race", "xb")
    f.write(b"mine")
    fs.pipe_file("ns/race", b"theirs")
    with pytest.raises(FileExistsError):
        f.close()
    assert fs.cat_file("ns/race") == b"theirs"


# -- errors --------------------------------------------------------------------------------
def test_missing_keys_raise_file_not_found(fs):
    for call in (lambda: fs.cat_file("ns/none"), lambda: fs.open("ns/none"),
                 lambda: fs.info("ns/none"), lambda: fs.ls("ns/none"),
                 lambda: fs.rm_file("ns/none"), lambda: fs.ukey("ns/none")):
        with pytest.raises(FileNotFoundError):
            call()
    assert not fs.exists("ns/none") and fs.cat(["ns/none"], on_error="omit") == {}


@pytest.mark.parametrize("bad", ["ns//x", "ns/./x", "ns/../x", "bad ns/x", "ns/x\x00y",
                                 "ns/" + "x" * 2000])
def test_bad_keys_raise_value_error(fs, bad):
    for call in (lambda: fs.cat_file(bad), lambda: fs.pipe_file(bad, b"x"),
                 lambda: fs.open(bad, "wb"), lambda: fs.info(bad), lambda: fs.ls(bad)):
        with pytest.raises(ValueError):
            call()
    assert not fs.exists(bad)


def test_a_namespace_alone_is_no_blob(fs):
    with pytest.raises(ValueError, match="no path"):
        fs.pipe_file("ns", b"x")


class _TokenClient(Client):
    """A region with access control, as the auth servers will give: this token may read
    namespace ``open`` and nothing else, and may write nothing. (The embedded region
    itself checks no token.)"""

    def _allow(self, key: str, write: bool) -> None:
        if write or key.split("/")[0] != "open":
            raise Forbidden(f"token may not {'write' if write else 'read'} {key}")

    def stat(self, key):
        self._allow(key, False)
        return super().stat(key)

    def exists(self, key):
        self._allow(key, False)
        return super().exists(key)

    def get(self, key):
        self._allow(key, False)
        return super().get(key)

    def open(self, key, mode="rb", **kw):
        self._allow(key, mode != "rb")
        return super().open(key, mode, **kw)

    def put_many(self, items):
        for key in (items if isinstance(items, dict) else [it[0] for it in items]):
            self._allow(key, True)
        return super().put_many(items)

    def delete(self, key):
        self._allow(key, True)
        return super().delete(key)


def test_denied_requests_raise_permission_error(region):
    with blobtier.connect(region) as writer:
        writer.put_many({"open/k": b"public", "secret/k": b"private"})
    client = _TokenClient(resolve(region))
    try:
        fs = BlobtierFileSystem(client=client, token="reader")
        assert fs.cat_file("open/k") == b"public"
        for call in (lambda: fs.cat_file("secret/k"), lambda: fs.open("secret/k"),
                     lambda: fs.info("secret/k"), lambda: fs.exists("secret/k"),
                     lambda: fs.pipe_file("open/new", b"x"), lambda: fs.open("open/new", "wb"),
                     lambda: fs.rm("open/k"), lambda: fs.cp("open/k", "open/copy")):
            with pytest.raises(PermissionError):
                call()
        assert isinstance(fs.cat_ranges(["secret/k"], 0, 1)[0], PermissionError)
    finally:
        client.close()


def test_range_merging_bounds_each_read():
    from blobtier.sdk.fs import _MAX_READ, _merge

    spans = [(i * 1000, i * 1000 + 100, i) for i in range(100_000)]  # 100 MB of near ranges
    groups = _merge(spans, gap=1000)
    assert sum(len(members) for _, _, members in groups) == len(spans)
    assert all(hi - lo <= _MAX_READ for lo, hi, _ in groups) and len(groups) > 1
    assert len(_merge(spans, gap=0)) == len(spans)  # 900-byte holes: nothing merges
    assert _merge([(0, 10, 0), (5, 8, 1), (10, 20, 2)], gap=0) == [
        (0, 20, [(0, 10, 0), (5, 8, 1), (10, 20, 2)])]
