"""A token bucket whose level is a pure function of the time it is asked at.

Used for what a node sends on someone else's behalf (discovery answers, run
results): however many messages ask it to, a node sends at most ``burst`` at
once and ``rate`` per second after that. No clock is read here; the caller
passes ``now`` (monotonic seconds), so tests drive it with virtual time.
"""

from __future__ import annotations

from dataclasses import dataclass

from grapevine.gossip.errors import ConfigError


def refill(tokens: float, last: float, now: float, *, rate: float, burst: float) -> float:
    """The level of a bucket that held ``tokens`` at ``last``, at time ``now`` (never above ``burst``)."""
    return min(burst, tokens + max(0.0, now - last) * rate)


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens added per second
    burst: float  # the most tokens the bucket holds (and so the largest burst it lets through)
    tokens: float = -1.0  # -1: full at the first call
    last: float = 0.0

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ConfigError(f"token bucket: rate must be > 0 and burst >= 1 (got {self.rate}, {self.burst})")

    def level(self, now: float) -> float:
        if self.tokens < 0:
            return self.burst
        return refill(self.tokens, self.last, now, rate=self.rate, burst=self.burst)

    def take(self, now: float, n: float = 1.0) -> bool:
        """Spend ``n`` tokens at ``now`` if the bucket holds them; False (and nothing spent) otherwise."""
        level = self.level(now)
        self.last = max(self.last, now)
        if level < n:
            self.tokens = level
            return False
        self.tokens = level - n
        return True
