"""
Where a pass's camera looked: frame poses and the image footprint, for "drove past".

A season task records, beside the pass's coverage (:mod:`.season_task`), the pose of
every frame the model judged (and of every frame held out of its domain): the frame's
position (the geotag: antenna + lever arm, as the locator uses it) and the robot's
heading, thinned to one pose every :data:`MIN_STEP_M` or :data:`MIN_TURN_DEG`, at most
:data:`MAX_POSES` per kind (beyond, every second pose is dropped and the step doubled,
as the track does): bounded memory, and poses that take some tens of KiB of
``pass.json`` for a row (under 1 MiB whatever the bag's length).

The heading is the locator's ``course`` rule (:mod:`leaf_disease_ros.geo.leaf_position`)
on the frames' positions: the course over ground from the first to the last frame
within ``heading_window_s`` around the frame (at least its neighbours) when the robot
moves at ``min_speed_for_heading_mps`` or faster; else the last good course for
``heading_hold_s``; else none (the frame is counted in ``frames_without_heading`` and
covers nothing: where the camera looked is not known). With ``heading_source``
odometry or imu the locator had the yaw; the season task sees only positions, so the
course stands for it (a straight row makes them one).

After the replay, :func:`footprint_document` turns the replay's locator (camera model
for the judged frames' size, mount, canopy distance) into the image's footprint
polygon (:func:`~leaf_disease_ros.geo.footprint.footprint_polygon_m`), or says why
there is none (``ground_positions`` false, no mount, a calibration of another image
size, a camera looking along the row): then the season map uses the radius rule for
the pass. :func:`read_footprint` reads it back from ``pass.json`` (absent in results of
an earlier version, pass format 1: the radius rule, said so).
"""

import collections
from dataclasses import dataclass
import math
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple

import numpy as np

from leaf_disease_ros.geo.footprint import (DEPTH_BAND_SIGMAS, footprint_polygon_m,
                                            local_east_north_array_m, SweptFootprints)
from leaf_disease_ros.geo.geodesy import local_east_north_m

MIN_STEP_M = 0.25
MIN_TURN_DEG = 5.0
MAX_POSES = 5000  # as the track: 1.25 km of poses 0.25 m apart, then 0.5 m apart, ...
_NS_PER_S = 1e9
NOTE_OLD_RESULT = ('result of an earlier version (pass format 1, no footprint recorded); '
                   'remove its bags/<id>/ folder to replay it with the footprint')


@dataclass(frozen=True)
class _Frame:
    stamp_ns: int
    latitude_deg: float
    longitude_deg: float
    judged: bool


class PoseList:
    """Poses ``(lat, lon, heading rad)`` thinned by distance and turn, bounded."""

    def __init__(self, min_step_m: float = MIN_STEP_M, max_poses: int = MAX_POSES) -> None:
        self._min_step_m = float(min_step_m)
        self._max_poses = max(4, int(max_poses))
        self.poses: List[Tuple[float, float, float]] = []

    def add(self, latitude_deg: float, longitude_deg: float, heading_rad: float) -> None:
        """Keep a pose unless it is within the step and the turn of the last kept one."""
        if self.poses:
            lat, lon, heading = self.poses[-1]
            east, north = local_east_north_m(latitude_deg, longitude_deg, lat, lon)
            turn = abs((heading_rad - heading + math.pi) % (2.0 * math.pi) - math.pi)
            if math.hypot(east, north) < self._min_step_m and turn < math.radians(MIN_TURN_DEG):
                return
        self.poses.append((latitude_deg, longitude_deg, heading_rad))
        if len(self.poses) > self._max_poses:
            self.poses = self.poses[::2]
            self._min_step_m *= 2.0


class PoseRecorder:
    """The poses of a pass's judged and held frames, headings by the course rule."""

    def __init__(self, heading_window_s: float, min_speed_mps: float, heading_hold_s: float,
                 max_gap_s: float = math.inf) -> None:
        """Take the locator's heading parameters and the track's silence limit (s)."""
        self._half_ns = heading_window_s * _NS_PER_S / 2.0
        self._min_speed_mps = float(min_speed_mps)
        self._hold_ns = heading_hold_s * _NS_PER_S
        self._max_gap_ns = max_gap_s * _NS_PER_S
        self._window: List[_Frame] = []
        self._pending: Deque[_Frame] = collections.deque()
        self._last_good: Optional[Tuple[int, float]] = None  # stamp, heading
        self.judged = PoseList()
        self.held = PoseList()
        self.frames_without_heading = 0

    def add(self, stamp_ns: int, latitude_deg: float, longitude_deg: float,
            judged: bool) -> None:
        """Take one positioned frame, judged (in domain) or held; stamps in order."""
        frame = _Frame(int(stamp_ns), float(latitude_deg), float(longitude_deg), judged)
        if self._window:
            newest = self._window[-1].stamp_ns
            if frame.stamp_ns < newest or frame.stamp_ns - newest > self._max_gap_ns:
                self.finish()  # a clock jump or a silence: a new stretch
        self._window.append(frame)
        self._pending.append(frame)
        while (len(self._pending) > 1
               and self._pending[0].stamp_ns + self._half_ns <= frame.stamp_ns):
            self._settle(self._pending.popleft())
        self._trim()

    def finish(self) -> None:
        """Settle every waiting frame with the frames known (the end of the bag)."""
        while self._pending:
            self._settle(self._pending.popleft())
        self._window.clear()

    def _trim(self) -> None:
        reference = (self._pending[0] if self._pending else self._window[-1]).stamp_ns
        first = 0
        while (first < len(self._window)
               and self._window[first].stamp_ns < reference - self._half_ns):
            first += 1
        if first > 1:
            del self._window[:first - 1]  # keep one before: the oldest waiting frame's neighbour

    def _course(self, frame: _Frame) -> Optional[float]:
        window = self._window
        index = next(i for i, f in enumerate(window) if f is frame)
        first = next(i for i, f in enumerate(window)
                     if f.stamp_ns >= frame.stamp_ns - self._half_ns)
        last = max(i for i, f in enumerate(window)
                   if f.stamp_ns <= frame.stamp_ns + self._half_ns)
        first = first if first < index else max(0, index - 1)
        last = last if last > index else min(len(window) - 1, index + 1)
        a, b = window[first], window[last]
        dt_s = (b.stamp_ns - a.stamp_ns) / _NS_PER_S
        if dt_s <= 0.0:
            return None
        east, north = local_east_north_m(b.latitude_deg, b.longitude_deg, a.latitude_deg,
                                         a.longitude_deg)
        if math.hypot(east, north) / dt_s < self._min_speed_mps:
            return None
        return math.atan2(north, east)

    def _settle(self, frame: _Frame) -> None:
        heading = self._course(frame)
        if heading is not None:
            self._last_good = (frame.stamp_ns, heading)
        elif (self._last_good is not None
              and 0 <= frame.stamp_ns - self._last_good[0] <= self._hold_ns):
            heading = self._last_good[1]
        if heading is None:
            self.frames_without_heading += frame.judged
            return
        (self.judged if frame.judged else self.held).add(frame.latitude_deg,
                                                         frame.longitude_deg, heading)


