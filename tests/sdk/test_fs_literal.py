"""Literal names are literal: a path that names a blob means that blob, glob characters or not.

Differential against fsspec's ``MemoryFileSystem``: a pattern that names no blob behaves
exactly as fsspec's on the same tree; a literal name with glob characters behaves exactly
as fsspec's does on a tree where those characters are spelled out (``a*b`` -> ``a_STAR_b``),
i.e. as the plain name it is.
"""

from __future__ import annotations

import os

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from blobtier.sdk.fs import BlobtierFileSystem

SPELL = {"*": "_STAR_", "?": "_Q_", "[": "_LB_", "]": "_RB_"}
TREE = {
    "ns/a*b.txt": b"literal star",
    "ns/aXb.txt": b"matched by a*b",
    "ns/img[1].jpg": b"literal brackets",
    "ns/img1.jpg": b"matched by img[1]",
    "ns/q?.txt": b"literal question mark",
    "ns/qz.txt": b"matched by q?",
    "ns/d[x]/f1": b"under a literal directory",
    "ns/dx/f2": b"under the directory d[x] matches",
    "ns/plain.txt": b"no glob characters",
}
LITERALS = ["ns/a*b.txt", "ns/img[1].jpg", "ns/q?.txt", "ns/d[x]"]
PATTERNS = ["ns/a?b.txt", "ns/img[0-9].jpg", "ns/q*", "ns/d?", "ns/*.txt"]  # name no blob


def spell(path: str) -> str:
    for ch, word in SPELL.items():
        path = path.replace(ch, word)
    return path


def unspell(path: str) -> str:
    for ch, word in SPELL.items():
        path = path.replace(word, ch)
    return path


@pytest.fixture
def bt(client):
    fs = BlobtierFileSystem(client=client, skip_instance_cache=True)
    fs.pipe(dict(TREE))
    yield fs
    BlobtierFileSystem.clear_instance_cache()


@pytest.fixture
def mem():
    """fsspec's in-memory filesystem, whose store is global to the process: emptied around."""
    fs = MemoryFileSystem(skip_instance_cache=True)
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]
    yield fs
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]


def _mem_tree(mem: MemoryFileSystem, spelled: bool) -> None:
    mem.pipe({f"/{spell(k) if spelled else k}": v for k, v in TREE.items()})


def _keys(fs, unspelled: bool = False) -> list[str]:
    names = [p.lstrip("/") for p in fs.find("/" if isinstance(fs, MemoryFileSystem) else "")]
    return sorted(unspell(n) if unspelled else n for n in names)


def _norm(result, unspelled: bool):
    if isinstance(result, dict):
        return {(unspell(k) if unspelled else k).lstrip("/"): v for k, v in result.items()}
    return result


def _local_files(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, root)] = f.read()
    return out


OPS = {
    "cat": lambda fs, p, _: fs.cat(p),
    "cat-recursive": lambda fs, p, _: fs.cat(p, recursive=True),
    "expand_path": lambda fs, p, _: [x.lstrip("/") for x in fs.expand_path(p)],
    "rm": lambda fs, p, _: fs.rm(p),
    "rm-recursive": lambda fs, p, _: fs.rm(p, recursive=True),
    "copy": lambda fs, p, _: fs.copy(p, ("/" if isinstance(fs, MemoryFileSystem) else "") + "ns2/c"),
    "copy-recursive": lambda fs, p, _: fs.copy(
        p, ("/" if isinstance(fs, MemoryFileSystem) else "") + "ns2/c", recursive=True),
    "mv": lambda fs, p, _: fs.mv(p, ("/" if isinstance(fs, MemoryFileSystem) else "") + "ns2/m"),
    "get-file": lambda fs, p, local: fs.get(p, str(local / "out")),
    "get-into-dir": lambda fs, p, local: fs.get(p, str(local) + "/"),
    "get-recursive": lambda fs, p, local: fs.get(p, str(local / "out"), recursive=True),
}


def _outcome(fs, op: str, path: str, local, unspelled: bool):
    """What ``op`` did: its result or error type, the keys left, the local files written."""
    local.mkdir()
    try:
        result = ("ok", _norm(OPS[op](fs, path, local), unspelled))
    except (OSError, ValueError) as exc:
        result = ("raised", _mro_base(exc))
    files = {unspell(k) if unspelled else k: v for k, v in _local_files(local).items()}
    return result, _keys(fs, unspelled), files


def _mro_base(exc: BaseException) -> str:
    return next(c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins")


def cases(paths: list[str]) -> list[tuple[str, str]]:
    """(path, op) pairs. A directory read or removed as a file is left out: there blobtier
    differs from MemoryFileSystem on purpose (IsADirectoryError; globs and recursion skip
    directories in cat and in rm without recursive), whatever the path's characters."""
    return [(p, op) for p in paths for op in OPS
            if not ("/d" in p and op in ("cat", "cat-recursive", "rm", "mv"))]


@pytest.mark.parametrize("path, op", cases(LITERALS))
def test_a_literal_name_means_that_blob_as_fsspec_treats_a_plain_name(bt, mem, tmp_path, op, path):
    _mem_tree(mem, spelled=True)
    got = _outcome(bt, op, path, tmp_path / "bt", unspelled=False)
    want = _outcome(mem, op, "/" + spell(path), tmp_path / "mem", unspelled=True)
    if op == "expand_path":  # fsspec's memory paths carry its root marker
        want = (("ok", [unspell(p) for p in want[0][1]]), want[1], want[2])
    assert got == want


@pytest.mark.parametrize("path, op", cases(PATTERNS))
def test_a_pattern_that_names_no_blob_expands_as_in_fsspec(bt, mem, tmp_path, op, path):
    _mem_tree(mem, spelled=False)
    got = _outcome(bt, op, path, tmp_path / "bt", unspelled=False)
    want = _outcome(mem, op, "/" + path, tmp_path / "mem", unspelled=False)
    assert got == want


def test_rm_and_cat_of_literal_names_touch_nothing_else(bt):
    assert bt.cat("ns/img[1].jpg") == b"literal brackets"
    bt.rm("ns/a*b.txt")
    assert bt.exists("ns/aXb.txt") and not bt.exists("ns/a*b.txt")
    bt.rm(["ns/q?.txt", "ns/d[x]"], recursive=True)
    assert _keys(bt) == ["ns/aXb.txt", "ns/dx/f2", "ns/img1.jpg", "ns/img[1].jpg", "ns/plain.txt",
                         "ns/qz.txt"]


def test_the_command_line_takes_keys_literally(client, region, capsys):
    """A guard: ``blobtier rm``/``get`` name keys, never patterns (they never expanded)."""
    from blobtier.cli import main

    client.put_many({"ns/a*b.txt": b"literal", "ns/aXb.txt": b"other"})
    client.close()
    assert main(["--region", region, "get", "ns/a*b.txt"]) == 0
    assert capsys.readouterr().out == "literal"
    assert main(["--region", region, "rm", "ns/a*b.txt"]) == 0
    assert main(["--region", region, "ls", "ns/"]) == 0
    assert [line.split()[-1] for line in capsys.readouterr().out.splitlines()] == ["ns/aXb.txt"]
