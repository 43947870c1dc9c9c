"""
Time-indexed GPS fix buffer: validated fixes, and a frame's position at its own stamp.

Fixes (from ``sensor_msgs/NavSatFix``, converted by the ROS layer) go into a
:class:`FixBuffer` ordered by their header stamp, whatever order they arrive in.
Every fix is checked where it enters (:meth:`FixBuffer.admit`); a rejected fix is
counted with its reason and never raises:

- status NO_FIX (or STATUS_UNKNOWN, or a value NavSatStatus does not define, such
  as 7), or a NaN / infinite latitude or longitude: not a position. The stamp is
  remembered as an *outage* (the receiver said it had no position then);
- a latitude beyond +-90 degrees: a corrupt fix (``rejected_latitude``);
- a fix that implies a move faster than ``max_speed_mps`` from its neighbours in
  time (beyond what their covariances allow: 3 sigma of both, 5 m sigma when a fix
  has none) is a glitch (``rejected_jump``), so one bad fix cannot drag
  interpolated positions. When :data:`REANCHOR_AFTER` fixes in a row are rejected
  this way but agree with each other, the buffer was wrong (its first fix was the
  glitch, or the robot was carried elsewhere): the stored fixes they contradict are
  discarded and the new ones accepted (``reanchored``);
- a longitude outside [-180, 180] is wrapped (``longitude_wrapped``; 180 is stored as
  -180: every stored longitude is in [-180, 180)), a non-finite altitude becomes NaN
  (unknown), a non-finite covariance or one with a negative variance on its diagonal
  becomes "unknown".

:meth:`FixBuffer.lookup` gives the position at an image stamp:

1. if fixes bracket the stamp, are at most ``max_fix_gap_s`` apart (inclusive) and
   no outage was reported between them, interpolate linearly between them (status:
   the worse of the two, covariance: the larger). A reported outage is never
   bridged, however short;
2. else the nearest fix when it is at most ``max_fix_age_s`` from the stamp
   (inclusive) and no outage lies between it and the stamp;
3. else no position, with the reason (``gps_no_fix``, ``stale_fix``,
   ``no_fix_received``; ``no_image_stamp`` for an image stamped 0, which cannot be
   placed in time). Never "the latest fix": a stale position is worse than none.

An optional lever arm (camera position relative to the antenna, robot frame x
forward / y left / z up, metres) is rotated by the course over ground from the fixes
around the stamp; below ``min_speed_mps`` the course is unknown and the lever arm is
skipped, with the reason recorded. All times are header stamps in nanoseconds (works
under ``use_sim_time`` and in bag replay). The buffer is thread-safe: the node adds
fixes from one callback group while the worker thread looks them up.
"""

import bisect
from dataclasses import dataclass, replace
import math
import threading
from typing import Dict, List, Optional, Sequence, Tuple

from leaf_disease_ros.geo.geodesy import (great_circle_m, local_east_north_m,
                                          normalize_longitude, offset_latlon)
from leaf_disease_ros.perception.config import PARAMETERS_BY_NAME
from leaf_disease_ros.perception.positions import (COVARIANCE_TYPE_UNKNOWN, Fix, GeoTag,
                                                   GeotagResult, REASON_GPS_NO_FIX,
                                                   REASON_INTERPOLATED, REASON_NEAREST,
                                                   REASON_NO_FIX_RECEIVED,
                                                   REASON_NO_IMAGE_STAMP, REASON_STALE_FIX,
                                                   STATUS_GBAS_FIX, STATUS_NO_FIX)


ADD_ACCEPTED = 'accepted'
ADD_DUPLICATE = 'replaced_duplicate'
ADD_REJECTED_NO_FIX = 'rejected_no_fix'
ADD_REJECTED_NAN = 'rejected_nan'  # NaN or infinite latitude / longitude
ADD_REJECTED_LATITUDE = 'rejected_latitude'  # beyond +-90 degrees
ADD_REJECTED_JUMP = 'rejected_jump'  # implies a speed above max_speed_mps
#: every rejection, in report order
REJECTIONS = (ADD_REJECTED_NO_FIX, ADD_REJECTED_NAN, ADD_REJECTED_LATITUDE, ADD_REJECTED_JUMP)
#: rejections that mean "the receiver had no position then" (outages, never bridged)
OUTAGES = (ADD_REJECTED_NO_FIX, ADD_REJECTED_NAN)
#: consecutive mutually consistent jump rejections that prove the buffer wrong
REANCHOR_AFTER = 5
#: horizontal variance assumed for a fix without covariance (5 m sigma, a plain GNSS)
UNKNOWN_FIX_VARIANCE_M2 = 25.0
DEFAULT_MAX_SPEED_MPS = float(PARAMETERS_BY_NAME['max_fix_speed_mps'].default)

