"""
Time-indexed GPS fix buffer: a frame's position at its own stamp, or none.

Fixes (from ``sensor_msgs/NavSatFix``, converted by the ROS layer) go into a
:class:`FixBuffer` ordered by their header stamp, whatever order they arrive in.
Fixes whose status is NO_FIX or whose latitude/longitude is NaN are not positions:
they are rejected, but their stamps are remembered so a frame taken during an
outage is reported as such.

:meth:`FixBuffer.lookup` gives the position at an image stamp:

1. if fixes bracket the stamp and are at most ``max_fix_gap_s`` apart, interpolate
   linearly between them (status: the worse of the two, covariance: the larger);
2. else the nearest fix when it is at most ``max_fix_age_s`` from the stamp;
3. else no position, with the reason (``gps_no_fix``, ``stale_fix``,
   ``no_fix_received``). Never "the latest fix": a stale position is worse than none.

An optional lever arm (camera position relative to the antenna, robot frame x
forward / y left / z up, metres) is rotated by the course over ground from the fixes
around the stamp; below ``min_speed_mps`` the course is unknown and the lever arm is
skipped, with the reason recorded. All times are header stamps in nanoseconds (works
under ``use_sim_time`` and in bag replay). The buffer is thread-safe: the node adds
fixes from one callback group while the worker thread looks them up.
"""

import bisect
from dataclasses import replace
import math
import threading
from typing import List, Optional, Sequence, Tuple

from leaf_disease_ros.geo.geodesy import local_east_north_m, offset_latlon
from leaf_disease_ros.perception.positions import (Fix, GeoTag, GeotagResult, REASON_GPS_NO_FIX,
                                                   REASON_INTERPOLATED, REASON_NEAREST,
                                                   REASON_NO_FIX_RECEIVED, REASON_STALE_FIX,
                                                   STATUS_NO_FIX)


ADD_ACCEPTED = 'accepted'
ADD_DUPLICATE = 'replaced_duplicate'
ADD_REJECTED_NO_FIX = 'rejected_no_fix'
ADD_REJECTED_NAN = 'rejected_nan'

_NS_PER_S = 1e9


def _interpolate(a: Fix, b: Fix, stamp_ns: int) -> Tuple[float, float, float]:
    weight = (stamp_ns - a.stamp_ns) / float(b.stamp_ns - a.stamp_ns)
    lat = a.latitude_deg + weight * (b.latitude_deg - a.latitude_deg)
    # Longitudes are interpolated on the short way round (antimeridian-safe).
    dlon = (b.longitude_deg - a.longitude_deg + 540.0) % 360.0 - 180.0
    lon = (a.longitude_deg + weight * dlon + 540.0) % 360.0 - 180.0
    if math.isnan(a.altitude_m) or math.isnan(b.altitude_m):
        alt = b.altitude_m if math.isnan(a.altitude_m) else a.altitude_m
    else:
        alt = a.altitude_m + weight * (b.altitude_m - a.altitude_m)
    return lat, lon, alt


