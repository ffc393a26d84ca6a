"""Tar shards in WebDataset layout: samples by member name, and the per-shard sample index.

A sample is the run of consecutive members whose names agree up to the *first* dot of the
base name, as WebDataset groups them: ``a/0001.seg.jpg`` and ``a/0001.cls`` are the fields
``seg.jpg`` and ``cls`` of sample ``a/0001``.

The index holds each shard's sample count, so that a dataset knows its length and can
split an epoch into equal parts without reading every shard on every start. It is written
on first use (the shard read once) as a small blob beside the shard, under the reserved
segment ``.blobtier-shard-index`` (a prefix listing skips it), and it names the shard's
content checksum: a shard rewritten since is counted again.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator, Sequence
from typing import IO, Any

import blobtier
from blobtier.errors import BlobNotFound, BlobtierError, InvalidRequest

Sample = dict[str, Any]

INDEX_DIR = ".blobtier-shard-index"


def split_name(name: str) -> tuple[str, str]:
    """(sample key, field) of a tar member: the name up to the first dot of its base name."""
    folder, slash, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot:
        return name, ""
    return folder + slash + stem, ext


def _open(stream: IO[bytes]) -> tarfile.TarFile:
    # Random access skips the data of unwanted members with a seek instead of a read.
    seekable = getattr(stream, "seekable", lambda: False)()
    return tarfile.open(fileobj=stream, mode="r:" if seekable else "r|")


def iter_tar_samples(stream: IO[bytes], shard: str, skip: int = 0,
                     take: int | None = None) -> Iterator[Sample]:
    """Samples ``skip`` to ``skip + take`` (all after ``skip`` when None) of one tar stream;
    the skipped ones are not read.

    Raises:
        InvalidRequest: the stream is not a readable tar (naming ``shard``).
    """
    current: Sample | None = None
    key, index = None, -1
    try:
        with _open(stream) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name, ext = split_name(member.name)
                if name != key:
                    if current is not None:
                        yield current
                    key, index = name, index + 1
                    if take is not None and index >= skip + take:
                        return
                    current = {"__key__": name, "__shard__": shard} if index >= skip else None
                if current is not None:
                    current[ext] = tar.extractfile(member).read()
    except tarfile.TarError as exc:
        raise InvalidRequest(f"shard {shard} is not a readable tar: {exc}") from exc
    if current is not None:
        yield current


def count_samples(stream: IO[bytes], shard: str) -> int:
    """Samples in one tar stream (reads its headers only, when the stream can seek).

    Raises:
        InvalidRequest: the stream is not a readable tar.
    """
    keys, last = 0, None
    try:
        with _open(stream) as tar:
            for member in tar:
                name = split_name(member.name)[0] if member.isfile() else last
                if name != last:
                    keys, last = keys + 1, name
    except tarfile.TarError as exc:
        raise InvalidRequest(f"shard {shard} is not a readable tar: {exc}") from exc
    return keys


def index_key(shard: str) -> str:
    """Where the index of ``shard`` lives: beside it, under the reserved segment."""
    namespace, _, path = shard.partition("/")
    return f"{namespace}/{INDEX_DIR}/{path}.json"


def is_index_key(key: str) -> bool:
    return INDEX_DIR in key.split("/")


def list_shards(client: blobtier.Client, prefix: str) -> list[blobtier.BlobInfo]:
    """The shards under ``prefix`` in key order (their indexes left out).

    Raises:
        BlobNotFound: nothing under ``prefix``.
    """
    infos = [info for info in client.iter_ls(prefix) if not is_index_key(info.key)]
    if not infos:
        raise BlobNotFound(f"no shards under prefix {prefix!r}")
    return infos


def shard_counts(client: blobtier.Client, infos: Sequence[blobtier.BlobInfo]) -> list[int]:
    """Samples per shard: from the index, else by reading the shard once (and writing its
    index, where this client may write)."""
    counts: list[int] = []
    for info, raw in zip(infos, _indexes(client, [i.key for i in infos])):
        if raw is not None and raw.get("checksum") == info.checksum:
            counts.append(int(raw["samples"]))
            continue
        with client.open(info.key) as stream:
            n = count_samples(stream, info.key)
        counts.append(n)
        try:
            client.put(index_key(info.key), json.dumps(
                {"shard": info.key, "checksum": info.checksum, "samples": n}).encode())
        except (BlobtierError, OSError):
            pass  # a reader's client, or no room: counted again next time, nothing wrong
    return counts


def _indexes(client: blobtier.Client, keys: Sequence[str]) -> list[dict | None]:
    out: list[dict | None] = []
    for key in keys:
        try:
            out.append(json.loads(bytes(client.get(index_key(key)))))
        except (BlobNotFound, ValueError):
            out.append(None)  # none yet, or unreadable: counted again
    return out
