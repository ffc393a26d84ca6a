"""``blobtier plan``: what-if planning of a region's caches with blobtier's own policies.

The planner replays a trace (synthetic: hosts, jobs, dataset, epochs and shuffle seeds,
in ``BlobSampler``'s order; or a recorded one) through the tiers as ``TierChain`` walks
them, letting the real policy objects decide: L1 eviction (``eviction.py``, admitted and
evicted as ``ArenaOwner`` does), the L2 home and the L3 node (``placement.py``), L3
admission (``flash_l3/admission.py``) and region-by-region reclaim, and the prefetch
window (``sdk/prefetch.window``). It predicts the share of reads each tier serves, each
tier's hit ratio, block-layer egress per epoch and the data stall (``model.py``).

Large traces are sampled spatially, as in SHARDS (Waldspurger, Park, Garthwaite, Ahmad:
"Efficient MRC Construction with SHARDS", FAST '15): a chunk is simulated when a hash of
its key falls below ``rate`` of the hash range, with all its reads; every cache capacity
is multiplied by ``rate`` (and a second-hit admission window, counted in chunks, too),
and egress is divided by it. Hit ratios of the sample estimate those of the whole trace
because each cache then holds the same share of the (sampled) chunks as it would of all.
"""

from __future__ import annotations

from blobtier.plan.model import Prediction, Region, Timing, predict, sweep
from blobtier.plan.trace import Recorder, Synthetic, recorded

__all__ = ["Prediction", "Recorder", "Region", "Synthetic", "Timing", "predict", "recorded", "sweep"]
