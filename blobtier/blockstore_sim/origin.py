"""The origin adapter: blobs whose chunks are byte ranges of objects in another store.

An existing bucket prefix (any fsspec URL: ``s3://``, ``gs://``, ``file://``, ``memory://``)
is registered as a namespace without copying it: each object gets a record whose
``origin`` is ``"url\\ntag"`` and whose per-chunk checksums were taken at registration.
``FsspecOrigin`` reads the chunks as byte ranges through fsspec and holds them to the same
guarantee as the block layer: bytes that do not match their checksum are never returned.

The tag names one version of an object: its ETag where the store has one, else its
modification time and size. Reads do not ask for it up front: that would cost every
object a second round trip to the origin, and the checksums already guarantee that only
the registered version's bytes are served. When a chunk fails its checksum (or comes
back short), the tag is compared: a changed object raises ``OriginChanged`` naming it,
a deleted one ``BlobNotFound``; an unchanged one means the read itself went wrong.

Whatever fsspec or the store behind it raises (an ``OSError``, or a kind of its own such
as an HTTP client's response error) reaches callers as blobtier's exceptions
(``fsspec_error``): a missing object ``BlobNotFound``, a refusal ``Forbidden``, a timeout
``TimedOut``, any other failure ``TierUnavailable``, each with its errno; a protocol that
fsspec does not know, or whose package is not installed, ``InvalidRequest``.

Filesystems are built with fsspec's own configuration (``fsspec.config.conf`` or
``FSSPEC_<PROTOCOL>_<OPTION>`` environment variables, e.g. ``FSSPEC_S3_ENDPOINT_URL``),
overridden per protocol by ``storage_options``.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import fsspec
from fsspec.core import split_protocol

from blobtier import checksum, forks
from blobtier.chunks import ChunkRef
from blobtier.errors import (
    BlobNotFound,
    BlobtierError,
    ChecksumError,
    Forbidden,
    InvalidRequest,
    OriginChanged,
    TierUnavailable,
    TimedOut,
)

_NOT_FOUND, _DENIED, _TIMED_OUT = {404, 410}, {401, 403}, {408, 504}  # HTTP statuses


def fsspec_error(exc: BaseException, what: str) -> BlobtierError:
    """The exception of blobtier's tree for ``exc``, raised by fsspec (or the store behind
    it) about ``what`` (e.g. ``"origin s3://b/k"``); the errno of an ``OSError`` is kept."""
    if isinstance(exc, BlobtierError):
        return exc
    cause = exc.__cause__
    if isinstance(exc, FileNotFoundError) and cause is not None and not isinstance(cause, FileNotFoundError):
        # fsspec's HTTP ``info`` says "not found" whatever failed, a refused connection
        # too: its cause tells (an unreachable origin must not read as a deleted object).
        error = fsspec_error(cause, what)
        if not isinstance(error, BlobNotFound):
            return error
    code = _http_status(exc)
    number = exc.errno if isinstance(exc, OSError) and isinstance(exc.errno, int) else None
    if isinstance(exc, FileNotFoundError) or code in _NOT_FOUND:
        kind: type[BlobtierError] = BlobNotFound
    elif isinstance(exc, PermissionError) or code in _DENIED:
        kind = Forbidden
    elif isinstance(exc, TimeoutError) or code in _TIMED_OUT:
        kind = TimedOut
    else:
        kind, number = TierUnavailable, number or errno.EIO
    message = f"{what}: {str(exc) or type(exc).__name__}"
    return kind(number, message) if number is not None else kind(message)


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a store's response error (aiohttp's ``status``, others' ``code``)."""
    for name in ("status", "code", "status_code"):
        value = getattr(exc, name, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


@contextmanager
def fsspec_errors(what: str) -> Iterator[None]:
    """Raise what ``fsspec_error`` makes of any exception inside (not of a blobtier one)."""
    try:
        yield
    except BlobtierError:
        raise
    except Exception as exc:  # the store's own kinds too: they must not cross the API
        raise fsspec_error(exc, what) from exc


def object_tag(info: Mapping[str, Any]) -> str:
    """The tag of one version of an object, from its fsspec ``info()``."""
    for name in ("ETag", "etag", "e_tag"):
        if info.get(name):
            return f"etag:{str(info[name]).strip(chr(34))}"
    for name in ("mtime", "LastModified", "last_modified", "updated", "created"):
        if info.get(name) is not None:
            return f"mtime:{info[name]}:size:{info.get('size')}"
    return f"size:{info.get('size')}"


def split_origin(origin: str) -> tuple[str, str]:
    """``"url\\ntag"`` -> (url, tag)."""
    url, sep, tag = origin.partition("\n")
    if not sep or not url:
        raise ValueError(f"not an origin reference: {origin!r}")
    return url, tag


class FsspecOrigin:
    """A ``ChunkSource`` over origin objects reached through fsspec.

    Args:
        storage_options: per protocol, keyword arguments for its filesystem
            (e.g. ``{"s3": {"endpoint_url": ...}}``) on top of fsspec's configuration.
        concurrency: ranges of a synchronous filesystem read at once, at most (an async
            one runs a batch's ranges concurrently on its own loop).
    """

    def __init__(self, storage_options: Mapping[str, Mapping[str, Any]] | None = None,
                 concurrency: int = 32) -> None:
        self.storage_options = {k: dict(v) for k, v in (storage_options or {}).items()}
        self.concurrency = concurrency
        self._threads: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool)
        self._filesystems: dict[tuple[int, str], fsspec.AbstractFileSystem] = {}
        self._lock = threading.Lock()
        forks.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held it
        self._threads = None  # the parent's threads are not here
        forks.keep_inherited(self._filesystems)  # the parent's (its loop's threads are not here)
        self._filesystems = {}

    def _locate(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        protocol = split_protocol(url)[0] or "file"
        key = (os.getpid(), protocol)  # an async filesystem's loop does not survive fork
        fs = self._filesystems.get(key)
        if fs is None:
            with self._lock:
                fs = self._filesystems.get(key)
                if fs is None:
                    try:
                        fs = fsspec.filesystem(protocol, **self.storage_options.get(protocol, {}))
                    except (ImportError, ValueError) as exc:  # unknown, or its package missing
                        raise InvalidRequest(f"origin {url}: {exc}") from exc
                    self._filesystems[key] = fs
        return fs, fs._strip_protocol(url)

    def current_tag(self, url: str) -> str:
        fs, path = self._locate(url)
        try:
            return object_tag(fs.info(path))
        except Exception as exc:  # the store's own kinds too (module docstring)
            error = fsspec_error(exc, f"origin {url}")
            if isinstance(error, BlobNotFound):
                raise BlobNotFound(f"origin object {url} no longer exists") from None
            raise error from exc

    def _confirm(self, url: str, tag: str) -> None:
        """Raise OriginChanged if the object is no longer the registered version."""
        now = self.current_tag(url)
        if now != tag:
            raise OriginChanged(f"origin object {url} changed since it was registered "
                                f"({tag} then, {now} now); register it again")

    def read_many(self, refs: Sequence[ChunkRef]) -> list[memoryview]:
        targets = []
        for rec, index in refs:
            url, tag = split_origin(rec.origin)
            start, length = rec.chunk_range(index)
            targets.append((url, tag, start, length))
        datas = self._fetch(targets)
        out = []
        for (rec, index), (url, tag, start, length), data in zip(refs, targets, datas):
            what = f"origin {url} bytes {start}-{start + length}"
            try:
                if len(data) != length:
                    raise ChecksumError(f"{what}: got {len(data)} bytes")
                checksum.verify(rec.checksum_algo, data, rec.checksums[index], what)
            except ChecksumError:
                self._confirm(url, tag)  # OriginChanged if the object moved on
                raise
            out.append(memoryview(data).toreadonly())
        return out

    def _fetch(self, targets: list[tuple[str, str, int, int]]) -> list[bytes]:
        """The byte ranges, all in flight at once whatever the filesystem: one
        ``cat_ranges`` per async filesystem (fsspec runs it concurrently on its loop), and
        the ranges of a synchronous one (whose ``cat_ranges`` reads one range after the
        other) spread over a bounded pool of threads. So a batch of misses costs about
        one origin round trip, not one per chunk."""
        by_fs: dict[int, tuple[fsspec.AbstractFileSystem, list[int], list[str]]] = {}
        for i, (url, _, _, _) in enumerate(targets):
            fs, path = self._locate(url)
            group = by_fs.setdefault(id(fs), (fs, [], []))
            group[1].append(i)
            group[2].append(path)
        out: list[bytes] = [b""] * len(targets)
        for fs, positions, paths in by_fs.values():
            starts = [targets[i][2] for i in positions]
            ends = [targets[i][2] + targets[i][3] for i in positions]
            with fsspec_errors(f"origin {targets[positions[0]][0]}"):
                if getattr(fs, "async_impl", False) or len(paths) == 1:
                    got = fs.cat_ranges(paths, starts, ends, on_error="return")
                else:
                    got = self._pool().map(_cat_range, [fs] * len(paths), paths, starts, ends)
            for i, data in zip(positions, got):
                if isinstance(data, BaseException):
                    error = fsspec_error(data, f"origin {targets[i][0]}")
                    if isinstance(error, BlobNotFound):
                        raise BlobNotFound(f"origin object {targets[i][0]} no longer exists") from data
                    if type(error) is TierUnavailable:  # e.g. a range past a new end
                        self._confirm(targets[i][0], targets[i][1])
                    raise error from data
                out[i] = data
        return out

    def _pool(self) -> ThreadPoolExecutor:
        """This process's threads for synchronous filesystems (threads do not survive fork)."""
        pool = self._threads
        if pool is None or pool[0] != os.getpid():
            with self._lock:
                pool = self._threads
                if pool is None or pool[0] != os.getpid():
                    pool = self._threads = (os.getpid(), ThreadPoolExecutor(
                        self.concurrency, thread_name_prefix="blobtier-origin"))
        return pool[1]

    def close(self) -> None:
        self._filesystems.clear()
        pool, self._threads = self._threads, None
        if pool is not None and pool[0] == os.getpid():
            pool[1].shutdown(wait=False)


def _cat_range(fs: fsspec.AbstractFileSystem, path: str, start: int, end: int) -> bytes | BaseException:
    """One range of a synchronous filesystem, its failure returned as ``cat_ranges``
    returns it with ``on_error="return"``."""
    try:
        return fs.cat_file(path, start=start, end=end)
    except Exception as exc:  # noqa: BLE001 - the store's own kinds too, sorted by the caller
        return exc
