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
  are offered to it as to any arena. In a region whose daemons fill their homes
  (``cache_l1_l2/peers.py``: ``HomeFill``, ``HomeShare``; ``blobtier up`` with
  ``services.hosts`` > 1) the home reads a chunk it misses through from L3 and keeps it,
  and an L1 keeps only its own host's share: each chunk is cached once in the region.
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
    L1 or L2 hit on a chunk its host's prefetch brought counts where the prefetch found it).
    """

    found: np.ndarray
    served: np.ndarray
    egress: np.ndarray  # bytes read from the block layer, per epoch
    pulled: np.ndarray  # bytes asked of L3 (hits and misses), per epoch
    l3_evicted_regions: int = 0
    l3_admissions_rejected: int = 0
    prefetch_wasted: int = 0  # consumer reads of a prefetched chunk that had to go below L2 again
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
    home_fill: bool = False  # L2 homes read their chunks through and keep them (HomeFill)


def simulate(tiers: Tiers, t: np.ndarray, host: np.ndarray, key: np.ndarray, epoch: np.ndarray,
             consume: np.ndarray, epochs: int, announce: dict | None = None) -> Tally:
    """Run the reads in time order (prefetches first on a tie). Reads of one host at one
    time are one batch, as one ``TierChain.read`` of a DataLoader batch (or a prefetch
    batch) is: every chunk is looked up in L1 before any miss claims a slot (and evicts).
    ``announce``: for the clairvoyant policy, ``{event position: [(host, keys)]}`` told
    before that event."""
    order = np.lexsort((host, consume, t))
    st, sh, su = t[order], host[order], consume[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (st[1:] != st[:-1]) | (sh[1:] != sh[:-1]) | (su[1:] != su[:-1])
    starts = np.flatnonzero(new).tolist() + [len(order)]
    run = _Run(tiers, epochs)
    cols = (sh.tolist(), key[order].tolist(), su.tolist(), epoch[order].tolist())
    hs, ks, us, eps = cols
    for a, b in zip(starts[:-1], starts[1:]):
        if announce:
            for i in range(a, b):
                for ah, keys in announce.get(i, ()):
                    tiers.arenas[ah].policy.announce(keys, 0)
        run.batch(hs[a], ks[a:b], us[a], eps[a:b])
    return Tally(run.found, run.served, run.egress, run.pulled,
                 sum(f.evicted_regions for f in tiers.flash), run.rejected, run.wasted)


class _Run:
    """The counters of one simulation and the read path of one batch."""

    def __init__(self, tiers: Tiers, epochs: int) -> None:
        self.tiers = tiers
        self.found = np.zeros((2, epochs, 5), dtype=np.int64)
        self.served = np.zeros((epochs, 4), dtype=np.int64)
        self.egress = np.zeros(epochs, dtype=np.float64)
        self.pulled = np.zeros(epochs, dtype=np.float64)  # bytes asked of L3
        self.home_fill = bool(tiers.home_fill and tiers.home and tiers.home[0] >= 0)
        self.fetched_from: dict[int, int] = {}  # key * 65536 + host -> tier a prefetch found it at
        self.rejected = 0
        self.wasted = 0

    def batch(self, h: int, keys: list[int], use: bool, eps: list[int]) -> None:
        """One chain read of ``keys`` by host ``h`` (``use``: the consumer's, else a prefetch)."""
        arena = self.tiers.arenas[h]
        held, found, kind = arena.held, self.found, int(use)
        misses = []
        for k, ep in zip(keys, eps):
            if k in held:
                found[kind, ep, L1] += 1
                if use:
                    arena.policy.hit(k)
                    self.served[ep, self.fetched_from.pop(k * 65536 + h, L1)] += 1
            else:
                misses.append((k, ep))
        for k, ep in misses:
            self.miss(h, arena, k, ep, use)

    def miss(self, h: int, arena: HostArena, k: int, ep: int, use: bool) -> None:
        t = self.tiers
        slot = t.slot[k]
        if not use and not self.home_fill and arena.capacity > 0 and not arena.fill(k, slot, False):
            self.found[0, ep, SKIPPED] += 1  # the warm-up's claim was refused: nothing fetched
            return
        peer = t.home[k]
        if peer >= 0 and peer != h and k in t.arenas[peer].held:
            if use:
                t.arenas[peer].policy.hit(k)
            tier = L2
        else:
            tier = self.below(k, ep)
            if self.home_fill:  # the home read it through and keeps it (its own host's too)
                t.arenas[peer].fill(k, slot, use)
            elif peer >= 0 and peer != h:
                t.arenas[peer].fill(k, slot, use)
        if use:
            if not self.home_fill:  # HomeShare: an L1 keeps only its host's share, filled above
                arena.fill(k, slot, True)
            self.found[1, ep, tier] += 1
            # A chunk this host's prefetch brought to its home is served where the prefetch found it.
            came = self.fetched_from.pop(k * 65536 + h, None)
            if came is not None and tier != L2:
                self.wasted += 1  # prefetched, then evicted before this read: fetched again
            self.served[ep, came if came is not None and tier == L2 else tier] += 1
        else:
            self.found[0, ep, tier] += 1
            self.fetched_from[k * 65536 + h] = tier

    def below(self, k: int, ep: int) -> int:
        """L3 (read through) or the block layer: the tier that had chunk ``k``."""
        t = self.tiers
        size = t.size[k]
        if not t.flash:
            self.egress[ep] += size
            return BLOCK
        self.pulled[ep] += size
        node = t.flash[t.node[k]]
        if node.get(k):
            return L3
        self.egress[ep] += size
        if size > t.max_flash_chunk or not node.put(k, size, t.span[k]):
            self.rejected += 1
        return BLOCK