class FixBuffer:
    """A bounded, stamp-ordered, thread-safe buffer of valid fixes."""

    def __init__(self, capacity: int = 512) -> None:
        if capacity < 2:
            raise ValueError(f'fix buffer capacity must be >= 2, got {capacity}')
        self._capacity = capacity
        self._lock = threading.Lock()
        self._stamps: List[int] = []
        self._fixes: List[Fix] = []
        self._no_fix_stamps: List[int] = []  # stamps of rejected NO_FIX/NaN messages
        self.accepted = 0
        self.duplicates = 0
        self.rejected_no_fix = 0
        self.rejected_nan = 0
        self.evicted = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._fixes)

    @property
    def capacity(self) -> int:
        """Maximum number of fixes kept."""
        return self._capacity

    def clear(self) -> None:
        """Forget every fix (e.g. after the clock jumped back at a bag loop)."""
        with self._lock:
            self._stamps.clear()
            self._fixes.clear()
            self._no_fix_stamps.clear()

    def add(self, fix: Fix) -> str:
        """
        Insert a fix in stamp order; return what happened (an ``ADD_*`` constant).

        NO_FIX and NaN-coordinate fixes are rejected (their stamp is remembered as an
        outage); a fix with the stamp of a stored one replaces it; beyond capacity
        the oldest fix is evicted.
        """
        bad_status = fix.status <= STATUS_NO_FIX
        bad_coords = not (math.isfinite(fix.latitude_deg) and math.isfinite(fix.longitude_deg))
        with self._lock:
            if bad_status or bad_coords:
                if bad_status:
                    self.rejected_no_fix += 1
                else:
                    self.rejected_nan += 1
                bisect.insort(self._no_fix_stamps, fix.stamp_ns)
                if len(self._no_fix_stamps) > self._capacity:
                    del self._no_fix_stamps[0]
                return ADD_REJECTED_NO_FIX if bad_status else ADD_REJECTED_NAN
            index = bisect.bisect_left(self._stamps, fix.stamp_ns)
            if index < len(self._stamps) and self._stamps[index] == fix.stamp_ns:
                self._fixes[index] = fix
                self.duplicates += 1
                return ADD_DUPLICATE
            self._stamps.insert(index, fix.stamp_ns)
            self._fixes.insert(index, fix)
            self.accepted += 1
            if len(self._fixes) > self._capacity:
                del self._stamps[0]
                del self._fixes[0]
                self.evicted += 1
            return ADD_ACCEPTED

    def newest(self) -> Optional[Fix]:
        """Return the fix with the newest stamp (for diagnostics only, never for tagging)."""
        with self._lock:
            return self._fixes[-1] if self._fixes else None

    def lookup(self, stamp_ns: int, max_fix_gap_s: float, max_fix_age_s: float,
               lever_arm_m: Sequence[float] = (0.0, 0.0, 0.0),
               min_speed_mps: float = 0.3, heading_window_s: float = 2.0) -> GeotagResult:
        """Return the position at ``stamp_ns`` by the rules in the module docstring."""
        with self._lock:
            stamps = self._stamps
            fixes = self._fixes
            index = bisect.bisect_left(stamps, stamp_ns)
            before = fixes[index - 1] if index > 0 else None
            at_or_after = fixes[index] if index < len(fixes) else None
            result = self._locate(stamp_ns, before, at_or_after, max_fix_gap_s,
                                  max_fix_age_s)
            if result.geotag is None or not any(lever_arm_m):
                return result
            window = self._window(stamp_ns, heading_window_s)
        return GeotagResult(_apply_lever_arm(result.geotag, window, lever_arm_m,
                                             min_speed_mps), result.reason)

    def _locate(self, stamp_ns: int, before: Optional[Fix], after: Optional[Fix],
                max_fix_gap_s: float, max_fix_age_s: float) -> GeotagResult:
        if after is not None and after.stamp_ns == stamp_ns:
            return GeotagResult(_tag(after, stamp_ns, REASON_NEAREST, 0.0), REASON_NEAREST)
        if (before is not None and after is not None
                and (after.stamp_ns - before.stamp_ns) <= max_fix_gap_s * _NS_PER_S):
            lat, lon, alt = _interpolate(before, after, stamp_ns)
            age_s = min(stamp_ns - before.stamp_ns, after.stamp_ns - stamp_ns) / _NS_PER_S
            tag = GeoTag(
                stamp_ns=stamp_ns, latitude_deg=lat, longitude_deg=lon, altitude_m=alt,
                status=min(before.status, after.status),
                service=before.service | after.service,
                covariance_m2=tuple(
                    max(x, y) for x, y in zip(before.covariance_m2, after.covariance_m2)),
                covariance_type=min(before.covariance_type, after.covariance_type),
                method=REASON_INTERPOLATED, fix_age_s=age_s)
            return GeotagResult(tag, REASON_INTERPOLATED)
        nearest = min((f for f in (before, after) if f is not None),
                      key=lambda f: abs(f.stamp_ns - stamp_ns), default=None)
        if nearest is not None:
            age_s = abs(nearest.stamp_ns - stamp_ns) / _NS_PER_S
            if age_s <= max_fix_age_s:
                return GeotagResult(_tag(nearest, stamp_ns, REASON_NEAREST, age_s),
                                    REASON_NEAREST)
        if self._outage_near(stamp_ns, max(max_fix_age_s, max_fix_gap_s)):
            return GeotagResult(None, REASON_GPS_NO_FIX)
        return GeotagResult(None, REASON_STALE_FIX if nearest is not None
                            else REASON_NO_FIX_RECEIVED)

    def _outage_near(self, stamp_ns: int, horizon_s: float) -> bool:
        index = bisect.bisect_left(self._no_fix_stamps, stamp_ns)
        horizon_ns = horizon_s * _NS_PER_S
        for i in (index - 1, index):
            if 0 <= i < len(self._no_fix_stamps):
                if abs(self._no_fix_stamps[i] - stamp_ns) <= horizon_ns:
                    return True
        return False

    def _window(self, stamp_ns: int, window_s: float) -> List[Fix]:
        half_ns = int(window_s * _NS_PER_S / 2)
        lo = bisect.bisect_left(self._stamps, stamp_ns - half_ns)
        hi = bisect.bisect_right(self._stamps, stamp_ns + half_ns)
        return self._fixes[lo:hi]


def _tag(fix: Fix, stamp_ns: int, method: str, age_s: float) -> GeoTag:
    return GeoTag(stamp_ns=stamp_ns, latitude_deg=fix.latitude_deg,
                  longitude_deg=fix.longitude_deg, altitude_m=fix.altitude_m,
                  status=fix.status, service=fix.service,
                  covariance_m2=tuple(fix.covariance_m2),
                  covariance_type=fix.covariance_type, method=method, fix_age_s=age_s)


def course_over_ground(window: Sequence[Fix]) -> Tuple[Optional[float], float, str]:
    """Return ``(heading_enu_rad or None, speed_mps, note)`` from first to last fix."""
    if len(window) < 2:
        return None, 0.0, 'course unknown: fewer than 2 fixes within heading_window_s'
    first, last = window[0], window[-1]
    dt_s = (last.stamp_ns - first.stamp_ns) / _NS_PER_S
    east, north = local_east_north_m(last.latitude_deg, last.longitude_deg,
                                     first.latitude_deg, first.longitude_deg)
    speed = math.hypot(east, north) / dt_s
    return math.atan2(north, east), speed, ''


def _apply_lever_arm(tag: GeoTag, window: Sequence[Fix], lever_arm_m: Sequence[float],
                     min_speed_mps: float) -> GeoTag:
    heading, speed, note = course_over_ground(window)
    if heading is None:
        return replace(tag, lever_arm_note=note)
    if speed < min_speed_mps:
        return replace(tag, speed_mps=speed, lever_arm_note=(
            f'robot not moving ({speed:.2f} m/s < min_speed_for_heading_mps '
            f'{min_speed_mps:.2f}): heading unknown, lever arm skipped'))
    x, y, z = (float(v) for v in lever_arm_m)
    east = x * math.cos(heading) - y * math.sin(heading)
    north = x * math.sin(heading) + y * math.cos(heading)
    lat, lon = offset_latlon(tag.latitude_deg, tag.longitude_deg, east, north)
    return replace(tag, latitude_deg=lat, longitude_deg=lon, altitude_m=tag.altitude_m + z,
                   lever_arm_applied=True, heading_enu_rad=heading, speed_mps=speed)
