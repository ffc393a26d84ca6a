"""Namespaces through the client and the command line: quotas at the byte boundary and
after a writer process is killed mid-write, TTL expiry with a fake clock through reads,
listings and gc, and ``blobtier ns`` with good and bad input. (Every metadata backend
passes ``tests/contracts/metadata_store.py``'s namespace tests.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import blobtier
from blobtier.cli import main
from blobtier.errors import BlobNotFound, InvalidRequest, QuotaExceeded
from blobtier.metadata import namespaces as nsmod
from blobtier.metadata.namespaces import NamespaceSpec
from blobtier.sdk.namespaces import parse_flags, usage_against_quota
from tests.contracts.metadata_store import FakeClock


def _usage(client, name):
    return next(u for u in client.namespaces.usage() if u.name == name)


def test_a_write_over_quota_is_refused_whole_and_gc_collects_its_chunks(client):
    client.namespaces.create("q", quota_bytes=300_000)
    client.put("q/a", os.urandom(200_000))
    client.put("q/b", os.urandom(100_000))  # exactly at the quota
    with pytest.raises(QuotaExceeded) as err:
        client.put("q/c", os.urandom(1))
    assert isinstance(err.value, OSError) and err.value.errno == 122  # EDQUOT
    with pytest.raises(BlobNotFound):
        client.stat("q/c")
    assert [k for k, _ in client._metadata.scan("q/")] == ["q/a", "q/b"]  # no orphan record
    with pytest.raises(QuotaExceeded):
        with client.open("q/d", "wb") as w:  # a streamed write, refused at its commit
            w.write(os.urandom(150_000))
    report = client.gc(grace_s=0)
    assert report.deleted_chunks > 0  # the refused writes' chunks were garbage
    client.delete("q/a")
    client.put("q/c", os.urandom(200_000))  # the room rm gave back
    assert (_usage(client, "q").bytes, _usage(client, "q").blobs) == (300_000, 2)


_CHILD = textwrap.dedent("""
    import os, signal, sys
    import blobtier
    from blobtier.metadata import namespaces

    region, when = sys.argv[1], sys.argv[2]
    c = blobtier.connect(region, client={"chunk_size": "64KiB"})
    if when == "chunks":  # killed while the chunks go out: nothing reserved yet
        write = c._write_path().blocks.write_chunks
        def die(chunks):
            write(chunks)
            os.kill(os.getpid(), signal.SIGKILL)
        c._write_path().blocks.write_chunks = die
    else:  # killed between the reservation and the record's commit
        reserve = namespaces._reserve
        def die(*a, **kw):
            reserve(*a, **kw)
            os.kill(os.getpid(), signal.SIGKILL)
        namespaces._reserve = die
    c.put("q/killed", os.urandom(150_000))
