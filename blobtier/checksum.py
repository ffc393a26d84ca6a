"""Checksums by name: the only place where bytes are judged.

``xxh3`` (64-bit, ~25 GB/s here) is the default for chunks; ``crc32c`` (hardware CRC) is the
alternative and also guards every metadata record and on-disk header.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import crc32c as _crc32c
import xxhash

from blobtier.errors import ChecksumError, InvalidRequest

Buffer = bytes | bytearray | memoryview

crc32c: Callable[[Buffer], int] = _crc32c.crc32c
xxh3: Callable[[Buffer], int] = xxhash.xxh3_64_intdigest

# The numeric ids are part of the record format: never renumber.
ALGORITHMS: dict[str, tuple[int, Callable[[Buffer], int]]] = {
    "crc32c": (1, crc32c),
    "xxh3": (2, xxh3),
}
BY_ID: dict[int, str] = {code: name for name, (code, _) in ALGORITHMS.items()}


def algorithm_id(name: str) -> int:
    try:
        return ALGORITHMS[name][0]
    except KeyError:
        raise InvalidRequest(f"unknown checksum {name!r}; choose one of {sorted(ALGORITHMS)}") from None


def _function(name: str) -> Callable[[Buffer], int]:
    try:
        return ALGORITHMS[name][1]
    except KeyError:
        raise InvalidRequest(f"unknown checksum {name!r}; choose one of {sorted(ALGORITHMS)}") from None


class _Crc32c:
    """crc32c fed piece by piece, as ``xxhash.xxh3_64`` is."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Buffer) -> None:
        self.value = _crc32c.crc32c(data, self.value)

    def intdigest(self) -> int:
        return self.value


_STREAMING: dict[str, Callable[[], Any]] = {"crc32c": _Crc32c, "xxh3": xxhash.xxh3_64}


def streaming(name: str) -> Any:
    """A hasher of ``name`` fed with ``update(piece)``; ``intdigest()`` is then what
    ``compute`` gives for the pieces joined (to hash bytes while they are still in the
    CPU's cache, piece by piece as they arrive)."""
    try:
        return _STREAMING[name]()
    except KeyError:
        raise InvalidRequest(f"unknown checksum {name!r}; choose one of {sorted(ALGORITHMS)}") from None


def compute(name: str, data: Buffer) -> int:
    return _function(name)(data)


def verify(name: str, data: Buffer, expected: int, what: str) -> None:
    """Raise ChecksumError naming ``what`` unless ``data`` has checksum ``expected``."""
    actual = _function(name)(data)
    if actual != expected:
        raise ChecksumError(f"checksum mismatch for {what}: {name} {actual:#x} != {expected:#x}")
