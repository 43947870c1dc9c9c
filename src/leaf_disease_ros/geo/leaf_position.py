"""
Per-finding ground positions: the state the camera geometry needs, and the placing rule.

A :class:`LeafLocator` is what the node and the replay hand to the
:class:`~leaf_disease_ros.perception.pipeline.Detector` (``detector.locator``). It
keeps, thread-safe, what arrives on other topics than the image:

- the camera model (:meth:`LeafLocator.set_camera_info`): from ``camera_info``
  (calibrated, or rectified), else an ideal pinhole of ``camera_hfov_deg`` (no
  camera_info yet, or K all zeros: uncalibrated);
- the mount (:class:`~leaf_disease_ros.geo.camera_geometry.Mount`): from the
  parameters, or set once from TF (``mount_from_tf``);
- the robot's yaw (:meth:`LeafLocator.add_heading`) from odometry or an IMU, when
  ``heading_source`` names one;
- aligned depth images (:meth:`LeafLocator.add_depth`) when ``depth_enabled``.

:meth:`LeafLocator.locate` places each finding of a frame (rules of
:mod:`~leaf_disease_ros.geo.camera_geometry`): the tile's centre pixel is undistorted,
cast as a ray, met with the canopy plane (or taken at the tile's median depth, zero
depths ignored), turned by the mount and the heading, and added to the camera's
position (the frame's geotag: antenna + lever arm). The heading, in order:

1. ``heading_source: odometry | imu``: the yaw sample nearest the image stamp within
   :data:`HEADING_MAX_AGE_S` (its covariance, else ``heading_sigma_deg``);
   ``course``: the course over ground of the fixes around the stamp when the robot
   moves at least ``min_speed_for_heading_mps`` (``heading_sigma_deg``);
2. else the last good heading when it is at most ``heading_hold_s`` old, its sigma
   widened by :data:`HOLD_SIGMA_GROWTH_DEG_PER_S` per second (a robot stopped at a vine);
3. else no ground position: the finding is at the camera's position, flagged
   (method ``camera``, the note says why), with the canopy distance added to its
   covariance.

Counters say how findings were placed and why not (diagnostics, replay report).
Pure Python + numpy + OpenCV: no ROS.
"""

import bisect
from dataclasses import dataclass
import math
import threading
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import numpy as np

from leaf_disease_ros.geo.camera_geometry import (camera_model_from_hfov,
                                                  camera_model_from_info, CameraGeometryError,
                                                  CameraModel, canopy_points, depth_points,
                                                  leaf_covariance_enu, Mount,
                                                  mount_from_angles, pixel_rays, robot_to_enu)
from leaf_disease_ros.geo.geodesy import offset_latlon
from leaf_disease_ros.geo.geotag import UNKNOWN_FIX_VARIANCE_M2
from leaf_disease_ros.perception.errors import ConfigError
from leaf_disease_ros.perception.positions import (COVARIANCE_TYPE_UNKNOWN, GeoTag,
                                                   GeotagResult, GroundPosition, PLACED_CAMERA,
                                                   PLACED_CANOPY, PLACED_DEPTH)

HEADING_SOURCES = ('course', 'odometry', 'imu')
#: a yaw sample further than this from the image stamp does not describe it
HEADING_MAX_AGE_S = 0.5
#: a held heading's sigma grows this fast (a robot may turn on the spot while "stopped")
HOLD_SIGMA_GROWTH_DEG_PER_S = 0.5
#: depth noise as a share of the depth (stereo / structured light at 0.5-2 m: 1-2 %)
DEPTH_SIGMA_FRACTION = 0.02
#: a depth image within this of the image stamp is the aligned one
DEPTH_SYNC_TOLERANCE_NS = 20_000_000
DEPTH_BUFFER_FRAMES = 8
HEADING_BUFFER_SAMPLES = 400
_NS_PER_S = 1e9

NOTE_NO_HEADING = 'no heading (robot stopped or no yaw) beyond heading_hold_s'
NOTE_NO_MOUNT = 'mount not known yet (mount_from_tf: no transform received)'
NOTE_SIZE = 'camera_info describes a {cw}x{ch} image, the frame is {fw}x{fh}'


