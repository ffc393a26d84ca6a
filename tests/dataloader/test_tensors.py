from __future__ import annotations

import gc
import subprocess
import sys

import pytest
import torch

from blobtier.dataloader import as_tensor


def _mapping_of(address: int) -> str:
    """The /proc/self/maps line of the mapping that holds ``address``."""
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return line.strip()
    raise AssertionError(f"{address:#x} is not mapped")


def test_tensor_maps_cache_memory_privately_and_keeps_the_pin(client):
    client.put("ns/t", bytes(range(256)) * 256)  # one 64 KiB chunk: mapped, not copied
    client.get("ns/t")  # the first read fills L1
    view = client.get("ns/t")
    t = as_tensor(view, shape=(256, 256))
    assert t[3, 5].item() == 5
    # No copy: the tensor lies on the arena's own memfd pages, mapped private (copy-on-write).
    line = _mapping_of(t.data_ptr())
    assert "/memfd:" in line and line.split()[1] == "rw-p", line
    pinned = client._l1.stats()["pinned"]
    del view
    gc.collect()
    assert client._l1.stats()["pinned"] == pinned  # the tensor still holds the slot
    del t
    gc.collect()
    assert client._l1.stats()["pinned"] == pinned - 1


def test_importing_blobtier_leaves_torchs_warnings_alone():
    # The old module silenced torch's "not writable" warning for the whole process.
    import blobtier.dataloader  # noqa: F401

    with pytest.warns(UserWarning, match="not writable"):
        torch.frombuffer(memoryview(b"abcd"), dtype=torch.uint8)


# Every case runs in a forked child of one interpreter (torch is imported once): a segfault
# (the old behaviour on a read-only mapping) fails its case, not pytest.
_CASES = """
import os, sys, warnings
warnings.simplefilter("error")  # torch's "not writable" warning would be a failure too
import blobtier
from blobtier.dataloader import as_tensor

data = bytes(range(256)) * 1024
# One chunk of 64 KiB (mapped), one of 1000 bytes (copied), four joined (copied).
BLOBS = [("ns/one", data[:65536]), ("ns/small", data[:1000]), ("ns/many", data)]


def same_process(c, key, want, view):
    t = as_tensor(view)
    t.add_(1)  # in place
    again = as_tensor(c.get(key))
    assert bytes(c.get(key)) == want, "a write through a tensor changed the cache"
    assert bytes(again.numpy()) == want, "a second tensor sees the first one's write"
    assert bytes(t.numpy()) == bytes((b + 1) % 256 for b in want), "the write was lost"


def forked_child(c, key, want, view):
    # A DataLoader worker writes; the parent, which owns the L1 arena, reads.
    del view
    pid = os.fork()
    if pid == 0:
        as_tensor(c.get(key)).mul_(0)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the child died: {status}"
    assert bytes(c.get(key)) == want, "a child's write changed the parent's cache"


def case(root, l1, reads, check):
    opts = dict(client={"chunk_size": "64KiB"}, cache={"l1_bytes": l1})
    with blobtier.connect(root, **opts) as c:
        c.put_many({key: want for key, want in BLOBS})
    with blobtier.connect(root, **opts) as c:
        for key, want in BLOBS:
            for _ in range(reads):  # 1: a miss (block-layer memory), 2: an L1 hit
                view = c.get(key)
            check(c, key, want, view)


for i, (name, l1, reads) in enumerate([("l1-hit", "8MiB", 2), ("l1-miss", "8MiB", 1), ("no-l1", "0", 1)]):
    for check in (same_process, forked_child):
        pid = os.fork()
        if pid == 0:
            try:
                case(os.path.join(sys.argv[1], f"{i}-{check.__name__}"), l1, reads, check)
            except BaseException as exc:
                print(f"{name} {check.__name__}: {exc!r}", file=sys.stderr, flush=True)
                os._exit(1)
            os._exit(0)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        print(f"{name} {check.__name__}: {'ok' if code == 0 else f'exit {code}'}", flush=True)
"""


def test_an_in_place_op_never_crashes_and_never_changes_the_cache(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _CASES, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    results = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(results) == 6, (proc.stdout, proc.stderr[-2000:])
    assert [r for r in results if not r.endswith(": ok")] == []
