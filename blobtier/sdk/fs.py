"""``blobtier://``: blobtier as an fsspec filesystem.

Registered through the ``fsspec.specs`` entry point, so once blobtier is installed::

    with fsspec.open("blobtier://imagenet/train/0001.jpg") as f: ...
    fs = fsspec.filesystem("blobtier", region="/data/region")   # a region dir or TOML

The fsspec path of the key ``ns/a/b`` is ``ns/a/b``. Keys have no directories: namespaces
and the prefixes between ``/`` are pseudo-directories that exist while some key lies under
them, as in an object store. ``mkdir`` succeeds and stores nothing; removing the last key
under a prefix removes the directory.

A path that names an existing blob or directory means exactly that, even when it holds
glob characters (``ns/img[1].jpg``, ``ns/a*b.txt``): ``cat``, ``get``, ``copy``, ``mv``
and ``rm`` expand a path as a glob pattern only when nothing has its literal name (fsspec
expands first, so ``rm("ns/a*b.txt")`` also removed ``ns/aXb.txt``). ``glob()`` itself,
and ``fsspec.open_files`` in read mode (which calls it), always match patterns.

Reads go through the client's tiers. An open file pins the version it opened (an overwrite
while it is open does not change what it reads) and reads ahead while read sequentially;
``cat_ranges`` reads each blob's ranges, sorted and merged, through one pinned reader.

Writes stream into a ``BlobWriter`` and commit atomically on ``close`` (or on the
transaction's commit). Leaving a ``with fs.open(...)`` block by an exception, ``discard()``,
a failed commit, or dropping an unclosed file commits nothing. fsspec's ``OpenFile`` (what
``fsspec.open`` returns) closes its file on every exit, so a failing
``with fsspec.open(url, "wb")`` block commits what was written: run it inside
``with fs.transaction:`` to discard on error.

Errors keep blobtier's tree (``blobtier.errors``), built on the builtins fsspec callers
expect: a missing key raises ``FileNotFoundError``, a malformed key ``ValueError``, a denied
one ``PermissionError``; reading a pseudo-directory as a file raises ``IsADirectoryError``.

``token`` is the bearer token presented to the region's services (``auth.token``,
``blobtier/rpc/auth.py``); an embedded region has no services and needs none.
"""

from __future__ import annotations

import datetime as dt
import errno
import functools
import io
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from glob import has_magic
from typing import IO, Any

from fsspec.callbacks import DEFAULT_CALLBACK, Callback
from fsspec.implementations.local import LocalFileSystem, make_path_posix, trailing_sep
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem, make_instance
from fsspec.utils import check_contained, isfilelike, other_paths

from blobtier.config import RegionConfig, with_overrides
from blobtier.errors import BlobNotFound, InvalidKey, InvalidRequest
from blobtier.metadata.schema import validate_key, validate_namespace
from blobtier.runstate import resolve_running
from blobtier.sdk.client import Client
from blobtier.sdk.info import BlobInfo

Entry = dict[str, Any]

# cat_ranges merges ranges less than _MERGE_GAP apart into one read: copying the gap costs
# less than another read call (fsspec's parquet reader uses the same default). Merged reads
# stop growing at _MAX_READ, which bounds the memory one call holds beyond its results.
_MERGE_GAP = 64 << 10
_MAX_READ = 16 << 20

# One client per region per process: fsspec makes an instance per thread, but only one
# handle may hold an embedded region's writer lock, so the instances share it.
_SHARED: dict[RegionConfig, Client] = {}
_SHARED_LOCK = threading.Lock()


def _shared_client(config: RegionConfig) -> Client:
    client = _SHARED.get(config)
    if client is None:
        with _SHARED_LOCK:
            client = _SHARED.get(config)
            if client is None:
                client = _SHARED[config] = Client(config)
    return client


def _after_fork() -> None:
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()  # another parent thread may have held it; clients survive fork


os.register_at_fork(after_in_child=_after_fork)


@functools.lru_cache(maxsize=16)
def _default_config(home: str | None) -> RegionConfig:
    return resolve_running(None)  # reads $BLOBTIER_HOME, the cache key