_NS_PER_S = 1e9


def _interpolate(a: Fix, b: Fix, stamp_ns: int) -> Tuple[float, float, float]:
    weight = (stamp_ns - a.stamp_ns) / float(b.stamp_ns - a.stamp_ns)
    lat = a.latitude_deg + weight * (b.latitude_deg - a.latitude_deg)
    # Longitudes are interpolated on the short way round (antimeridian-safe).
    dlon = (b.longitude_deg - a.longitude_deg + 540.0) % 360.0 - 180.0
    lon = normalize_longitude(a.longitude_deg + weight * dlon)
    if math.isnan(a.altitude_m) or math.isnan(b.altitude_m):
        alt = b.altitude_m if math.isnan(a.altitude_m) else a.altitude_m
    else:
        alt = a.altitude_m + weight * (b.altitude_m - a.altitude_m)
    return lat, lon, alt


@dataclass(frozen=True)
class Admission:
    """What :meth:`FixBuffer.admit` did: an ``ADD_*`` outcome and the fix as stored."""

    outcome: str
    fix: Optional[Fix]  # the normalised fix when accepted or replacing; None when rejected

    @property
    def accepted(self) -> bool:
        """Return whether the fix is now in the buffer."""
        return self.fix is not None


def sanitize_fix(fix: Fix) -> Tuple[Optional[Fix], str, bool]:
    """
    Check one fix on its own; return ``(normalised fix or None, outcome, wrapped)``.

    ``outcome`` is ``ADD_ACCEPTED`` or the rejection; ``wrapped`` says the longitude
    was outside [-180, 180] and was normalised.
    """
    if not STATUS_NO_FIX < fix.status <= STATUS_GBAS_FIX:  # NO_FIX, UNKNOWN or not a status
        return None, ADD_REJECTED_NO_FIX, False
    if not (math.isfinite(fix.latitude_deg) and math.isfinite(fix.longitude_deg)):
        return None, ADD_REJECTED_NAN, False
    if not -90.0 <= fix.latitude_deg <= 90.0:
        return None, ADD_REJECTED_LATITUDE, False
    wrapped = not -180.0 <= fix.longitude_deg <= 180.0
    clean = fix
    longitude = normalize_longitude(fix.longitude_deg)  # 180 is written as -180
    if longitude != fix.longitude_deg:
        clean = replace(clean, longitude_deg=longitude)
    if math.isinf(fix.altitude_m):
        clean = replace(clean, altitude_m=math.nan)
    covariance = tuple(fix.covariance_m2)
    if (len(covariance) != 9 or not all(math.isfinite(v) for v in covariance)
            or min(covariance[0], covariance[4], covariance[8]) < 0.0):  # not a variance
        clean = replace(clean, covariance_m2=(0.0,) * 9,
                        covariance_type=COVARIANCE_TYPE_UNKNOWN)
    return clean, ADD_ACCEPTED, wrapped


def _horizontal_variance_m2(fix: Fix) -> float:
    if fix.covariance_type == COVARIANCE_TYPE_UNKNOWN:
        return UNKNOWN_FIX_VARIANCE_M2
    variance = max(fix.covariance_m2[0], fix.covariance_m2[4])
    return variance if variance > 0.0 else UNKNOWN_FIX_VARIANCE_M2


def implied_jump(a: Fix, b: Fix, max_speed_mps: float) -> bool:
    """
    Return whether going from fix ``a`` to fix ``b`` needs more than ``max_speed_mps``.

    The distance may exceed ``max_speed_mps * dt`` by 3 sigma of the two fixes'
    horizontal uncertainties (from their covariances) before it counts as a jump.
    """
    dt_s = abs(b.stamp_ns - a.stamp_ns) / _NS_PER_S
    distance = great_circle_m(a.latitude_deg, a.longitude_deg, b.latitude_deg,
                              b.longitude_deg)
    allowance = 3.0 * math.sqrt(_horizontal_variance_m2(a) + _horizontal_variance_m2(b))
    return distance > max_speed_mps * dt_s + allowance


