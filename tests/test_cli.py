"""The command line: every sub-command, and one readable line for user errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import blobtier
from blobtier.cli import main


@pytest.fixture
def cli(region, capsys):
    with blobtier.connect(region) as c:  # a region to work in (a missing one is an error)
        c.put("seed/empty", b"")

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
    code, out, err = cli("ls", "ns/")
    assert code == 1 and out == "" and "no blobs under 'ns/'" in err


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
    code, out, _ = cli("ls", "-r", "ds/")
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


# -- output a terminal can take, errors on one line (issue 19, items 5 and 7) ---------------
def _blobtier(region: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blobtier.cli", "--region", region, *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def test_ls_escapes_keys_the_terminal_cannot_encode(region):
    import blobtier

    with blobtier.connect(region) as client:
        client.put_many({"ns/café": b"1", "ns/日本.txt": b"2", "ns/a\nb": b"3", "ns/plain": b"4"})
    done = _blobtier(region, "ls", "ns/", PYTHONIOENCODING="ascii")
    assert done.returncode == 0, done.stderr
    keys = [line.split("  ")[-1] for line in done.stdout.splitlines()]
    assert keys == ["ns/a\\nb", "ns/caf\\xe9", "ns/plain", "ns/\\u65e5\\u672c.txt"]


def test_an_error_naming_a_key_with_a_newline_is_one_line(cli):
    code, _, err = cli("get", "ns/two\nlines")
    assert code == 1 and err == "blobtier: error: no such blob: ns/two\\nlines\n"


@pytest.mark.parametrize("reference", [False, True], ids=["copy", "reference"])
def test_ingest_reports_a_bad_file_name_and_stores_the_rest(cli, tmp_path, reference):
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.txt").write_bytes(b"a")
    with open(os.path.join(os.fsencode(root), b"bad-\xff.bin"), "wb") as f:  # not UTF-8
        f.write(b"bad")
    (root / "z.txt").write_bytes(b"zz")
    code, out, err = cli("ingest", "-q", *(["--reference"] if reference else []), str(root), "ds/r")
    assert code == 1  # something was left out
    assert err.count("\n") == 1 and "skipped" in err and "bad-\\udcff.bin" in err and "UTF-8" in err
    assert "2 files, 3 bytes" in out and "(1 skipped)" in out
    code, out, _ = cli("ls", "-r", "ds/")
    assert [line.split()[-1] for line in out.splitlines()] == ["ds/r/a.txt", "ds/r/z.txt"]


def test_ingest_from_a_store_whose_package_is_missing_is_one_line(region):
    done = _blobtier(region, "ingest", "-q", "--reference", "oci://bucket@ns/prefix", "ds/x")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "ocifs" in done.stderr


def test_ingest_from_a_store_that_refuses_is_one_line(region, tmp_path):
    from tests.http_origin import HttpStore

    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "a.bin").write_bytes(b"x" * 1000)
    store = HttpStore(str(tmp_path / "web"))
    store.refuse["/a.bin"] = 403
    try:
        done = _blobtier(region, "ingest", "-q", "--reference", f"{store.url}/a.bin", "ds/web")
    finally:
        store.close()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "403" in done.stderr


def _limit_file_size() -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_a_full_disk_is_one_line(region, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(4 << 20))
    assert _blobtier(region, "put", str(src), "ns/first").returncode == 0  # the region exists
    done = subprocess.run([sys.executable, "-m", "blobtier.cli", "--region", region, "put", str(src),
                           "ns/k"], capture_output=True, text=True, timeout=120,
                          preexec_fn=_limit_file_size)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("blobtier: error: ") and "Traceback" not in done.stderr
