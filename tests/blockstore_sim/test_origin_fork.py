"""The origin adapter across fork (issue 19, item 1): a child makes filesystems of its own,
whatever a parent thread was doing at the fork."""

from __future__ import annotations

from blobtier.blockstore_sim.origin import FsspecOrigin
from tests.fork_support import in_child


def test_a_forked_child_opens_its_own_filesystem_even_with_the_lock_held(tmp_path):
    path = tmp_path / "obj.bin"
    path.write_bytes(b"origin bytes")
    url = f"file://{path}"
    origin = FsspecOrigin()
    tag = origin.current_tag(url)
    with origin._lock:  # as if another parent thread were making a filesystem at the fork
        assert in_child(origin.current_tag, url) == tag
    assert origin.current_tag(url) == tag