class BlobtierFileSystem(AbstractFileSystem):
    """fsspec filesystem over one blobtier region.

    Args:
        region: an embedded region directory, a region TOML file or a ``RegionConfig``;
            ``None`` is the default region at ``$BLOBTIER_HOME`` (else ``~/.blobtier``),
            looked up again whenever ``$BLOBTIER_HOME`` changes.
        client: an open ``Client`` to use instead (e.g. one this process already writes
            with: an embedded region takes one writer handle at a time).
        token: the bearer token for the region's services (its ``auth.token``).
        kwargs: fsspec's own options.
    """

    protocol = "blobtier"
    root_marker = ""

    def __init__(self, region: str | os.PathLike | RegionConfig | None = None, *,
                 client: Client | None = None, token: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if region is not None and client is not None:
            raise InvalidRequest("pass a region or a client, not both")
        self._client = client
        self.token = token
        config = resolve_running(region) if region is not None else None
        if token:
            config = with_overrides(config or _default_config(os.environ.get("BLOBTIER_HOME")),
                                    auth={"token": token})
        self._config = config

    @property
    def client(self) -> Client:
        if self._client is not None:
            return self._client
        return _shared_client(self._config or _default_config(os.environ.get("BLOBTIER_HOME")))

    def __reduce__(self) -> tuple:
        options = dict(self.storage_options)
        if options.pop("client", None) is not None:
            # A client pickles as its config; routing it through ``region`` lets the
            # unpickling process share its one client for that region.
            options["region"] = self._client.config
        return make_instance, (type(self), self.storage_args, options)

    @classmethod
    def clear_instance_cache(cls) -> None:
        """Forget cached instances and close the clients they opened (never one passed
        in as ``client=``); instances still in use open new ones."""
        super().clear_instance_cache()
        with _SHARED_LOCK:
            clients = list(_SHARED.values())
            _SHARED.clear()
        for client in clients:
            client.close()

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return super()._strip_protocol(path).lstrip("/")

    # -- what is where ---------------------------------------------------------------
    def info(self, path: str, **kwargs: Any) -> Entry:
        path = self._strip_protocol(path)
        if "/" in path:
            try:
                return _file_entry(self.client.stat(path))
            except BlobNotFound:
                pass
        _check_path(path)
        if self._has_children(path):
            return _dir_entry(path)
        raise BlobNotFound(f"no such blob or directory: {path}")

    def exists(self, path: str, **kwargs: Any) -> bool:
        # Only "missing" and "malformed" mean False: a denied or failing region raises.
        try:
            self.info(path)
        except (FileNotFoundError, ValueError):
            return False
        return True

    def isfile(self, path: str) -> bool:
        path = self._strip_protocol(path)
        try:
            return "/" in path and self.client.exists(path)
        except InvalidKey:
            return False

    def isdir(self, path: str) -> bool:
        path = self._strip_protocol(path)
        try:
            _check_path(path)
        except InvalidKey:
            return False
        return self._has_children(path)

    def _has_children(self, path: str) -> bool:
        if not path:
            return True  # the root always exists
        return next(iter(self.client.iter_ls(path + "/", page=1)), None) is not None

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Entry] | list[str]:
        """Entries directly under ``path``: blobs, and pseudo-directories for deeper keys.
        Listing a blob gives the blob. A delimiter listing: it reads the directory's own
        entries, one per subdirectory, never the keys below those."""
        path = self._strip_protocol(path)
        _check_path(path)
        prefix = path + "/" if path else ""
        entries: list[Entry] = [_dir_entry(e[:-1]) if isinstance(e, str) else _file_entry(e)
                                for e in self.client.iter_dir(prefix)]
        if not entries and "/" in path:
            entries = [_file_entry(self.client.stat(path))]
        elif not entries and path:
            raise BlobNotFound(f"no such directory: {path}")
        entries.sort(key=lambda e: e["name"])
        return entries if detail else [e["name"] for e in entries]

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False,
             detail: bool = False, **kwargs: Any) -> list[str] | dict[str, Entry]:
        """Every blob under ``path`` (and the pseudo-directories between, with
        ``withdirs``) from one prefix scan; a blob's own path finds itself."""
        path = self._strip_protocol(path)
        _check_path(path)
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        prefix = path + "/" if path else ""
        out: dict[str, Entry] = {}
        for info in self.client.iter_ls(prefix):
            parts = info.key[len(prefix):].split("/")
            if withdirs:
                deepest = len(parts) - 1 if maxdepth is None else min(len(parts) - 1, maxdepth)
                for depth in range(1, deepest + 1):
                    name = prefix + "/".join(parts[:depth])
                    if name not in out:
                        out[name] = _dir_entry(name)
            if maxdepth is None or len(parts) <= maxdepth:
                out[info.key] = _file_entry(info)
        if out and withdirs and path:
            out[path] = _dir_entry(path)
        elif not out and "/" in path:
            with suppress(BlobNotFound):
                out[path] = _file_entry(self.client.stat(path))
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def du(self, path: str, total: bool = True, maxdepth: int | None = None,
           withdirs: bool = False, **kwargs: Any) -> int | dict[str, int]:
        found = self.find(path, maxdepth=maxdepth, withdirs=withdirs, detail=True)
        sizes = {name: entry["size"] for name, entry in found.items()}
        return sum(sizes.values()) if total else sizes

    def created(self, path: str) -> dt.datetime:
        """When the current version was committed."""
        return self._stat(path).created

    def modified(self, path: str) -> dt.datetime:
        """When the key last changed: blobs are immutable, so when its version was committed."""
        return self._stat(path).created

    def ukey(self, path: str) -> str:
        """The content fingerprint and version: changes whenever the key is rewritten."""
        info = self._stat(path)
        return f"{info.checksum}/v{info.version}"

    def checksum(self, path: str) -> int:
        """The content fingerprint: equal values mean equal bytes."""
        return int(self._stat(path).checksum.rpartition("-")[2], 16)

    def _stat(self, path: str) -> BlobInfo:
        key = self._strip_protocol(path)
        with self._as_file(key):
            return self.client.stat(key)

    @contextmanager
    def _as_file(self, key: str) -> Iterator[None]:
        """Name a pseudo-directory for what it is when it was used as a blob."""
        try:
            yield
        except (BlobNotFound, InvalidKey) as exc:
            if self.isdir(key):
                raise IsADirectoryError(errno.EISDIR, "a directory, not a blob", key) from exc
            raise

    # -- reading ---------------------------------------------------------------------
    def _open(self, path: str, mode: str = "rb", block_size: int | None = None,
              autocommit: bool = True, cache_options: dict | None = None,
              **kwargs: Any) -> BlobtierFile:
        return BlobtierFile(self, self._strip_protocol(path), mode, block_size, autocommit,
                            cache_options=cache_options, **kwargs)

    def open(self, path: str, mode: str = "rb", block_size: int | None = None,
             cache_options: dict | None = None, compression: str | None = None,
             **kwargs: Any) -> IO:
        if "b" in mode or "r" in mode or compression is not None:
            return super().open(path, mode, block_size, cache_options, compression, **kwargs)
        text = {k: kwargs.pop(k) for k in ("encoding", "errors", "newline") if k in kwargs}
        binary = super().open(path, mode.replace("t", "") + "b", block_size, cache_options, **kwargs)
        return _TextWriter(binary, **text)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        """The blob's bytes, or the slice ``[start:end]`` of them (negative from the end)."""
        key = self._strip_protocol(path)
        with self._as_file(key):
            if not start and end is None:
                return bytes(self.client.get(key))
            lo, hi = _span(self.client.stat(key).size, start, end)
            return bytes(self.client.read_range(key, lo, hi - lo)) if hi > lo else b""

    def cat_ranges(self, paths: list[str], starts: int | list[int | None] | None,
                   ends: int | list[int | None] | None, max_gap: int | None = None,
                   on_error: str = "return", **kwargs: Any) -> list[bytes | Exception]:
        """Byte ranges of many blobs: one pinned reader per blob, whose ranges are sorted
        and merged into one read when they overlap or lie within ``max_gap`` bytes
        (default 64 KiB; merged reads stay under 16 MiB)."""
        if not isinstance(paths, list):
            raise TypeError("paths must be a list")
        starts = starts if isinstance(starts, list) else [starts] * len(paths)
        ends = ends if isinstance(ends, list) else [ends] * len(paths)
        if not len(starts) == len(ends) == len(paths):
            raise ValueError("paths, starts and ends must have the same length")
        gap = _MERGE_GAP if max_gap is None else max_gap
        out: list[Any] = [None] * len(paths)
        by_key: dict[str, list[int]] = {}
        for i, path in enumerate(paths):
            by_key.setdefault(self._strip_protocol(path), []).append(i)
        for key, which in by_key.items():
            try:
                self._read_ranges(key, [(starts[i], ends[i], i) for i in which], gap, out)
            except (OSError, ValueError) as exc:
                if on_error != "return":
                    raise
                for i in which:
                    out[i] = exc
        return out

    def _read_ranges(self, key: str, ranges: list[tuple[int | None, int | None, int]],
                     gap: int, out: list[Any]) -> None:
        if len(ranges) == 1:  # no reader: its readahead would fetch chunks for nothing
            start, end, i = ranges[0]
            out[i] = self.cat_file(key, start, end)
            return
        with self._as_file(key):
            reader = self.client.open(key, "rb")
        with reader:
            spans = sorted((*_span(reader.size, s, e), i) for s, e, i in ranges)
            for lo, hi, members in _merge(spans, gap):
                reader.seek(lo)
                data = reader.read(hi - lo)
                for a, b, i in members:
                    out[i] = data[a - lo:b - lo]

    def _is_pattern(self, path: str) -> bool:
        """A glob pattern to expand: glob characters, and no blob or directory of that name."""
        return has_magic(path) and not self.exists(path)

    def expand_path(self, path: str | list[str], recursive: bool = False,
                    maxdepth: int | None = None, assume_literal: bool = False,
                    **kwargs: Any) -> list[str]:
        """As fsspec's, but a path that names an existing blob or directory is taken
        literally; only the others are expanded as glob patterns (module docstring).

        Raises:
            FileNotFoundError: nothing is named or matched.
        """
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        paths = [self._strip_protocol(p) for p in paths]
        patterns = [] if assume_literal else [p for p in paths if self._is_pattern(p)]
        groups = ([p for p in paths if p not in patterns], True), (patterns, False)
        out: set[str] = set()
        for group, literal in groups:
            if group:
                with suppress(FileNotFoundError):  # as fsspec: only nothing at all is an error
                    out.update(super().expand_path(group, recursive, maxdepth,
                                                   assume_literal=literal, **kwargs))
        if not out:
            raise BlobNotFound(f"nothing named or matched by {', '.join(paths)}")
        return sorted(out)

    def _literal_copy(self, src: str, dst: str, recursive: bool, maxdepth: int | None,
                      dest_is_dir: bool) -> tuple[list[str], list[str]]:
        """Sources and destinations of a copy of ``src``, a path with glob characters that
        names a blob or directory, as fsspec's ``get``/``copy`` place a path without them
        (they would place it as a glob's single match: inside ``dst``)."""
        srcs = self.expand_path(src, recursive=recursive, maxdepth=maxdepth)
        if not recursive or maxdepth is not None:  # as fsspec: no directories then
            srcs = [p for p in srcs if not (trailing_sep(p) or self.isdir(p))]
        exists = dest_is_dir and not trailing_sep(src)
        return srcs, other_paths(srcs, dst, exists=exists) if srcs else []

    def get(self, rpath: str | list[str], lpath: Any, recursive: bool = False,
            callback: Callback = DEFAULT_CALLBACK, maxdepth: int | None = None, **kwargs: Any) -> None:
        """fsspec's ``get``; a path naming a blob is that blob (module docstring)."""
        if isinstance(rpath, str) and isinstance(lpath, (str, os.PathLike)) and has_magic(rpath) \
                and not self._is_pattern(rpath):
            root = make_path_posix(os.fspath(lpath))
            dest_is_dir = trailing_sep(root) or LocalFileSystem().isdir(root)
            rpath, lpath = self._literal_copy(rpath, root, recursive, maxdepth, dest_is_dir)
            if not rpath:
                return
            check_contained(root, lpath)
        super().get(rpath, lpath, recursive=recursive, callback=callback, maxdepth=maxdepth, **kwargs)

    def copy(self, path1: str | list[str], path2: str | list[str], recursive: bool = False,
             maxdepth: int | None = None, on_error: str | None = None, **kwargs: Any) -> None:
        """fsspec's ``copy`` (and so ``mv``); a path naming a blob is that blob."""
        if isinstance(path1, str) and isinstance(path2, str) and has_magic(path1) \
                and not self._is_pattern(path1):
            dst = self._strip_protocol(path2)
            dest_is_dir = trailing_sep(path2) or self.isdir(dst)
            path1, path2 = self._literal_copy(path1, dst, recursive, maxdepth, dest_is_dir)
            if not path1:
                return
        super().copy(path1, path2, recursive=recursive, maxdepth=maxdepth, on_error=on_error, **kwargs)

    def cat(self, path: str | list[str], recursive: bool = False, on_error: str = "raise",
            **kwargs: Any) -> bytes | dict[str, bytes | Exception]:
        """Several blobs come from one batched ``get_many``."""
        paths = self.expand_path(path, recursive=recursive)
        if len(paths) == 1 and not isinstance(path, list) and paths[0] == self._strip_protocol(path):
            return self.cat_file(paths[0])
        try:
            return {p: bytes(v) for p, v in zip(paths, self.client.get_many(paths))}
        except (OSError, ValueError):
            pass  # a directory, a missing or a malformed path among them: one by one
        named = set(self._strip_protocol(path if isinstance(path, list) else [path]))
        out: dict[str, bytes | Exception] = {}
        for p in paths:
            try:
                out[p] = self.cat_file(p)
            except (OSError, ValueError) as exc:
                if isinstance(exc, IsADirectoryError) and (recursive or p not in named):
                    continue  # directories that globs and recursion found hold no bytes
                if on_error == "raise":
                    raise
                if on_error == "return":
                    out[p] = exc
        return out

    def get_file(self, rpath: str, lpath: Any, callback: Callback = DEFAULT_CALLBACK,
                 outfile: IO[bytes] | None = None, **kwargs: Any) -> None:
        """Copy one blob to a local file, published by rename once complete."""
        key = self._strip_protocol(rpath)
        if outfile is None and isfilelike(lpath):
            outfile = lpath
        try:
            with self._as_file(key):
                reader = self.client.open(key, "rb")
        except IsADirectoryError:
            if outfile is not None:
                raise
            os.makedirs(lpath, exist_ok=True)
            return
        with reader:
            callback.set_size(reader.size)
            if outfile is not None:
                _copy(reader, outfile, callback, self._transfer_size)
                return
            lpath = os.fspath(lpath)
            os.makedirs(os.path.dirname(lpath) or ".", exist_ok=True)
            part = f"{lpath}.{uuid.uuid4().hex[:12]}.part"
            try:
                with open(part, "xb") as f:
                    _copy(reader, f, callback, self._transfer_size)
                os.replace(part, lpath)
            except BaseException:
                with suppress(FileNotFoundError):
                    os.remove(part)
                raise

    @property
    def _transfer_size(self) -> int:
        return self.client.config.client.chunk_size

    # -- writing ---------------------------------------------------------------------
    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        key = self._strip_protocol(path)
        if mode == "create" and self.isfile(key):
            raise FileExistsError(errno.EEXIST, "blob exists", key)
        if self._intrans:
            with self.open(key, "wb") as f:  # commits with the transaction
                f.write(value)
        else:
            self.client.put(key, value)

    def pipe(self, path: str | dict[str, bytes], value: bytes | None = None, **kwargs: Any) -> None:
        """A dict of blobs is stored with one group commit."""
        if isinstance(path, dict) and not self._intrans and kwargs.get("mode", "overwrite") == "overwrite":
            self.client.put_many({self._strip_protocol(k): v for k, v in path.items()})
        else:
            super().pipe(path, value, **kwargs)

    def put_file(self, lpath: str, rpath: str, callback: Callback = DEFAULT_CALLBACK,
                 mode: str = "overwrite", **kwargs: Any) -> None:
        if os.path.isdir(lpath):
            return  # directories exist only through the keys under them
        key = self._strip_protocol(rpath)
        if mode == "create" and self.isfile(key):
            raise FileExistsError(errno.EEXIST, "blob exists", key)
        with open(lpath, "rb") as src:
            callback.set_size(os.fstat(src.fileno()).st_size)
            with self.open(key, "wb") as dst:
                _copy(src, dst, callback, self._transfer_size)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        try:
            with self._as_file(src):
                reader = self.client.open(src, "rb")
        except IsADirectoryError:
            return  # a directory is copied by copying the keys under it
        with reader, self.open(dst, "wb", attrs=dict(reader.record.attrs)) as out:
            _copy(reader, out, DEFAULT_CALLBACK, self._transfer_size)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        _check_path(self._strip_protocol(path))  # nothing to store: see the module docstring

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        _check_path(path)
        if not exist_ok and self.isdir(path):
            raise FileExistsError(errno.EEXIST, "directory exists", path)

    def rmdir(self, path: str) -> None:
        if self.isdir(path):  # a pseudo-directory exists only while it holds keys
            raise OSError(errno.ENOTEMPTY, "directory not empty", self._strip_protocol(path))

    def rm_file(self, path: str) -> None:
        key = self._strip_protocol(path)
        with self._as_file(key):
            self.client.delete(key)

    def rm(self, path: str | list[str], recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete blobs; a directory (with ``recursive``) by deleting every key under it."""
        for key in self._blobs_to_remove(path, recursive, maxdepth):
            with suppress(BlobNotFound):  # removed meanwhile by another writer
                self.client.delete(key)

    def _blobs_to_remove(self, path: str | list[str], recursive: bool,
                         maxdepth: int | None) -> list[str]:
        keys: dict[str, None] = {}  # ordered and without repeats
        for p in self._strip_protocol(path if isinstance(path, list) else [path]):
            if not self._is_pattern(p):
                entry = self.info(p)  # raises when there is nothing to remove
                if entry["type"] == "file":
                    keys[p] = None
                if recursive:  # a key may be a blob and a directory at once: both go
                    keys.update(dict.fromkeys(self.find(p, maxdepth=maxdepth)))
                elif entry["type"] == "directory":
                    raise IsADirectoryError(errno.EISDIR, "pass recursive=True to remove", p)
                continue
            matches = self.glob(p, maxdepth=maxdepth, detail=True)
            if not matches:
                raise BlobNotFound(f"nothing matches {p}")
            for name, entry in matches.items():
                if entry["type"] == "file":
                    keys[name] = None
                elif recursive and (maxdepth is None or maxdepth > 1):
                    # As fsspec's expand_path: the glob used one level of maxdepth.
                    deeper = None if maxdepth is None else maxdepth - 1
                    keys.update(dict.fromkeys(self.find(name, maxdepth=deeper)))
        return list(keys)


class BlobtierFile(AbstractBufferedFile):
    """A ``blobtier://`` file: reads from a ``BlobReader`` pinned to one version; writes
    stream into a ``BlobWriter`` that commits on ``close``/``commit`` and on nothing else.

    Mode ``xb`` refuses an existing key when opened and again at commit (last writer
    checked, not a compare-and-set); ``ab`` writes a new version holding the old bytes then
    the new, with the old version's attributes unless ``attrs`` is given. Reading behaves
    as a local file's ``io.BufferedReader`` (``readline(size)``, ``readlines(hint)``, reads
    and seeks past the end). Reads use no fsspec cache by default: the reader already fetches whole
    chunks, reads ahead, and the client's L1 keeps what was read.
    """

    def __init__(self, fs: BlobtierFileSystem, path: str, mode: str = "rb",
                 block_size: int | str | None = "default", autocommit: bool = True,
                 cache_type: str = "none", cache_options: dict | None = None,
                 attrs: dict[str, str] | None = None, **kwargs: Any) -> None:
        self._reader = self._writer = None
        if mode not in ("rb", "wb", "ab", "xb"):  # fsspec's own refusal is NotImplementedError
            raise InvalidRequest(f"{path}: mode {mode!r} is not supported (rb, wb, ab or xb, "
                                 "or r, w, a or x in text)")
        kwargs.pop("size", None)  # the pinned version knows its size
        if mode == "rb":
            with fs._as_file(path):
                self._reader = fs.client.open(path, "rb")
            kwargs["size"] = self._reader.size
        elif mode == "xb" and fs.isfile(path):
            raise FileExistsError(errno.EEXIST, "blob exists", path)
        super().__init__(fs, path, mode, block_size, autocommit, cache_type=cache_type,
                         cache_options=cache_options, **kwargs)
        if mode == "rb":
            self.details = _file_entry(BlobInfo.from_record(path, self._reader.record))
            return
        base = None
        if mode == "ab":  # the version appended to gives its bytes and its attributes
            with suppress(BlobNotFound):
                base = fs.client.open(path, "rb")
        if attrs is None and base is not None:
            attrs = dict(base.record.attrs)
        self._writer = fs.client.open(path, "wb", attrs=attrs)
        if base is not None:
            with base:
                shutil.copyfileobj(base, self._writer, fs._transfer_size)
            self.loc = base.size

    # -- reading ---------------------------------------------------------------------
    def _fetch_range(self, start: int, end: int) -> bytes:
        self._reader.seek(start)
        return self._reader.read(end - start)

    def readinto(self, b: Any) -> int:
        self._check_reading()
        self._reader.seek(self.loc)
        n = self._reader.readinto(b)  # straight into the caller's buffer
        self.loc += n
        return n

    def readline(self, size: int | None = -1) -> bytes:
        """The next line, newline included, of at most ``size`` bytes (all if negative)."""
        self._check_reading()
        self._reader.seek(self.loc)
        line = self._reader.readline(size)
        self.loc += len(line)
        return line

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """The remaining lines; with ``hint`` > 0, stop once they hold more than ``hint``
        bytes (as ``io.IOBase.readlines``)."""
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint < total:
                break
        return lines

    def _check_reading(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        if self.mode != "rb":
            raise ValueError("File not in read mode")

    # -- writing ---------------------------------------------------------------------
    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        if self._writer is None:
            raise ValueError("File not in write mode")
        n = self._writer.write(data)
        self.loc += n
        return n

    def flush(self, force: bool = False) -> None:
        if self.closed:
            raise ValueError("Flush on closed file")
        # Nothing to do: full chunks go to the block store as they fill, and the rest
        # becomes visible only at commit.

    def commit(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if self.mode == "xb" and self.fs.isfile(self.path):
            writer.abort()
            raise FileExistsError(errno.EEXIST, "blob created while this exclusive write was open",
                                  self.path)
        writer.close()

    def discard(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.abort()
        self.closed = True

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self.mode == "rb":
                self._reader.close()
            elif self.autocommit:
                self.commit()
        finally:
            super().close()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None and self.mode != "rb":
            self.discard()
        else:
            self.close()

    def __del__(self) -> None:
        if not self.closed:
            if getattr(self, "mode", "rb") == "rb":
                self.close()
            else:
                self.discard()  # the garbage collector never commits a write


class _TextWriter(io.TextIOWrapper):
    """Text mode over a ``BlobtierFile`` with its rule: an exception in ``with`` discards."""

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            self.buffer.discard()
        self.close()


def _check_path(path: str) -> None:
    """Raise ``InvalidKey`` unless ``path`` can name a blob or a pseudo-directory."""
    if "/" in path:
        validate_key(path)
    elif path:
        validate_namespace(path)


def _file_entry(info: BlobInfo) -> Entry:
    return {"name": info.key, "size": info.size, "type": "file", "created": info.created,
            "mtime": info.created, "version": info.version, "checksum": info.checksum,
            "attrs": info.attrs}


def _dir_entry(name: str) -> Entry:
    return {"name": name, "size": 0, "type": "directory"}


def _span(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    """``[start:end]`` of ``size`` bytes as Python slices read it, clamped to the blob."""
    lo = 0 if start is None else max(0, size + start) if start < 0 else min(start, size)
    hi = size if end is None else max(0, size + end) if end < 0 else min(end, size)
    return lo, max(lo, hi)


def _merge(spans: list[tuple[int, int, int]], gap: int) -> list[tuple[int, int, list]]:
    """Group sorted (lo, hi, index) ranges into reads of overlapping or near ranges."""
    groups: list[tuple[int, int, list]] = []
    for lo, hi, i in spans:
        first, last, members = groups[-1] if groups else (0, 0, [])
        if members and lo <= last + gap and max(hi, last) - first <= _MAX_READ:
            members.append((lo, hi, i))
            groups[-1] = (first, max(last, hi), members)
        else:
            groups.append((lo, hi, [(lo, hi, i)]))
    return groups


def _copy(src: Any, dst: Any, callback: Callback, block: int) -> None:
    while data := src.read(block):
        dst.write(data)
        callback.relative_update(len(data))
