#!/usr/bin/env python3
r"""
Build the demo recording: a simulated pass along three vine rows, as a rosbag2 (MCAP).

Usage::

    python3 tools/make_demo_bag.py ../shared/datasets/plantvillage_grape \\
        --out demo/vineyard_demo [--seed 0]

What it writes (all stamps from one simulated clock, deterministic from ``--seed``):

- ``/camera/image_raw/compressed`` (sensor_msgs/CompressedImage, JPEG): frames are
  mosaics of whole 256 px PlantVillage leaf photos, ``--grid`` columns x rows (default
  3x1: 768x256), the leaves the camera sees at that point of the row. Leaves sit along
  each row at a fixed spacing (the camera's footprint / columns). The camera is
  triggered by distance (as a wheel-odometry trigger would): once per leaf spacing,
  when the optical axis points at the gap between two leaves' columns, so every leaf
  is in a frame exactly where the camera geometry below puts it, and each leaf is seen
  in ``columns`` consecutive frames, shifted by one tile. The camera is off during the
  headland turns.
- ``/camera/camera_info`` (sensor_msgs/CameraInfo, with each frame, image_transport's
  pair of the image topic): the camera looks **left**, square to the row, level,
  ``--canopy-distance-m`` (0.75 m) from the canopy, which it sees ``--footprint-m``
  (1 m) wide: a pinhole without distortion, fx = fy = width x distance / footprint
  (576 px), principal point at the image centre (cx = 383.5, cy = 127.5). Facing left,
  the image's right is the direction of travel, in both directions of travel.
- ``/gps/fix`` (sensor_msgs/NavSatFix, 5 Hz) along the track: RTK fix (GBAS_FIX, 2 cm
  noise) most of the time, a stretch of degraded plain FIX (0.6 m noise, large
  covariance) in the second row, and a GPS outage (NO_FIX, NaN coordinates) in the
  third row.
- ``/ground_truth`` (vision_msgs/Detection2DArray) with each image's stamp: one
  Detection2D per leaf, bbox in pixels, first hypothesis ``class_id`` = the label.

Disease clusters spatially: each row has infection foci (a disease within a radius
along the row, most leaves there infected); elsewhere leaves are mostly healthy.

The leaves come only from the **validation** side of the split ``leaf-disease-train`` makes
with its defaults (photo-number blocks of 40, validation fraction 0.2, seed 0), so the
demo never evaluates the shipped model on leaves it was trained on.
"""

import argparse
import datetime
import math
import os
import shutil
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.geo.geodesy import offset_latlon
from leaf_disease_ros.perception.positions import STATUS_FIX, STATUS_GBAS_FIX, STATUS_NO_FIX
from leaf_disease_ros.replay.typestore import make_typestore
from leaf_disease_ros.ros.conversions import make_header, MessageTypes
from leaf_disease_ros.training.dataset import grouped_split, list_class_folders, photo_block_groups