class CourseSource(Protocol):
    """What the locator needs of the fix buffer (:meth:`FixBuffer.course_at`)."""

    def course_at(self, stamp_ns: int, window_s: float) -> Tuple[Optional[float], float, str]:
        """Return ``(heading_enu_rad or None, speed_mps, note)`` around a stamp."""


@dataclass(frozen=True)
class LocatorSettings:
    """The parameters the locator reads (``perception/config.py``, group ``camera``)."""

    canopy_distance_m: float = 0.75
    canopy_distance_sigma_m: float = 0.10
    camera_hfov_deg: float = 70.0
    camera_rectified: bool = False
    heading_source: str = 'course'
    heading_sigma_deg: float = 2.0
    heading_hold_s: float = 10.0
    heading_window_s: float = 2.0
    min_speed_for_heading_mps: float = 0.3
    depth_enabled: bool = False
    mount_from_tf: bool = False
    mount_yaw_deg: float = 90.0
    mount_pitch_deg: float = 0.0
    mount_roll_deg: float = 0.0
    mount_height_m: float = 1.0

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any]) -> 'LocatorSettings':
        """Build from a validated parameter set (extra names are ignored)."""
        fields = cls.__dataclass_fields__
        return cls(**{name: values[name] for name in fields if name in values})

    def parameter_mount(self) -> Mount:
        """Return the mount the parameters describe."""
        return mount_from_angles(self.mount_yaw_deg, self.mount_pitch_deg,
                                 self.mount_height_m, self.mount_roll_deg)


def gps_covariance_enu(tag: GeoTag) -> np.ndarray:
    """Return the fix's 3x3 ENU covariance (a plain GNSS's 5 m sigma when unknown)."""
    covariance = np.asarray(tag.covariance_m2, dtype=np.float64).reshape(3, 3)
    if tag.covariance_type == COVARIANCE_TYPE_UNKNOWN or not np.any(covariance):
        return np.diag([UNKNOWN_FIX_VARIANCE_M2, UNKNOWN_FIX_VARIANCE_M2,
                        4.0 * UNKNOWN_FIX_VARIANCE_M2])
    return covariance


def yaw_of_quaternion(x: float, y: float, z: float, w: float) -> float:
    """Return the yaw (rotation about z, radians) of a quaternion (ZYX convention)."""
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


@dataclass(frozen=True)
class _Heading:
    stamp_ns: int
    yaw_rad: float
    sigma_rad: float
    source: str


