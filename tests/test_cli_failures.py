"""The CLI never fails silently (issue 18 item 4): a --region that holds no region, a prefix
that matches nothing, rm -r, ls -l/-h, du, ingest of an unchanged folder, plurals, and
progress bars only on a terminal."""

from __future__ import annotations

import io
import os

import pytest

import blobtier
from blobtier.cli import main
from blobtier.progress import progress_bar


@pytest.fixture
def cli(region, capsys):
    def run(*args: str, where: str | None = None) -> tuple[int, str, str]:
        code = main(["--region", where or region, *args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def filled(region):
    with blobtier.connect(region) as c:
        c.put_many({"ds/a.bin": b"a" * 3000, "ds/sub/b.bin": b"b" * 2048, "ds/sub/deep/c": b"c",
                    "other/x": b"x"})
    return region


@pytest.mark.parametrize("command", [["ls"], ["ls", "-r", "ds/"], ["get", "ds/a.bin"], ["stat", "k"],
                                     ["rm", "k"], ["du"], ["gc"], ["scrub"], ["warmup", "ds/"],
                                     ["status"], ["top", "--once"], ["down"]])
def test_a_region_directory_holding_no_region_is_an_error_naming_it(cli, tmp_path, command):
    typo = tmp_path / "regoin"
    typo.mkdir()
    code, out, err = cli(*command, where=str(typo))
    assert code == 1 and out == ""
    # status, top and down: "no region is up at DIR"; the others: "no region at DIR"
    assert (f"no region at {typo}" in err or f"no region is up at {typo}" in err)
    assert len(err.strip().splitlines()) == 1
    if command[0] != "down":  # (down takes the region's run lock, in run/, before it looks)
        assert os.listdir(typo) == []  # nothing was created there


def test_the_default_region_that_does_not_exist_is_named(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("BLOBTIER_HOME", str(tmp_path / "nothing-here"))
    assert main(["ls"]) == 1
    err = capsys.readouterr().err
    assert f"no region at {tmp_path / 'nothing-here'}" in err and "BLOBTIER_HOME" in err


def test_commands_that_create_a_region_still_do(cli, tmp_path, region):
    (tmp_path / "f").write_bytes(b"hello")
    code, out, _ = cli("put", str(tmp_path / "f"), "ns/f")
    assert code == 0 and os.path.isdir(os.path.join(region, "metadata"))


@pytest.mark.parametrize("command", [["ls", "nope/"], ["ls", "-r", "ds/nope"], ["du", "nope/"],
                                     ["rm", "-r", "--yes", "nope/"], ["warmup", "nope/"]])
def test_a_prefix_matching_nothing_says_so_and_exits_1(cli, filled, command):
    code, out, err = cli(*command)
    assert code == 1 and out == ""
    assert f"no blobs under '{command[-1]}'" in err


def test_rm_r_counts_and_asks_for_yes(cli, filled):
    code, out, err = cli("rm", "-r", "ds/")  # not a terminal: refused without --yes
    assert code == 1 and "would delete 3 blobs under ds/" in err and "--yes" in err
    assert cli("ls", "-r", "ds/")[0] == 0  # nothing deleted
    code, out, err = cli("rm", "-r", "--yes", "ds/sub/")
    assert code == 0 and out.strip() == "deleted 2 blobs under ds/sub/"
    code, out, _ = cli("rm", "-r", "-y", "ds/")
    assert code == 0 and out.strip() == "deleted 1 blob under ds/"
    code, out, _ = cli("ls", "-r")
    assert [line.split()[-1] for line in out.splitlines()] == ["other/x"]


def test_ls_long_human_total_and_grouping(cli, filled):
    code, out, _ = cli("ls", "-lh", "ds/")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:2] == ["2.9", "KiB"] and lines[0].endswith("ds/a.bin")
    assert lines[1].split() == ["dir", "ds/sub/"]
    assert lines[-1] == "total 2.9 KiB in 1 blob and 1 directory"
    code, out, _ = cli("ls", "-l", "-r", "ds/")
    lines = out.splitlines()
    assert [x for x in lines if x.endswith(":")] == ["ds/:", "ds/sub/:", "ds/sub/deep/:"]
    assert lines[-1] == "total 5049 in 3 blobs"


def test_du_sums_per_subdirectory(cli, filled):
    code, out, _ = cli("du", "ds/")
    rows = [line.split() for line in out.splitlines()]
    assert code == 0 and rows == [["3000", "1", "blob", "ds/a.bin"], ["2049", "2", "blobs", "ds/sub/"],
                                  ["5049", "3", "blobs", "ds/", "total"]]
    code, out, _ = cli("du", "-h")
    assert out.splitlines()[-1].split() == ["4.9", "KiB", "4", "blobs", "(region)", "total"]


def _folder(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    files = {"a.txt": b"a" * 10, "sub/b.bin": os.urandom(70_000), "sub/c": b""}
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    return root


def test_ingest_of_an_unchanged_folder_writes_no_new_version(cli, tmp_path, region):
    root = _folder(tmp_path)
    code, out, _ = cli("ingest", "-q", str(root), "ds/")
    assert code == 0 and out.startswith("ingested 3 files, 70010 bytes")
    code, out, _ = cli("ingest", "-q", str(root), "ds/")
    assert code == 0 and out.strip() == "ingested 0 files, 0 bytes into ds/; 3 files unchanged, not " \
                                        "written again (--force rewrites)"
    (root / "a.txt").write_bytes(b"b" * 10)  # same size, other bytes: written again
    code, out, _ = cli("ingest", "-q", str(root), "ds/")
    assert out.startswith("ingested 1 file, 10 bytes") and "2 files unchanged" in out
    with blobtier.connect(region) as c:
        assert {i.key: i.version for i in c.ls("ds/")} == {"ds/a.txt": 2, "ds/sub/b.bin": 1, "ds/sub/c": 1}
        assert c.get("ds/a.txt") == b"b" * 10
    code, out, _ = cli("ingest", "-q", "--force", str(root), "ds/")
    assert out.startswith("ingested 3 files, 70010 bytes") and "unchanged" not in out
    with blobtier.connect(region) as c:
        assert {i.key: i.version for i in c.ls("ds/")} == {"ds/a.txt": 3, "ds/sub/b.bin": 2, "ds/sub/c": 2}


def test_ingest_of_an_unchanged_large_file_is_skipped_too(client, tmp_path, monkeypatch):
    from blobtier.sdk import ingest as ingest_mod

    monkeypatch.setattr(ingest_mod, "_STREAM_OVER", 100_000)  # streamed, not read whole
    root = tmp_path / "big"
    root.mkdir()
    (root / "f").write_bytes(os.urandom(300_000))
    assert ingest_mod.ingest(client, str(root), "big/").files == 1
    again = ingest_mod.ingest(client, str(root), "big/")
    assert (again.files, again.unchanged) == (0, 1) and client.stat("big/f").version == 1


def test_progress_bars_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    with progress_bar("ingest", stream=io.StringIO()) as show:
        assert show is None
    with progress_bar("ingest", stream=Tty(), quiet=True) as show:
        assert show is None
    tty = Tty()
    with progress_bar("ingest", stream=tty) as show:
        show(1, 512, 2, 1024)
        show(2, 1024, 2, 1024)
    assert "ingest" in tty.getvalue() and "2/2 files" in tty.getvalue()


def test_ingest_off_a_terminal_prints_one_summary_line(region, tmp_path):
    import subprocess
    import sys

    root = _folder(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "blobtier.cli", "--region", region, "ingest", str(root),
                           "ds/"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "" and "\r" not in proc.stdout
    assert proc.stdout.count("\n") == 1