NS = 1_000_000_000
LEAF_PX = 256
IMAGE_TOPIC = '/camera/image_raw/compressed'
CAMERA_INFO_TOPIC = '/camera/camera_info'
FIX_TOPIC = '/gps/fix'
GROUND_TRUTH_TOPIC = '/ground_truth'
CAMERA_FRAME = 'camera_optical_frame'
GPS_FRAME = 'gps_link'
HEALTHY = 'healthy'
# A vineyard near Saint-Emilion (Bordeaux), rows at 70 degrees from north.
ORIGIN_LAT_DEG = 44.89310
ORIGIN_LON_DEG = -0.15420
ALTITUDE_M = 32.0
ROW_AZIMUTH_DEG = 70.0
START_UTC = datetime.datetime(2025, 9, 12, 8, 30, 0, tzinfo=datetime.timezone.utc)
SERVICE_GPS_GALILEO = 1 | 8
COVARIANCE_DIAGONAL_KNOWN = 2
# (row, centre along the row in m, radius m, disease): where infection clusters.
FOCI: Tuple[Tuple[int, float, float, str], ...] = (
    (0, 4.5, 2.0, 'black_rot'), (0, 12.5, 1.5, 'esca'),
    (1, 5.0, 2.0, 'black_rot'), (1, 11.5, 2.0, 'leaf_blight'),
    (2, 2.5, 1.5, 'esca'), (2, 11.0, 2.0, 'leaf_blight'),
)
P_INFECTED_IN_FOCUS = 0.8
P_SPORADIC = 0.04
# Simulated GNSS conditions along the track: (row, from m, to m, condition).
DEGRADED = (1, 7.0, 12.0)
OUTAGE = (2, 6.0, 9.5)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description='Build the leaf_disease_ros demo rosbag2.')
    parser.add_argument('data', help='PlantVillage grape folder (one subfolder per class)')
    parser.add_argument('--out', default='demo/vineyard_demo', help='bag folder (replaced)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--rows', type=int, default=3)
    parser.add_argument('--row-length-m', type=float, default=15.0)
    parser.add_argument('--row-spacing-m', type=float, default=2.5)
    parser.add_argument('--speed-mps', type=float, default=1.0)
    parser.add_argument('--turn-speed-mps', type=float, default=0.6)
    parser.add_argument('--gps-rate-hz', type=float, default=5.0)
    parser.add_argument('--grid', default='3x1', help='leaves per frame, COLSxROWS')
    parser.add_argument('--footprint-m', type=float, default=1.0,
                        help='length of row the camera sees')
    parser.add_argument('--canopy-distance-m', type=float, default=0.75,
                        help='optical centre to canopy (the default canopy_distance_m)')
    parser.add_argument('--jpeg-quality', type=int, default=85)
    return parser.parse_args(argv)


def validation_pool(data: str) -> Dict[str, List[str]]:
    """Return label -> validation image paths, exactly as leaf-disease-train splits by default."""
    labels, samples, _ = list_class_folders(data)
    samples = photo_block_groups(samples, 40)
    _, val = grouped_split(samples, 0.2, seed=0)
    pool: Dict[str, List[str]] = {label: [] for label in labels}
    for sample in val:
        pool[labels[sample.label_index]].append(sample.path)
    return {label: sorted(paths) for label, paths in pool.items()}


class LeafPicker:
    """Draws leaf photos of a class without replacement (reshuffled when used up)."""

    def __init__(self, pool: Dict[str, List[str]], rng: np.random.Generator) -> None:
        self._pool = pool
        self._rng = rng
        self._queues: Dict[str, List[str]] = {}

    def pick(self, label: str) -> str:
        queue = self._queues.get(label)
        if not queue:
            queue = list(self._pool[label])
            self._rng.shuffle(queue)
            self._queues[label] = queue
        return queue.pop()


def leaf_label(row: int, along_m: float, diseases: Sequence[str],
               rng: np.random.Generator) -> str:
    """Return the label of the leaf at ``along_m`` on ``row`` (foci, else sporadic)."""
    for focus_row, centre, radius, disease in FOCI:
        if focus_row == row and abs(along_m - centre) <= radius:
            return disease if rng.random() < P_INFECTED_IN_FOCUS else HEALTHY
    if rng.random() < P_SPORADIC:
        return str(rng.choice(list(diseases)))
    return HEALTHY


