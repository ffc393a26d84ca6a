"""The embedded metadata store: RocksDB through rocksdict.

One process opens the database as primary and writes; every other process opens it as a
RocksDB *secondary* instance, which needs no lock and reads the primary's files, catching
up with the primary's newest writes on demand: before any lookup when the last catch-up
is older than ``catch_up_s``, and always before a scan or after a miss. A reader
therefore never sees a torn record and sees any committed record within ``catch_up_s``.

Commits use group commit: concurrent ``_cas_many`` callers queue; one leader checks all
of their compare-and-sets against the current values and writes them in one synced
``WriteBatch``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence

from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    DataBlockIndexType,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from blobtier.errors import TierUnavailable
from blobtier.fsutil import private_dir
from blobtier.metadata.store import MetadataStore, version_matches


def _options(block_cache_bytes: int, row_cache_bytes: int) -> Options:
    """Tuned for point lookups: bloom filters skip SST files that cannot hold a key, a hash
    index inside data blocks skips the binary search, and the row cache answers repeat
    lookups of a record (every epoch after the first) without touching a table at all."""
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_keep_log_file_num(2)
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
        catch_up_s: how stale a secondary may be before a lookup catches up.
        block_cache_bytes, row_cache_bytes: RocksDB's caches (per process).
    """

    def __init__(self, path: str, *, writable: bool = False, scratch_dir: str | None = None,
                 catch_up_s: float = 0.5, block_cache_bytes: int = 64 << 20,
                 row_cache_bytes: int = 128 << 20) -> None:
        self.path = path
        self._cache_sizes = (block_cache_bytes, row_cache_bytes)
        self.writable = writable
        self.catch_up_s = catch_up_s
        self._db: Rdict | None = None
        self._secondary_dir: str | None = None
        self._scratch_dir = scratch_dir
        self._last_catch_up = 0.0
        self._cv = threading.Condition()
        self._queue: list[_Batch] = []
        self._leading = False
        self._sync = WriteOptions()
        self._sync.sync = True
        if writable:
            private_dir(path, tighten=True)  # RocksDB's own files are private through it
            self._db = Rdict(path, _options(*self._cache_sizes))
        else:
            self._open_secondary()

    def _open_secondary(self) -> Rdict | None:
        """Open lazily: a region nobody has written to yet has no database to follow."""
        if self._db is None and os.path.exists(os.path.join(self.path, "CURRENT")):
            scratch = self._scratch_dir or tempfile.gettempdir()
            private_dir(scratch)
            self._secondary_dir = tempfile.mkdtemp(prefix=f"secondary-{os.getpid()}-", dir=scratch)
            self._db = Rdict(self.path, _options(*self._cache_sizes),
                             access_type=AccessType.secondary(self._secondary_dir))
            self._last_catch_up = time.monotonic()
        return self._db

    def _reader(self, fresh: bool = False) -> Rdict | None:
        if self.writable:
            return self._db
        db = self._open_secondary()
        if db is not None and (fresh or time.monotonic() - self._last_catch_up > self.catch_up_s):
            db.try_catch_up_with_primary()
            self._last_catch_up = time.monotonic()
        return db

    def _get_raw(self, rkey: bytes) -> bytes | None:
        db = self._reader()
        value = db.get(rkey) if db is not None else None
        if value is None and not self.writable and (db := self._reader(fresh=True)) is not None:
            value = db.get(rkey)
        return value

    def _get_many_raw(self, rkeys: Sequence[bytes]) -> list[bytes | None]:
        db = self._reader()
        if db is None:
            return [None] * len(rkeys)
        values = db[list(rkeys)]
        if not self.writable and None in values:
            values = self._reader(fresh=True)[list(rkeys)]
        return values

    def _scan_raw(self, prefix: bytes, start: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        db = self._reader(fresh=True)
        if db is None:
            return []
        it = db.iter(ReadOptions())
        it.seek(start)
        rows = []
        while it.valid() and len(rows) < limit:
            key = it.key()
            if not key.startswith(prefix):
                break
            rows.append((key, it.value()))
            it.next()
        return rows

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
                current = pending[key] if key in pending else db.get(key)
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
            db.write(wb, self._sync)
        return results

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._secondary_dir:
            shutil.rmtree(self._secondary_dir, ignore_errors=True)
            self._secondary_dir = None
