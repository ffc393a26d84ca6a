"""The embedded L3 (issue 20 item 0): with no flash nodes, data read by reference from an
origin is kept on local disk under the region root, so a later process reads it there,
and the host's other processes (DataLoader workers) share it through its owner."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import fsspec
import pytest

import blobtier
from blobtier.blockstore_sim import slow_origin
from blobtier.sdk.ingest import register

N, SIZE = 24, 100_000


@pytest.fixture
def slow_tree(tmp_path, monkeypatch):
    """Origin objects behind slowfile://, counting every request in a file."""
    slow_origin.register()
    src = tmp_path / "src"
    src.mkdir()
    data = {f"s{i:03d}.bin": os.urandom(SIZE) for i in range(N)}
    for name, blob in data.items():
        (src / name).write_bytes(blob)
    counter = str(tmp_path / "requests")
    monkeypatch.setitem(fsspec.config.conf, "slowfile", {"latency_s": 0.001, "counter_path": counter})
    return src, data, counter


def _connect(region: str, **sections):
    return blobtier.connect(region, flash={"local_bytes": "64MiB"}, **sections)


def test_a_second_process_reads_the_origin_never(region, slow_tree):
    src, data, counter = slow_tree
    with _connect(region) as c:
        register(c, f"slowfile://{src}", "ds/slow")
        keys = sorted(i.key for i in c.ls("ds/slow/"))
        before = slow_origin.requests_at(counter)
        assert [bytes(v) for v in c.get_many(keys)] == [data[k.rsplit("/", 1)[1]] for k in keys]
        assert slow_origin.requests_at(counter) - before == N  # each object read once
        assert "l3" in c.tiers
    read_once = slow_origin.requests_at(counter)
    script = textwrap.dedent(f"""
        import fsspec, hashlib, blobtier
        from blobtier.blockstore_sim import slow_origin
        slow_origin.register()
        fsspec.config.conf["slowfile"] = {{"latency_s": 0.001, "counter_path": {counter!r}}}
        with blobtier.connect({region!r}, flash={{"local_bytes": "64MiB"}}) as c:
            keys = sorted(i.key for i in c.ls("ds/slow/"))
            print(hashlib.sha256(b"".join(bytes(v) for v in c.get_many(keys))).hexdigest())
            print(c.stats()["l3"]["hits"])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    digest, l3_hits = out.stdout.split()
    import hashlib

    assert digest == hashlib.sha256(b"".join(data[k.rsplit("/", 1)[1]] for k in keys)).hexdigest()
    assert int(l3_hits) == N
    assert slow_origin.requests_at(counter) == read_once  # not one request more


def test_forked_workers_share_the_owners_l3(region, slow_tree):
    """A forked child (a DataLoader worker) joins the parent's L3 over its socket and
    reads the parent's fills from the region files."""
    src, data, counter = slow_tree
    with _connect(region, cache={"l1_bytes": 0}) as c:
        register(c, f"slowfile://{src}", "ds/slow")
        keys = sorted(i.key for i in c.ls("ds/slow/"))
        c.get_many(keys)
        c._chain.close()  # its background fills of L3 are done
        read_once = slow_origin.requests_at(counter)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                got = [bytes(v) for v in c.get_many(keys)]
                ok = got == [data[k.rsplit("/", 1)[1]] for k in keys]
                os.write(w, f"{int(ok)} {c._chain.tiers[-1].name}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        answer = os.read(r, 100).decode().split()
        os.close(r)
        assert status == 0 and answer == ["1", "l3"]
        assert slow_origin.requests_at(counter) == read_once
        assert c.stats()["l3"]["hits"] >= N  # the child's hits add to the parent's counters


def test_no_local_l3_when_switched_off(region, slow_tree):
    src, _, counter = slow_tree
    with blobtier.connect(region, flash={"local_l3": False}) as c:
        register(c, f"slowfile://{src}", "ds/slow")
        assert "l3" not in c.tiers
    assert not os.path.exists(os.path.join(region, "l3"))


def test_a_local_l3_that_cannot_open_is_no_tier_and_no_failure(region):
    os.makedirs(region)
    with open(os.path.join(region, "l3"), "w") as f:  # where its directory should be
        f.write("not a directory")
    with blobtier.connect(region, flash={"local_bytes": "64MiB"}) as c:
        c.put("ns/a", b"x" * 1000)
        assert bytes(c.get("ns/a")) == b"x" * 1000
        assert "l3" not in c.tiers
