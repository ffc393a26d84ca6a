"""Weighted rendezvous (highest-random-weight) hashing.

One implementation for every placement question: which chunk servers hold a chunk's
replicas, which flash node caches it, which peer daemon is its L2 home. Removing one of N
nodes moves only the keys that node owned (about 1/N); no table has to be rebuilt.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from itertools import repeat

import numpy as np
import xxhash

_MAX = float(1 << 64)


def score(key: bytes, node: Hashable, weight: float = 1.0) -> float:
    """Logarithmic method: -w / ln(u) with u uniform in (0, 1); larger wins."""
    h = xxhash.xxh3_64_intdigest(key, seed=hash_node(node))
    u = (h + 0.5) / _MAX
    return -weight / math.log(u)


def hash_node(node: Hashable) -> int:
    # Python's hash() of str is salted per process; placement must agree across processes.
    return xxhash.xxh64_intdigest(repr(node).encode())


def rank(key: bytes, nodes: Sequence[Hashable], weights: Sequence[float] | None = None) -> list:
    """All nodes, best first, for ``key``."""
    ws = weights if weights is not None else [1.0] * len(nodes)
    scored = sorted(zip(nodes, ws), key=lambda nw: score(key, nw[0], nw[1]), reverse=True)
    return [node for node, _ in scored]


def best(keys: Sequence[bytes], nodes: Sequence[Hashable],
         weights: Sequence[float] | None = None) -> np.ndarray:
    """For many keys at once: the index in ``nodes`` of each key's best node, as
    ``rank(key, nodes, weights)[0]`` picks it (the same hash and scores, computed a node
    at a time over every key with numpy: the what-if planner places millions of chunks)."""
    ws = weights if weights is not None else [1.0] * len(nodes)
    top = np.full(len(keys), -np.inf)
    out = np.zeros(len(keys), dtype=np.int64)
    for i, (node, w) in enumerate(zip(nodes, ws)):
        h = np.fromiter(map(xxhash.xxh3_64_intdigest, keys, repeat(hash_node(node))), dtype=np.uint64,
                        count=len(keys))
        s = -w / np.log((h.astype(np.float64) + 0.5) / _MAX)  # score()'s formula
        better = s > top  # ties keep the earlier node, as rank's stable sort does
        out[better], top[better] = i, s[better]
    return out


def choose(key: bytes, nodes: Sequence[Hashable], k: int, weights: Sequence[float] | None = None) -> list:
    """The ``k`` best nodes for ``key`` (fewer if there are fewer nodes)."""
    return rank(key, nodes, weights)[:k]
