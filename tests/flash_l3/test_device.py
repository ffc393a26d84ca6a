"""Region files: atomic creation, aligned positional I/O, counters, injected faults."""

from __future__ import annotations

import errno
import os

import pytest

from blobtier.errors import InvalidRequest
from blobtier.flash_l3.device import ALIGN, Device, DeviceFaults, align_up

SIZE = 16 * ALIGN


def test_align_up():
    assert [align_up(n) for n in (0, 1, ALIGN, ALIGN + 1)] == [0, ALIGN, ALIGN, 2 * ALIGN]


def test_create_write_read_and_counters(tmp_path):
    dev = Device(str(tmp_path), SIZE)
    dev.create(0)
    assert os.path.getsize(dev.path(0)) == SIZE
    assert os.listdir(dev.root) == ["000000.reg"]  # no temp file left behind
    dev.write(0, ALIGN, [b"abc", memoryview(b"def"), bytes(ALIGN - 6)])
    assert bytes(dev.read(0, ALIGN, ALIGN))[:6] == b"abcdef"
    assert bytes(dev.read(0, 0, ALIGN)) == bytes(ALIGN)  # preallocated zeros
    assert dev.counters["writes"] == 1 and dev.counters["bytes_written"] == ALIGN
    assert dev.counters["reads"] == 2 and dev.counters["bytes_read"] == 2 * ALIGN
    dev.close()


def test_reopen_finds_region_files_and_resets_ones_of_another_size(tmp_path):
    dev = Device(str(tmp_path), SIZE)
    dev.create(0)
    dev.create(3)
    dev.write(3, 0, [b"x" * ALIGN])
    dev.close()
    assert Device(str(tmp_path), SIZE).slots() == [0, 3]
    bigger = Device(str(tmp_path), 2 * SIZE)
    assert os.path.getsize(bigger.path(3)) == 2 * SIZE
    assert bytes(bigger.read(3, 0, ALIGN)) == bytes(ALIGN)
    bigger.close()


def test_remove_and_reading_a_missing_region(tmp_path):
    dev = Device(str(tmp_path), SIZE)
    dev.create(1)
    dev.remove(1)
    assert dev.slots() == []
    with pytest.raises(OSError) as err:
        dev.read(1, 0, ALIGN)
    assert err.value.errno == errno.EBADF
    dev.close()


def test_faults_fail_the_next_operations_then_stop(tmp_path):
    faults = DeviceFaults()
    dev = Device(str(tmp_path), SIZE, faults)
    dev.create(0)
    faults.arm("read", errno.EIO, count=2)
    for _ in range(2):
        with pytest.raises(OSError) as err:
            dev.read(0, 0, ALIGN)
        assert err.value.errno == errno.EIO
    assert len(dev.read(0, 0, ALIGN)) == ALIGN
    assert dev.counters["errors"] == 2
    faults.arm("write", errno.ENOSPC)
    with pytest.raises(OSError, match="No space"):
        dev.write(0, 0, [b"x"])
    faults.arm("create", errno.ENOSPC)
    with pytest.raises(OSError):
        dev.create(1)
    assert dev.slots() == [0]  # a failed creation leaves nothing behind
    faults.clear()
    dev.write(0, 0, [b"x"])
    dev.close()


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(InvalidRequest):
        Device(str(tmp_path), ALIGN + 1)
    with pytest.raises(InvalidRequest):
        DeviceFaults().arm("sync")
