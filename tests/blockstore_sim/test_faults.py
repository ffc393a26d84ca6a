"""FaultProfile checks and FaultInjector decisions, with a fake clock and fake sleeps."""

from __future__ import annotations

import threading

import pytest

from blobtier.blockstore_sim.faults import FaultInjector, FaultProfile, flip_byte
from blobtier.errors import InvalidRequest, TierUnavailable


class FakeTime:
    def __init__(self, cancel_after: int | None = None) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self.cancel_after = cancel_after

    def clock(self) -> float:
        return self.now

    def sleep(self, event: threading.Event, seconds: float) -> bool:
        self.waits.append(seconds)
        if self.cancel_after is not None and len(self.waits) > self.cancel_after:
            event.set()
            return True
        self.now += seconds
        return False


def injector(fake: FakeTime, **profile) -> FaultInjector:
    return FaultInjector(FaultProfile(**profile), seed=1, clock=fake.clock, sleep=fake.sleep)


@pytest.mark.parametrize("bad", [{"tail_p": 1.5}, {"error_rate": -0.1}, {"corrupt_rate": 2},
                                 {"latency_ms": -1}, {"bandwidth_bytes_per_s": -5}, {"tail_factor": 0.5}])
def test_profile_rejects_bad_values(bad):
    with pytest.raises(InvalidRequest, match=next(iter(bad))):
        FaultProfile(**bad)


def test_changed_replaces_named_fields_only():
    p = FaultProfile(latency_ms=5, tail_p=0.1).changed(tail_p=0.2)
    assert (p.latency_ms, p.tail_p) == (5, 0.2)
    with pytest.raises(InvalidRequest, match="unknown fault fields"):
        p.changed(speed=3)


def test_no_faults_means_no_waits():
    fake = FakeTime()
    faults = injector(fake)
    assert all(faults.admit(threading.Event()) for _ in range(100))
    assert fake.waits == []
    assert faults.counters()["requests"] == 100


def test_latency_and_stragglers():
    fake = FakeTime()
    faults = injector(fake, latency_ms=10, tail_p=1.0, tail_factor=20)
    assert faults.admit(threading.Event())
    assert fake.waits == [pytest.approx(0.2)]
    faults.update(tail_p=0.0)
    faults.admit(threading.Event())
    assert fake.waits[-1] == pytest.approx(0.01)
    counts = faults.counters()
    assert (counts["delayed"], counts["stragglers"]) == (2, 1)


def test_tail_share_follows_tail_p():
    fake = FakeTime()
    faults = injector(fake, latency_ms=1, tail_p=0.05, tail_factor=20)
    for _ in range(4000):
        faults.admit(threading.Event())
    assert 120 < faults.counters()["stragglers"] < 280  # 5% of 4000 = 200, seeded


def test_same_seed_same_draws():
    runs = []
    for _ in range(2):
        faults = FaultInjector(FaultProfile(error_rate=0.3), seed=42)
        outcome = []
        for _ in range(50):
            try:
                outcome.append(faults.admit(threading.Event()))
            except TierUnavailable:
                outcome.append(None)
        runs.append(outcome)
    assert runs[0] == runs[1] and None in runs[0] and True in runs[0]


def test_down_refuses_and_up_serves():
    faults = injector(FakeTime(), down=True)
    with pytest.raises(TierUnavailable, match="down"):
        faults.admit(threading.Event())
    faults.update(down=False)
    assert faults.admit(threading.Event())
    assert faults.counters()["refused"] == 1


def test_error_rate_one_fails_every_request():
    faults = injector(FakeTime(), error_rate=1.0)
    for _ in range(5):
        with pytest.raises(TierUnavailable, match="injected"):
            faults.admit(threading.Event())
    assert faults.counters()["errors"] == 5


def test_bandwidth_is_one_link_shared_by_all_requests():
    fake = FakeTime()
    faults = injector(fake, bandwidth_bytes_per_s=1000)
    # Two pieces queued at the same instant: the second finishes after both are sent.
    fake_now = fake.now
    faults.pace(500, threading.Event())
    fake.now = fake_now
    faults.pace(500, threading.Event())
    assert fake.waits == [pytest.approx(0.5), pytest.approx(1.0)]
    assert faults.counters()["throttled"] == 2


def test_a_cancelled_request_stops_waiting():
    fake = FakeTime(cancel_after=0)
    faults = injector(fake, latency_ms=1000)
    assert faults.admit(threading.Event()) is False
    assert faults.counters()["cancelled"] == 1


def test_corrupt_rate_and_flip_byte():
    faults = injector(FakeTime(), corrupt_rate=1.0)
    assert faults.corrupt() and faults.counters()["corrupted"] == 1
    data = bytes(range(10))
    flipped = flip_byte(data)
    assert len(flipped) == 10 and sum(a != b for a, b in zip(data, flipped)) == 1
    assert flip_byte(b"") == b""


def test_reset_clears_profile_and_counters():
    seen = []
    faults = FaultInjector(FaultProfile(down=True), on_change=seen.append)
    with pytest.raises(TierUnavailable):
        faults.admit(threading.Event())
    faults.reset()
    assert faults.profile == FaultProfile() and faults.counters()["refused"] == 0
    assert seen == [FaultProfile()]


@pytest.mark.parametrize("bad", [
    {"latency_ms": float("nan")}, {"latency_ms": float("inf")}, {"tail_factor": float("nan")},
    {"bandwidth_bytes_per_s": float("nan")}, {"bandwidth_bytes_per_s": float("inf")},
    {"latency_ms": 1e12}, {"tail_factor": 1e9}, {"latency_ms": "5"}, {"down": 1},
])
def test_profile_rejects_nan_infinity_and_absurd_values(bad):
    with pytest.raises(InvalidRequest, match=next(iter(bad))):
        FaultProfile(**bad)


def test_set_faults_over_grpc_refuses_nan_and_keeps_serving(tmp_path):
    from blobtier.blockstore_sim.chunk_server import ChunkServer
    from blobtier.blockstore_sim.remote import RemoteChunkStore
    from blobtier.checksum import xxh3

    server = ChunkServer(str(tmp_path / "s"))
    store = RemoteChunkStore(server.address, timeout_s=10)
    try:
        store.set_faults(latency_ms=1.0)
        for bad in ({"latency_ms": float("nan")}, {"bandwidth_bytes_per_s": float("inf")},
                    {"tail_factor": float("nan")}):
            with pytest.raises(InvalidRequest, match=f"{next(iter(bad))} must be a finite number"):
                store.set_faults(**bad)
        assert server.faults.profile == FaultProfile(latency_ms=1.0)  # unchanged
        store.put_many([(b"d" * 16, b"still serving", xxh3(b"still serving"))])
        assert bytes(store.get(b"d" * 16)) == b"still serving"
    finally:
        store.close()
        server.stop(0)
