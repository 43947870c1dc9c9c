#!/usr/bin/env python3
r"""
Build robot-pass recordings of a vineyard row from real field photos (site adaptation check).

Usage::

    python3 tools/make_row_bags.py ../shared/datasets --out rows/ [--frames 60] [--seed 0]

What it writes under ``--out`` (rosbag2, MCAP; 1280x720 JPEG ``CompressedImage`` at
1 Hz, 0.7 m apart, ``NavSatFix`` at 10 Hz along a straight row, RTK noise):

- ``reference/``: a pass the grower believes healthy, panned and zoomed across the
  **reference** photos;
- ``test_clean/``: a second pass across **other** photos (the test photos), nothing
  pasted: every finding on it is false;
- ``test_pasted/``: the same frames as ``test_clean`` with two held-out diseased
  PlantVillage leaves pasted into each frame (segmented, 200-300 px long side,
  brightness matched to the spot they land on), and ``/ground_truth``
  (``vision_msgs/Detection2DArray``): one box per pasted leaf, ``class_id`` = disease;
- ``rows.json``: which photo and which leaf went where, for the record.

A frame is a crop of one photo (zoom 1.0-1.8, the window sliding across the photo
as the robot moves, a random flip per sweep), resized to 1280x720, with motion blur,
slow exposure and white-balance drift, sensor noise and JPEG at quality 80-92.

The pasted leaves come from the **validation** side of the leaf-grouped PlantVillage
split (photo-number blocks of 40, validation fraction 0.2, seed 0): leaves the shipped
model and the site adaptation (which composites **training**-side leaves) never saw.
The photos: see :data:`REFERENCE_PHOTOS` / :data:`TEST_PHOTOS` and the note there on
which of them the shipped model's training saw.
"""

import argparse
import datetime
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.geo.geodesy import offset_latlon
from leaf_disease_ros.perception.positions import STATUS_GBAS_FIX
from leaf_disease_ros.replay.typestore import make_typestore
from leaf_disease_ros.ros.conversions import make_header, MessageTypes
from leaf_disease_ros.training.dataset import build_split
from leaf_disease_ros.training.field_sim import Leaf, leaf_from_image, read_bgr

