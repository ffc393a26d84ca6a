"""The command line: every sub-command, and one readable line for user errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from blobtier.cli import main


@pytest.fixture
def cli(region, capsys):
    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--region", region, *args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_put_get_ls_stat_rm(cli, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(300_000))
    code, out, _ = cli("put", str(src), "ns/file")
    assert code == 0 and out.split("\t")[:2] == ["ns/file", "300000"]
    dst = tmp_path / "out.bin"
    assert cli("get", "ns/file", str(dst))[0] == 0
    assert dst.read_bytes() == src.read_bytes()
    code, out, _ = cli("ls", "ns/")
    assert code == 0 and out.split()[0] == "300000" and out.split()[-1] == "ns/file"
    code, out, _ = cli("stat", "ns/file")
    assert "size        300000" in out and "version     1" in out
    assert cli("rm", "ns/file")[0] == 0
    assert cli("ls", "ns/")[1] == ""


def test_user_errors_are_one_line_without_traceback(cli):
    code, out, err = cli("get", "ns/missing")
    assert code == 1 and err.strip() == "blobtier: error: no such blob: ns/missing"
    code, _, err = cli("put", "/nonexistent/file", "ns/x")
    assert code == 1 and len(err.strip().splitlines()) == 1
    code, _, err = cli("stat", "bad//key")
    assert code == 1 and "empty" in err and "Traceback" not in err


def test_ingest_directory_and_gc(cli, tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    files = {"a.txt": b"a" * 10, "sub/b.bin": os.urandom(70_000), "sub/c": b""}
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    code, out, _ = cli("ingest", "--quiet", str(root), "ds/raw/")
    assert code == 0 and "ingested 3 files, 70010 bytes" in out
    code, out, _ = cli("ls", "ds/")
    assert [line.split()[-1] for line in out.splitlines()] == ["ds/raw/a.txt", "ds/raw/sub/b.bin",
                                                               "ds/raw/sub/c"]
    code, out, _ = cli("gc")
    assert code == 0 and "live chunks 2" in out  # the empty file has no chunks


def test_ingest_from_an_fsspec_url(cli):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe({"/bucket/p/x.bin": b"xx", "/bucket/p/y/z.bin": b"zzz"})
    try:
        code, out, _ = cli("ingest", "-q", "memory://bucket/p", "ds/mem")
        assert code == 0, out
        assert "ingested 2 files, 5 bytes" in out
    finally:
        fs.rm("/bucket", recursive=True)


def test_put_from_stdin_and_get_to_stdout(region, tmp_path):
    env = {**os.environ, "BLOBTIER_HOME": region}
    data = os.urandom(100_000)
    put = subprocess.run([sys.executable, "-m", "blobtier.cli", "put", "-", "ns/stdin"], input=data,
                         capture_output=True, env=env, timeout=60)
    assert put.returncode == 0, put.stderr
    get = subprocess.run([sys.executable, "-m", "blobtier.cli", "get", "ns/stdin"],
                         capture_output=True, env=env, timeout=60)
    assert get.returncode == 0 and get.stdout == data
