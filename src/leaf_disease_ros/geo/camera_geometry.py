"""
Camera geometry: from a tile's centre pixel to the leaf's offset from the camera (pure numbers).

The chain, each step a pure function on numbers (no ROS, no state):

1. :class:`CameraModel`: intrinsics of the published image, from a
   ``sensor_msgs/CameraInfo``'s fields (:func:`camera_model_from_info`: K and the
   distortion D for a raw image, P for a rectified one; binning and ROI mapped to the
   full-resolution sensor as ``image_geometry.PinholeCameraModel`` does), or from a
   horizontal field of view when there is no calibration (:func:`camera_model_from_hfov`);
2. :func:`pixel_rays`: undistorted rays of pixels in the camera's optical frame
   (x right, y down, z forward; REP-103), with OpenCV's ``cv2.undistortPoints``
   (``plumb_bob``, ``rational_polynomial``) or ``cv2.fisheye.undistortPoints``
   (``equidistant``);
3. :class:`Mount`: the optical frame's rotation in the robot frame (x forward, y left,
   z up) and the camera's height above the ground, from yaw / pitch / roll
   (:func:`mount_from_angles`: yaw +90 deg = looking left, pitch + = up) or a quaternion
   (:func:`mount_from_quaternion`, a TF lookup);
4. :func:`canopy_points`: each ray meets the canopy, a vertical plane parallel to the
   direction of travel at ``canopy_distance_m`` on the side the camera looks at; rays
   parallel to it (beyond :data:`MAX_INCIDENCE_DEG` from its normal), pointing away
   from it, or reaching the ground first are rejected; or :func:`depth_points`: the
   distance per pixel from an aligned depth image;
5. :func:`robot_to_enu`: the offsets turned by the robot's heading (ENU yaw, 0 = east,
   counter-clockwise), to add to the camera's position;
6. :func:`leaf_covariance_enu`: the 3x3 ENU covariance of the leaf position: the GPS
   covariance + heading uncertainty x range + canopy-distance (or depth) uncertainty
   along the ray + the tile's footprint (the lesion is somewhere in the tile).

Shapes: ``N`` pixels / rays / points, one per row.
"""

from dataclasses import dataclass, field
import math
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.perception.errors import LeafDiseaseError

PLUMB_BOB = 'plumb_bob'
RATIONAL_POLYNOMIAL = 'rational_polynomial'
EQUIDISTANT = 'equidistant'
NO_DISTORTION = 'none'
DISTORTION_MODELS = (PLUMB_BOB, RATIONAL_POLYNOMIAL, EQUIDISTANT, NO_DISTORTION)
SOURCE_CAMERA_INFO = 'camera_info'
SOURCE_RECTIFIED = 'camera_info_rectified'
SOURCE_HFOV = 'hfov'
#: rays further than this from the canopy plane's normal are rejected (grazing: range blows up)
MAX_INCIDENCE_DEG = 80.0
#: the optical axis must be at least this far from the direction of travel for the plane
MIN_SIDE_ANGLE_DEG = 20.0
#: (x right, y down, z forward) of a camera looking forward, in the robot frame (x, y left, z up)
_OPTICAL_TO_FORWARD = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])

REJECT_PARALLEL = 'ray_parallel_to_canopy'
REJECT_AWAY = 'ray_points_away_from_canopy'
REJECT_GROUND = 'ray_meets_the_ground_first'
REJECT_NO_DEPTH = 'no_valid_depth'


class CameraGeometryError(LeafDiseaseError):
    """A camera calibration or mount cannot place leaves (the message names the field)."""


@dataclass(frozen=True)
class CameraModel:
    """
    Intrinsics of the published image.

    ``k`` (3x3) and ``d`` describe the full-resolution sensor; a published pixel
    ``(u, v)`` is ``(u * binning_x + roi_x_px, v * binning_y + roi_y_px)`` on it.
    ``rectification`` (3x3, camera <- rectified) turns rays of a rectified image into
    the camera's optical frame (identity for raw images and monocular cameras).
    ``width_px`` / ``height_px``: the size of the published image this model expects.
    """

    k: np.ndarray
    d: np.ndarray
    distortion_model: str
    width_px: int
    height_px: int
    source: str
    binning_x: int = 1
    binning_y: int = 1
    roi_x_px: int = 0
    roi_y_px: int = 0
    rectification: np.ndarray = field(default_factory=lambda: np.eye(3))

    @property
    def focal_px(self) -> float:
        """Return the horizontal focal length in published pixels."""
        return float(self.k[0, 0]) / self.binning_x