class FixBuffer:
    """A bounded, stamp-ordered, thread-safe buffer of validated fixes."""

    def __init__(self, capacity: int = 512,
                 max_speed_mps: float = DEFAULT_MAX_SPEED_MPS) -> None:
        if capacity < 2:
            raise ValueError(f'fix buffer capacity must be >= 2, got {capacity}')
        if not max_speed_mps >= 0.0:
            raise ValueError(f'max_speed_mps must be >= 0 (0: no check), got {max_speed_mps}')
        self._capacity = capacity
        self._max_speed_mps = float(max_speed_mps)
        self._lock = threading.Lock()
        self._stamps: List[int] = []
        self._fixes: List[Fix] = []
        self._no_fix_stamps: List[int] = []  # stamps of rejected NO_FIX/NaN messages
        self._suspects: List[Fix] = []  # consecutive jump rejections that agree
        self.accepted = 0
        self.duplicates = 0
        self.rejected_no_fix = 0
        self.rejected_nan = 0
        self.rejected_latitude = 0
        self.rejected_jump = 0
        self.longitude_wrapped = 0
        self.reanchored = 0
        self.discarded = 0
        self.evicted = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._fixes)

    @property
    def capacity(self) -> int:
        """Maximum number of fixes kept."""
        return self._capacity

    @property
    def max_speed_mps(self) -> float:
        """The plausibility limit of the jump check (0: no check)."""
        return self._max_speed_mps

    def stats(self) -> Dict[str, int]:
        """Return every counter (fixes accepted, rejected by reason, evicted...)."""
        with self._lock:
            return {'accepted': self.accepted, 'duplicates': self.duplicates,
                    'rejected_no_fix': self.rejected_no_fix,
                    'rejected_nan': self.rejected_nan,
                    'rejected_latitude': self.rejected_latitude,
                    'rejected_jump': self.rejected_jump,
                    'longitude_wrapped': self.longitude_wrapped,
                    'reanchored': self.reanchored, 'discarded_at_reanchor': self.discarded,
                    'evicted': self.evicted}

    def clear(self) -> None:
        """Forget every fix (e.g. after the clock jumped back at a bag loop)."""
        with self._lock:
            self._stamps.clear()
            self._fixes.clear()
            self._no_fix_stamps.clear()
            self._suspects.clear()

    def add(self, fix: Fix) -> str:
        """Insert a fix by the rules of :meth:`admit`; return the ``ADD_*`` outcome."""
        return self.admit(fix).outcome

    def admit(self, fix: Fix) -> Admission:
        """
        Check a fix (module docstring) and insert it in stamp order when it is valid.

        A fix with the stamp of a stored one replaces it; beyond capacity the oldest
        fix is evicted. Never raises for a bad fix: the outcome says what happened.
        """
        clean, outcome, wrapped = sanitize_fix(fix)
        with self._lock:
            if clean is None:
                self._count_rejection(outcome)
                if outcome in OUTAGES:
                    bisect.insort(self._no_fix_stamps, fix.stamp_ns)
                    if len(self._no_fix_stamps) > self._capacity:
                        del self._no_fix_stamps[0]
                return Admission(outcome, None)
            if wrapped:
                self.longitude_wrapped += 1
            index = bisect.bisect_left(self._stamps, clean.stamp_ns)
            duplicate = index < len(self._stamps) and self._stamps[index] == clean.stamp_ns
            if self._max_speed_mps > 0.0 and self._is_jump(clean, index, duplicate):
                self.rejected_jump += 1
                if self._suspects and not implied_jump(self._suspects[-1], clean,
                                                       self._max_speed_mps):
                    self._suspects.append(clean)
                else:
                    self._suspects = [clean]
                if len(self._suspects) < REANCHOR_AFTER:
                    return Admission(ADD_REJECTED_JUMP, None)
                self._reanchor()
                return Admission(ADD_ACCEPTED, clean)
            self._suspects.clear()
            return Admission(self._insert(clean), clean)

    def _count_rejection(self, outcome: str) -> None:
        if outcome == ADD_REJECTED_NO_FIX:
            self.rejected_no_fix += 1
        elif outcome == ADD_REJECTED_NAN:
            self.rejected_nan += 1
        elif outcome == ADD_REJECTED_LATITUDE:
            self.rejected_latitude += 1

    def _is_jump(self, fix: Fix, index: int, duplicate: bool) -> bool:
        neighbours = []
        if index > 0:
            neighbours.append(self._fixes[index - 1])
        after = index + 1 if duplicate else index
        if after < len(self._fixes):
            neighbours.append(self._fixes[after])
        return any(implied_jump(other, fix, self._max_speed_mps) for other in neighbours)

    def _reanchor(self) -> None:
        """Trust the agreeing suspects over the stored fixes that contradict them."""
        suspects, self._suspects = self._suspects, []
        anchor = suspects[0]
        keep = [f for f in self._fixes if not implied_jump(f, anchor, self._max_speed_mps)]
        self.discarded += len(self._fixes) - len(keep)
        self._fixes = keep
        self._stamps = [f.stamp_ns for f in keep]
        self.rejected_jump -= len(suspects)
        self.reanchored += 1
        for suspect in suspects:
            self._insert(suspect)

    def _insert(self, fix: Fix) -> str:
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
        if stamp_ns <= 0:
            return GeotagResult(None, REASON_NO_IMAGE_STAMP)
        with self._lock:
            stamps = self._stamps
            fixes = self._fixes
            index = bisect.bisect_left(stamps, stamp_ns)
            before = fixes[index - 1] if index > 0 else None
            at_or_after = fixes[index] if index < len(fixes) else None
            result = self._locate(stamp_ns, before, at_or_after,
                                  int(round(max_fix_gap_s * _NS_PER_S)),
                                  int(round(max_fix_age_s * _NS_PER_S)))
            if result.geotag is None or not any(lever_arm_m):
                return result
            window = self._window(stamp_ns, heading_window_s)
        return GeotagResult(_apply_lever_arm(result.geotag, window, lever_arm_m,
                                             min_speed_mps), result.reason)

    def _locate(self, stamp_ns: int, before: Optional[Fix], after: Optional[Fix],
                max_gap_ns: int, max_age_ns: int) -> GeotagResult:
        if after is not None and after.stamp_ns == stamp_ns:
            return GeotagResult(_tag(after, stamp_ns, REASON_NEAREST, 0.0), REASON_NEAREST)
        # An outage reported between a fix and the stamp: that fix does not describe it.
        before_ok = before is not None and not self._outage_between(before.stamp_ns, stamp_ns)
        after_ok = after is not None and not self._outage_between(stamp_ns, after.stamp_ns)
        if (before is not None and after is not None and before_ok and after_ok
                and after.stamp_ns - before.stamp_ns <= max_gap_ns):
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
        usable = [f for f, ok in ((before, before_ok), (after, after_ok)) if ok and f is not None]
        nearest = min(usable, key=lambda f: abs(f.stamp_ns - stamp_ns), default=None)
        if nearest is not None and abs(nearest.stamp_ns - stamp_ns) <= max_age_ns:
            age_s = abs(nearest.stamp_ns - stamp_ns) / _NS_PER_S
            return GeotagResult(_tag(nearest, stamp_ns, REASON_NEAREST, age_s), REASON_NEAREST)
        # A fix left out for an outage is further than the outage: past the horizon it
        # would have been too old anyway.
        if self._outage_near(stamp_ns, max(max_age_ns, max_gap_ns)):
            return GeotagResult(None, REASON_GPS_NO_FIX)
        received = before is not None or after is not None
        return GeotagResult(None, REASON_STALE_FIX if received else REASON_NO_FIX_RECEIVED)

    def _outage_between(self, start_ns: int, end_ns: int) -> bool:
        """Return whether an outage was reported at a stamp in ``[start_ns, end_ns]``."""
        index = bisect.bisect_left(self._no_fix_stamps, start_ns)
        return index < len(self._no_fix_stamps) and self._no_fix_stamps[index] <= end_ns

    def _outage_near(self, stamp_ns: int, horizon_ns: int) -> bool:
        index = bisect.bisect_left(self._no_fix_stamps, stamp_ns)
        for i in (index - 1, index):
            if 0 <= i < len(self._no_fix_stamps):
                if abs(self._no_fix_stamps[i] - stamp_ns) <= horizon_ns:
                    return True
        return False

    def course_at(self, stamp_ns: int, window_s: float) -> Tuple[Optional[float], float, str]:
        """Return :func:`course_over_ground` of the fixes within ``window_s`` around a stamp."""
        with self._lock:
            window = self._window(stamp_ns, window_s)
        return course_over_ground(window)

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
