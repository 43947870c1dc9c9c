"""
Time rules of the node that do not need ROS: rate limits and backward time jumps.

Both work on header stamps in integer nanoseconds, so they behave the same on the
robot, under ``use_sim_time`` and in a replayed bag:

- :class:`RateLimiter` lets an event through at most ``rate_hz`` times per second of
  stamp time (the debug image). A stamp older than the last one let through (a bag
  that loops) restarts the limiter instead of silencing it. It is thread-safe: the
  node's worker asks it, a parameter change sets its rate and a time jump resets it,
  each from its own thread.
- :class:`BackwardJumpDetector` reports a stream's stamps jumping back by more than
  a threshold (``ros2 bag play --loop``, a restarted simulator), so the node can
  forget GPS fixes of the old timeline.
"""

import threading
from typing import Optional

NS_PER_S = 1_000_000_000
#: how far stamps must jump back before the GPS buffer is cleared ("a few seconds")
TIME_JUMP_BACK_S = 3.0


class RateLimiter:
    """Let events through at most ``rate_hz`` times per second of stamp time (thread-safe)."""

    def __init__(self, rate_hz: float) -> None:
        self._lock = threading.Lock()
        self._period_ns = 0
        self._enabled = False
        self._last_ns: Optional[int] = None
        self.set_rate(rate_hz)

    @property
    def rate_hz(self) -> float:
        """The rate in force; 0 means never."""
        with self._lock:
            return NS_PER_S / self._period_ns if self._enabled and self._period_ns else 0.0

    def set_rate(self, rate_hz: float) -> None:
        """
        Change the rate (takes effect from the next event).

        :param rate_hz: events per second; 0 or less lets nothing through.
        """
        enabled = rate_hz > 0.0
        period_ns = int(round(NS_PER_S / rate_hz)) if enabled else 0
        with self._lock:
            self._enabled = enabled
            self._period_ns = period_ns

    def allow(self, stamp_ns: int) -> bool:
        """Return whether an event at ``stamp_ns`` may go through (and record it if so)."""
        with self._lock:
            if not self._enabled:
                return False
            last = self._last_ns
            if last is None or stamp_ns < last or stamp_ns - last >= self._period_ns:
                self._last_ns = stamp_ns
                return True
            return False

    def reset(self) -> None:
        """Forget the last event: the next one goes through."""
        with self._lock:
            self._last_ns = None


class BackwardJumpDetector:
    """Detect a stream's stamps jumping back by more than ``threshold_s``."""

    def __init__(self, threshold_s: float = TIME_JUMP_BACK_S) -> None:
        if threshold_s <= 0.0:
            raise ValueError(f'threshold_s must be > 0, got {threshold_s}')
        self._threshold_ns = int(threshold_s * NS_PER_S)
        self._newest_ns: Optional[int] = None
        self.jumps = 0

    @property
    def newest_ns(self) -> Optional[int]:
        """The newest stamp seen on the current timeline."""
        return self._newest_ns

    def update(self, stamp_ns: int) -> Optional[float]:
        """
        Record ``stamp_ns``; return the size of a backward jump in seconds, else None.

        After a jump the new stamp starts a new timeline (the next stamps are compared
        with it). Small reorderings (within the threshold) are not jumps.
        """
        if stamp_ns <= 0:  # unstamped (or an invalid stamp): no time, so no jump
            return None
        newest = self._newest_ns
        if newest is None or stamp_ns > newest:
            self._newest_ns = stamp_ns
            return None
        if newest - stamp_ns > self._threshold_ns:
            self._newest_ns = stamp_ns
            self.jumps += 1
            return (newest - stamp_ns) / NS_PER_S
        return None
