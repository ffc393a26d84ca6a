"""Bulk ingest: copy a directory tree or any fsspec location into blobtier keys, or
register it by reference.

Files are read by a small thread pool a bounded window ahead of the writer and committed
with ``put_many`` in batches, so a dataset of many small samples costs one group commit
per batch rather than an fsync per file. Large files stream through ``open(key, "wb")``.

``register`` copies nothing: it reads every object once to take its chunk checksums and
commits records that point at the origin objects (``blockstore_sim/origin.py``).

One bad file does not stop a batch: a name that makes no valid key (``..``, a name that is
not UTF-8, too long) and a file that cannot be read (gone, unreadable, changed while it was
registered) are left out and listed in the report's ``skipped``, and the rest goes on. A
failure of the region (a full disk, a lost lock) stops the run. Whatever fsspec or the
store behind it raises about the source reaches the caller in blobtier's exception tree
(``origin.fsspec_error``).
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import fsspec

from blobtier import checksum
from blobtier.blockstore_sim.origin import fsspec_error, fsspec_errors, object_tag
from blobtier.errors import InvalidKey, OriginChanged
from blobtier.metadata.schema import validate_key
from blobtier.sdk.writer import Reference

Progress = Callable[[int, int, int, int], None]
"""progress(files_done, bytes_done, files_total, bytes_total)"""

_BATCH_BYTES = 64 << 20
_BATCH_FILES = 512
_STREAM_OVER = 64 << 20  # files larger than this are streamed, not read whole


@dataclass(frozen=True)
class IngestReport:
    """``files`` and ``bytes`` stored or registered; ``skipped``: (source path, why) of each
    file left out (module docstring); ``unchanged``: files not written again because the
    key's current version has their size and chunk checksums."""

    files: int
    bytes: int
    skipped: tuple[tuple[str, str], ...] = ()
    unchanged: int = 0


Skipped = list[tuple[str, str]]


class _SourceFailed(Exception):
    """One file of the source could not be read: it is skipped, the run goes on."""


