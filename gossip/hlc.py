"""Hybrid logical clock: wall-clock milliseconds plus a counter.

A stamp ``(wall_ms, counter)`` never goes backwards on one node, orders every
event after the events it has seen from others (``observe``), and stays
close to real time. The author key id completes a ``Version`` (see
``item.py``), so two stamps from different authors never tie.

``now`` always comes in as an argument: the clock reads no time itself.
A remote stamp further ahead of ``now`` than ``max_drift_ms`` is not adopted
(one peer with a broken clock must not drag every clock into the future);
``observe`` reports that by returning ``False``.
"""

from __future__ import annotations

from .errors import ProtocolError

DEFAULT_MAX_DRIFT_MS = 60_000  # matches GossipConfig.max_skew_ms: items further ahead are refused anyway


class HybridClock:
    __slots__ = ("wall_ms", "counter", "max_drift_ms")

    def __init__(self, *, wall_ms: int = 0, counter: int = 0, max_drift_ms: int = DEFAULT_MAX_DRIFT_MS) -> None:
        if wall_ms < 0 or counter < 0 or max_drift_ms < 0:
            raise ProtocolError("clock state must be non-negative")
        self.wall_ms = wall_ms
        self.counter = counter
        self.max_drift_ms = max_drift_ms

    def tick(self, now: int) -> tuple[int, int]:
        """A fresh stamp for a local event, greater than every earlier one."""
        if now > self.wall_ms:
            self.wall_ms = now
            self.counter = 0
        else:
            self.counter += 1
        return (self.wall_ms, self.counter)

    def observe(self, wall_ms: int, counter: int, now: int) -> bool:
        """Merge a stamp seen from elsewhere; later ticks sort after it.

        Returns ``False`` (and changes nothing) when the stamp is more than
        ``max_drift_ms`` ahead of ``now``.
        """
        if wall_ms > now + self.max_drift_ms:
            return False
        top = max(self.wall_ms, wall_ms, now)
        if top == self.wall_ms and top == wall_ms:
            self.counter = max(self.counter, counter) + 1
        elif top == self.wall_ms:
            self.counter += 1
        elif top == wall_ms:
            self.counter = counter + 1
        else:
            self.counter = 0
        self.wall_ms = top
        return True

    def peek(self) -> tuple[int, int]:
        """The last stamp handed out or merged, without advancing."""
        return (self.wall_ms, self.counter)

    def __repr__(self) -> str:
        return f"HybridClock(wall_ms={self.wall_ms}, counter={self.counter})"