def _pose_rows(poses: List[Tuple[float, float, float]]) -> List[List[float]]:
    return [[round(lat, 8), round(lon, 8), round(math.degrees(heading), 2)]
            for lat, lon, heading in poses]


def footprint_document(locator: Any, frame_hw_px: Optional[Tuple[int, int]],
                       recorder: PoseRecorder) -> Tuple[Optional[Dict[str, Any]], str]:
    """
    Return ``(the footprint for pass.json, '')`` or ``(None, why there is none)``.

    :param locator: the replay's :class:`~leaf_disease_ros.geo.leaf_position.LeafLocator`
        (None: ``ground_positions`` false).
    :param frame_hw_px: the size of the judged frames (the most common one).
    """
    if locator is None:
        return None, 'ground_positions is false: no camera geometry'
    mount = locator.mount
    if mount is None:
        return None, 'the camera mount is not known (mount_from_tf: no transform)'
    if frame_hw_px is None:
        return None, 'no frame was judged'
    model, why = locator.camera_model(frame_hw_px)
    if model is None:
        return None, why
    settings = locator.settings
    band_m = DEPTH_BAND_SIGMAS * settings.canopy_distance_sigma_m
    polygon = footprint_polygon_m(model, mount, settings.canopy_distance_m, band_m)
    if polygon is None:
        return None, ('no pixel of the image border meets the canopy plane (the camera looks '
                      'along the row, or away from it)')
    return {
        'camera': locator.camera_source,
        'frame_px': [int(frame_hw_px[1]), int(frame_hw_px[0])],
        'canopy_distance_m': settings.canopy_distance_m,
        'depth_band_m': round(band_m, 4),
        'heading': 'course over ground of the frame positions',
        'polygon_robot_m': [[round(float(x), 4), round(float(y), 4)] for x, y in polygon],
        'judged_poses': _pose_rows(recorder.judged.poses),
        'held_poses': _pose_rows(recorder.held.poses),
        'frames_without_heading': recorder.frames_without_heading,
    }, ''


@dataclass(frozen=True)
class PassFootprint:
    """A pass's footprints in the season's local frame: judged and held frames."""

    judged: SweptFootprints
    held: SweptFootprints
    camera: str


def _poses_en(rows: Any, origin: Tuple[float, float]) -> np.ndarray:
    values = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    if not np.all(np.isfinite(values)):
        raise ValueError('a pose is not finite')
    east_north = local_east_north_array_m(values[:, 0], values[:, 1], *origin)
    return np.column_stack([east_north, np.radians(values[:, 2])])


def read_footprint(coverage: Mapping[str, Any], origin: Tuple[float, float]
                   ) -> Tuple[Optional[PassFootprint], str]:
    """
    Return a pass's footprints around ``origin`` (lat, lon), or ``(None, why not)``.

    ``coverage`` is the ``coverage`` of a ``pass.json``; a result of an earlier version
    has no ``footprint`` (:data:`NOTE_OLD_RESULT`), a pass without camera geometry has
    ``footprint`` null and ``footprint_note``.
    """
    if 'footprint' not in coverage:
        return None, NOTE_OLD_RESULT
    document = coverage.get('footprint')
    if not isinstance(document, dict):
        return None, str(coverage.get('footprint_note') or 'no camera geometry')
    try:
        polygon = np.asarray(document['polygon_robot_m'], dtype=np.float64).reshape(-1, 2)
        if len(polygon) < 3 or not np.all(np.isfinite(polygon)):
            raise ValueError('a footprint polygon needs 3 finite vertices')
        judged = SweptFootprints(polygon, _poses_en(document.get('judged_poses', []), origin))
        held = SweptFootprints(polygon, _poses_en(document.get('held_poses', []), origin))
    except (KeyError, TypeError, ValueError) as exc:
        return None, f'the footprint in pass.json is unreadable ({exc})'
    return PassFootprint(judged, held, str(document.get('camera', ''))), ''
