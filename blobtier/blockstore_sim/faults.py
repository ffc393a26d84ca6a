"""Fault injection for one chunk server: latency, stragglers, a bandwidth cap, errors, down.

A ``FaultProfile`` says how the server misbehaves; the server's ``FaultInjector`` applies
it to every request and can be given a new profile while it runs (the admin RPC). Every
wait is cut short when the client goes away, so a cancelled hedge frees its thread at once.

- latency: each request waits ``latency_ms`` before it is served;
- tail: a share ``tail_p`` of requests are stragglers that wait ``tail_factor`` times longer
  (the tail scales the injected latency, so it needs ``latency_ms`` > 0);
- bandwidth: one link shared by every request moves at most ``bandwidth_bytes_per_s``;
- errors: a share ``error_rate`` of requests are answered UNAVAILABLE;
- corruption: a share ``corrupt_rate`` of reads come back with one byte flipped;
- down: every request is refused (UNAVAILABLE) until the server is set up again.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace

from blobtier.errors import InvalidRequest, TierUnavailable

# The inclusive range of every fault: shares are shares, a wait is at most ten minutes, a
# straggler at most a thousand times slower, a link at most 1 TiB/s. A NaN or an infinity
# (from a flag, a TOML file or the admin RPC) is never a fault setting.
LIMITS: dict[str, tuple[float, float]] = {
    "latency_ms": (0.0, 600_000.0), "tail_p": (0.0, 1.0), "tail_factor": (1.0, 1000.0),
    "bandwidth_bytes_per_s": (0.0, float(1 << 40)), "error_rate": (0.0, 1.0), "corrupt_rate": (0.0, 1.0),
}
COUNTERS = ("requests", "refused", "errors", "delayed", "stragglers", "throttled", "corrupted",
            "cancelled", "bytes_sent", "bytes_received")


@dataclass(frozen=True)
class FaultProfile:
    latency_ms: float = 0.0
    tail_p: float = 0.0
    tail_factor: float = 1.0
    bandwidth_bytes_per_s: float = 0.0  # 0: no cap
    error_rate: float = 0.0
    corrupt_rate: float = 0.0
    down: bool = False

    def __post_init__(self) -> None:
        for name, (lo, hi) in LIMITS.items():
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and lo <= value <= hi):
                raise InvalidRequest(f"fault {name} must be a finite number between {lo:.15g} and {hi:.15g}, "
                                     f"got {value!r:.40}")
        if not isinstance(self.down, bool):
            raise InvalidRequest(f"fault down must be true or false, got {self.down!r:.40}")

    def changed(self, **changes: float | bool) -> FaultProfile:
        """A copy with some fields replaced (validated)."""
        unknown = set(changes) - set(FIELDS)
        if unknown:
            raise InvalidRequest(f"unknown fault fields {sorted(unknown)}; known: {list(FIELDS)}")
        return replace(self, **changes)

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)


FIELDS = tuple(f.name for f in fields(FaultProfile))
NO_FAULTS = FaultProfile()


class FaultInjector:
    """Applies a ``FaultProfile`` to requests; thread-safe.

    Args:
        profile: the faults to start with.
        seed: seeds the draws (tail, errors, corruption) for reproducible runs.
        on_change: called with the new profile whenever it changes (e.g. to set health).
        clock, sleep: injectable for tests; ``sleep(event, seconds)`` returns True when the
            request was cancelled during the wait.
    """

    def __init__(self, profile: FaultProfile = NO_FAULTS, *, seed: int | None = None,
                 on_change: Callable[[FaultProfile], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[threading.Event, float], bool] = threading.Event.wait) -> None:
        self._profile = profile
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self._link_free_at = 0.0  # when the shared link has sent everything queued on it
        self._counters = dict.fromkeys(COUNTERS, 0)

    @property
    def profile(self) -> FaultProfile:
        return self._profile

    def set(self, profile: FaultProfile) -> None:
        self._profile = profile
        if self._on_change is not None:
            self._on_change(profile)

    def update(self, **changes: float | bool) -> FaultProfile:
        with self._lock:
            profile = self._profile.changed(**changes)
        self.set(profile)
        return profile

    def reset(self) -> None:
        with self._lock:
            self._counters = dict.fromkeys(COUNTERS, 0)
            self._link_free_at = 0.0
        self.set(NO_FAULTS)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    # -- per request -------------------------------------------------------------------
    def admit(self, cancel: threading.Event) -> bool:
        """Start of a request: refuse it, fail it, or delay it. Returns False when the
        client went away during the delay (the request should just end)."""
        p = self._profile
        with self._lock:
            self._counters["requests"] += 1
            if p.down:
                self._counters["refused"] += 1
                raise TierUnavailable("chunk server is down (fault injection)")
            if p.error_rate and self._rng.random() < p.error_rate:
                self._counters["errors"] += 1
                raise TierUnavailable("injected error (fault injection)")
            straggler = bool(p.tail_p) and self._rng.random() < p.tail_p
            self._counters["stragglers"] += straggler
            self._counters["delayed"] += p.latency_ms > 0
        delay_s = p.latency_ms / 1000 * (p.tail_factor if straggler else 1.0)
        return self._wait(cancel, delay_s)

    def pace(self, nbytes: int, cancel: threading.Event) -> bool:
        """Hold a piece of ``nbytes`` until the capped link could have sent it. Returns
        False when the client went away meanwhile."""
        bandwidth = self._profile.bandwidth_bytes_per_s
        if not bandwidth:
            return not cancel.is_set()
        with self._lock:
            now = self._clock()
            done_at = max(now, self._link_free_at) + nbytes / bandwidth
            self._link_free_at = done_at
            self._counters["throttled"] += 1
        return self._wait(cancel, done_at - now)

    def corrupt(self) -> bool:
        """Whether this read should come back with a flipped byte."""
        rate = self._profile.corrupt_rate
        with self._lock:
            hit = bool(rate) and self._rng.random() < rate
            self._counters["corrupted"] += hit
        return hit

    def _wait(self, cancel: threading.Event, seconds: float) -> bool:
        if (seconds > 0 and self._sleep(cancel, seconds)) or cancel.is_set():
            self.count("cancelled")
            return False
        return True


def flip_byte(piece: bytes) -> bytes:
    """``piece`` with its middle byte inverted (what a corrupting disk or NIC might do)."""
    if not piece:
        return piece
    mid = len(piece) // 2
    return piece[:mid] + bytes([piece[mid] ^ 0xFF]) + piece[mid + 1:]


@dataclass(frozen=True)
class FaultState:
    """What the admin RPC reports: a server's current profile and its fault counters."""

    server_id: int
    profile: FaultProfile
    counters: dict[str, int]