@contextmanager
def _reading(path: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # any store's kind: reported as the file's failure
        raise _SourceFailed(str(fsspec_error(exc, path))) from exc


class _Source:
    """A source file whose read errors are the file's (``_SourceFailed``), not the run's."""

    def __init__(self, f: IO[bytes], path: str) -> None:
        self._f, self._path = f, path

    def read(self, n: int = -1) -> bytes:
        with _reading(self._path):
            return self._f.read(n)


def _plan(files: list[tuple[str, str, int]], dest_prefix: str,
          skipped: Skipped) -> list[tuple[str, str, int]]:
    """(key, full path, size) of each file whose key is valid; the others go to ``skipped``."""
    prefix = dest_prefix.rstrip("/")
    plan = []
    for rel, full, size in files:
        try:
            plan.append((validate_key(f"{prefix}/{rel}"), full, size))
        except InvalidKey as exc:
            skipped.append((full, str(exc)))
    return plan


def _origin_prefix(src: str) -> str:
    """The URL of ``src`` itself (a file or a directory), as its records will name it."""
    local = _local_root(src)
    if local is not None:
        return "file://" + os.path.abspath(os.path.expanduser(local))
    with fsspec_errors(src):
        fs, path = fsspec.core.url_to_fs(src)
    return fs.unstrip_protocol(path)


def _local_root(src: str) -> str | None:
    if src.startswith("file://"):
        return src[len("file://"):]
    return None if "://" in src or "::" in src else src


def list_source(src: str, skipped: Skipped | None = None,
                ) -> tuple[fsspec.AbstractFileSystem | None, str, list[tuple[str, str, int]]]:
    """(filesystem or None for local, root, [(relative posix path, full path, size)]).

    A local directory or file that cannot be listed or sized is added to ``skipped``.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        BlobtierError: the store behind an fsspec URL failed (``origin.fsspec_error``).
    """
    skipped = [] if skipped is None else skipped
    local = _local_root(src)
    if local is not None:
        return _list_local(src, os.path.abspath(os.path.expanduser(local)), skipped)
    with fsspec_errors(src):
        fs, root = fsspec.core.url_to_fs(src)
        if fs.isfile(root):
            return fs, posixpath.dirname(root), [(posixpath.basename(root), root, fs.size(root))]
        found = fs.find(root, detail=True)
        if not found and not fs.exists(root):
            raise FileNotFoundError(errno.ENOENT, "no such file or directory", src)
    files = [(posixpath.relpath(path, root.rstrip("/")), path, int(info.get("size") or 0))
             for path, info in sorted(found.items())]
    return fs, root, files


def _list_local(src: str, root: str, skipped: Skipped) -> tuple[None, str, list[tuple[str, str, int]]]:
    if os.path.isfile(root):
        return None, os.path.dirname(root), [(os.path.basename(root), root, os.path.getsize(root))]
    if not os.path.isdir(root):
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", src)
    files = []

    def unlisted(exc: OSError) -> None:  # a directory os.walk cannot list: say so, go on
        skipped.append((exc.filename or root, str(exc)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                if os.path.isfile(full):
                    rel = os.path.relpath(full, root).replace(os.sep, "/")
                    files.append((rel, full, os.path.getsize(full)))
            except OSError as exc:  # gone since the listing, or not ours to look at
                skipped.append((full, str(exc)))
    return None, root, files


def ingest(client, src: str, dest_prefix: str, *, threads: int = 8,
           progress: Progress | None = None, force: bool = False) -> IngestReport:
    """Copy every file under ``src`` to ``dest_prefix/<relative path>``; a file with a
    bad name or that cannot be read is skipped (module docstring). A file whose key's
    current version has its size and chunk checksums is not written again (counted in
    ``unchanged``) unless ``force``."""
    skipped: Skipped = []
    fs, _, files = list_source(src, skipped)
    plan = _plan(files, dest_prefix, skipped)
    current = {} if force else _current_records(client, plan)
    total_bytes = sum(size for _, _, size in plan)
    done_files = done_bytes = unchanged = 0

    def read(full: str) -> bytes:
        with _reading(full):
            if fs is None:
                with open(full, "rb") as f:
                    return f.read()
            return fs.cat_file(full)

    def read_new(key: str, full: str) -> bytes | None:
        """The file's bytes, or None when the key's current version holds them already."""
        rec = current.get(key)
        if rec is not None and _same_chunks(rec, _chunks_of(full, fs, rec.chunk_size)):
            return None
        return read(full)

    def report() -> None:
        if progress is not None:
            progress(done_files, done_bytes, len(plan), total_bytes)

    report()
    with ThreadPoolExecutor(threads, thread_name_prefix="blobtier-ingest") as pool:
        batch: list[tuple[str, bytes]] = []
        batch_bytes = 0
        for key, full, size, fut in _read_ahead(pool, plan, read_new):
            try:
                if fut is None:  # a large file: stream it
                    if not _stream(client, key, full, fs, current.get(key)):
                        unchanged += 1
                        continue
                    done_files, done_bytes = done_files + 1, done_bytes + size
                    report()
                    continue
                data = fut.result()
            except _SourceFailed as exc:
                skipped.append((full, str(exc)))
                continue
            if data is None:
                unchanged += 1
                continue
            batch.append((key, data))
            batch_bytes += len(data)
            if batch_bytes >= _BATCH_BYTES or len(batch) >= _BATCH_FILES:
                client.put_many(batch)
                done_files, done_bytes = done_files + len(batch), done_bytes + batch_bytes
                batch, batch_bytes = [], 0
                report()
        if batch:
            client.put_many(batch)
            done_files, done_bytes = done_files + len(batch), done_bytes + batch_bytes
            report()
    return IngestReport(done_files, done_bytes, tuple(skipped), unchanged)


def _current_records(client, plan: list[tuple[str, str, int]]) -> dict:
    """key -> current record, for the planned files whose key holds a copied blob of the
    same size (the only ones that may be unchanged)."""
    found = {}
    client._live()  # a forked child opens its own store before reading client._metadata
    for start in range(0, len(plan), 4096):
        part = plan[start:start + 4096]
        for (key, _, size), rec in zip(part, client._metadata.get_many([k for k, _, _ in part])):
            if rec is not None and rec.size == size and not rec.origin:
                found[key] = rec
    return found


def _chunks_of(full: str, fs: fsspec.AbstractFileSystem | None, chunk_size: int) -> Iterator[bytes]:
    """The file's bytes in ``chunk_size`` pieces, read as they are asked for."""
    with _reading(full):
        f = open(full, "rb") if fs is None else fs.open(full, "rb")
        with f:
            while piece := f.read(chunk_size):
                yield piece


def _same_chunks(rec, pieces: Iterator[bytes]) -> bool:
    """Whether ``pieces`` have ``rec``'s chunk checksums (stops at the first that differs)."""
    n = 0
    for n, piece in enumerate(pieces, 1):
        if n > rec.n_chunks or checksum.compute(rec.checksum_algo, piece) != rec.checksums[n - 1]:
            return False
    return n == rec.n_chunks


def _stream(client, key: str, full: str, fs: fsspec.AbstractFileSystem | None, current=None) -> bool:
    """Store one large file as it is read; a read error aborts its blob (nothing commits).
    False, storing nothing, when ``current`` (the key's record) already holds its bytes."""
    if current is not None and _same_chunks(current, _chunks_of(full, fs, current.chunk_size)):
        return False
    with _reading(full):
        f = open(full, "rb") if fs is None else fs.open(full, "rb")
    with f:
        client.put(key, _Source(f, full))
    return True


def _read_ahead(pool: ThreadPoolExecutor, plan: list[tuple[str, str, int]],
                read: Callable[[str, str], bytes | None],
                ) -> Iterator[tuple[str, str, int, Future | None]]:
    """Yield the plan in order with reads running at most ~2 batches ahead."""
    window: deque[tuple[str, str, int, Future | None]] = deque()
    ahead = 0
    for key, full, size in plan:
        if size > _STREAM_OVER:
            window.append((key, full, size, None))
        else:
            window.append((key, full, size, pool.submit(read, key, full)))
            ahead += size
        while window and (ahead > 2 * _BATCH_BYTES or len(window) > 2 * _BATCH_FILES):
            item = window.popleft()
            ahead -= item[2] if item[3] is not None else 0
            yield item
    yield from window


def register(client, src: str, dest_prefix: str, *, threads: int = 8,
             progress: Progress | None = None) -> IngestReport:
    """Register every object under ``src`` as ``dest_prefix/<relative path>``, by reference.

    Each object is read once, in chunks, to take the checksums reads are verified
    against; its tag (ETag, or mtime and size) is taken before and after, so an object
    that changes while it is read is reported rather than registered half old, half new.
    """
    skipped: Skipped = []
    fs, _, files = list_source(src, skipped)
    if fs is None:  # a local directory: reach it through fsspec as the origin reader will
        fs = fsspec.filesystem("file")
    # Before any record names it: cache nodes read through only from registered origins.
    client._write_path().metadata.register_origins([_origin_prefix(src)])
    plan = _plan(files, dest_prefix, skipped)
    total = sum(size for _, _, size in plan)
    cfg = client.config.client
    done_files = done_bytes = 0

    def describe(key: str, path: str) -> Reference | tuple[str, str]:
        """The reference, or (path, why) when the object cannot be registered."""
        try:
            with _reading(path):
                tag = object_tag(fs.info(path))
                sums, size = [], 0
                with fs.open(path, "rb") as f:
                    while chunk := f.read(cfg.chunk_size):
                        sums.append(checksum.compute(cfg.checksum, chunk))
                        size += len(chunk)
                url = fs.unstrip_protocol(path)
                if object_tag(fs.info(path)) != tag:
                    raise OriginChanged(f"{url} changed while it was being registered; try again")
        except _SourceFailed as exc:
            return path, str(exc)
        return Reference(key, url, tag, size, sums)

    if progress is not None:
        progress(0, 0, len(plan), total)
    with ThreadPoolExecutor(threads, thread_name_prefix="blobtier-register") as pool:
        for start in range(0, len(plan), _BATCH_FILES):
            batch = plan[start:start + _BATCH_FILES]
            described = list(pool.map(lambda item: describe(item[0], item[1]), batch))
            refs = [r for r in described if isinstance(r, Reference)]
            skipped += [r for r in described if not isinstance(r, Reference)]
            if refs:
                client.put_references(refs)
            done_files += len(refs)
            done_bytes += sum(r.size for r in refs)
            if progress is not None:
                progress(done_files, done_bytes, len(plan), total)
    return IngestReport(done_files, done_bytes, tuple(skipped))
