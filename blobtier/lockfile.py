"""An exclusive, crash-safe lock file that names its holder.

``flock`` is released by the kernel when the holder exits, even by SIGKILL, so a crashed
writer never leaves a region locked. The holder writes who it is into the file, so the
next process that wants the lock can say whom it is waiting for.

A forked child closes its copy of the holder's descriptor before any code of the child
runs (``blobtier.forks``): a flock belongs to the open file description, so a child
that kept a copy would keep the lock alive after its parent died, even by SIGKILL. The
child closes its copy and never unlocks (``LOCK_UN`` would release the parent's lock).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time

from blobtier import forks
from blobtier.errors import RegionLocked
from blobtier.fsutil import open_private, private_dir


class LockFile:
    """An exclusive lock on ``path``; ``what`` names the locked thing in errors."""

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None
        # Held from open to the store of ``_fd``, and across a fork: a fork in between would
        # copy a locked descriptor the child does not know it has.
        self._mutex = forks.ForkLock()
        forks.register(self)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise ``RegionLocked`` naming the process that holds it."""
        with self._mutex:
            self._acquire()

    def _acquire(self) -> None:
        if self._fd is not None:
            return
        private_dir(os.path.dirname(self.path) or ".")
        fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RegionLocked(f"{self.what} is locked for writing by {self.holder()}; "
                               "readers need no lock, but only one process may write") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                "command": " ".join(sys.argv)[:200]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def holder(self) -> str:
        try:
            with open(self.path) as f:
                info = json.load(f)
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
            return f"pid {info['pid']} on {info['host']} ({info['command']!r}, since {since})"
        except (OSError, ValueError, KeyError):
            return "another process"

    def release(self) -> None:
        with self._mutex:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def _after_fork_in_child(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # the parent's lock stays: only its copy is closed here
