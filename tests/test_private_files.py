"""A region's files are its user's alone: 0700 directories, 0600 files, whatever the umask.

The region is built with umask 000 (the worst an operator's shell can have): metadata and
blocks by a writer, a reader's scratch, a flash node's regions and snapshot, the run
directory's state file, a service log and the writer lock. Then every path under the root
is checked for its mode, and, where this test runs as root, another user (``nobody``,
through ``runuser``) tries to list every directory and read every file: each attempt
must fail with "Permission denied".
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import pytest

import blobtier
from blobtier import cli
from blobtier import runstate as state
from blobtier.config import FlashNodeConfig
from blobtier.flash_l3.service import FlashNode
from blobtier.fsutil import open_private, private_dir, private_file
from blobtier.region import supervisor
from blobtier.region.services import ServiceSpec

RUNUSER = shutil.which("runuser")


@pytest.fixture
def open_dir():
    """A directory every user may enter: pytest's own temp dirs are 0700, which would hide
    a region from another user whatever the region's own modes."""
    d = tempfile.mkdtemp(prefix="blobtier-private-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d)


@pytest.fixture
def umask_000():
    old = os.umask(0)
    yield
    os.umask(old)


def build_region(root: str) -> None:
    """Every kind of file a region gets, made by the code that makes it."""
    blobs = {f"ds/{i:02d}": os.urandom(70_000) for i in range(6)}
    with blobtier.connect(root, client={"chunk_size": "64KiB"}, cache={"daemon": "off"}) as c:
        c.put_many(blobs)
    with blobtier.connect(root, cache={"daemon": "off"}) as reader:  # a secondary's scratch
        assert bytes(reader.get("ds/00")) == blobs["ds/00"]
        records = [reader._metadata.get(k) for k in blobs]
    args = argparse.Namespace(flash_region=root, region=None, block_endpoints=None,
                              hedge_after_ms=0.0, origin=[])
    source = cli._flash_source(args)
    node = FlashNode(FlashNodeConfig(os.path.join(root, "flash", "000"), 8 << 20, region_bytes=1 << 20),
                     source)
    try:
        node.readthrough.read([(rec, i) for rec in records for i in range(rec.n_chunks)])
    finally:
        node.stop(0)  # writes the index snapshot
        source.close()
    started = supervisor._launch(ServiceSpec("block-0", "block", [sys.executable, "-c", "pass"],
                                             None, None, None, os.path.join(root, "logs", "block-0.log")))
    started.proc.wait(30)
    state.write(state.RegionState(root, time.time(), []))


def tree(root: str) -> list[str]:
    out = [root]
    for d, dirs, files in os.walk(root):
        out += [os.path.join(d, n) for n in dirs + files]
    return out


def test_a_region_made_under_umask_000_is_private(open_dir, umask_000):
    root = os.path.join(open_dir, "region")
    build_region(root)
    paths = tree(root)
    kinds = {os.path.relpath(p, root).split(os.sep)[0] for p in paths}
    assert {"metadata", "blocks", "flash", "run", "logs", "tmp", "writer.lock"} <= kinds
    modes = {os.path.relpath(p, root): os.lstat(p).st_mode for p in paths}
    # RocksDB makes its own files (0644 under this umask): they are private through the
    # metadata directory, which is 0700 like every other.
    wide = [f"{p} {stat.filemode(m)}" for p, m in modes.items()
            if (stat.S_ISDIR(m) and stat.S_IMODE(m) != 0o700)
            or (m & 0o077 and os.path.dirname(p) != "metadata")]
    assert wide == []


@pytest.mark.skipif(os.geteuid() != 0 or RUNUSER is None, reason="needs root and runuser")
def test_another_user_can_list_and_read_nothing_under_a_region(open_dir, umask_000):
    root = os.path.join(open_dir, "region")
    build_region(root)
    paths = tree(root)
    # As nobody, from /: list each path as a directory and read it as a file; both must be
    # refused for lack of permission (not merely "no such file").
    script = ('for p in "$@"; do ls -- "$p" >/dev/null 2>/tmp/.x || true; '
              'echo "$p|ls|$(cat /tmp/.x)"; cat -- "$p" >/dev/null 2>/tmp/.x || true; '
              'echo "$p|cat|$(cat /tmp/.x)"; done; rm -f /tmp/.x')
    proc = subprocess.run([RUNUSER, "-u", "nobody", "--", "sh", "-c", script, "sh", *paths],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    lines = [line.rsplit("|", 2) for line in proc.stdout.splitlines()]
    assert len(lines) == 2 * len(paths)
    leaked = [f"{p} ({how}: {err or 'allowed'})" for p, how, err in lines if "Permission denied" not in err]
    assert leaked == []


def test_private_dir_makes_missing_parents_private_and_keeps_existing_modes(tmp_path, umask_000, caplog):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="blobtier.fsutil"):
        private_dir(shared)
        private_dir(shared)  # warned once per process
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert [r.getMessage().count(str(shared)) >= 1 for r in caplog.records] == [True]
    private_dir(shared / "a" / "b")
    assert [stat.S_IMODE((shared / p).stat().st_mode) for p in ("a", "a/b")] == [0o700, 0o700]
    private_dir(shared, tighten=True)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700


def test_private_files_are_0600_and_close_on_exec(tmp_path, umask_000):
    old = tmp_path / "old"
    old.write_bytes(b"x")
    old.chmod(0o644)
    fd = open_private(old, os.O_RDWR | os.O_CREAT)
    try:
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)
    with private_file(tmp_path / "new", "ab") as f:
        f.write(b"y")
    assert [stat.S_IMODE(p.stat().st_mode) for p in (old, tmp_path / "new")] == [0o600, 0o600]
    with pytest.raises(ValueError):
        private_file(tmp_path / "r", "rb")


def test_a_region_root_open_to_others_is_named_in_a_warning(open_dir, caplog):
    root = os.path.join(open_dir, "wide")
    os.mkdir(root)
    os.chmod(root, 0o755)
    with caplog.at_level(logging.WARNING, logger="blobtier.fsutil"):
        with blobtier.connect(root, cache={"daemon": "off"}) as c:
            c.put("ds/x", b"data")
    assert any(root in r.getMessage() and "chmod" in r.getMessage() for r in caplog.records)
    assert stat.S_IMODE(os.stat(os.path.join(root, "metadata")).st_mode) == 0o700