class Track:
    """The robot's path: straight passes along the alleys joined by half-circle turns."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        azimuth = math.radians(ROW_AZIMUTH_DEG)
        self.along = np.array([math.sin(azimuth), math.cos(azimuth)])  # east, north
        self.across = np.array([math.cos(azimuth), -math.sin(azimuth)])  # to the right
        self.segments: List[Tuple[str, int, float]] = []  # kind, row, duration s
        lead_in_m = 1.0
        for row in range(args.rows):
            length = args.row_length_m + (lead_in_m if row == 0 else 0.0)
            self.segments.append(('row', row, length / args.speed_mps))
            if row + 1 < args.rows:
                turn_m = math.pi * args.row_spacing_m / 2.0
                self.segments.append(('turn', row, turn_m / args.turn_speed_mps))
        self.lead_in_m = lead_in_m
        self.duration_s = sum(d for _, _, d in self.segments)

    def at(self, t_s: float) -> Tuple[Tuple[float, float], Optional[Tuple[int, float]]]:
        """Return ((east, north) m, (row, along m) or None in a turn) at time ``t_s``."""
        args = self.args
        start = 0.0
        for kind, row, duration in self.segments:
            if t_s <= start + duration or (kind, row) == self.segments[-1][:2]:
                dt = min(t_s - start, duration)
                if kind == 'row':
                    travelled = dt * args.speed_mps - (self.lead_in_m if row == 0 else 0.0)
                    along = travelled if row % 2 == 0 else args.row_length_m - travelled
                    pos = along * self.along + row * args.row_spacing_m * self.across
                    return (float(pos[0]), float(pos[1])), (row, along)
                # half circle from the end of `row` to the start of `row + 1`
                radius = args.row_spacing_m / 2.0
                end_along = args.row_length_m if row % 2 == 0 else 0.0
                outward = 1.0 if row % 2 == 0 else -1.0
                centre = (end_along * self.along
                          + (row + 0.5) * args.row_spacing_m * self.across)
                angle = math.pi * dt / duration
                pos = (centre - math.cos(angle) * radius * self.across
                       + outward * math.sin(angle) * radius * self.along)
                return (float(pos[0]), float(pos[1])), None
            start += duration
        raise ValueError(t_s)  # pragma: no cover - the last segment catches every t

    def trigger_times(self, spacing_m: float, cols: int) -> List[float]:
        """
        Return the camera's trigger times (s), in time order.

        In each row, the camera fires where its optical axis is at
        ``(n + cols / 2) * spacing_m`` along the row (leaf n in the image's edge column).
        """
        args = self.args
        times = []
        start = 0.0
        for kind, row, duration in self.segments:
            if kind == 'row':
                lead = self.lead_in_m if row == 0 else 0.0
                n = 0
                while (n + cols / 2.0) * spacing_m <= args.row_length_m + 1e-9:
                    along = (n + cols / 2.0) * spacing_m
                    travelled = along if row % 2 == 0 else args.row_length_m - along
                    times.append(start + (lead + travelled) / args.speed_mps)
                    n += 1
            start += duration
        return sorted(times)


def gnss_condition(place: Optional[Tuple[int, float]]) -> str:
    """Return 'rtk', 'degraded' or 'outage' for a point of the track."""
    if place is not None:
        row, along = place
        if row == DEGRADED[0] and DEGRADED[1] <= along <= DEGRADED[2]:
            return 'degraded'
        if row == OUTAGE[0] and OUTAGE[1] <= along <= OUTAGE[2]:
            return 'outage'
    return 'rtk'


def build(args: argparse.Namespace) -> Dict[str, float]:
    """Write the bag; return a few figures about it."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    cols, rows_per_frame = (int(v) for v in args.grid.lower().split('x'))
    rng = np.random.default_rng(args.seed)
    pool = validation_pool(args.data)
    diseases = [label for label in sorted(pool) if label != HEALTHY]
    picker = LeafPicker(pool, rng)
    spacing_m = args.footprint_m / cols
    columns_per_row = int(math.ceil(args.row_length_m / spacing_m)) + cols
    # leaves[row][column] = [(label, path) per canopy level]
    leaves = []
    for row in range(args.rows):
        row_leaves = []
        for column in range(columns_per_row):
            along = (column + 0.5) * spacing_m
            level = []
            for _ in range(rows_per_frame):
                label = leaf_label(row, along, diseases, rng)
                level.append((label, picker.pick(label)))
            row_leaves.append(level)
        leaves.append(row_leaves)

    store = make_typestore()
    types = MessageTypes.from_typestore(store)
    T = store.types
    track = Track(args)
    t0_ns = int(START_UTC.timestamp()) * NS
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    figures = {'frames': 0, 'fixes': 0, 'leaf_tiles': 0, 'duration_s': track.duration_s}
    label_counts: Dict[str, int] = {}
    cache: Dict[str, np.ndarray] = {}

    def leaf_image(path: str) -> np.ndarray:
        if path not in cache:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None or image.shape[:2] != (LEAF_PX, LEAF_PX):
                raise SystemExit(f'{path}: not a {LEAF_PX}x{LEAF_PX} image')
            cache[path] = image
        return cache[path]

    events = []  # (log time ns, kind, stamp ns, payload)
    gps_period = 1.0 / args.gps_rate_hz
    degraded_bias = np.zeros(2)
    for k in range(int(track.duration_s / gps_period) + 1):
        t = k * gps_period
        (east, north), place = track.at(t)
        events.append((t0_ns + int(t * NS) + 25_000_000, 'fix', t0_ns + int(t * NS),
                       (east, north, gnss_condition(place))))
    for t in track.trigger_times(spacing_m, cols):
        _, place = track.at(t)
        if place is None:
            raise SystemExit(f'a trigger at {t:.3f} s is not in a row')  # pragma: no cover
        jitter_ns = int(rng.integers(0, 6_000_000))
        stamp = t0_ns + int(round(t * NS))
        events.append((stamp + 12_000_000 + jitter_ns, 'image', stamp, place))
    events.sort(key=lambda e: (e[0], e[1]))

    with Writer(args.out, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        image_conn = writer.add_connection(IMAGE_TOPIC, 'sensor_msgs/msg/CompressedImage',
                                           typestore=store)
        fix_conn = writer.add_connection(FIX_TOPIC, 'sensor_msgs/msg/NavSatFix',
                                         typestore=store)
        truth_conn = writer.add_connection(GROUND_TRUTH_TOPIC,
                                           'vision_msgs/msg/Detection2DArray', typestore=store)
        info_conn = writer.add_connection(CAMERA_INFO_TOPIC, 'sensor_msgs/msg/CameraInfo',
                                          typestore=store)
        width_px, height_px = cols * LEAF_PX, rows_per_frame * LEAF_PX
        focal_px = width_px * args.canopy_distance_m / args.footprint_m
        cx_px, cy_px = (width_px - 1) / 2.0, (height_px - 1) / 2.0
        for log_ns, kind, stamp, payload in events:
            if kind == 'fix':
                east, north, condition = payload
                if condition == 'outage':
                    lat = lon = alt = math.nan
                    status, sigma = STATUS_NO_FIX, 0.0
                    covariance_type = 0
                else:
                    if condition == 'degraded':
                        degraded_bias = 0.9 * degraded_bias + rng.normal(0.0, 0.25, 2)
                        sigma = 0.6
                        status = STATUS_FIX
                        noise = degraded_bias + rng.normal(0.0, 0.2, 2)
                    else:
                        degraded_bias[:] = 0.0
                        sigma = 0.02
                        status = STATUS_GBAS_FIX
                        noise = rng.normal(0.0, 0.015, 2)
                    lat, lon = offset_latlon(ORIGIN_LAT_DEG, ORIGIN_LON_DEG,
                                             east + noise[0], north + noise[1])
                    alt = ALTITUDE_M + 0.02 * north + rng.normal(0.0, 2 * sigma)
                    covariance_type = COVARIANCE_DIAGONAL_KNOWN
                cov = np.zeros(9, dtype=np.float64)
                cov[[0, 4, 8]] = [sigma ** 2, sigma ** 2, (2 * sigma) ** 2]
                msg = types.NavSatFix(
                    header=make_header(stamp, GPS_FRAME, types),
                    status=types.NavSatStatus(status=status,
                                              service=SERVICE_GPS_GALILEO),
                    latitude=lat, longitude=lon, altitude=alt, position_covariance=cov,
                    position_covariance_type=covariance_type)
                writer.write(fix_conn, log_ns,
                             store.serialize_cdr(msg, 'sensor_msgs/msg/NavSatFix'))
                figures['fixes'] += 1
                continue
            row, along = payload
            first = int(round(along / spacing_m - cols / 2.0))  # exact: trigger_times
            first = min(max(first, 0), columns_per_row - cols)
            mosaic = np.zeros((rows_per_frame * LEAF_PX, cols * LEAF_PX, 3), dtype=np.uint8)
            detections = []
            header = make_header(stamp, CAMERA_FRAME, types)
            for c in range(cols):
                # Row 1 is driven backwards: the camera on the right sees it mirrored.
                column = first + c if row % 2 == 0 else first + cols - 1 - c
                for level in range(rows_per_frame):
                    label, path = leaves[row][column][level]
                    x0, y0 = c * LEAF_PX, level * LEAF_PX
                    mosaic[y0:y0 + LEAF_PX, x0:x0 + LEAF_PX] = leaf_image(path)
                    label_counts[label] = label_counts.get(label, 0) + 1
                    pose = types.PoseWithCovariance(
                        pose=types.Pose(position=types.Point(x=0.0, y=0.0, z=0.0),
                                        orientation=types.Quaternion(x=0.0, y=0.0, z=0.0,
                                                                     w=1.0)),
                        covariance=np.zeros(36, dtype=np.float64))
                    detections.append(types.Detection2D(
                        header=header,
                        results=[types.ObjectHypothesisWithPose(
                            hypothesis=types.ObjectHypothesis(class_id=label, score=1.0),
                            pose=pose)],
                        bbox=types.BoundingBox2D(
                            center=types.VisionPose2D(
                                position=types.Point2D(x=x0 + LEAF_PX / 2.0,
                                                       y=y0 + LEAF_PX / 2.0), theta=0.0),
                            size_x=float(LEAF_PX), size_y=float(LEAF_PX)),
                        id=f'row{row}/leaf{column}.{level}'))
            ok, jpeg = cv2.imencode('.jpg', mosaic, [cv2.IMWRITE_JPEG_QUALITY, args.jpeg_quality])
            if not ok:
                raise SystemExit('OpenCV could not encode a JPEG')
            info = T['sensor_msgs/msg/CameraInfo'](
                header=header, height=height_px, width=width_px, distortion_model='plumb_bob',
                d=np.zeros(5, dtype=np.float64),
                k=np.array([focal_px, 0.0, cx_px, 0.0, focal_px, cy_px, 0.0, 0.0, 1.0]),
                r=np.eye(3).reshape(9),
                p=np.array([focal_px, 0.0, cx_px, 0.0, 0.0, focal_px, cy_px, 0.0,
                            0.0, 0.0, 1.0, 0.0]),
                binning_x=0, binning_y=0,
                roi=T['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0,
                                                          width=0, do_rectify=False))
            writer.write(info_conn, log_ns - 1_000_000,
                         store.serialize_cdr(info, 'sensor_msgs/msg/CameraInfo'))
            image = T['sensor_msgs/msg/CompressedImage'](
                header=header, format='jpeg', data=np.frombuffer(jpeg.tobytes(), np.uint8))
            writer.write(image_conn, log_ns,
                         store.serialize_cdr(image, 'sensor_msgs/msg/CompressedImage'))
            truth = types.Detection2DArray(header=header, detections=detections)
            writer.write(truth_conn, log_ns + 1_000_000,
                         store.serialize_cdr(truth, 'vision_msgs/msg/Detection2DArray'))
            figures['frames'] += 1
            figures['leaf_tiles'] += cols * rows_per_frame
    figures.update({f'tiles_{k}': v for k, v in sorted(label_counts.items())})
    figures['unique_leaf_photos'] = len(cache)
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    figures['size_mb'] = size / 1e6
    return figures


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build the bag and print what it holds."""
    args = parse_args(argv)
    figures = build(args)
    for key, value in figures.items():
        sys.stdout.write(f'{key}: {value:.1f}\n' if isinstance(value, float)
                         else f'{key}: {value}\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
