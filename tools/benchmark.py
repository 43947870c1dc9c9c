#!/usr/bin/env python3
"""
Benchmark the perception pipeline against its own backend, and print JSON.

Usage::

    python tools/benchmark.py [--model M.onnx] [--frames DIR] [--frames-count 60]

Measures, on this machine:

(a) raw backend throughput: ``backend.infer`` on a preprocessed batch of the same
    size the pipeline sends (the tiles of one frame), in images/s;
(b) the full ``Detector.process`` (tiling, vegetation gate, preprocessing, inference,
    postprocessing, geotag lookup) in frames/s and tiles/s, with per-stage latency
    p50/p99 in milliseconds;

and ``pipeline_efficiency = pipeline tiles/s / raw backend images/s``: the share of
the model's speed the pipeline keeps (1.0 means our code costs nothing).

The two are measured in interleaved blocks (raw, pipeline, raw, pipeline, ...) so a
machine whose speed drifts (thermal, other load) affects both equally. Frames are
the images of ``--frames`` (any size; each image is one frame) or, by default,
768x512 mosaics of 3x2 real leaf photos from ``test/data/leaves`` (6 tiles of 256 px
per frame). Peak resident memory is reported too.
"""

import argparse
import json
import os
import platform
import resource
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np

from leaf_disease_ros.geo.geotag import FixBuffer
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.atomic_io import atomic_write_json
from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.errors import LeafDiseaseError
from leaf_disease_ros.perception.image_folders import is_image_file
from leaf_disease_ros.perception.pipeline import Detector, STAGES
from leaf_disease_ros.perception.positions import Fix
from leaf_disease_ros.perception.preprocess import preprocess
from leaf_disease_ros.perception.tiling import crops, tile_boxes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEAVES = os.path.join(REPO, 'test', 'data', 'leaves')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description='Benchmark the pipeline against its backend.',
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--model', default='', help='ONNX model or engine (default: shipped)')
    parser.add_argument('--backend', default='onnxruntime',
                        choices=('auto', 'onnxruntime', 'tensorrt'))
    parser.add_argument('--threads', type=int, default=0, help='onnxruntime intra-op threads')
    parser.add_argument('--frames', help='folder of frame images (default: leaf mosaics)')
    parser.add_argument('--frames-count', type=int, default=60,
                        help='frames processed by the pipeline (and raw batches run)')
    parser.add_argument('--blocks', type=int, default=6,
                        help='interleaved measurement blocks per side')
    parser.add_argument('--warmup', type=int, default=5, help='untimed iterations first')
    parser.add_argument('--out', help='also write the JSON to this file')
    return parser.parse_args(argv)


def mosaic_frames(count: int = 8) -> List[np.ndarray]:
    """Return ``count`` 768x512 mosaics of 3x2 real leaf photos (256 px each)."""
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(LEAVES)
                   for name in names if is_image_file(name))
    if len(paths) < 6:
        raise LeafDiseaseError(f'need at least 6 leaf photos under {LEAVES}')
    leaves = [cv2.resize(cv2.imread(p), (256, 256)) for p in paths]
    frames = []
    for i in range(count):
        pick = [leaves[(i * 5 + k * 7) % len(leaves)] for k in range(6)]
        frames.append(np.vstack([np.hstack(pick[:3]), np.hstack(pick[3:])]))
    return frames


def folder_frames(folder: str) -> List[np.ndarray]:
    """Return the decodable images of ``folder`` as frames."""
    frames = [cv2.imread(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
              if is_image_file(name)]
    frames = [f for f in frames if f is not None]
    if not frames:
        raise LeafDiseaseError(f'{folder} holds no readable images')
    return frames


def percentiles(values: Sequence[float]) -> Dict[str, float]:
    """Return p50 and p99 of ``values``."""
    array = np.asarray(values, dtype=np.float64)
    return {'p50': float(np.percentile(array, 50)), 'p99': float(np.percentile(array, 99))}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the benchmark; return the JSON document."""
    backend = load_backend(args.model, args.backend, intra_op_threads=args.threads,
                           warn=lambda text: sys.stderr.write(text + '\n'))
    card = backend.card
    frames = folder_frames(args.frames) if args.frames else mosaic_frames()
    config = DetectorConfig()
    detector = Detector(backend, card, config)
    fixes = FixBuffer()
    for i in range(0, 200):
        fixes.add(Fix(i * 200_000_000, 46.0 + i * 1e-6, 7.0))

    # The raw side runs the batch the pipeline would send for the first frame.
    height, width = frames[0].shape[:2]
    boxes = tile_boxes(height, width, config.tiling, config.tile_size_px, config.tile_stride_px)
    batch = preprocess(crops(frames[0], boxes), card)[:backend.max_batch]
    batch = np.ascontiguousarray(batch)

    for i in range(args.warmup):
        backend.infer(batch)
        detector.process(frames[i % len(frames)], i * 100_000_000, fixes)

    per_block = max(1, args.frames_count // args.blocks)
    raw_seconds = 0.0
    raw_images = 0
    pipe_seconds = 0.0
    pipe_tiles = 0
    pipe_frames = 0
    stage_ms: Dict[str, List[float]] = {stage: [] for stage in STAGES}
    frame_index = 0
    for _ in range(args.blocks):
        start = time.perf_counter()
        for _ in range(per_block):
            backend.infer(batch)
        raw_seconds += time.perf_counter() - start
        raw_images += per_block * batch.shape[0]

        start = time.perf_counter()
        for _ in range(per_block):
            result = detector.process(frames[frame_index % len(frames)],
                                      frame_index * 250_000_000, fixes)
            frame_index += 1
            pipe_tiles += len(result.detections)
            for stage in STAGES:
                stage_ms[stage].append(result.timings_ms[stage])
        pipe_seconds += time.perf_counter() - start
        pipe_frames += per_block
    backend.close()

    raw_ips = raw_images / raw_seconds
    tiles_ps = pipe_tiles / pipe_seconds
    return {
        'machine': {'cpu_count': os.cpu_count(), 'platform': platform.platform(),
                    'processor': platform.processor() or platform.machine(),
                    'python': platform.python_version(), 'numpy': np.__version__,
                    'opencv': cv2.__version__},
        'model': backend.describe(),
        'input_px': list(card.input_hw_px),
        'frame_px': [int(height), int(width)],
        'tiles_per_frame': int(batch.shape[0]),
        'raw_backend': {'batch_size': int(batch.shape[0]), 'images': raw_images,
                        'seconds': raw_seconds, 'images_per_s': raw_ips},
        'pipeline': {'frames': pipe_frames, 'tiles': pipe_tiles, 'seconds': pipe_seconds,
                     'frames_per_s': pipe_frames / pipe_seconds, 'tiles_per_s': tiles_ps,
                     'stage_latency_ms': {s: percentiles(v) for s, v in stage_ms.items()}},
        'pipeline_efficiency': tiles_ps / raw_ips,
        'target_efficiency': 0.90,
        'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    try:
        document = run(args)
    except LeafDiseaseError as exc:
        sys.stderr.write(f'error: {exc}\n')
        return 1
    text = json.dumps(document, indent=2)
    sys.stdout.write(text + '\n')
    if args.out:
        atomic_write_json(args.out, document)
    return 0


if __name__ == '__main__':
    sys.exit(main())
