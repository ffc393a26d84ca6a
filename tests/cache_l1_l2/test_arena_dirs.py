"""An in-process arena's socket directory never outlives its owner.

Every client without a host daemon owns an arena served from a fresh 0700 directory under
the temp dir; before, each process that exited without ``close()`` (or was killed) left
one behind, and a busy host collected hundreds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap

from blobtier.cache_l1_l2.l1 import OwnedArena

MiB = 1 << 20

MAKE_ARENA = textwrap.dedent("""
    import os, signal, sys
    from blobtier.cache_l1_l2.l1 import OwnedArena
    arena = OwnedArena(1 << 20, "sieve")
    print(os.path.dirname(arena.socket_path), flush=True)
    if sys.argv[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
""")


def arena_dir_of(how: str) -> str:
    proc = subprocess.run([sys.executable, "-c", MAKE_ARENA, how], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == (-signal.SIGKILL if how == "kill" else 0), proc.stderr
    return proc.stdout.strip()


def test_a_process_that_exits_without_close_removes_its_directory():
    path = arena_dir_of("exit")
    assert path.startswith(tempfile.gettempdir())
    assert not os.path.exists(path)


def test_the_directory_of_a_killed_owner_is_swept_by_the_next_arena():
    path = arena_dir_of("kill")
    assert os.path.isdir(path)  # SIGKILL runs nothing
    arena = OwnedArena(MiB, "sieve")
    try:
        assert not os.path.exists(path)
        assert os.path.exists(arena.socket_path)
    finally:
        arena.close()
    assert not os.path.exists(os.path.dirname(arena.socket_path))


def test_a_forked_child_leaves_the_parents_directory():
    arena = OwnedArena(MiB, "sieve")
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0 if os.path.exists(arena.socket_path) else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        child = subprocess.run([sys.executable, "-c", "import os, sys; "
                                "import blobtier.cache_l1_l2.l1 as l1; l1._sweep_dead_arena_dirs()"],
                               timeout=60)
        assert child.returncode == 0
        assert os.path.exists(arena.socket_path)  # a live owner's directory is never swept
    finally:
        arena.close()