NS = 1_000_000_000
FRAME_W, FRAME_H = 1280, 720
IMAGE_TOPIC = '/camera/image_raw/compressed'
FIX_TOPIC = '/gps/fix'
GROUND_TRUTH_TOPIC = '/ground_truth'
CAMERA_FRAME = 'camera_optical_frame'
GPS_FRAME = 'gps_link'
ORIGIN_LAT_DEG = 46.30120   # a row in Burgundy; any place in a UTM zone will do
ORIGIN_LON_DEG = 4.83310
ROW_AZIMUTH_DEG = 15.0
STEP_M = 0.7
FIX_RATE_HZ = 10.0
START_UTC = datetime.datetime(2026, 6, 18, 9, 0, 0, tzinfo=datetime.timezone.utc)
#: Photos of ``field_grape_small`` the reference pass is made of (see TEST_PHOTOS).
REFERENCE_PHOTOS: Tuple[str, ...] = (
    'powdery_mildew/mareseestern_vineleaf__Echter_Mehltau.jpg',
    'healthy/esca_alessandrini_ThePebblesFr__healthy_1.jpg',
)
#: Photos the test passes are made of: never seen by any adaptation, and chosen to look
#: like the reference photos (dense shaded canopy; sunny light-green leaves), as a
#: second half of one row would. What the shipped model's own training saw of them:
#: the first chose its operating point (field_sim.FIELD_NEGATIVES['val']), the second
#: was a training background (FIELD_NEGATIVES['train']). The reference pass: the first
#: (powdery mildew, a disease the model was not taught, on mostly green canopy: a pass
#: a grower could believe healthy) was used by nothing; the second was a training
#: background.
TEST_PHOTOS: Tuple[str, ...] = (
    'healthy/matheli_vineleaf__Gesundes_Weinblatt.jpg',
    'unlabeled_field/mareseestern_vineleaf__example.jpg',
)
DISEASES: Tuple[str, ...] = ('black_rot', 'esca', 'leaf_blight')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('datasets', help='folder holding field_grape_small/ and '
                        'plantvillage_grape/ (../shared/datasets)')
    parser.add_argument('--out', required=True, help='new folder for the recordings')
    parser.add_argument('--frames', type=int, default=60, help='frames per pass (0.7 m each)')
    parser.add_argument('--leaves-per-frame', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--width', type=int, default=FRAME_W)
    parser.add_argument('--height', type=int, default=FRAME_H)
    return parser.parse_args(argv)


class Camera:
    """Slow photometric drift and per-frame degradations of a robot camera."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.exposure = 1.0
        self.balance = np.ones(3, np.float32)

    def shoot(self, frame: np.ndarray) -> np.ndarray:
        """Return ``frame`` (uint8 BGR) as this camera records it, drift updated."""
        rng = self.rng
        self.exposure = float(np.clip(self.exposure * math.exp(rng.normal(0, 0.06)), 0.7, 1.35))
        self.balance = np.clip(self.balance * np.exp(rng.normal(0, 0.02, 3)), 0.88, 1.12
                               ).astype(np.float32)
        img = frame.astype(np.float32) * self.exposure * self.balance
        length = int(rng.integers(1, 10))  # motion blur along the direction of travel
        if length > 1:
            kernel = np.zeros((1, length), np.float32)
            kernel[0, :] = 1.0 / length
            img = cv2.filter2D(img, -1, kernel)
        img += rng.normal(0, 2.5, img.shape).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)


def sweep_frames(photo: np.ndarray, count: int, rng: np.random.Generator,
                 size: Tuple[int, int]) -> List[np.ndarray]:
    """Return ``count`` frames panning across ``photo`` at a random zoom (one sweep)."""
    width, height = size
    h, w = photo.shape[:2]
    zoom = float(rng.uniform(1.0, 1.8))
    crop_w = min(w, int(h * width / height)) / zoom
    crop_h = crop_w * height / width
    crop_w, crop_h = int(crop_w), int(crop_h)
    flip = bool(rng.random() < 0.5)
    y_start = float(rng.uniform(0, h - crop_h))
    y_end = float(rng.uniform(0, h - crop_h))
    frames = []
    for k in range(count):
        t = k / max(count - 1, 1)
        x0 = int(round(t * (w - crop_w)))
        y0 = int(round(y_start + t * (y_end - y_start)))
        crop = photo[y0:y0 + crop_h, x0:x0 + crop_w]
        frame = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA
                           if crop_w > width else cv2.INTER_LINEAR)
        frames.append(frame[:, ::-1].copy() if flip else frame)
    return frames


def pass_frames(photos: Sequence[np.ndarray], count: int, rng: np.random.Generator,
                size: Tuple[int, int]) -> Tuple[List[np.ndarray], List[int]]:
    """Return ``count`` frames of sweeps over the photos in turn, and each frame's photo."""
    frames: List[np.ndarray] = []
    sources: List[int] = []
    index = 0
    while len(frames) < count:
        sweep = int(rng.integers(8, 16))
        made = sweep_frames(photos[index % len(photos)], min(sweep, count - len(frames)), rng,
                            size)
        frames.extend(made)
        sources.extend([index % len(photos)] * len(made))
        index += 1
    return frames, sources


def validation_leaves(pv_root: str, rng: np.random.Generator, per_class: int
                      ) -> Dict[str, List[Leaf]]:
    """Segment ``per_class`` validation-side diseased leaves of each disease."""
    labels, _, val, _ = build_split(pv_root, None, 'photo-blocks', 40, None, 0.2, 0)
    leaves: Dict[str, List[Leaf]] = {d: [] for d in DISEASES}
    by_label: Dict[str, List[str]] = {d: [] for d in DISEASES}
    for sample in val:
        name = labels[sample.label_index]
        if name in by_label:
            by_label[name].append(sample.path)
    for name, paths in by_label.items():
        for path in rng.permutation(paths):
            leaf = leaf_from_image(read_bgr(str(path)), DISEASES.index(name),
                                   os.path.basename(str(path)))
            if leaf is not None:
                leaves[name].append(leaf)
            if len(leaves[name]) >= per_class:
                break
    return leaves


def paste(frame: np.ndarray, leaf: Leaf, rng: np.random.Generator,
          taken: List[Tuple[int, int, int, int]]) -> Optional[Tuple[int, int, int, int]]:
    """Paste ``leaf`` (200-300 px long side, brightness matched); return its box or None."""
    height, width = frame.shape[:2]
    long_px = float(rng.uniform(200, 300))
    h, w = leaf.alpha.shape
    zoom = long_px / max(h, w)
    angle = float(rng.uniform(0, 360))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, zoom)
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ m.T
    span_x = int(math.ceil(corners[:, 0].max() - corners[:, 0].min()))
    span_y = int(math.ceil(corners[:, 1].max() - corners[:, 1].min()))
    for _ in range(20):
        x0 = int(rng.integers(0, width - span_x))
        y0 = int(rng.integers(0, height - span_y))
        box = (x0, y0, x0 + span_x, y0 + span_y)
        if all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1]
               for t in taken):
            break
    else:
        return None
    m[0, 2] += x0 - corners[:, 0].min()
    m[1, 2] += y0 - corners[:, 1].min()
    bgr = cv2.warpAffine(leaf.bgr, m, (width, height), flags=cv2.INTER_AREA,
                         borderMode=cv2.BORDER_CONSTANT).astype(np.float32)
    alpha = cv2.warpAffine(leaf.alpha, m, (width, height), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    region = frame[y0:y0 + span_y, x0:x0 + span_x].astype(np.float32)
    inside = alpha[y0:y0 + span_y, x0:x0 + span_x] > 0.5
    leaf_luma = float(bgr[y0:y0 + span_y, x0:x0 + span_x][inside].mean()) if inside.any() else 1
    gain = float(np.clip(region.mean() / max(leaf_luma, 1.0) * rng.uniform(0.95, 1.25),
                         0.45, 1.2))
    a = alpha[..., None]
    out = frame.astype(np.float32) * (1 - a) + bgr * gain * a
    frame[:] = np.clip(out, 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(alpha > 0.5)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


class RowWriter:
    """Writes one pass as a rosbag2 MCAP: fixes at 10 Hz, frames at 1 Hz, ground truth."""

    def __init__(self, path: str, start_offset_s: float) -> None:
        self.path = path
        self.store = make_typestore()
        self.types = MessageTypes.from_typestore(self.store)
        self.t0_ns = int((START_UTC.timestamp() + start_offset_s) * NS)
        self.rng = np.random.default_rng(abs(hash(path)) % (2 ** 32))

    def write(self, frames: Sequence[np.ndarray], truths: Sequence[Sequence[Any]],
              jpeg_rng: np.random.Generator) -> None:
        """Write the frames (1 Hz, 0.7 m apart) with fixes around them and their truth."""
        from rosbags.rosbag2 import StoragePlugin, Writer

        store, types = self.store, self.types
        T = store.types
        duration_s = len(frames) + 1.0
        azimuth = math.radians(ROW_AZIMUTH_DEG)
        events: List[Tuple[int, str, int, Any]] = []
        for k in range(int(duration_s * FIX_RATE_HZ) + 1):
            t = k / FIX_RATE_HZ
            events.append((self.t0_ns + int(t * NS) + 20_000_000, 'fix',
                           self.t0_ns + int(t * NS), t))
        for k in range(len(frames)):
            stamp = self.t0_ns + int((k + 0.5) * NS)
            events.append((stamp + 15_000_000, 'image', stamp, k))
        events.sort(key=lambda e: (e[0], e[1]))
        with Writer(self.path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
            image_conn = writer.add_connection(IMAGE_TOPIC, 'sensor_msgs/msg/CompressedImage',
                                               typestore=store)
            fix_conn = writer.add_connection(FIX_TOPIC, 'sensor_msgs/msg/NavSatFix',
                                             typestore=store)
            truth_conn = writer.add_connection(GROUND_TRUTH_TOPIC,
                                               'vision_msgs/msg/Detection2DArray',
                                               typestore=store)
            for log_ns, kind, stamp, payload in events:
                if kind == 'fix':
                    along = STEP_M * float(payload)
                    noise = self.rng.normal(0.0, 0.015, 2)
                    lat, lon = offset_latlon(ORIGIN_LAT_DEG, ORIGIN_LON_DEG,
                                             along * math.sin(azimuth) + noise[0],
                                             along * math.cos(azimuth) + noise[1])
                    cov = np.zeros(9, np.float64)
                    cov[[0, 4, 8]] = [0.02 ** 2, 0.02 ** 2, 0.04 ** 2]
                    msg = types.NavSatFix(
                        header=make_header(stamp, GPS_FRAME, types),
                        status=types.NavSatStatus(status=STATUS_GBAS_FIX, service=1),
                        latitude=lat, longitude=lon, altitude=220.0, position_covariance=cov,
                        position_covariance_type=2)
                    writer.write(fix_conn, log_ns,
                                 store.serialize_cdr(msg, 'sensor_msgs/msg/NavSatFix'))
                    continue
                header = make_header(stamp, CAMERA_FRAME, types)
                quality = int(jpeg_rng.integers(80, 93))
                ok, jpeg = cv2.imencode('.jpg', frames[payload],
                                        [cv2.IMWRITE_JPEG_QUALITY, quality])
                if not ok:
                    raise RuntimeError('OpenCV could not encode a JPEG')
                image = T['sensor_msgs/msg/CompressedImage'](
                    header=header, format='jpeg', data=np.frombuffer(jpeg.tobytes(), np.uint8))
                writer.write(image_conn, log_ns,
                             store.serialize_cdr(image, 'sensor_msgs/msg/CompressedImage'))
                detections = [self._box(header, label, box, i)
                              for i, (label, box) in enumerate(truths[payload])]
                truth = types.Detection2DArray(header=header, detections=detections)
                writer.write(truth_conn, log_ns + 1_000_000,
                             store.serialize_cdr(truth, 'vision_msgs/msg/Detection2DArray'))

    def _box(self, header: Any, label: str, box: Tuple[int, int, int, int], index: int) -> Any:
        types = self.types
        x0, y0, x1, y1 = box
        pose = types.PoseWithCovariance(
            pose=types.Pose(position=types.Point(x=0.0, y=0.0, z=0.0),
                            orientation=types.Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)),
            covariance=np.zeros(36, dtype=np.float64))
        return types.Detection2D(
            header=header,
            results=[types.ObjectHypothesisWithPose(
                hypothesis=types.ObjectHypothesis(class_id=label, score=1.0), pose=pose)],
            bbox=types.BoundingBox2D(
                center=types.VisionPose2D(position=types.Point2D(x=(x0 + x1) / 2.0,
                                                                 y=(y0 + y1) / 2.0),
                                          theta=0.0),
                size_x=float(x1 - x0), size_y=float(y1 - y0)),
            id=f'pasted{index}')


def build(args: argparse.Namespace) -> Dict[str, Any]:
    """Write the three passes and ``rows.json``; return the record."""
    if os.path.lexists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
        raise SystemExit(f'--out {args.out} exists and is not an empty folder; give a new one')
    os.makedirs(args.out, exist_ok=True)
    field_root = os.path.join(args.datasets, 'field_grape_small')
    pv_root = os.path.join(args.datasets, 'plantvillage_grape')
    rng = np.random.default_rng(args.seed)
    size = (args.width, args.height)
    camera = Camera(np.random.default_rng(args.seed + 1))
    ref_photos = [read_bgr(os.path.join(field_root, p)) for p in REFERENCE_PHOTOS]
    test_photos = [read_bgr(os.path.join(field_root, p)) for p in TEST_PHOTOS]
    ref_frames, ref_sources = pass_frames(ref_photos, args.frames, rng, size)
    ref_frames = [camera.shoot(f) for f in ref_frames]
    test_frames, test_sources = pass_frames(test_photos, args.frames, rng, size)
    test_frames = [camera.shoot(f) for f in test_frames]
    leaves = validation_leaves(pv_root, rng, per_class=max(4, args.frames))
    pasted_frames: List[np.ndarray] = []
    truths: List[List[Tuple[str, Tuple[int, int, int, int]]]] = []
    used: List[List[str]] = []
    for frame in test_frames:
        copy = frame.copy()
        truth: List[Tuple[str, Tuple[int, int, int, int]]] = []
        names: List[str] = []
        for _ in range(args.leaves_per_frame):
            disease = DISEASES[int(rng.integers(len(DISEASES)))]
            leaf = leaves[disease][int(rng.integers(len(leaves[disease])))]
            box = paste(copy, leaf, rng, [b for _, b in truth])
            if box is not None:
                truth.append((disease, box))
                names.append(leaf.source)
        # the pasted leaf goes through the same camera (blur, noise) as its frame
        pasted_frames.append(cv2.GaussianBlur(copy, (3, 3), 0.6))
        truths.append(truth)
        used.append(names)
    jpeg_rng = np.random.default_rng(args.seed + 2)
    RowWriter(os.path.join(args.out, 'reference'), 0.0).write(
        ref_frames, [[] for _ in ref_frames], jpeg_rng)
    RowWriter(os.path.join(args.out, 'test_clean'), 3600.0).write(
        test_frames, [[] for _ in test_frames], np.random.default_rng(args.seed + 3))
    RowWriter(os.path.join(args.out, 'test_pasted'), 7200.0).write(
        pasted_frames, truths, np.random.default_rng(args.seed + 3))
    record = {
        'seed': args.seed, 'frames_per_pass': args.frames, 'step_m': STEP_M,
        'frame_px': list(size),
        'reference_photos': list(REFERENCE_PHOTOS), 'test_photos': list(TEST_PHOTOS),
        'reference_frame_photo': [REFERENCE_PHOTOS[i] for i in ref_sources],
        'test_frame_photo': [TEST_PHOTOS[i] for i in test_sources],
        'pasted_leaves': used,
        'pasted_leaf_count': sum(len(t) for t in truths),
        'pasted_leaf_source': 'validation side of the leaf-grouped PlantVillage split '
                              '(blocks of 40, fraction 0.2, seed 0)',
    }
    with open(os.path.join(args.out, 'rows.json'), 'w', encoding='utf-8') as stream:
        json.dump(record, stream, indent=1)
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build the recordings and say what they hold."""
    args = parse_args(argv)
    record = build(args)
    sys.stdout.write(f"wrote {args.out}: 3 passes of {record['frames_per_pass']} frames, "
                     f"{record['pasted_leaf_count']} pasted leaves\n")
    return 0


if __name__ == '__main__':
    sys.exit(main())
