"""
Camera footprints on the ground: what an image looked at, and whether a point lies in it.

The image's border is cast through the camera model and met with the canopy plane by
the very functions that place findings (:func:`~.camera_geometry.pixel_rays`,
:func:`~.camera_geometry.canopy_points`): a pixel every few along each edge, corners
included. The canopy is a vertical plane, so seen from above those points lie on a line
beside the robot; the footprint on the ground is the wedge from the camera to that line,
reaching :data:`DEPTH_BAND_SIGMAS` canopy-distance sigmas beyond it (the canopy is not a
plane): the convex hull of the camera and the border points pushed out that far
(:func:`footprint_polygon_m`). It is fixed in the robot frame (x forward, y left,
metres, the camera at the origin), so a pass's footprints are one polygon and the pose
(east, north, heading) of every frame (:class:`SweptFootprints`).

:meth:`SweptFootprints.covers` tells which points lie in at least one footprint or
within a tolerance of one (the exact distance to the polygon), chunk by chunk with a
bounding-box prefilter, so a pass of thousands of frames against thousands of points
stays fast and small. :func:`near_track` is the same question for the radius rule
(within a radius of a polyline). :func:`local_east_north_array_m` projects many
WGS84 positions at once, with :func:`~.geodesy.local_east_north_m`'s formula.

Shapes: polygons ``(K, 2)`` counter-clockwise; poses ``(N, 3)`` (east m, north m,
heading rad ENU: 0 = east, counter-clockwise); points ``(M, 2)`` (east m, north m).
"""

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from leaf_disease_ros.geo.camera_geometry import (CameraModel, canopy_points, Mount,
                                                  pixel_rays)
from leaf_disease_ros.geo.geodesy import radii_of_curvature_m

#: the footprint reaches this many canopy-distance sigmas beyond the canopy plane
DEPTH_BAND_SIGMAS = 2.0
#: pixels sampled along each image edge (corners included)
BORDER_SAMPLES_PER_EDGE = 9
#: poses (and track segments) tested against the points at once
POSE_CHUNK = 128
#: points tested against one chunk at once (memory: points x chunk x edges doubles)
POINT_CHUNK = 2048