class LeafLocator:
    """Places findings on the ground (module docstring); thread-safe."""

    def __init__(self, settings: LocatorSettings) -> None:
        """
        Start with the parameters' mount (or none yet, with ``mount_from_tf``).

        :raises ConfigError: an unknown ``heading_source``, or (``mount_yaw_deg``) a
            camera looking along the row without a depth image: the canopy plane is
            parallel to its view (fail at start).
        """
        if settings.heading_source not in HEADING_SOURCES:
            raise ConfigError('heading_source', f'{settings.heading_source!r} is not one of '
                              f'{", ".join(HEADING_SOURCES)}')
        if (not settings.mount_from_tf and not settings.depth_enabled
                and not settings.parameter_mount().looks_sideways()):
            raise ConfigError('mount_yaw_deg', f'{settings.mount_yaw_deg} deg looks along the '
                              'row: the canopy plane is parallel to the view; set '
                              'depth_enabled true (an aligned depth image), or '
                              'ground_positions false')
        self.settings = settings
        self._lock = threading.Lock()
        self._info_model: Optional[CameraModel] = None
        self._info_state = 'none'  # none | calibrated | uncalibrated
        self._mount: Optional[Mount] = (None if settings.mount_from_tf
                                        else settings.parameter_mount())
        self._headings: List[_Heading] = []
        self._last_good: Optional[_Heading] = None
        self._depths: List[Tuple[int, np.ndarray]] = []
        self.placed: Dict[str, int] = {}
        self.notes: Dict[str, int] = {}
        self.heading_sources: Dict[str, int] = {}
        self.camera_info_rejected = 0

    # --- inputs (any thread) -------------------------------------------------------

    def set_camera_info(self, k: Sequence[float], d: Sequence[float], distortion_model: str,
                        r: Sequence[float], p: Sequence[float], width_px: int,
                        height_px: int, binning_x: int = 0, binning_y: int = 0,
                        roi: Tuple[int, int, int, int] = (0, 0, 0, 0)) -> str:
        """
        Take a CameraInfo's fields; return the camera source now in use.

        An uncalibrated one (K all zeros) leaves the field-of-view model in force.

        :raises CameraGeometryError: a calibration that cannot be used (the previous
            model stays).
        """
        try:
            model = camera_model_from_info(k, d, distortion_model, r, p, width_px, height_px,
                                           binning_x, binning_y, roi,
                                           self.settings.camera_rectified)
        except CameraGeometryError:
            with self._lock:
                self.camera_info_rejected += 1
            raise
        with self._lock:
            self._info_model = model
            self._info_state = 'uncalibrated' if model is None else 'calibrated'
            return self._camera_source()

    def set_mount(self, mount: Mount) -> None:
        """Set the mount (from TF); a mount looking along the row places nothing on the plane."""
        with self._lock:
            self._mount = mount

    @property
    def mount(self) -> Optional[Mount]:
        """The mount in use (None while ``mount_from_tf`` waits for its transform)."""
        with self._lock:
            return self._mount

    def add_heading(self, stamp_ns: int, yaw_enu_rad: float,
                    sigma_rad: Optional[float] = None, source: str = 'odometry') -> bool:
        """Add one yaw sample (ENU, 0 = east); return False for a non-finite one."""
        if not math.isfinite(yaw_enu_rad):
            return False
        sigma = (sigma_rad if sigma_rad is not None and math.isfinite(sigma_rad)
                 and sigma_rad > 0.0 else math.radians(self.settings.heading_sigma_deg))
        sample = _Heading(int(stamp_ns), float(yaw_enu_rad), float(sigma), source)
        with self._lock:
            stamps = [h.stamp_ns for h in self._headings]
            self._headings.insert(bisect.bisect_right(stamps, sample.stamp_ns), sample)
            if len(self._headings) > HEADING_BUFFER_SAMPLES:
                del self._headings[0]
        return True

    def add_depth(self, stamp_ns: int, depth_m: np.ndarray) -> None:
        """Keep an aligned depth image ``(H, W)`` float metres (0 / NaN: no depth)."""
        with self._lock:
            self._depths.append((int(stamp_ns), np.asarray(depth_m, dtype=np.float32)))
            if len(self._depths) > DEPTH_BUFFER_FRAMES:
                del self._depths[0]

    def clear(self) -> None:
        """Forget headings and depth images (the clock jumped back)."""
        with self._lock:
            self._headings.clear()
            self._depths.clear()
            self._last_good = None

    def _camera_source(self) -> str:
        if self._info_model is not None:
            return self._info_model.source
        if self._info_state == 'uncalibrated':
            return 'hfov (camera_info uncalibrated: K all zeros)'
        return 'hfov (no camera_info)'

    @property
    def camera_source(self) -> str:
        """Which camera model places findings: camera_info, rectified, or the hfov fallback."""
        with self._lock:
            return self._camera_source()

    # --- placing (the worker thread) -----------------------------------------------

    def _heading(self, stamp_ns: int, fixes: Optional[Any]) -> Tuple[Optional[_Heading], str]:
        settings = self.settings
        good: Optional[_Heading] = None
        note = NOTE_NO_HEADING
        if settings.heading_source == 'course':
            course_at = getattr(fixes, 'course_at', None)
            if course_at is not None:
                course, speed, why = course_at(stamp_ns, settings.heading_window_s)
                if course is not None and speed >= settings.min_speed_for_heading_mps:
                    good = _Heading(stamp_ns, course, math.radians(settings.heading_sigma_deg),
                                    'course')
        else:
            max_age_ns = int(HEADING_MAX_AGE_S * _NS_PER_S)
            with self._lock:
                nearest = min(self._headings, key=lambda h: abs(h.stamp_ns - stamp_ns),
                              default=None)
            if nearest is not None and abs(nearest.stamp_ns - stamp_ns) <= max_age_ns:
                good = nearest
        with self._lock:
            if good is not None:
                if self._last_good is None or good.stamp_ns >= self._last_good.stamp_ns:
                    self._last_good = good
                return good, ''
            last = self._last_good
        if last is not None:
            age_s = (stamp_ns - last.stamp_ns) / _NS_PER_S
            if 0.0 <= age_s <= settings.heading_hold_s:
                sigma = last.sigma_rad + math.radians(HOLD_SIGMA_GROWTH_DEG_PER_S) * age_s
                return _Heading(last.stamp_ns, last.yaw_rad, sigma, 'held'), ''
        return None, note

    def camera_model(self, frame_hw_px: Tuple[int, int]) -> Tuple[Optional[CameraModel], str]:
        """
        Return the camera model that places findings of a ``(height, width)`` frame.

        :returns: ``(model, '')``, or ``(None, why)`` when the calibration describes
            another image size (findings of such frames stay at the camera).
        """
        return self._model(frame_hw_px)

    def _model(self, frame_hw_px: Tuple[int, int]) -> Tuple[Optional[CameraModel], str]:
        height, width = frame_hw_px
        with self._lock:
            model = self._info_model
        if model is None:
            return camera_model_from_hfov(width, height, self.settings.camera_hfov_deg), ''
        if (model.width_px, model.height_px) != (width, height):
            return None, NOTE_SIZE.format(cw=model.width_px, ch=model.height_px, fw=width,
                                          fh=height)
        return model, ''

    def _depth_at(self, stamp_ns: int) -> Optional[np.ndarray]:
        with self._lock:
            best = min(self._depths, key=lambda d: abs(d[0] - stamp_ns), default=None)
        if best is None or abs(best[0] - stamp_ns) > DEPTH_SYNC_TOLERANCE_NS:
            return None
        return best[1]

    def _count(self, counter: Dict[str, int], key: str) -> None:
        with self._lock:
            counter[key] = counter.get(key, 0) + 1

    def locate(self, stamp_ns: int, geotag: GeotagResult, detections: Sequence[Any],
               frame_hw_px: Tuple[int, int], fixes: Optional[Any]
               ) -> Tuple[Optional[GroundPosition], ...]:
        """
        Return one position per detection: findings placed, others None.

        A frame without a position gives all None (the findings have no position at
        all); a finding that cannot be placed gets the camera's position, flagged.
        """
        out: List[Optional[GroundPosition]] = [None] * len(detections)
        tag = geotag.geotag
        indices = [i for i, d in enumerate(detections) if d.is_finding]
        if tag is None or not indices:
            return tuple(out)
        gps = gps_covariance_enu(tag)
        heading, note = self._heading(stamp_ns, fixes)
        model, model_note = self._model(frame_hw_px)
        mount = self.mount
        note = note or model_note or ('' if mount is not None else NOTE_NO_MOUNT)
        if heading is None or model is None or mount is None:
            for i in indices:
                out[i] = self._at_camera(tag, gps, note, '')
            return tuple(out)
        self._count(self.heading_sources, heading.source)
        boxes = np.array([detections[i].box_xyxy_px for i in indices], dtype=np.float64)
        centres = np.column_stack([(boxes[:, 0] + boxes[:, 2] - 1.0) / 2.0,
                                   (boxes[:, 1] + boxes[:, 3] - 1.0) / 2.0])
        rays = pixel_rays(model, centres)
        points, valid, why = canopy_points(rays, mount, self.settings.canopy_distance_m)
        methods = [PLACED_CANOPY] * len(indices)
        distances = [self.settings.canopy_distance_m] * len(indices)
        sigmas = [self.settings.canopy_distance_sigma_m] * len(indices)
        depth = self._depth_at(stamp_ns) if self.settings.depth_enabled else None
        if depth is not None:
            tile_depths = _tile_depths(depth, boxes, frame_hw_px)
            d_points, d_valid, _ = depth_points(rays, tile_depths, mount, model.rectification)
            for j in (int(v) for v in np.flatnonzero(d_valid)):
                points[j], valid[j] = d_points[j], True
                methods[j] = PLACED_DEPTH
                distances[j] = float(tile_depths[j])
                sigmas[j] = DEPTH_SIGMA_FRACTION * float(tile_depths[j])
        offsets = robot_to_enu(points, heading.yaw_rad)
        for j, i in enumerate(indices):
            if not valid[j]:
                out[i] = self._at_camera(tag, gps, why[j], heading.source)
                continue
            east, north, up = (float(v) for v in offsets[j])
            lat, lon = offset_latlon(tag.latitude_deg, tag.longitude_deg, east, north)
            range_m = float(np.linalg.norm(points[j]))
            width_px = boxes[j, 2] - boxes[j, 0]
            footprint = width_px * range_m / model.focal_px
            covariance = leaf_covariance_enu(gps, offsets[j], heading.sigma_rad, sigmas[j],
                                             distances[j], footprint)
            altitude = tag.altitude_m + up if math.isfinite(tag.altitude_m) else math.nan
            out[i] = GroundPosition(lat, lon, altitude, tuple(covariance.reshape(9).tolist()),
                                    methods[j], range_m, heading.source)
            self._count(self.placed, methods[j])
        return tuple(out)

    def _at_camera(self, tag: GeoTag, gps: np.ndarray, note: str,
                   heading_source: str) -> GroundPosition:
        self._count(self.placed, PLACED_CAMERA)
        self._count(self.notes, note)
        spread = self.settings.canopy_distance_m ** 2
        covariance = gps + np.diag([spread, spread, 0.0])
        return GroundPosition(tag.latitude_deg, tag.longitude_deg, tag.altitude_m,
                              tuple(covariance.reshape(9).tolist()), PLACED_CAMERA,
                              heading_source=heading_source, note=note)

    def report(self) -> Dict[str, Any]:
        """Return the counters and the camera source (diagnostics, replay report)."""
        with self._lock:
            return {'camera': self._camera_source(), 'placed': dict(self.placed),
                    'not_placed_because': dict(self.notes),
                    'heading_sources': dict(self.heading_sources),
                    'camera_info_rejected': self.camera_info_rejected,
                    'mount_known': self._mount is not None,
                    'hfov_fallback': self._info_model is None}


