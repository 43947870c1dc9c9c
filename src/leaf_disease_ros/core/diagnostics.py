"""
Diagnostic reports in ROS terms, without ROS.

:class:`DiagnosticReport` mirrors one ``diagnostic_msgs/DiagnosticStatus`` (level,
name, message, hardware id, key/value pairs); ``ros/conversions.py`` turns a list of
them into a ``DiagnosticArray``. The node's statistics (frame rate, latency
percentiles, drops, GPS state) are computed here in pure Python so they can be tested
without ROS.
"""

from dataclasses import dataclass, field
from typing import List, Tuple

# diagnostic_msgs/DiagnosticStatus levels
OK = 0
WARN = 1
ERROR = 2
STALE = 3


@dataclass(frozen=True)
class DiagnosticReport:
    """One diagnostic status: ``values`` are (key, value-as-text) pairs."""

    name: str
    level: int
    message: str
    hardware_id: str = ''
    values: Tuple[Tuple[str, str], ...] = field(default_factory=tuple)

    def value_dict(self) -> dict:
        """Return the key/value pairs as a dict."""
        return dict(self.values)


def worst_level(levels: List[int]) -> int:
    """Return the most severe of ``levels`` (STALE counts below ERROR), OK when empty."""
    order = {OK: 0, STALE: 1, WARN: 2, ERROR: 3}
    return max(levels, key=lambda level: order.get(level, 3), default=OK)
