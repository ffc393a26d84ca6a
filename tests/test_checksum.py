from __future__ import annotations

import pytest

from blobtier import checksum
from blobtier.errors import ChecksumError, InvalidRequest

DATA = bytes(range(256)) * 40


@pytest.mark.parametrize("name", ["xxh3", "crc32c"])
def test_verify_ok_and_mismatch(name):
    good = checksum.compute(name, DATA)
    checksum.verify(name, DATA, good, "chunk 7")
    with pytest.raises(ChecksumError, match="chunk 7") as err:
        checksum.verify(name, DATA, good ^ 1, "chunk 7")
    assert isinstance(err.value, OSError)


def test_algorithm_ids_are_stable():
    assert checksum.algorithm_id("crc32c") == 1
    assert checksum.algorithm_id("xxh3") == 2
    assert checksum.BY_ID == {1: "crc32c", 2: "xxh3"}


def test_algorithm_id_unknown():
    with pytest.raises(InvalidRequest, match="md5"):
        checksum.algorithm_id("md5")


@pytest.mark.parametrize("name", ["xxh3", "crc32c"])
def test_compute_on_memoryview_slices(name):
    mv = memoryview(DATA)
    assert checksum.compute(name, mv[100:5000]) == checksum.compute(name, DATA[100:5000])
    assert checksum.compute(name, mv[7:7]) == checksum.compute(name, b"")
    ro = memoryview(bytearray(DATA)).toreadonly()[1:]
    assert checksum.compute(name, ro) == checksum.compute(name, DATA[1:])


def test_known_values():
    assert checksum.crc32c(b"123456789") == 0xE3069283
    assert checksum.xxh3(b"") == 0x2D06800538D394C2
    assert checksum.compute("xxh3", b"abc") != checksum.compute("crc32c", b"abc")
