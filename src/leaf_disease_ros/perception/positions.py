"""
Positions at image stamps: GNSS fixes, geotags and why a frame has none (data only).

The pipeline's result carries a :class:`GeotagResult`; the fix buffer that computes
it is :mod:`leaf_disease_ros.geo.geotag`. Status and covariance constants follow
``sensor_msgs/NavSatFix`` and ``sensor_msgs/NavSatStatus``.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

# sensor_msgs/NavSatStatus
STATUS_NO_FIX = -1
STATUS_FIX = 0
STATUS_SBAS_FIX = 1
STATUS_GBAS_FIX = 2
#: NavSatStatus values in words, as sensor_msgs/msg/NavSatStatus.msg comments them
STATUS_WORDS = {STATUS_NO_FIX: 'no fix', STATUS_FIX: 'unaugmented fix',
                STATUS_SBAS_FIX: 'satellite-augmented fix (SBAS)',
                STATUS_GBAS_FIX: 'ground-augmented fix (GBAS: RTK or DGPS)'}
# sensor_msgs/NavSatFix covariance types
COVARIANCE_TYPE_UNKNOWN = 0
REASON_INTERPOLATED = 'interpolated'
REASON_NEAREST = 'nearest'
REASON_GPS_NO_FIX = 'gps_no_fix'
REASON_STALE_FIX = 'stale_fix'
REASON_NO_FIX_RECEIVED = 'no_fix_received'
REASON_NO_IMAGE_STAMP = 'no_image_stamp'  # the image header stamp is 0: not placed in time
NO_POSITION_REASONS = (REASON_GPS_NO_FIX, REASON_STALE_FIX, REASON_NO_FIX_RECEIVED,
                       REASON_NO_IMAGE_STAMP)
_ZERO_COVARIANCE = (0.0,) * 9


def fix_status_words(status: int) -> str:
    """Return a NavSatStatus ``status`` in words (``fix status 2`` -> a GBAS fix)."""
    return STATUS_WORDS.get(status, f'fix status {status} (not a NavSatStatus value)')


@dataclass(frozen=True)
class Fix:
    """One GNSS fix at its header stamp (nanoseconds), NavSatFix semantics."""

    stamp_ns: int
    latitude_deg: float
    longitude_deg: float
    altitude_m: float = float('nan')
    status: int = STATUS_FIX
    service: int = 1
    covariance_m2: Tuple[float, ...] = _ZERO_COVARIANCE
    covariance_type: int = COVARIANCE_TYPE_UNKNOWN


@dataclass(frozen=True)
class GeoTag:
    """
    A frame's position at its image stamp and how it was obtained.

    ``fix_age_s`` is the time from the image stamp to the nearest fix used;
    ``heading_enu_rad`` (0 = east, counter-clockwise) and ``speed_mps`` come from
    the course over ground when it could be computed; ``lever_arm_note`` says why
    the lever arm was not applied (empty when applied or not configured).
    """

    stamp_ns: int
    latitude_deg: float
    longitude_deg: float
    altitude_m: float
    status: int
    service: int
    covariance_m2: Tuple[float, ...]
    covariance_type: int
    method: str
    fix_age_s: float
    lever_arm_applied: bool = False
    lever_arm_note: str = ''
    heading_enu_rad: Optional[float] = None
    speed_mps: Optional[float] = None


@dataclass(frozen=True)
class GeotagResult:
    """The lookup outcome: a GeoTag, or None with ``reason`` in NO_POSITION_REASONS."""

    geotag: Optional[GeoTag]
    reason: str

    @property
    def has_position(self) -> bool:
        """Return whether the frame has a position."""
        return self.geotag is not None


# How a finding was placed (GroundPosition.method)
PLACED_CANOPY = 'canopy_plane'  # the tile's ray met the canopy plane
PLACED_DEPTH = 'depth'  # the tile's ray at the aligned depth image's distance
PLACED_CAMERA = 'camera'  # no ground position: the camera's position (``note`` says why)
LEAF_METHODS = (PLACED_CANOPY, PLACED_DEPTH)


@dataclass(frozen=True)
class GroundPosition:
    """
    Where one finding is (WGS84), from the camera's geometry (``geo/leaf_position.py``).

    ``covariance_m2``: 3x3 ENU, row-major (GPS + heading x range + distance + tile);
    ``method``: :data:`PLACED_CANOPY`, :data:`PLACED_DEPTH`, or :data:`PLACED_CAMERA`
    (the camera's position, flagged: ``note`` says why there is no ground position);
    ``range_m``: camera to leaf (NaN for the camera position); ``heading_source``:
    ``odometry``, ``imu``, ``course``, ``held`` (last good course) or empty.
    """

    latitude_deg: float
    longitude_deg: float
    altitude_m: float
    covariance_m2: Tuple[float, ...]
    method: str
    range_m: float = float('nan')
    heading_source: str = ''
    note: str = ''

    @property
    def at_leaf(self) -> bool:
        """Return whether this is the leaf's own position (not the camera's)."""
        return self.method in LEAF_METHODS

    def horizontal_covariance_m2(self) -> Tuple[float, float, float]:
        """Return ``(var_east, cov_east_north, var_north)`` in square metres."""
        c = self.covariance_m2
        return (float(c[0]), float(c[1]), float(c[4]))
