"""The embedded metadata store: RocksDB through rocksdict.

One process opens the database as primary and writes; every other process opens it as a
RocksDB *secondary* instance, which needs no lock and reads the primary's files, catching
up with the primary's newest writes on demand: before any lookup when the last catch-up
is older than ``catch_up_s``, and always before a scan or after a miss.

A secondary's catch-up alone can fall behind for good. It replays the primary's WAL into
memtables of its own, and when the primary flushes a WAL into a table file (which every
primary does when it opens: short-lived writer processes do it all the time) and deletes
it before the secondary read its end, the secondary keeps the older values it did read in
a memtable, which shadows the newer ones in the table file: a key overwritten or deleted
since stays at its old version. So after every catch-up the secondary compares the
primary's state it is in step with (the MANIFEST named by ``CURRENT``, which a primary
switches when it opens, and the oldest WAL still needed, which moves on every flush) with
what it was opened on, and opens a fresh secondary when either moved or the catch-up
failed. A reader therefore never sees a torn record and sees any committed record within
``catch_up_s`` whatever the writers do (tests/sdk/test_reader_catchup.py).

Damage is never an empty region. A secondary skips table files that are missing, so after
every (re-)open a reader checks each live table file exists with its listed size. With
``region_root`` the store checks the region's identity (``blobtier.region_id``): a region
whose marker exists while its metadata is missing, of another region or not a directory
raises ``MetadataCorrupt`` for readers and the writer alike; the writer never creates a
fresh database in its place.

Commits use group commit: concurrent ``_cas_many`` callers queue; one leader checks all
of their compare-and-sets against the current values and writes them in one synced
``WriteBatch``.

Errors: rocksdict raises a bare ``Exception`` carrying RocksDB's status text. Every call
goes through ``_error``, which maps it into the error tree: no space (or a file too
large) is ``StorageFull``, corruption and I/O errors ``MetadataCorrupt``, the database
lock of another primary ``RegionLocked``, anything else ``TierUnavailable``. A scan checks
its iterator's status when it stops, so a read error is never taken for the end of the
keys.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    DataBlockIndexType,
    DbClosedError,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from blobtier import forks, region_id
from blobtier.errors import (
    BlobtierError,
    MetadataCorrupt,
    RegionLocked,
    StorageFull,
    TierUnavailable,
)
from blobtier.fsutil import private_dir
from blobtier.metadata.schema import REGION_ID_KEY
from blobtier.metadata.store import MetadataStore, version_matches

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_OPEN_ATTEMPTS = 5  # a primary that is opening may switch its MANIFEST under a secondary's open
_MIN_LOG = "rocksdb.min-log-number-to-keep"  # moves on every flush of a WAL into a table


def _options(block_cache_bytes: int, row_cache_bytes: int) -> Options:
    """Tuned for point lookups: bloom filters skip SST files that cannot hold a key, a hash
    index inside data blocks skips the binary search, and the row cache answers repeat
    lookups of a record (every epoch after the first) without touching a table at all."""
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_keep_log_file_num(2)
    opts.set_paranoid_checks(True)  # a corrupt file found at open or in compaction stops writes
    table = BlockBasedOptions()
    table.set_block_cache(Cache(block_cache_bytes))
    table.set_bloom_filter(10, False)
    # Index and filter blocks stay in the table readers, outside the block cache: charged
    # to a small cache they evict each other and every lookup reloads megabytes.
    table.set_data_block_index_type(DataBlockIndexType.binary_and_hash())
    table.set_data_block_hash_ratio(0.75)
    opts.set_block_based_table_factory(table)
    if row_cache_bytes:
        opts.set_row_cache(Cache(row_cache_bytes))
    return opts


class _Batch:
    __slots__ = ("items", "result", "error")

    def __init__(self, items: Sequence[tuple[bytes, int, bytes | None]]) -> None:
        self.items = items
        self.result: list[bool] | None = None
        self.error: BaseException | None = None


class RocksDBStore(MetadataStore):
    """``MetadataStore`` on an embedded RocksDB at ``path``.

    Args:
        path: the database directory.
        writable: open as the primary (only one process may); otherwise as a secondary.
        scratch_dir: where a secondary keeps its own small log directory.
        catch_up_s: how stale a secondary may be before a lookup catches up (seconds).
        block_cache_bytes, row_cache_bytes: RocksDB's caches (per process).
        region_root: the region whose metadata this is: its identity is checked (and a
            new or older region's created) as ``blobtier.region_id`` says; None: no identity
            (a metadata service's own database).

    Raises (from any method): ``StorageFull`` (no space), ``MetadataCorrupt`` (a corrupt
    file or an I/O error), ``RegionLocked`` (another primary has the database open),
    ``TierUnavailable`` (closed, or any other RocksDB failure).
    """

    def __init__(self, path: str, *, writable: bool = False, scratch_dir: str | None = None,
                 catch_up_s: float = 0.5, block_cache_bytes: int = 64 << 20,
                 row_cache_bytes: int = 128 << 20, region_root: str | None = None) -> None:
        self.path = path
        self.region_root = region_root
        self.region_id: str | None = None  # the region's identity, once known
        self.where = f"metadata store {path}"
        self._cache_sizes = (block_cache_bytes, row_cache_bytes)
        self._opts: Options | None = None  # built once per process: its caches outlive a re-open
        self.writable = writable
        self.catch_up_s = catch_up_s
        self._db: Rdict | None = None
        self._secondary_dir: str | None = None
        self._scratch_dir = scratch_dir
        self._last_catch_up = 0.0
        self._in_step: tuple[bytes, int] | None = None  # the primary's state the secondary follows
        self._reopen_lock = threading.Lock()
        self._reported: BaseException | None = None  # a write error the caller already got
        self._cv = threading.Condition()
        self._queue: list[_Batch] = []
        self._leading = False
        self._sync = WriteOptions()
        self._sync.sync = True
        if writable:
            marker = self._check_exists()
            private_dir(path, tighten=True)  # RocksDB's own files are private through it
            try:
                self._db = Rdict(path, self._options())
            except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exceptions
                raise self._error(exc, "opening as the writer") from exc
            try:
                self._identify(marker)
            except BaseException:
                self._db.close()
                self._db = None
                raise
        else:
            self._open_secondary()
        forks.register(self)

    def _after_fork_in_child(self) -> None:
        """A forked child's copy never touches the parent's RocksDB handle (its threads and
        locks are not in the child; closing it is the parent's business) nor the parent's
        secondary directory: it reads through a secondary of its own, opened on first use.
        A writer's copy becomes a reader: the writer lock stays with the parent. The caches
        go too: a parent thread may have held their mutexes at the fork."""
        forks.keep_inherited(self._db, self._opts)
        self._db = self._secondary_dir = self._opts = self._in_step = None
        self.writable = False
        self._reopen_lock = threading.Lock()
        self._cv = threading.Condition()
        self._queue, self._leading = [], False

    def _options(self) -> Options:
        if self._opts is None:
            self._opts = _options(*self._cache_sizes)
        return self._opts

    # -- errors ------------------------------------------------------------------------
    def _error(self, exc: BaseException, doing: str) -> BlobtierError:
        """``exc`` from rocksdict, as the error tree's exception naming the store."""
        if isinstance(exc, BlobtierError):
            return exc
        text = str(exc)
        where = f"{self.where}: {doing}"
        if isinstance(exc, DbClosedError):
            return TierUnavailable(f"{where}: the store is closed")
        if "No space left" in text:
            return StorageFull(f"{where}: no space left on the device: {text}")
        if "File too large" in text:
            return StorageFull(errno.EFBIG, f"{where}: file too large: {text}")
        if "LOCK" in text and ("lock" in text.lower()):
            return RegionLocked(f"{where}: another process has the database open for writing: {text}")
        if text.startswith(("Corruption", "IO error")):
            return MetadataCorrupt(f"{where}: {text}")
        return TierUnavailable(f"{where}: {text}")

    # -- identity and damage -------------------------------------------------------------
    def _check_exists(self) -> str | None:
        """The region's marker id; raises ``MetadataCorrupt`` when the region has one (it
        was created) but no database, or the metadata path is not a directory."""
        if os.path.lexists(self.path) and not os.path.isdir(self.path):
            raise MetadataCorrupt(f"{self.where}: {self.path} is not a directory")
        marker = region_id.read(self.region_root) if self.region_root else None
        if marker is not None and not os.path.exists(os.path.join(self.path, "CURRENT")):
            raise MetadataCorrupt(
                f"{self.where}: the region {self.region_root} exists ({region_id.MARKER} {marker}) "
                f"but its metadata is missing ({self.path}/CURRENT): restore the metadata directory; "
                "nothing is created in its place")
        return marker

    def _identify(self, marker: str | None) -> None:
        """Writer: check the metadata's id against the marker; give a new (or older)
        region its id, in the metadata first, then the marker."""
        if self.region_root is None:
            return
        stored = region_id.decode(self._current(self._db, REGION_ID_KEY), self.where)
        if marker is not None:
            self._check_same(marker, stored)
            self.region_id = marker
            return
        if stored is None:
            stored = region_id.new_id()
            try:
                self._db.put(REGION_ID_KEY, stored.encode(), self._sync)
            except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exceptions
                raise self._error(exc, "recording the region id") from exc
        region_id.write(self.region_root, stored)
        self.region_id = stored

    def _check_same(self, marker: str, stored: str | None) -> None:
        if stored != marker:
            raise MetadataCorrupt(
                f"{self.where}: this is not the metadata of region {self.region_root}: "
                f"{region_id.MARKER} says {marker}, the metadata "
                f"{'has no region id' if stored is None else 'says ' + stored}")

    def _verify(self, db: Rdict) -> None:
        """Reader: every live table file is there with its size (a secondary skips missing
        ones and would answer as if their keys did not exist), and the region is ours.
        A secondary that meets a missing file drops every file of that version, so a table
        file on disk that it does not list is checked by a read-only open, which fails on
        any missing or damaged file (one the primary just made obsolete passes)."""
        files = db.live_files()
        live = {os.path.basename(f["name"]) for f in files}
        if any(n.endswith(".sst") and n not in live for n in os.listdir(self.path)):
            try:
                Rdict(self.path, Options(raw_mode=True), access_type=AccessType.read_only()).close()
            except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exceptions
                raise self._error(exc, "checking its table files") from exc
        for f in files:
            name = os.path.join(self.path, f["name"].lstrip("/"))
            try:
                size = os.stat(name).st_size
            except OSError as exc:
                raise MetadataCorrupt(f"{self.where}: table file {name} is unreadable: {exc}") from exc
            if size != f["size"]:
                raise MetadataCorrupt(f"{self.where}: table file {name} is {size} bytes, "
                                      f"the metadata lists {f['size']}")
        if self.region_root:
            marker = region_id.read(self.region_root)
            stored = region_id.decode(db.get(REGION_ID_KEY), self.where)
            if marker is not None:
                self._check_same(marker, stored)
            self.region_id = stored

    # -- secondaries ---------------------------------------------------------------------
    def _open_secondary(self) -> Rdict | None:
        """Open lazily: a region nobody has written to yet has no database to follow."""
        if self._db is None:
            self._check_exists()
            if not os.path.exists(os.path.join(self.path, "CURRENT")):
                return None
            with self._reopen_lock:
                if self._db is None:
                    self._install(self._new_secondary())
        return self._db

    def _primary_state(self) -> bytes:
        """The MANIFEST the primary writes to now (``CURRENT`` names it)."""
        try:
            with open(os.path.join(self.path, "CURRENT"), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def _new_secondary(self) -> tuple[Rdict, str, tuple[bytes, int]]:
        scratch = self._scratch_dir or tempfile.gettempdir()
        private_dir(scratch)
        for attempt in range(_OPEN_ATTEMPTS):
            # CURRENT is read first: a primary that switches after it is seen at the next
            # catch-up (one re-open too many at worst, never one too few).
            current = self._primary_state()
            directory = tempfile.mkdtemp(prefix=f"secondary-{os.getpid()}-", dir=scratch)
            db = None
            try:
                db = Rdict(self.path, self._options(), access_type=AccessType.secondary(directory))
                # A file missing now may be one the primary's compaction removed after
                # this open read the MANIFEST: only a damage that stays is an error.
                self._verify(db)
                return db, directory, (current, db.property_int_value(_MIN_LOG) or 0)
            except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exceptions
                if db is not None:
                    db.close()
                shutil.rmtree(directory, ignore_errors=True)
                if attempt == _OPEN_ATTEMPTS - 1:
                    raise self._error(exc, "opening a reader (secondary)") from exc
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def _install(self, opened: tuple[Rdict, str, tuple[bytes, int]]) -> None:
        """Switch to a new secondary. The old handle is dropped, not closed: a thread may
        be reading through it, and it closes when the last reference goes."""
        old_dir = self._secondary_dir
        self._db, self._secondary_dir, self._in_step = opened
        self._last_catch_up = time.monotonic()
        if old_dir:
            shutil.rmtree(old_dir, ignore_errors=True)  # only its info log: harmless to an open handle

    def _reopen(self, stale: Rdict) -> Rdict:
        with self._reopen_lock:
            if self._db is stale:  # else another thread re-opened it already
                self._install(self._new_secondary())
            db = self._db
        if db is None:
            raise TierUnavailable(f"{self.where}: the store is closed")
        return db

    def _catch_up(self, db: Rdict) -> Rdict:
        """Catch ``db`` up with the primary; a fresh secondary if it cannot be in step."""
        try:
            db.try_catch_up_with_primary()
            in_step = (self._primary_state(), db.property_int_value(_MIN_LOG) or 0) == self._in_step
        except DbClosedError:
            raise TierUnavailable(f"{self.where}: the store is closed") from None
        except Exception as exc:  # noqa: BLE001 - e.g. TryAgain while the primary switches MANIFEST
            log.info("%s: catch-up failed, re-opening the reader: %s", self.where, exc)
            in_step = False
        if not in_step:
            db = self._reopen(db)
        self._last_catch_up = time.monotonic()
        return db

    def _reader(self, fresh: bool = False) -> Rdict | None:
        if self.writable:
            if self._db is None:
                raise TierUnavailable(f"{self.where}: the store is closed")
            return self._db
        db = self._open_secondary()
        if db is not None and (fresh or time.monotonic() - self._last_catch_up > self.catch_up_s):
            db = self._catch_up(db)
        return db

    def _read(self, op: Callable[[Rdict], _T], doing: str, fresh: bool = False) -> _T | None:
        """``op(db)`` on an up-to-date handle; None when there is no database yet. A
        secondary that fails a read is re-opened and asked once more (the failure may be a
        table file the primary deleted after a compaction): an error that stays is the
        store's."""
        db = self._reader(fresh)
        if db is None:
            return None
        try:
            return op(db)
        except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exceptions
            if self.writable or isinstance(exc, DbClosedError):
                raise self._error(exc, doing) from exc
            log.info("%s: %s failed, re-opening the reader: %s", self.where, doing, exc)
        try:
            return op(self._reopen(db))
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, doing) from exc

    # -- reading -------------------------------------------------------------------------
    def _get_raw(self, rkey: bytes) -> bytes | None:
        # The hot path of every open: one get on the current handle; a failure goes the
        # way of ``_read`` (naming the key, re-opening a secondary once).
        db = self._reader()
        try:
            value = None if db is None else db.get(rkey)
        except Exception:  # noqa: BLE001 - rocksdict raises bare Exceptions
            value = self._read(lambda db: db.get(rkey), f"reading {_shown(rkey)!r}")
        if value is None and not self.writable:
            value = self._read(lambda db: db.get(rkey), f"reading {_shown(rkey)!r}", fresh=True)
        return value

    def _get_many_raw(self, rkeys: Sequence[bytes]) -> list[bytes | None]:
        keys = list(rkeys)
        doing = f"reading {len(keys)} records"
        values = self._read(lambda db: db[keys], doing)
        if values is None:
            return [None] * len(keys)
        if not self.writable and None in values:
            values = self._read(lambda db: db[keys], doing, fresh=True)
        return values

    def _scan_raw(self, prefix: bytes, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        def scan(db: Rdict) -> list[tuple[bytes, bytes]]:
            return list(_rows(db.iter(ReadOptions()), prefix, start, limit))

        return self._read(scan, f"listing {_shown(prefix)!r}", fresh=True) or []

    def _listing_raw(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every record under ``prefix`` from one snapshot, in key order, read without
        filling the block cache; raises rather than ends early."""
        doing = f"listing {_shown(prefix)!r}"
        db = self._read(lambda db: db, doing, fresh=True)
        if db is None:
            return
        opts = ReadOptions()
        opts.fill_cache(False)
        opts.set_verify_checksums(True)
        try:
            snapshot = db.snapshot()  # held while its iterator lives
            yield from _rows(snapshot.iter(opts), prefix, prefix, None)
        except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exceptions
            raise self._error(exc, doing) from exc

    def _dir_raw(self, prefix: bytes, d: bytes, start: bytes,
                 limit: int) -> Iterator[tuple[bytes, bytes | None]]:
        """The base class's delimiter listing on one iterator, which seeks past each
        subdirectory after its first key: a page costs its entries, not the keys below."""
        def page(db: Rdict) -> list[tuple[bytes, bytes | None]]:
            it = db.iter(ReadOptions())
            it.seek(start)
            out: list[tuple[bytes, bytes | None]] = []
            while len(out) < limit and it.valid():
                key = it.key()
                if not key.startswith(prefix):
                    break
                slash = key.find(b"/", len(d))
                if slash < 0:
                    out.append((key, it.value()))
                    it.next()
                else:
                    out.append((key[:slash + 1], None))
                    it.seek(key[:slash] + b"0")  # "0" follows "/": past the subdirectory
            it.status()  # an error, not the end of the keys
            return out

        return iter(self._read(page, f"listing {_shown(prefix)!r}", fresh=True) or ())

    # -- writing -------------------------------------------------------------------------
    def _cas_many(self, items: Sequence[tuple[bytes, int, bytes | None]]) -> list[bool]:
        if not self.writable:
            raise PermissionError(f"metadata store {self.path} is open read-only")
        batch = _Batch(items)
        with self._cv:
            self._queue.append(batch)
            while batch.result is None and batch.error is None:
                if self._leading:
                    self._cv.wait()
                else:
                    self._lead()
        if batch.error is not None:
            raise batch.error
        return batch.result

    def _lead(self) -> None:
        """Commit every queued batch in one synced write; lock held on entry and exit."""
        self._leading = True
        batches, self._queue = self._queue, []
        self._cv.release()
        try:
            results, error = self._apply(batches), None
        except Exception as exc:  # noqa: BLE001 - handed to every waiter of this round
            results, error = None, exc
        finally:
            self._cv.acquire()
            self._leading = False
        for i, b in enumerate(batches):
            if error is not None:
                b.error = error
            else:
                b.result = results[i]
        self._cv.notify_all()

    def _apply(self, batches: list[_Batch]) -> list[list[bool]]:
        db = self._db
        if db is None:
            raise TierUnavailable(f"metadata store {self.path} is closed")
        pending: dict[bytes, bytes | None] = {}
        wb = WriteBatch(raw_mode=True)
        results = []
        for b in batches:
            oks = []
            for key, expected, value in b.items:
                current = pending[key] if key in pending else self._current(db, key)
                ok = version_matches(current, expected)
                if ok:
                    pending[key] = value
                    if value is None:
                        wb.delete(key)
                    else:
                        wb.put(key, value)
                oks.append(ok)
            results.append(oks)
        if pending:
            try:
                db.write(wb, self._sync)
            except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exceptions
                # RocksDB stops writing after a failed WAL write until it is re-opened
                # (the next writer process, once there is space again).
                self._reported = self._error(exc, f"committing {len(pending)} records")
                raise self._reported from exc
        return results

    def _current(self, db: Rdict, key: bytes) -> bytes | None:
        try:
            return db.get(key)
        except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exceptions
            raise self._error(exc, f"reading {_shown(key)!r}") from exc

    def close(self) -> None:
        """Close the database (idempotent). The handle and the secondary's directory are
        let go even when RocksDB's close fails; that failure is raised, unless it only
        repeats a write error the caller was already given (then it is logged)."""
        db, self._db = self._db, None
        directory, self._secondary_dir = self._secondary_dir, None
        try:
            if db is not None:
                db.close()
        except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exceptions
            if self._reported is None:
                raise self._error(exc, "closing") from exc
            log.warning("%s: close after a failed write: %s", self.where, exc)
        finally:
            if directory:
                shutil.rmtree(directory, ignore_errors=True)


def _rows(it, prefix: bytes, start: bytes, limit: int | None) -> Iterator[tuple[bytes, bytes]]:
    """Pairs from ``start`` while keys begin with ``prefix`` (at most ``limit``). An
    iterator that stops on an error looks like one at the end: its status tells them
    apart, and raises for the error."""
    it.seek(start)
    n = 0
    while it.valid() and (limit is None or n < limit):
        key = it.key()
        if not key.startswith(prefix):
            return
        yield key, it.value()
        n += 1
        it.next()
    it.status()


def _shown(rkey: bytes) -> str:
    """A raw key (or prefix) as a user wrote it."""
    return rkey[1:].decode(errors="replace")
