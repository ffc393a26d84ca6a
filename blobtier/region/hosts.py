"""Simulated hosts: a region of several GPU hosts on one machine (``services.hosts``).

Each host ``host-N`` is a daemon of its own (``daemon-N``: an L1 arena, its own socket
``<root>/run/daemon-N.sock``, an L2 peer listener) and the client processes attached to
it (``BLOBTIER_HOST=host-N``, ``--host``, or ``cache.host``); every host shares the
region's metadata, flash nodes and chunk servers. A host listens on a loopback address of
its own, ``127.0.1.(N+1)``, where the machine lets a process bind one (Linux routes all
of 127/8 to loopback), else on ``services.host``; its port is its own either way.

The daemons are each other's L2 peers and fill their homes (``cache_l1_l2/peers.py``
``HomeFill``): a chunk is read from L3 once per region and passed host to host. The
daemon reads its homes through ``home_source``: the region's flash nodes over its chunk
servers, the same tiers a client reads below L2.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from blobtier.chunks import ChunkRef, ChunkSource

if TYPE_CHECKING:
    from blobtier.rpc.tls import Tls

HOST_PREFIX = "host-"


def host_id(n: int) -> str:
    return f"{HOST_PREFIX}{n}"


@functools.cache
def loopback_aliases() -> bool:
    """Whether this machine lets a process bind 127.0.1.x (tested once, by binding)."""
    try:
        with socket.socket() as s:
            s.bind(("127.0.1.1", 0))
        return True
    except OSError:
        return False


def host_address(bind: str, n: int) -> str:
    """Where host ``n`` listens: its own loopback address when ``bind`` (``services.host``)
    is loopback and aliases bind here, else ``bind`` itself."""
    if bind.startswith("127.") and loopback_aliases() and n < 254:
        return f"127.0.1.{n + 1}"
    return bind


class ChainSource:
    """A ``ChunkSource`` over the tiers below the hosts: L3 (when the region has flash
    nodes) over the block layer, with the chain's single flight, verification and
    failover (``sdk/chain.py``). Closes what it was built of."""

    def __init__(self, chain, parts: Sequence[object]) -> None:
        self.chain = chain
        self.parts = parts

    def read_many(self, refs: Sequence[ChunkRef]) -> list[memoryview]:
        return self.chain.read(refs)

    def close(self) -> None:
        self.chain.close()
        for part in self.parts:
            part.close()


def home_source(block_endpoints: Sequence[str], flash_endpoints: Sequence[str],
                token: str | None = None, timeout_s: float = 10.0, tls: Tls | None = None) -> ChunkSource:
    """What a daemon reads the chunks it is home to from: the flash nodes at
    ``flash_endpoints`` (none: no L3) over the chunk servers at ``block_endpoints`` (in the
    region's ``block.endpoints`` order: records name servers by position); ``tls``: how it
    connects to them."""
    from blobtier.blockstore_sim.remote import RemoteChunkStore
    from blobtier.blockstore_sim.replicated import ReplicatedBlockStore
    from blobtier.metrics import TierStats
    from blobtier.rpc.sharded_cache import ShardedChunkCache
    from blobtier.sdk.chain import TierChain
    from blobtier.sdk.routing import RoutingSource

    stats = TierStats()
    servers = {sid: RemoteChunkStore(addr, timeout_s=timeout_s, token=token, tls=tls)
               for sid, addr in enumerate(block_endpoints)}
    blocks = RoutingSource(ReplicatedBlockStore(servers, 1, stats=stats))
    tiers = [ShardedChunkCache.connect([(a, 1.0) for a in flash_endpoints], name="l3", timeout_s=timeout_s,
                                       token=token, tls=tls)] if flash_endpoints else []
    return ChainSource(TierChain(tiers, blocks, stats), [*tiers, blocks])
