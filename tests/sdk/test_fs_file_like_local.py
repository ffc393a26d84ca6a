"""A file from ``fs.open`` reads like a local file: differential against ``io.BufferedReader``
over a real file holding the same bytes, op by op (results and positions)."""

from __future__ import annotations

import random

import pytest

from blobtier.sdk.fs import BlobtierFileSystem

CHUNK = 64 << 10  # the `client` fixture's chunk size


def _lines_data(seed: int, trailing_newline: bool) -> bytes:
    rng = random.Random(seed)
    lines = []
    for _ in range(40):  # lines from empty to longer than a chunk, so they cross chunk edges
        n = rng.choice([0, 0, 1, 5, 80, CHUNK - 1, CHUNK, CHUNK + 3, 2 * CHUNK + 7])
        lines.append(bytes(rng.choice(b"abcxyz ") for _ in range(n)))
    data = b"\n".join(lines)
    return data + b"\n" if trailing_newline else data


DATA = {
    "lines": _lines_data(1, trailing_newline=False),
    "lines-newline-at-end": _lines_data(2, trailing_newline=True),
    "no-newline": b"x" * (2 * CHUNK + CHUNK // 2),
    "only-newlines": b"\n" * (CHUNK + 2),
    "newline-at-chunk-edges": b"a" * (CHUNK - 1) + b"\n" + b"b" * (CHUNK - 1) + b"\n\n" + b"c" * CHUNK,
    "one-byte": b"\n",
    "empty": b"",
}

SIZES = [None, -1, 0, 1, 7, CHUNK - 1, CHUNK, CHUNK + 5, 3 * CHUNK]


def _op(f, op: tuple):
    """Run one op; its result (bytes, lists, ints, or that it raised)."""
    name, *args = op
    try:
        if name == "readinto":
            buf = bytearray(args[0])
            n = f.readinto(buf)
            return n, bytes(buf[:n])
        if name == "next":
            try:
                return next(f)
            except StopIteration:
                return "StopIteration"
        return getattr(f, name)(*args)
    except (OSError, ValueError):  # a negative seek: OSError(EINVAL) locally, ValueError in fsspec
        return "raised"


def _program(seed: int, size: int) -> list[tuple]:
    rng = random.Random(seed)
    offsets = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, max(0, size - 1), size, size + 1, size + 3 * CHUNK]
    ops: list[tuple] = []
    for _ in range(150):
        kind = rng.choice(["read", "readline", "readline", "readlines", "seek", "readinto", "next",
                           "tell"])
        if kind in ("read", "readline"):
            ops.append((kind,) if rng.random() < 0.2 else (kind, rng.choice(SIZES)))
        elif kind == "readlines":
            ops.append((kind, rng.choice([None, -1, 0, 1, 100, 2 * CHUNK])))
        elif kind == "seek":
            whence = rng.choice([0, 0, 1, 2])
            off = rng.choice(offsets) if whence == 0 else rng.choice([-size - 5, -5, -1, 0, 3, CHUNK])
            ops.append((kind, off, whence))
        elif kind == "readinto":
            ops.append((kind, rng.choice([0, 1, 100, CHUNK + 1])))
        else:
            ops.append((kind,))
    return ops


EDGES = [  # the cases named in the issue, in order, then again from the end of the file
    ("readline", 0), ("readline", -1), ("readline", None), ("readline", 3), ("readline", CHUNK + 1),
    ("readlines",), ("readlines",), ("readline",), ("read",), ("read", 5), ("read", 0),
    ("readinto", 10), ("next",), ("seek", 0, 2), ("readlines",), ("seek", 5 * CHUNK, 0), ("tell",),
    ("read",), ("readline",), ("readlines", 10), ("next",), ("readinto", 4), ("seek", -3, 1),
    ("tell",), ("seek", 0, 0), ("readlines", 1), ("readlines", 0),
]


@pytest.fixture
def fs(client):
    yield BlobtierFileSystem(client=client, skip_instance_cache=True)
    BlobtierFileSystem.clear_instance_cache()


@pytest.mark.parametrize("name", list(DATA))
@pytest.mark.parametrize("program", ["edges", "random-1", "random-2"])
def test_reads_like_a_local_buffered_file(fs, tmp_path, name, program):
    data = DATA[name]
    local_path = tmp_path / "local.bin"
    local_path.write_bytes(data)
    fs.pipe_file("ns/f", data)
    ops = EDGES if program == "edges" else _program(int(program[-1]), len(data))
    with open(local_path, "rb") as local, fs.open("ns/f", "rb") as ours:
        for i, op in enumerate(ops):
            want, got = _op(local, op), _op(ours, op)
            assert (got, ours.tell()) == (want, local.tell()), f"op {i}: {op}"