def _tile_depths(depth: np.ndarray, boxes: np.ndarray, frame_hw_px: Tuple[int, int]
                 ) -> np.ndarray:
    """Return the median valid depth (m) of each box, scaled to the depth image; NaN if none."""
    scale_y = depth.shape[0] / float(frame_hw_px[0])
    scale_x = depth.shape[1] / float(frame_hw_px[1])
    out = np.full(len(boxes), np.nan)
    for j, (x0, y0, x1, y1) in enumerate(boxes):
        patch = depth[int(y0 * scale_y):max(int(y0 * scale_y) + 1, int(y1 * scale_y)),
                      int(x0 * scale_x):max(int(x0 * scale_x) + 1, int(x1 * scale_x))]
        values = patch[np.isfinite(patch) & (patch > 0.0)]
        if values.size:
            out[j] = float(np.median(values))
    return out


def depth_image_m(data: np.ndarray, encoding: str) -> np.ndarray:
    """
    Return a depth image in metres from its raw array: 16UC1 millimetres or 32FC1 metres.

    :raises CameraGeometryError: another encoding.
    """
    if encoding in ('16UC1', 'mono16'):
        return np.asarray(data, dtype=np.float32) / 1000.0
    if encoding == '32FC1':
        return np.asarray(data, dtype=np.float32)
    raise CameraGeometryError(f'depth image encoding {encoding!r} is not 16UC1 (mm) or 32FC1 '
                              '(m): publish an aligned depth image in one of them')
