"""
Running statistics of a replay in bounded memory: latency percentiles.

:class:`LatencyHistogram` bins values on a log scale (:data:`BINS_PER_DECADE` bins a
decade, 1 microsecond to 1000 seconds), so its percentiles are within half a bin
(about 0.6 %) of the exact ones whatever the number of frames, and it never keeps
the values themselves. Count, mean, min and max are exact.
"""

import math
from typing import Dict

import numpy as np

BINS_PER_DECADE = 200
MIN_MS = 1e-3
MAX_MS = 1e6


class LatencyHistogram:
    """Log-binned histogram of durations in milliseconds."""

    def __init__(self) -> None:
        decades = math.log10(MAX_MS / MIN_MS)
        self._bins = np.zeros(int(decades * BINS_PER_DECADE) + 2, dtype=np.int64)
        self.count = 0
        self.total_ms = 0.0
        self.min_ms = math.inf
        self.max_ms = 0.0

    def _index(self, value_ms: float) -> int:
        if value_ms <= MIN_MS:
            return 0
        index = int(math.log10(value_ms / MIN_MS) * BINS_PER_DECADE) + 1
        return min(index, len(self._bins) - 1)

    def add(self, value_ms: float) -> None:
        """Add one duration (ms)."""
        self._bins[self._index(value_ms)] += 1
        self.count += 1
        self.total_ms += value_ms
        self.min_ms = min(self.min_ms, value_ms)
        self.max_ms = max(self.max_ms, value_ms)

    def percentile(self, q: float) -> float:
        """Return the value at percentile ``q`` (0-100, nearest rank); 0 when empty."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q / 100.0 * self.count))
        index = int(np.searchsorted(np.cumsum(self._bins), rank))
        if index == 0:
            value = MIN_MS
        else:  # geometric centre of the bin
            value = MIN_MS * 10.0 ** ((index - 0.5) / BINS_PER_DECADE)
        return float(min(max(value, self.min_ms), self.max_ms))

    def summary(self) -> Dict[str, float]:
        """Return count, mean, min, p50, p95, p99 and max in ms."""
        if self.count == 0:
            return {'count': 0}
        return {'count': self.count, 'mean': self.total_ms / self.count,
                'min': self.min_ms, 'p50': self.percentile(50), 'p95': self.percentile(95),
                'p99': self.percentile(99), 'max': self.max_ms}
