"""Chunk-level eviction policies, chosen by name.

A policy only orders keys; the cache that uses it owns the bytes and the byte budget.
The cache calls ``insert`` for a new key, ``hit`` on every hit, ``remove`` when it drops a
key itself, and ``victim`` when it needs room; ``victim`` forgets the key it returns.
``admit`` lets a policy refuse a new key when the cache is full (return False) instead
of evicting for it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Protocol


class EvictionPolicy(Protocol):
    def insert(self, key: Hashable) -> None: ...

    def hit(self, key: Hashable) -> None: ...

    def remove(self, key: Hashable) -> None: ...

    def victim(self) -> Hashable | None: ...

    def admit(self, key: Hashable, full: bool) -> bool: ...


class LRU:
    """Least recently used: evict the key whose last use is oldest."""

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def insert(self, key: Hashable) -> None:
        self._order[key] = None

    def hit(self, key: Hashable) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def remove(self, key: Hashable) -> None:
        self._order.pop(key, None)

    def victim(self) -> Hashable | None:
        return self._order.popitem(last=False)[0] if self._order else None

    def admit(self, key: Hashable, full: bool) -> bool:
        return True


class _Node:
    __slots__ = ("key", "newer", "older", "visited")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.newer: _Node | None = None
        self.older: _Node | None = None
        self.visited = False


class SIEVE:
    """SIEVE (Zhang et al., NSDI '24): a FIFO queue plus one visited bit and a moving hand.

    A hit only sets a bit (no list surgery, so hits are cheap and lock-friendly). The hand
    walks from the oldest entry towards the newest, clearing visited bits, and evicts the
    first unvisited entry; new entries go in at the newest end.
    """

    def __init__(self) -> None:
        self._nodes: dict[Hashable, _Node] = {}
        self._newest: _Node | None = None
        self._oldest: _Node | None = None
        self._hand: _Node | None = None

    def insert(self, key: Hashable) -> None:
        if key in self._nodes:
            return
        node = _Node(key)
        node.older = self._newest
        if self._newest is not None:
            self._newest.newer = node
        self._newest = node
        if self._oldest is None:
            self._oldest = node
        self._nodes[key] = node

    def hit(self, key: Hashable) -> None:
        node = self._nodes.get(key)
        if node is not None:
            node.visited = True

    def remove(self, key: Hashable) -> None:
        node = self._nodes.pop(key, None)
        if node is not None:
            self._unlink(node)

    def victim(self) -> Hashable | None:
        node = self._hand or self._oldest
        while node is not None and node.visited:
            node.visited = False
            node = node.newer or self._oldest
        if node is None:
            return None
        del self._nodes[node.key]
        self._hand = node  # _unlink moves it on to the next newer entry (None: wrap around)
        self._unlink(node)
        return node.key

    def admit(self, key: Hashable, full: bool) -> bool:
        return True

    def _unlink(self, node: _Node) -> None:
        if self._hand is node:
            self._hand = node.newer
        if node.newer is not None:
            node.newer.older = node.older
        else:
            self._newest = node.older
        if node.older is not None:
            node.older.newer = node.newer
        else:
            self._oldest = node.newer
        node.newer = node.older = None


POLICIES: dict[str, Callable[[], EvictionPolicy]] = {"lru": LRU, "sieve": SIEVE}


def make_policy(name: str) -> EvictionPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; choose one of {sorted(POLICIES)}") from None
