"""The simulator: a sampled trace through the tiers as ``TierChain`` walks them, each
tier's decisions made by blobtier's own policy objects.

Per read of chunk ``k`` on host ``h`` (``sdk/chain.py``, tiers as ``sdk/wiring.py``
builds them):

- **L1**, host ``h``'s arena: a hit touches its eviction policy (``eviction.py``) unless
  it is a prefetch. A miss claims a slot as ``ArenaOwner.claim`` does: the policy's
  ``admit(key, full)``, then victims until the slot fits; ``insert(key, accessed)`` when
  the bytes arrive. A prefetch (``TierChain.warm``) whose claim is refused fetches nothing
  (with no L1 at all, a prefetch fills the tiers below).
- **L2**, the arena of ``k``'s home daemon, ``placement`` over the hosts (a chunk homed
  on ``h`` itself is not asked: ``ShardedChunkCache.local``). Chunks fetched from below
  are offered to it as to any arena.
- **L3**, the flash node ``placement`` picks, read through: a lookup is shown to its
  admission policy (``flash_l3/admission.py``); a miss is read from the block layer (the
  egress) and offered to ``admit(key, size)``; admitted chunks are appended to the open
  region (``flash_l3/regions.entry_span`` bytes each) and the oldest region is reclaimed
  whole when all are in use, as ``FlashCache`` does (no reinsertion).
- with no L3, the chain itself reads the block layer.

Capacities are the sampled trace's: the full capacity times the sampling rate.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from blobtier.eviction import make_policy
from blobtier.flash_l3.admission import AdmissionPolicy

L1, L2, L3, BLOCK, SKIPPED = range(5)
TIER_NAMES = ("L1", "L2", "L3", "block")


class HostArena:
    """One host's L1 arena (one namespace): bytes of slots held against a capacity,
    ordered by a real eviction policy, admitted and evicted as ``ArenaOwner`` does."""

    __slots__ = ("capacity", "used", "policy", "held")

    def __init__(self, capacity: float, policy: str) -> None:
        self.capacity = capacity
        self.used = 0.0
        self.policy = make_policy(policy)
        self.held: dict[int, int] = {}  # key -> slot bytes

    def fill(self, key: int, slot: int, accessed: bool) -> bool:
        """``claim`` + ``commit``: True if the chunk is held now."""
        held = self.held
        if key in held:
            return True
        policy = self.policy
        if not policy.admit(key, self.used + slot > self.capacity):
            return False
        while self.used + slot > self.capacity:
            victim = policy.victim()
            if victim is None:
                return False
            self.used -= held.pop(victim)
        held[key] = slot
        self.used += slot
        policy.insert(key, accessed)
        return True


class FlashNode:
    """One flash node's index: regions filled in turn, the oldest reclaimed whole."""

    def __init__(self, max_regions: int, region_bytes: float, admission: AdmissionPolicy) -> None:
        self.max_regions = max_regions
        self.region_bytes = region_bytes  # usable bytes of one region (sampled)
        self.admission = admission
        self.index: dict[int, int] = {}  # key -> region number
        self.sealed: deque[tuple[int, list[int]]] = deque()
        self.open_no = 0
        self.open_keys: list[int] = []
        self.open_used = 0.0
        self.evicted_regions = 0

    def get(self, key: int) -> bool:
        self.admission.accessed(key)
        return key in self.index

    def put(self, key: int, size: int, span: int) -> bool:
        if not self.admission.admit(key, size):
            return False
        return self.insert(key, span)

    def insert(self, key: int, span: int) -> bool:
        if key in self.index:
            return True
        if self.open_keys and self.open_used + span > self.region_bytes:
            self.sealed.append((self.open_no, self.open_keys))
            if len(self.sealed) >= self.max_regions:  # the open one counts too
                no, keys = self.sealed.popleft()
                index = self.index
                for k in keys:
                    if index.get(k) == no:
                        del index[k]
                self.evicted_regions += 1
            self.open_no += 1
            self.open_keys, self.open_used = [], 0.0
        self.index[key] = self.open_no
        self.open_keys.append(key)
        self.open_used += span
        return True


@dataclass
class Tally:
    """What a simulation counted (sampled units).

    ``found[kind, epoch, tier]``: reads (kind 0: prefetch, 1: the consumer's) answered by
    L1, L2, L3, the block layer, or (prefetch only) skipped because L1 refused them.
    ``served[epoch, tier]``: consumer reads by the tier their bytes came from (a consumer's
    L1 hit on a chunk its prefetch brought counts where the prefetch found it).
    """

    found: np.ndarray
    served: np.ndarray
    egress: np.ndarray  # bytes read from the block layer, per epoch
    l3_evicted_regions: int = 0
    l3_admissions_rejected: int = 0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Tiers:
    """The sampled tiers: one arena per host, flash nodes (maybe none), where each chunk
    lives in L2 (``home``, -1: no L2) and L3 (``node``)."""

    arenas: list[HostArena]
    flash: list[FlashNode]
    home: list[int]
    node: list[int]
    slot: list[int]
    span: list[int]
    size: list[int]
    max_flash_chunk: int


def simulate(tiers: Tiers, t: np.ndarray, host: np.ndarray, key: np.ndarray, epoch: np.ndarray,
             consume: np.ndarray, epochs: int, announce: dict | None = None) -> Tally:
    """Run the reads in time order (prefetches first on a tie). ``announce``: for the
    clairvoyant policy, ``{event position: [(host, keys)]}`` told before that event."""
    order = np.lexsort((host, consume, t))
    found = np.zeros((2, epochs, 5), dtype=np.int64)
    served = np.zeros((epochs, 4), dtype=np.int64)
    egress = np.zeros(epochs, dtype=np.float64)
    arenas, flash, home, node = tiers.arenas, tiers.flash, tiers.home, tiers.node
    slot, span, size, max_chunk = tiers.slot, tiers.span, tiers.size, tiers.max_flash_chunk
    fetched_from: dict[int, int] = {}  # (key, host) -> tier a prefetch found it at
    rejected = 0
    cols = (host[order].tolist(), key[order].tolist(), consume[order].tolist(), epoch[order].tolist())
    for i, (h, k, use, ep) in enumerate(zip(*cols)):
        if announce and i in announce:
            for ah, keys in announce[i]:
                arenas[ah].policy.announce(keys, 0)
        arena = arenas[h]
        if k in arena.held:
            if use:
                arena.policy.hit(k)
                found[1, ep, L1] += 1
                served[ep, fetched_from.pop(k * 65536 + h, L1)] += 1
            else:
                found[0, ep, L1] += 1
            continue
        if not use and arena.capacity > 0 and not arena.fill(k, slot[k], False):
            found[0, ep, SKIPPED] += 1  # the warm-up's claim was refused: nothing fetched
            continue
        peer = home[k]
        if peer >= 0 and peer != h and k in arenas[peer].held:
            if use:
                arenas[peer].policy.hit(k)
            tier = L2
        else:
            if flash and flash[node[k]].get(k):
                tier = L3
            else:
                tier = BLOCK
                egress[ep] += size[k]
                if flash and (size[k] > max_chunk or not flash[node[k]].put(k, size[k], span[k])):
                    rejected += 1
            if peer >= 0 and peer != h:
                arenas[peer].fill(k, slot[k], use)
        if use:
            arena.fill(k, slot[k], True)
            found[1, ep, tier] += 1
            served[ep, tier] += 1
        else:
            found[0, ep, tier] += 1
            fetched_from[k * 65536 + h] = tier
    return Tally(found, served, egress, sum(f.evicted_regions for f in flash), rejected)
