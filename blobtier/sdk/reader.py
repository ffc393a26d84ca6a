"""``BlobReader``: a seekable, readable file over one committed version of a blob.

The reader pins the record it was opened with, so an overwrite of the key while it is
open does not change what it reads. Reads map byte ranges to chunk indices and fetch
them through the tier chain in batches; a reader that moves forward fetches
``readahead`` chunks beyond what it needs in the same batch.
"""

from __future__ import annotations

import io
import re

from blobtier.errors import InvalidRequest
from blobtier.metadata.schema import BlobRecord
from blobtier.sdk.chain import TierChain

_NEWLINE = re.compile(b"\n")


class BlobReader(io.BufferedIOBase):
    def __init__(self, key: str, record: BlobRecord, chain: TierChain, readahead: int = 4) -> None:
        super().__init__()
        self.key = key
        self.record = record
        self.size = record.size
        self._chain = chain
        self._readahead = readahead
        self._pos = 0
        self._chunks: dict[int, memoryview] = {}
        self._last_index = -2  # a first read is not known to be sequential: no readahead

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise InvalidRequest(f"invalid whence {whence}")
        if base + offset < 0:
            raise InvalidRequest(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        if end <= self._pos:
            return b""
        return b"".join(self._slices(end - self._pos))  # one copy, straight into the result

    read1 = read

    def readline(self, size: int | None = -1) -> bytes:
        """The next line, newline included, of at most ``size`` bytes (all if negative).
        Searches each chunk where it lies; copies only the line."""
        self._check_open()
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        cs = self.record.chunk_size
        parts = []
        while self._pos < end:
            (part,) = self._slices(min(end, (self._pos // cs + 1) * cs) - self._pos)
            found = _NEWLINE.search(part)
            if found is not None:
                self._pos -= len(part) - found.end()
                parts.append(part[:found.end()])
                break
            parts.append(part)
        return b"".join(parts)

    def readinto(self, buffer) -> int:
        self._check_open()
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self.size - self._pos))
        done = 0
        for part in self._slices(n):
            view[done:done + len(part)] = part
            done += len(part)
        return n

    readinto1 = readinto

    def _slices(self, n: int) -> list[memoryview]:
        """Views of the next ``n`` bytes (n > 0, within the blob), fetched in one batch."""
        if n <= 0:
            return []
        cs = self.record.chunk_size
        first, last = self._pos // cs, (self._pos + n - 1) // cs
        self._fetch(first, last)
        parts, done = [], 0
        for index in range(first, last + 1):
            chunk = self._chunks[index]
            lo = self._pos + done - index * cs
            take = min(len(chunk) - lo, n - done)
            parts.append(chunk[lo:lo + take])
            done += take
        self._pos += done
        return parts

    def _fetch(self, first: int, last: int) -> None:
        sequential = first in (self._last_index, self._last_index + 1)
        stop = min(self.record.n_chunks - 1, last + (self._readahead if sequential else 0))
        need = [i for i in range(first, stop + 1) if i not in self._chunks]
        # Keep only what this read and the readahead window still need.
        self._chunks = {i: v for i, v in self._chunks.items() if first <= i <= stop}
        if need:
            views = self._chain.read([(self.record, i) for i in need])
            self._chunks.update(zip(need, views))
        self._last_index = last

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed blob reader for {self.key}")

    def close(self) -> None:
        self._chunks = {}
        super().close()
