"""Admission policies: which offered chunks are worth a flash write.

Flash wears out with writes, and a chunk read once never pays for the write that cached it.
A policy is asked ``admit(digest, size)`` for every chunk offered to the cache and is told
of every lookup with ``accessed(digest)``. Policies by name (``POLICIES``):

- ``all``: admit everything (one job reading a dataset that fits: every write pays off).
- ``second-hit``: admit a chunk on its second access within a window of recently seen
  chunks (the first read of a one-off scan is never written).
- ``random``: admit with a probability that shrinks with the chunk's size, so the expected
  bytes written per offer stay bounded whatever the chunk size (navy's random admission,
  made size-aware).

Policies are thread-safe and keep O(window) memory at most.
"""

from __future__ import annotations

import random
import threading
from typing import Protocol

from blobtier.errors import InvalidRequest


class AdmissionPolicy(Protocol):
    name: str

    def accessed(self, digest: bytes) -> None:
        """A lookup of the chunk (hit or miss)."""
        ...

    def admit(self, digest: bytes, size: int) -> bool: ...


class AdmitAll:
    name = "all"

    def accessed(self, digest: bytes) -> None:
        pass

    def admit(self, digest: bytes, size: int) -> bool:
        return True


class SecondHit:
    """Admit a chunk looked up at least twice among the last ``window`` to ``2 * window``
    distinct chunks looked up.

    Two generations of seen digests stand in for an LRU of the window: when the current one
    fills, it becomes the previous one and the oldest is dropped whole, which is O(1) per
    access where an exact LRU would need a linked list.
    """

    name = "second-hit"

    def __init__(self, window: int = 1 << 20) -> None:
        if window < 1:
            raise InvalidRequest("the second-hit window must be at least 1 chunk")
        self.window = window
        self._lock = threading.Lock()
        self._current: dict[bytes, int] = {}
        self._previous: dict[bytes, int] = {}

    def accessed(self, digest: bytes) -> None:
        with self._lock:
            seen = self._current.get(digest) or self._previous.pop(digest, 0)
            self._current[digest] = min(seen + 1, 2)
            if len(self._current) >= self.window:
                self._previous, self._current = self._current, {}

    def admit(self, digest: bytes, size: int) -> bool:
        with self._lock:
            return max(self._current.get(digest, 0), self._previous.get(digest, 0)) >= 2


class RandomAdmission:
    """Admit with probability ``probability`` for chunks up to ``reference_bytes``, and
    ``probability * reference_bytes / size`` above it.

    Args:
        probability: the share of small chunks admitted (0-1).
        reference_bytes: chunks larger than this are admitted proportionally less often.
        seed: seeds the draws (tests).
    """

    name = "random"

    def __init__(self, probability: float = 0.5, reference_bytes: int = 1 << 20,
                 seed: int | None = None) -> None:
        if not 0 <= probability <= 1:
            raise InvalidRequest(f"admission probability must be within 0-1, not {probability}")
        if reference_bytes < 1:
            raise InvalidRequest("reference_bytes must be positive")
        self.probability = probability
        self.reference_bytes = reference_bytes
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def accessed(self, digest: bytes) -> None:
        pass

    def chance(self, size: int) -> float:
        if size <= self.reference_bytes:
            return self.probability
        return self.probability * self.reference_bytes / size

    def admit(self, digest: bytes, size: int) -> bool:
        with self._lock:
            return self._rng.random() < self.chance(size)


POLICIES = {"all": AdmitAll, "second-hit": SecondHit, "random": RandomAdmission}


def make_policy(name: str, **options: float) -> AdmissionPolicy:
    """The policy called ``name``; ``options`` go to its constructor."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise InvalidRequest(f"unknown admission policy {name!r}; choose one of {sorted(POLICIES)}") from None
    return cls(**options)
