"""The arithmetic of a bad link, apart from sockets so that it can be tested with a made-up clock.

Every function takes ``now`` (seconds on a monotonic clock) instead of reading one.
"""

from __future__ import annotations

import math
import random


class TokenBucket:
    """A bandwidth cap: ``rate`` bytes a second, at most ``burst`` bytes at once after a quiet spell.

    ``reserve`` may take more than is there and leaves a debt; its answer is how long the sender must wait
    before those bytes may leave. Several senders sharing one bucket (the connections of one link) are
    served in the order they reserve, and together never exceed the rate.
    """

    def __init__(self, rate: float, burst: float | None = None, *, now: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1024.0, rate / 20))  # 50 ms of traffic
        self.tokens = self.burst
        self.stamp = now

    def reserve(self, size: int, now: float) -> float:
        """Take ``size`` bytes' worth of tokens; seconds to wait before sending them (0 when they are there)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= size
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def chunk(self) -> int:
        """A read size that keeps each wait short (about 50 ms of the rate), so the flow stays smooth."""
        return int(min(65536, max(512, self.rate / 20)))


class DelayLine:
    """Latency each way: a chunk read at ``arrival`` is due ``latency`` (+ up to ``jitter``) seconds later,
    never before the chunk read before it (a link does not reorder a TCP stream)."""

    def __init__(self, latency: float, jitter: float = 0.0, rng: random.Random | None = None) -> None:
        if latency < 0 or jitter < 0:
            raise ValueError("latency and jitter must not be negative")
        self.latency = latency
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.last_due = -math.inf

    def due(self, arrival: float) -> float:
        extra = self.rng.uniform(0, self.jitter) if self.jitter else 0.0
        self.last_due = max(self.last_due, arrival + self.latency + extra)
        return self.last_due


class Outages:
    """When the link is down: every ``every`` s (first at ``start + every``) for ``down_for`` s, and whenever
    ``cut`` says so. While down, open connections are dropped and new ones refused."""

    def __init__(self, start: float, every: float | None = None, down_for: float = 0.0) -> None:
        if every is not None and (every <= 0 or down_for < 0 or down_for >= every):
            raise ValueError(f"a flap needs 0 <= down_for < every (every={every}, down_for={down_for})")
        self.start = start
        self.every = every
        self.down_for = down_for
        self.cut_until = -math.inf

    def cut(self, now: float, seconds: float) -> None:
        """Down from ``now`` for ``seconds`` (extends a cut already under way, never shortens it)."""
        self.cut_until = max(self.cut_until, now + seconds)

    def down_until(self, now: float) -> float | None:
        """End of the outage ``now`` falls in, or None when the link is up."""
        ends = [self.cut_until] if now < self.cut_until else []
        if self.every is not None and self.down_for > 0 and now >= self.start + self.every:
            window = self.start + math.floor((now - self.start) / self.every) * self.every
            if now < window + self.down_for:
                ends.append(window + self.down_for)
        return max(ends) if ends else None

    def next_flap(self, now: float) -> float | None:
        """Start of the next periodic outage after ``now`` (None without a flap)."""
        if self.every is None or self.down_for <= 0:
            return None
        return self.start + (max(0, math.floor((now - self.start) / self.every)) + 1) * self.every
