"""Per-process state across ``fork``: one set of at-fork hooks for the whole package.

An object whose state belongs to one process (a lock that another thread may hold at
the fork, a descriptor the child must not keep, a thread, a channel, an arena's owner)
registers here. In the child, ``_after_fork_in_child()`` runs in the forking thread,
before the child's own code and before any thread of the child can run, so no child code
ever sees the parent's state (fsspec resets its IO loop the same way). Objects that must
not be caught half-way through a change at the fork also define ``_before_fork()``
(take a lock) and ``_after_fork_in_parent()`` (release it); the child's copy of such a
lock is replaced, never released.

A reset only closes or forgets: it never shuts down a socket, unlocks a lock or flushes
a file, because the parent still uses the same sockets, locks and files.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Protocol

log = logging.getLogger(__name__)


class PerProcess(Protocol):
    def _after_fork_in_child(self) -> None: ...


_OBJECTS: weakref.WeakSet[PerProcess] = weakref.WeakSet()
_HELD: list[PerProcess] = []  # whose _before_fork ran, for the hooks after the fork
_INHERITED: list[object] = []  # the parent's handles: a child neither uses nor frees them


def register(obj: PerProcess) -> None:
    """Reset ``obj`` in every child forked from now on (and hook it around the fork when
    it defines ``_before_fork``)."""
    _OBJECTS.add(obj)


def keep_inherited(*handles: object) -> None:
    """Hold the parent's ``handles`` for the child's lifetime: collecting one in the child
    would run its finaliser there (close a RocksDB handle or a gRPC channel of the parent's),
    which is not the child's to do."""
    _INHERITED.extend(h for h in handles if h is not None)


class ForkLock:
    """A lock held across every fork (taken before it, released after it in the parent, a
    fresh one in the child): hold it while changing state a child must find whole, such as
    a descriptor opened but not yet recorded where the child's reset would close it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        register(self)

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def _before_fork(self) -> None:
        self._lock.acquire()

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


def _before() -> None:
    for obj in list(_OBJECTS):
        if hasattr(obj, "_before_fork"):
            obj._before_fork()
            _HELD.append(obj)


def _after_in_parent() -> None:
    while _HELD:
        _HELD.pop()._after_fork_in_parent()


def _after_in_child() -> None:
    _HELD.clear()
    for obj in list(_OBJECTS):
        try:
            obj._after_fork_in_child()
        except Exception:  # noqa: BLE001 - one object's reset must not skip the others'
            log.exception("resetting %r after fork", obj)


os.register_at_fork(before=_before, after_in_parent=_after_in_parent,
                    after_in_child=_after_in_child)