def camera_model_from_hfov(width_px: int, height_px: int, hfov_deg: float) -> CameraModel:
    """
    Return an ideal pinhole of horizontal field of view ``hfov_deg`` centred on the image.

    Pixel centres are at integer coordinates (ROS / OpenCV), so the optical axis goes
    through ``((W - 1) / 2, (H - 1) / 2)`` and the image's outer edges span ``hfov_deg``.
    """
    if not 1.0 <= hfov_deg < 180.0:
        raise CameraGeometryError(f'camera_hfov_deg {hfov_deg} must be in [1, 180)')
    focal = (width_px / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    k = np.array([[focal, 0.0, (width_px - 1) / 2.0], [0.0, focal, (height_px - 1) / 2.0],
                  [0.0, 0.0, 1.0]])
    return CameraModel(k, np.zeros(5), NO_DISTORTION, int(width_px), int(height_px),
                       SOURCE_HFOV)


def is_uncalibrated(k: Sequence[float]) -> bool:
    """Return whether a CameraInfo K says "uncalibrated" (all zeros, or no focal length)."""
    values = np.asarray(k, dtype=np.float64).reshape(-1)
    return values.size != 9 or not np.all(np.isfinite(values)) or values[0] <= 0.0 \
        or values[4] <= 0.0


def camera_model_from_info(k: Sequence[float], d: Sequence[float], distortion_model: str,
                           r: Sequence[float], p: Sequence[float], width_px: int,
                           height_px: int, binning_x: int = 0, binning_y: int = 0,
                           roi: Tuple[int, int, int, int] = (0, 0, 0, 0),
                           rectified: bool = False) -> Optional[CameraModel]:
    """
    Return the model of a ``sensor_msgs/CameraInfo``'s fields; None when uncalibrated.

    :param roi: ``(x_offset, y_offset, width, height)`` in full-resolution pixels; all
        zeros = the full image (sensor_msgs/CameraInfo.msg).
    :param rectified: the image is rectified (``image_rect`` topics): P's left 3x3 is
        the camera matrix, there is no distortion, and R turns rectified rays back
        into the camera's frame.

    :raises CameraGeometryError: a distortion model this package does not undistort,
        or a P without a focal length on a rectified image.
    """
    if is_uncalibrated(k):
        return None
    bx, by = max(1, int(binning_x)), max(1, int(binning_y))
    roi_x, roi_y, roi_w, roi_h = (int(v) for v in roi)
    full_w = roi_w if roi_w > 0 else int(width_px)
    full_h = roi_h if roi_h > 0 else int(height_px)
    out_w, out_h = full_w // bx, full_h // by
    if not (roi_w > 0 or roi_h > 0):
        roi_x = roi_y = 0
    rotation = np.eye(3)
    if rectified:
        projection = np.asarray(p, dtype=np.float64).reshape(-1)
        if projection.size != 12 or projection[0] <= 0.0:
            raise CameraGeometryError('camera_info P has no focal length: it cannot describe '
                                      'a rectified image (set camera_rectified false)')
        matrix = projection.reshape(3, 4)[:, :3].copy()
        rect = np.asarray(r, dtype=np.float64).reshape(-1)
        if rect.size == 9 and np.any(rect):
            rotation = rect.reshape(3, 3).T  # R: rectified <- camera
        return CameraModel(matrix, np.zeros(5), NO_DISTORTION, out_w, out_h, SOURCE_RECTIFIED,
                           bx, by, roi_x, roi_y, rotation)
    model = distortion_model or NO_DISTORTION
    coefficients = np.asarray(d, dtype=np.float64).reshape(-1)
    if not np.any(coefficients):
        model = NO_DISTORTION
    if model not in DISTORTION_MODELS:
        raise CameraGeometryError(
            f'camera_info distortion_model {distortion_model!r} is not one of '
            f'{", ".join(DISTORTION_MODELS[:3])}: publish a rectified image and set '
            'camera_rectified true')
    if model == EQUIDISTANT and coefficients.size < 4:
        raise CameraGeometryError(f'camera_info equidistant distortion needs 4 coefficients, '
                                  f'got {coefficients.size}')
    return CameraModel(np.asarray(k, dtype=np.float64).reshape(3, 3), coefficients, model,
                       out_w, out_h, SOURCE_CAMERA_INFO, bx, by, roi_x, roi_y, rotation)


def pixel_rays(model: CameraModel, pixels_uv: np.ndarray) -> np.ndarray:
    """
    Return ``(N, 3)`` rays of ``(N, 2)`` published pixels in the camera's optical frame.

    The rays are not normalised: their z is 1 in the published image's frame (so a
    depth image's z scales them directly) before the rectification rotation.
    """
    uv = np.asarray(pixels_uv, dtype=np.float64).reshape(-1, 2)
    full = np.empty_like(uv)
    full[:, 0] = uv[:, 0] * model.binning_x + model.roi_x_px
    full[:, 1] = uv[:, 1] * model.binning_y + model.roi_y_px
    points = full.reshape(-1, 1, 2)
    if model.distortion_model == EQUIDISTANT:
        normalised = cv2.fisheye.undistortPoints(points, model.k, model.d[:4].reshape(1, 4))
    elif model.distortion_model == NO_DISTORTION:
        normalised = cv2.undistortPoints(points, model.k, None)
    else:
        normalised = cv2.undistortPoints(points, model.k, model.d)
    xy = normalised.reshape(-1, 2)
    rays = np.column_stack([xy, np.ones(len(xy))])
    return rays @ model.rectification.T


@dataclass(frozen=True)
class Mount:
    """
    Where the camera sits on the robot.

    ``rotation``: 3x3, robot <- optical (columns: the optical x, y, z axes in the
    robot frame x forward, y left, z up); ``height_m``: the optical centre above the
    ground.
    """

    rotation: np.ndarray
    height_m: float

    @property
    def side(self) -> int:
        """Return +1 when the camera looks left of the direction of travel, -1 right."""
        return 1 if self.rotation[1, 2] >= 0.0 else -1

    def looks_sideways(self) -> bool:
        """Return whether the optical axis is far enough from the row for the canopy plane."""
        axis = self.rotation[:, 2]
        horizontal = math.hypot(axis[0], axis[1])
        return horizontal > 0.0 and abs(axis[1]) / horizontal >= \
            math.sin(math.radians(MIN_SIDE_ANGLE_DEG))


def _rotation_z(angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rotation_y(angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rotation_x(angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def mount_from_angles(yaw_deg: float, pitch_deg: float, height_m: float,
                      roll_deg: float = 0.0) -> Mount:
    """
    Return the mount of a camera whose optical axis has ``yaw_deg`` and ``pitch_deg``.

    :param yaw_deg: the optical axis's direction from the robot's heading,
        counter-clockwise seen from above: +90 looks left, -90 right.
    :param pitch_deg: the optical axis's elevation: positive looks up, negative down.
    :param roll_deg: rotation about the optical axis (clockwise as the camera sees).
    """
    rotation = (_rotation_z(math.radians(yaw_deg)) @ _rotation_y(-math.radians(pitch_deg))
                @ _rotation_x(math.radians(roll_deg)) @ _OPTICAL_TO_FORWARD)
    return Mount(rotation, float(height_m))


def mount_from_quaternion(x: float, y: float, z: float, w: float, height_m: float) -> Mount:
    """
    Return the mount of a TF rotation (robot <- optical frame, as ``geometry_msgs/Quaternion``).

    :raises CameraGeometryError: a zero or non-finite quaternion.
    """
    q = np.array([x, y, z, w], dtype=np.float64)
    norm = float(np.linalg.norm(q))
    if not math.isfinite(norm) or norm < 1e-9:
        raise CameraGeometryError(f'the mount transform has an invalid rotation {q.tolist()}')
    x, y, z, w = q / norm
    rotation = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    return Mount(rotation, float(height_m))


def canopy_points(rays_optical: np.ndarray, mount: Mount, canopy_distance_m: float
                  ) -> Tuple[np.ndarray, np.ndarray, Tuple[str, ...]]:
    """
    Return where rays meet the canopy plane: ``(points (N, 3) robot frame, valid (N,), why)``.

    Points are offsets from the camera in metres (x forward, y left, z up); a rejected
    ray's point is NaN and ``why`` names the reason (empty for valid rays).
    """
    rays = np.asarray(rays_optical, dtype=np.float64).reshape(-1, 3) @ mount.rotation.T
    side = mount.side
    lateral = rays[:, 1] * side
    norms = np.linalg.norm(rays, axis=1)
    cos_min = math.cos(math.radians(MAX_INCIDENCE_DEG))
    points = np.full_like(rays, np.nan)
    why = []
    for i in range(len(rays)):
        if lateral[i] <= 0.0:
            why.append(REJECT_AWAY)
            continue
        if lateral[i] < cos_min * norms[i]:
            why.append(REJECT_PARALLEL)
            continue
        point = rays[i] * (canopy_distance_m / lateral[i])
        if mount.height_m + point[2] < 0.0:
            why.append(REJECT_GROUND)
            continue
        points[i] = point
        why.append('')
    valid = np.array([w == '' for w in why], dtype=bool)
    return points, valid, tuple(why)


def depth_points(rays_optical: np.ndarray, depths_m: np.ndarray, mount: Mount,
                 rectification: Optional[np.ndarray] = None
                 ) -> Tuple[np.ndarray, np.ndarray, Tuple[str, ...]]:
    """
    Return the points at the given depths (z along the image's optical axis, metres).

    ``rays_optical`` are :func:`pixel_rays` (already rotated by ``rectification``);
    a depth that is zero, negative or not finite is rejected (:data:`REJECT_NO_DEPTH`).
    """
    rays = np.asarray(rays_optical, dtype=np.float64).reshape(-1, 3)
    depths = np.asarray(depths_m, dtype=np.float64).reshape(-1)
    # the depth is z in the image's frame: undo the rectification to read the ray's z there
    turn = np.eye(3) if rectification is None else np.asarray(rectification)
    z_image = (rays @ turn).reshape(-1, 3)[:, 2]
    valid = np.isfinite(depths) & (depths > 0.0) & (z_image > 0.0)
    scale = np.where(valid, depths / np.where(z_image > 0.0, z_image, 1.0), np.nan)
    points = (rays * scale[:, None]) @ mount.rotation.T
    heights = mount.height_m + points[:, 2]
    below = valid & (heights < 0.0)
    valid &= ~below
    points[~valid] = np.nan
    why = tuple('' if ok else (REJECT_GROUND if low else REJECT_NO_DEPTH)
                for ok, low in zip(valid, below))
    return points, valid, why


def robot_to_enu(points_robot: np.ndarray, heading_enu_rad: float) -> np.ndarray:
    """Return ``(N, 3)`` east / north / up offsets of robot-frame offsets at a heading."""
    points = np.asarray(points_robot, dtype=np.float64).reshape(-1, 3)
    c, s = math.cos(heading_enu_rad), math.sin(heading_enu_rad)
    out = np.empty_like(points)
    out[:, 0] = c * points[:, 0] - s * points[:, 1]
    out[:, 1] = s * points[:, 0] + c * points[:, 1]
    out[:, 2] = points[:, 2]
    return out


def leaf_covariance_enu(gps_covariance_m2: np.ndarray, offset_enu_m: np.ndarray,
                        heading_sigma_rad: float, distance_sigma_m: float,
                        distance_m: float, footprint_m: float) -> np.ndarray:
    """
    Return the 3x3 ENU covariance of one leaf position.

    First-order propagation of independent errors:

    - the camera position: ``gps_covariance_m2`` (3x3 ENU);
    - the heading: the offset turns about the vertical, ``sigma_psi^2 v v^T`` with
      ``v = (-north, east, 0)`` (an error of ``sigma_psi`` moves the leaf by range x
      sigma_psi across the ray);
    - the distance (canopy plane or depth): the point slides along its ray,
      ``(sigma_d / d)^2 p p^T`` (the offset scales with the distance);
    - the tile: the lesion is anywhere in the tile, uniform over ``footprint_m``
      (its width on the canopy): ``footprint^2 / 12`` across the ray (horizontal) and
      vertically.
    """
    offset = np.asarray(offset_enu_m, dtype=np.float64).reshape(3)
    covariance = np.array(gps_covariance_m2, dtype=np.float64).reshape(3, 3).copy()
    v = np.array([-offset[1], offset[0], 0.0])
    covariance += heading_sigma_rad ** 2 * np.outer(v, v)
    if distance_m > 0.0:
        along = offset / distance_m
        covariance += distance_sigma_m ** 2 * np.outer(along, along)
    horizontal = math.hypot(offset[0], offset[1])
    across = (np.array([-offset[1], offset[0], 0.0]) / horizontal if horizontal > 1e-9
              else np.array([1.0, 0.0, 0.0]))
    quantisation = footprint_m ** 2 / 12.0
    covariance += quantisation * (np.outer(across, across) + np.diag([0.0, 0.0, 1.0]))
    return covariance
