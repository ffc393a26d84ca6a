"""The pieces of the remote read path: latency window, hedge timer, AIMD limit, backoff,
replica health. Pure logic, driven with chosen latencies and a fake clock."""

from __future__ import annotations

import random

import pytest

from blobtier.backoff import Backoff, ReplicaHealth
from blobtier.blockstore_sim.congestion import AdaptiveLimit
from blobtier.blockstore_sim.hedging import HedgeTimer, LatencyWindow


def test_latency_window_percentiles_and_forgetting():
    w = LatencyWindow(size=100, every=1)
    for i in range(100):
        w.add(i / 1000)
    assert w.percentile(50) == pytest.approx(0.050)
    assert w.percentile(95) == pytest.approx(0.095)
    for _ in range(100):
        w.add(1.0)  # the old samples leave the window
    assert w.percentile(5) == 1.0 and len(w) == 100


def test_hedge_timer_fixed_off_and_automatic():
    assert HedgeTimer(25).delay() == pytest.approx(0.025)
    assert HedgeTimer(-1).delay() is None
    auto = HedgeTimer(0, initial_ms=50, floor_ms=1, min_samples=20)
    assert auto.delay() == pytest.approx(0.050)  # nothing seen yet
    for i in range(200):
        auto.observe(0.010 if i % 20 else 0.200)  # 5% stragglers at 200 ms
    assert 0.009 <= auto.delay() <= 0.2
    heavy = HedgeTimer(0, percentile=99, cap=3, min_samples=20)
    for i in range(200):
        heavy.observe(0.010 if i % 10 else 1.0)  # 10% stragglers got into the window
    assert heavy.delay() == pytest.approx(0.030)  # capped at 3x the median, below them
    fast = HedgeTimer(0, floor_ms=2, min_samples=5)
    for _ in range(50):
        fast.observe(0.0001)
    assert fast.delay() == pytest.approx(0.002)  # never below the floor


def test_limit_grows_while_latency_holds():
    limit = AdaptiveLimit(4, max_limit=16)
    for _ in range(400):
        limit.acquire()
        limit.release(0.01)
    assert limit.limit == 16 and limit.cuts == 0


def test_limit_cuts_once_per_window_on_errors():
    limit = AdaptiveLimit(16)
    for _ in range(8):  # a burst of failures from one event
        limit.acquire()
        limit.release(congested=True)
    assert limit.limit == 8 and limit.cuts == 1
    for _ in range(200):
        limit.acquire()
        limit.release(congested=True)
    assert limit.limit == 1  # persistent failure sinks to the floor
    limit.signal()
    assert limit.limit == 1


def test_limit_cuts_when_latency_rises_but_not_for_stragglers():
    limit = AdaptiveLimit(8, window=16)
    for i in range(320):  # 5% stragglers: the median does not move
        limit.acquire()
        limit.release(0.2 if i % 20 == 0 else 0.01)
    assert limit.cuts == 0
    for _ in range(64):  # everything five times slower: congestion
        limit.acquire()
        limit.release(0.05)
    assert limit.cuts >= 1 and limit.limit < 8


def test_try_acquire_respects_the_limit():
    limit = AdaptiveLimit(2)
    assert limit.try_acquire() and limit.try_acquire()
    assert not limit.try_acquire()
    limit.release(0.01)
    assert limit.try_acquire()


def test_backoff_grows_is_capped_and_jittered():
    b = Backoff(base_s=0.01, cap_s=0.5)
    rng = random.Random(3)
    for attempt in range(12):
        top = min(0.5, 0.01 * 2 ** attempt)
        delays = [b.delay(attempt, rng) for _ in range(50)]
        assert all(top / 2 <= d <= top for d in delays)
        assert len(set(delays)) > 1
    assert b.ceiling(100) == 0.5


def test_health_benches_failed_servers_until_backoff_expires():
    now = [0.0]
    health = ReplicaHealth(Backoff(base_s=1.0, cap_s=8.0), clock=lambda: now[0])
    assert health.order([3, 1, 2]) == [3, 1, 2]
    health.failed(3)
    assert health.order([3, 1, 2]) == [1, 2, 3] and not health.usable(3)
    now[0] = 1.01  # the first bench lasts at most base_s
    assert health.usable(3) and health.order([3, 1, 2]) == [3, 1, 2]
    health.failed(3)
    health.failed(3)  # the third failure: a bench of 2-4 s
    now[0] += 1.9
    assert not health.usable(3)
    health.ok(3)
    assert health.usable(3) and health.benched() == []