""")


@pytest.mark.parametrize("when", ["chunks", "reserved"])
def test_usage_is_exact_after_a_writer_is_killed_mid_write(region, when):
    with blobtier.connect(region, client={"chunk_size": "64KiB"}) as c:
        c.namespaces.create("q", quota_bytes=300_000)
        c.put("q/a", os.urandom(100_000))
    child = subprocess.run([sys.executable, "-c", _CHILD, region, when], timeout=60)
    assert child.returncode == -signal.SIGKILL
    with blobtier.connect(region, client={"chunk_size": "64KiB"}) as c:
        store = c._write_path().metadata
        with pytest.raises(BlobNotFound):
            c.stat("q/killed")
        usage = store.namespace_usage(["q"])["q"]
        if when == "chunks":
            assert (usage.bytes, usage.pending) == (100_000, {})
        else:  # counted high, never low: the quota still holds
            assert usage.bytes == 250_000 and len(usage.pending) == 1
            with pytest.raises(QuotaExceeded):
                c.put("q/b", os.urandom(200_000))
            assert c.gc(grace_s=0).busy_namespaces == ("q",)  # its lease is still live
            store.clock = FakeClock(store.clock() + nsmod.LEASE_S + 1)  # the lease ends
            assert c.gc(grace_s=0).busy_namespaces == ()
            assert store.namespace_usage(["q"])["q"].bytes == 100_000
        c.put("q/b", os.urandom(200_000))  # up to the byte
        with pytest.raises(QuotaExceeded):
            c.put("q/c", b"x")
        assert store.namespace_usage(["q"])["q"].bytes == 300_000


def test_ttl_expiry_with_a_fake_clock_through_reads_listings_and_gc(region):
    with blobtier.connect(region, client={"chunk_size": "64KiB"}) as c:
        c.namespaces.create("t", ttl_s=7 * 86400)
        c.put("t/old", b"o" * 100_000)
        c.put("keep/x", b"k" * 10)
        store = c._write_path().metadata
        clock = FakeClock(store.clock())
        c._metadata.clock = store.clock = clock
        clock.now += 7 * 86400 - 10
        c.put("t/new", b"n" * 10)
        assert bytes(c.get("t/old")) == b"o" * 100_000
        clock.now += 10  # t/old's expiry
        with pytest.raises(BlobNotFound):
            c.get("t/old")
        assert [i.key for i in c.ls("t/")] == ["t/new"]
        assert bytes(c.get("keep/x")) == b"k" * 10
        report = c.gc(grace_s=0)
        assert report.expired_blobs == 1 and report.deleted_chunks >= 2  # both chunks of t/old
        assert store._get_raw(b"Rt/old") is None
        assert (_usage(c, "t").bytes, _usage(c, "t").blobs) == (10, 1)


@pytest.fixture
def cli(region, capsys):
    with blobtier.connect(region) as c:
        c.put("seed/empty", b"")

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--region", region, *args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_ns_cli_create_set_show_ls(cli):
    code, out, _ = cli("ns", "create", "imagenet", "--quota-bytes", "50GiB", "--ttl", "7d",
                       "--l1-share", "30%", "--l3-share", "0.5", "--policy", "clairvoyant")
    assert code == 0 and "created namespace imagenet" in out and "ttl         7d" in out
    code, out, _ = cli("ns", "set", "imagenet", "--ttl", "none", "--quota-blobs", "1000")
    assert code == 0 and "ttl         -" in out and "quota       53,687,091,200 B / 1000 blobs" in out
    code, out, _ = cli("ns", "show", "imagenet")
    assert code == 0 and "l1 share    30%" in out and "policy      clairvoyant" in out
    assert "0 B of 53,687,091,200 B (0%), 0 blobs of 1000 (0%)" in out
    code, out, _ = cli("ns", "ls")
    row = ["imagenet", "0", "B", "53,687,091,200", "B", "0/1000", "-", "30%", "50%", "clairvoyant"]
    assert code == 0 and out.splitlines()[1].split() == row


@pytest.mark.parametrize("args,named", [
    (("create", "a", "--quota-bytes", "lots"), "--quota-bytes"),
    (("create", "a", "--quota-blobs", "-3"), "--quota-blobs"),
    (("create", "a", "--ttl", "7x"), "--ttl"),
    (("create", "a", "--ttl", "0"), "--ttl"),
    (("create", "a", "--l1-share", "1.5"), "--l1-share"),
    (("create", "a", "--l3-share", "0"), "--l3-share"),
    (("create", "a", "--policy", "fifo"), "--policy"),
    (("create", "bad/name"), "namespace"),
    (("set", "missing", "--ttl", "1d"), "missing"),
    (("set", "seed"), "nothing to change"),
    (("show", "missing"), "missing"),
])
def test_ns_cli_bad_input_exits_1_naming_it(cli, args, named):
    code, out, err = cli("ns", *args)
    assert code == 1 and out == "" and named in err and "Traceback" not in err
    assert cli("ns", "ls")[1].splitlines()[1:] == []  # nothing was created


def test_ns_cli_create_twice_and_shares_over_one(cli):
    assert cli("ns", "create", "a", "--l1-share", "0.7")[0] == 0
    code, _, err = cli("ns", "create", "a")
    assert code == 1 and "exists" in err
    code, _, err = cli("ns", "create", "b", "--l1-share", "0.4")
    assert code == 1 and "l1_share" in err and "more than 1" in err


def test_parse_flags_clears_with_none_and_names_unknown_flags():
    assert parse_flags({"--ttl": "none", "--quota-bytes": "1.5K", "--l1-share": None}) == \
        {"ttl_s": None, "quota_bytes": 1536}
    with pytest.raises(InvalidRequest, match="--bogus"):
        parse_flags({"--bogus": "1"})


def test_usage_against_quota_for_top(client):
    client.namespaces.create("a", quota_bytes=1000, quota_blobs=10)
    client.namespaces.create("b")
    client.put("a/x", b"x" * 250)
    client.put("b/y", b"y" * 7)
    rows = {u.name: u for u in usage_against_quota(client._metadata)}
    assert (rows["a"].bytes, rows["a"].blobs, rows["a"].bytes_ratio) == (250, 1, 0.25)
    assert rows["a"].describe() == "250 B of 1,000 B (25%), 1 blobs of 10 (10%)"
    assert (rows["b"].bytes, rows["b"].quota_bytes, rows["b"].bytes_ratio) == (7, None, None)


def test_gc_without_the_admin_right_still_collects(tmp_path, caplog):
    """MaintainNamespaces needs admin on the metadata service; a gc run with a write token
    collects garbage all the same and says what it left."""
    from blobtier.errors import Forbidden
    from blobtier.metadata.remote import RemoteMetadataStore
    from blobtier.metadata.rocksdb_store import RocksDBStore
    from blobtier.metadata.service import MetadataServer
    from blobtier.rpc.auth import TokenTable, digest
    from blobtier.sdk import gc

    table = TokenTable.from_mapping({"token": [
        {"name": "writer", "sha256": digest("w-token"), "rights": ["read", "write"]}]})
    with MetadataServer(RocksDBStore(str(tmp_path / "db"), writable=True), auth=table) as server:
        store = RemoteMetadataStore(server.address, token="w-token")
        try:
            with pytest.raises(Forbidden):
                store.maintain_namespaces()
            report = gc.collect(store, {}, 60.0, set, shared=True)
            assert report.expired_blobs == 0 and "left the namespaces" in caplog.text
        finally:
            store.close()


def test_a_reservation_past_half_its_lease_is_given_back_and_nothing_committed(tmp_path):
    from blobtier.errors import TimedOut
    from blobtier.metadata.rocksdb_store import RocksDBStore
    from tests.contracts.metadata_store import sized

    class Slow(FakeClock):  # every reading a minute later: the reservation took too long
        def __call__(self) -> float:
            self.now += nsmod.LEASE_S / 2
            return self.now

    with RocksDBStore(str(tmp_path / "db"), writable=True) as store:
        store.create_namespace(NamespaceSpec("q", quota_bytes=1000))
        store.clock = Slow(0.0)
        with pytest.raises(TimedOut):
            store.commit("q/a", sized(100))
        assert store.get("q/a") is None
        usage = store.namespace_usage(["q"])["q"]
        assert (usage.bytes, usage.blobs, usage.pending) == (0, 0, {})