def image_border_px(width_px: int, height_px: int,
                    per_edge: int = BORDER_SAMPLES_PER_EDGE) -> np.ndarray:
    """Return ``(4 * (per_edge - 1), 2)`` pixel centres along the image's border, corners first."""
    right, bottom = float(width_px - 1), float(height_px - 1)
    steps = np.linspace(0.0, 1.0, max(2, per_edge))[:-1]
    corners = [(0.0, 0.0), (right, 0.0), (right, bottom), (0.0, bottom), (0.0, 0.0)]
    points = [np.column_stack([a[0] + steps * (b[0] - a[0]), a[1] + steps * (b[1] - a[1])])
              for a, b in zip(corners, corners[1:])]
    return np.concatenate(points)


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Return the convex hull ``(K, 2)`` of ``(N, 2)`` points, counter-clockwise (Andrew)."""
    unique = sorted({(float(x), float(y)) for x, y in np.asarray(points).reshape(-1, 2)})
    if len(unique) <= 2:
        return np.array(unique, dtype=np.float64).reshape(-1, 2)

    def cross(o: Tuple[float, float], a: Tuple[float, float], b: Tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    lower: List[Tuple[float, float]] = []
    for p in unique:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0.0:
            lower.pop()
        lower.append(p)
    upper: List[Tuple[float, float]] = []
    for p in reversed(unique):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0.0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1], dtype=np.float64)


def footprint_polygon_m(model: CameraModel, mount: Mount, canopy_distance_m: float,
                        depth_band_m: float) -> Optional[np.ndarray]:
    """
    Return the image's ground footprint ``(K, 2)`` in the robot frame, or None.

    The camera (origin) and the border pixels' canopy points pushed ``depth_band_m``
    beyond the plane along their rays, seen from above (module docstring). None when
    fewer than two border pixels meet the canopy (a camera looking along the row, or
    at the sky or the ground only): the image has no footprint on the canopy.
    """
    rays = pixel_rays(model, image_border_px(model.width_px, model.height_px))
    points, valid, _ = canopy_points(rays, mount, canopy_distance_m)
    if int(np.count_nonzero(valid)) < 2:
        return None
    lateral = np.abs(points[valid, 1])
    scale = (canopy_distance_m + max(0.0, depth_band_m)) / lateral
    outer = points[valid, :2] * scale[:, None]
    hull = convex_hull(np.vstack([np.zeros((1, 2)), outer]))
    return hull if len(hull) >= 3 else None


def local_east_north_array_m(latitudes_deg: np.ndarray, longitudes_deg: np.ndarray,
                             ref_latitude_deg: float, ref_longitude_deg: float
                             ) -> np.ndarray:
    """Return ``(N, 2)`` east / north metres of positions from a reference (local plane)."""
    meridian, prime = radii_of_curvature_m(ref_latitude_deg)
    lat = np.asarray(latitudes_deg, dtype=np.float64).reshape(-1)
    lon = np.asarray(longitudes_deg, dtype=np.float64).reshape(-1)
    dlat = np.radians(lat - ref_latitude_deg)
    dlon = np.radians((lon - ref_longitude_deg + 540.0) % 360.0 - 180.0)
    return np.column_stack([dlon * prime * math.cos(math.radians(ref_latitude_deg)),
                            dlat * meridian])


def _segment_distances(px: np.ndarray, py: np.ndarray, ax: np.ndarray, ay: np.ndarray,
                       bx: np.ndarray, by: np.ndarray) -> np.ndarray:
    """Return the distances of points to segments, broadcast (numpy rules)."""
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = ((px - ax) * dx + (py - ay) * dy) / np.where(length2 > 0.0, length2, 1.0)
    t = np.clip(np.where(length2 > 0.0, t, 0.0), 0.0, 1.0)
    return np.hypot(px - (ax + t * dx), py - (ay + t * dy))


class SweptFootprints:
    """The footprints of one polygon at many poses, in one local east / north frame."""

    def __init__(self, polygon_m: np.ndarray, poses: np.ndarray) -> None:
        """
        Take a convex polygon ``(K, 2)`` (robot frame, counter-clockwise) and poses ``(N, 3)``.

        :raises ValueError: a polygon of fewer than 3 vertices or poses not ``(N, 3)``.
        """
        polygon = np.asarray(polygon_m, dtype=np.float64).reshape(-1, 2)
        if len(polygon) < 3:
            raise ValueError(f'a footprint needs 3 or more vertices, got {len(polygon)}')
        self.polygon_m = polygon
        self.poses = np.asarray(poses, dtype=np.float64).reshape(-1, 3)
        self.reach_m = float(np.max(np.hypot(polygon[:, 0], polygon[:, 1])))
        a, b = polygon, np.roll(polygon, -1, axis=0)
        edge = b - a
        # outward normals of a counter-clockwise polygon; inside: n . p <= n . a
        normals = np.column_stack([edge[:, 1], -edge[:, 0]])
        lengths = np.hypot(normals[:, 0], normals[:, 1])
        keep = lengths > 0.0
        self._a, self._b = a[keep], b[keep]
        self._normals = normals[keep] / lengths[keep, None]
        self._offsets = np.einsum('ij,ij->i', self._normals, self._a)

    def __len__(self) -> int:
        return len(self.poses)

    def covers(self, points_en: np.ndarray, tolerance_m: float = 0.0) -> np.ndarray:
        """Return ``(M,)`` whether each point is in a footprint or within ``tolerance_m``."""
        points = np.asarray(points_en, dtype=np.float64).reshape(-1, 2)
        out = np.zeros(len(points), dtype=bool)
        tolerance = max(0.0, float(tolerance_m))
        margin = self.reach_m + tolerance
        for start in range(0, len(self.poses), POSE_CHUNK):
            chunk = self.poses[start:start + POSE_CHUNK]
            low = chunk[:, :2].min(axis=0) - margin
            high = chunk[:, :2].max(axis=0) + margin
            candidates = np.flatnonzero(~out & np.all((points >= low) & (points <= high), axis=1))
            for first in range(0, len(candidates), POINT_CHUNK):
                index = candidates[first:first + POINT_CHUNK]
                out[index] = self._in_chunk(points[index], chunk, tolerance)
        return out

    def _in_chunk(self, points: np.ndarray, poses: np.ndarray, tolerance_m: float
                  ) -> np.ndarray:
        """Return ``(m,)`` whether each point lies in (or near) a footprint of ``poses``."""
        dx = points[:, None, 0] - poses[None, :, 0]
        dy = points[:, None, 1] - poses[None, :, 1]
        cos_h, sin_h = np.cos(poses[:, 2])[None, :], np.sin(poses[:, 2])[None, :]
        x = cos_h * dx + sin_h * dy  # (m, c): robot frame, forward
        y = -sin_h * dx + cos_h * dy  # left
        xs, ys = x[..., None], y[..., None]
        signed = xs * self._normals[:, 0] + ys * self._normals[:, 1] - self._offsets
        inside = np.all(signed <= 0.0, axis=2)
        if tolerance_m > 0.0:
            distance = _segment_distances(xs, ys, self._a[:, 0], self._a[:, 1],
                                          self._b[:, 0], self._b[:, 1]).min(axis=2)
            inside |= distance <= tolerance_m
        return np.any(inside, axis=1)


def near_track(points_en: np.ndarray, segments_en: Sequence[np.ndarray],
               radius_m: float) -> np.ndarray:
    """Return ``(M,)`` whether each point is within ``radius_m`` of a track of polylines."""
    points = np.asarray(points_en, dtype=np.float64).reshape(-1, 2)
    out = np.zeros(len(points), dtype=bool)
    for segment in segments_en:
        line = np.asarray(segment, dtype=np.float64).reshape(-1, 2)
        if not len(line):
            continue
        starts, ends = (line[:-1], line[1:]) if len(line) > 1 else (line, line)
        for first in range(0, len(starts), POSE_CHUNK):
            a, b = starts[first:first + POSE_CHUNK], ends[first:first + POSE_CHUNK]
            low = np.minimum(a, b).min(axis=0) - radius_m
            high = np.maximum(a, b).max(axis=0) + radius_m
            candidates = np.flatnonzero(~out & np.all((points >= low) & (points <= high), axis=1))
            for start in range(0, len(candidates), POINT_CHUNK):
                index = candidates[start:start + POINT_CHUNK]
                p = points[index]
                distance = _segment_distances(p[:, None, 0], p[:, None, 1], a[None, :, 0],
                                              a[None, :, 1], b[None, :, 0], b[None, :, 1])
                out[index] = np.any(distance <= radius_m, axis=1)
    return out
