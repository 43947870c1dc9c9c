#!/usr/bin/env python3
"""
Measure what decoding JPEG frames at reduced size changes in the model's outputs.

Developer script (benchmarks/reduced_decode_parity.json). Material: every real field
photo in ``../shared/datasets/field_grape_small`` (vineyard leaves, CC licences, see
its README) and the benchmark's eight PlantVillage leaf mosaics, each cut to the
camera's 1280x720 (cover, INTER_AREA) and encoded as a camera would, JPEG quality 90.
Nothing here was used to make or choose the model, the tiling or the decode rule.

For every frame, the shipped model and the default parameters run the same frame
three ways through ``Detector``:

- ``full``: decoded at full size, tiles resized by the card's rule (the reference);
- ``reduced``: decoded at the reduced scale ``perception/reduced_decode.py`` allows;
- ``q85`` (the yardstick): the same frame JPEG-encoded at quality 85 instead of 90 and
  decoded at full size: how much the model's outputs move with a change of the
  camera's own compression that nobody would call a different image.

Per pair (full vs reduced, full vs q85): tiles gated differently, top-label agreement,
findings that flip, and the mean / 99th percentile / largest change of the finding
score. ``test/test_reduced_decode.py`` reruns this and compares.

    python3 tools/reduced_decode_parity.py --out benchmarks/reduced_decode_parity.json
"""

import argparse
import glob
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.pipeline import Detector, FrameResult
from leaf_disease_ros.perception.reduced_decode import jpeg_size_px, reduced_scale, \
    try_reduced_decode

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FIELD = os.path.join(REPO, '..', 'shared', 'datasets', 'field_grape_small')
FRAME_WH = (1280, 720)
QUALITY = 90
YARDSTICK_QUALITY = 85


def cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Return the centre of ``image`` scaled (INTER_AREA) to cover ``width`` x ``height``."""
    scale = max(width / image.shape[1], height / image.shape[0])
    size = (int(np.ceil(image.shape[1] * scale)), int(np.ceil(image.shape[0] * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    top = (resized.shape[0] - height) // 2
    left = (resized.shape[1] - width) // 2
    return resized[top:top + height, left:left + width]


def frames(field_dir: str = FIELD) -> List[Tuple[str, np.ndarray]]:
    """Return ``(name, 1280x720 BGR)`` of every field photo and the eight leaf mosaics."""
    sys.path.insert(0, HERE)
    from benchmark import mosaic_frames

    found = [(f'mosaic_{k}', cover(m, *FRAME_WH)) for k, m in enumerate(mosaic_frames(8))]
    for path in sorted(glob.glob(os.path.join(field_dir, '**', '*.jp*g'), recursive=True)):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is not None:
            found.append((os.path.relpath(path, field_dir), cover(image, *FRAME_WH)))
    return found


def _compare(reference: FrameResult, other: FrameResult) -> Dict[str, Any]:
    ref = {d.box_xyxy_px: d for d in reference.detections}
    oth = {d.box_xyxy_px: d for d in other.detections}
    common = sorted(set(ref) & set(oth))
    return {'gated_differently': len(set(ref) ^ set(oth)), 'compared': len(common),
            'same_label': sum(ref[b].label == oth[b].label for b in common),
            'finding_flips': sum(ref[b].is_finding != oth[b].is_finding for b in common),
            'score_changes': [abs(ref[b].finding_score - oth[b].finding_score) for b in common]}


def _summary(parts: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    changes = [c for p in parts for c in p['score_changes']]
    compared = sum(p['compared'] for p in parts)
    return {'tiles_compared': compared,
            'tiles_gated_differently': int(sum(p['gated_differently'] for p in parts)),
            'top_label_agreement': float(sum(p['same_label'] for p in parts)) / max(compared, 1),
            'finding_flips': int(sum(p['finding_flips'] for p in parts)),
            'finding_score_change_mean': float(np.mean(changes)) if changes else 0.0,
            'finding_score_change_p99': float(np.percentile(changes, 99)) if changes else 0.0,
            'finding_score_change_max': float(np.max(changes)) if changes else 0.0}


def measure(model: str = '', field_dir: str = FIELD) -> Dict[str, Any]:
    """Run the three decodes of every frame; return the JSON document."""
    backend = load_backend(model, 'onnxruntime')
    card = backend.card
    config = DetectorConfig()
    detector = Detector(backend, card, config)
    reduced_parts: List[Dict[str, Any]] = []
    yardstick_parts: List[Dict[str, Any]] = []
    scales = set()
    material = frames(field_dir)
    for _, frame in material:
        jpeg = cv2.imencode('.jpg', frame, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1]
        jpeg85 = cv2.imencode('.jpg', frame, [cv2.IMWRITE_JPEG_QUALITY, YARDSTICK_QUALITY])[1]
        size = jpeg_size_px(jpeg)
        scale = reduced_scale(size, config, card) if size is not None else 1
        scales.add(scale)
        full = detector.process(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), 0)
        reduced: Optional[Tuple[np.ndarray, int]] = try_reduced_decode(jpeg, config, card)
        if reduced is None:
            raise RuntimeError(f'no reduced decode for a {FRAME_WH} frame with the shipped '
                               'card and default tiling: the rule changed')
        fast = detector.process_prepared(detector.prepare(reduced[0], pixel_scale=reduced[1]),
                                         0)
        q85 = detector.process(cv2.imdecode(jpeg85, cv2.IMREAD_COLOR), 0)
        reduced_parts.append(_compare(full, fast))
        yardstick_parts.append(_compare(full, q85))
    backend.close()
    return {
        'what': 'model outputs of JPEG frames decoded at reduced size vs full size, with '
                'the change from JPEG quality 90 to 85 as the yardstick',
        'command': 'python3 tools/reduced_decode_parity.py --out '
                   'benchmarks/reduced_decode_parity.json',
        'model_id': backend.model_id, 'frame_px': [FRAME_WH[1], FRAME_WH[0]],
        'jpeg_quality': QUALITY, 'scales': sorted(int(s) for s in scales),
        'tile_size_px': config.tile_size_px, 'tile_stride_px': config.tile_stride_px,
        'material': {'field_photos': sum(not n.startswith('mosaic_') for n, _ in material),
                     'leaf_mosaics': sum(n.startswith('mosaic_') for n, _ in material),
                     'field_source': '../shared/datasets/field_grape_small (real vineyard '
                                     'photos), cut to 1280x720',
                     'mosaic_source': 'tools/benchmark.py mosaic_frames (PlantVillage '
                                      'leaves of test/data/leaves)'},
        'reduced_vs_full': _summary(reduced_parts),
        'q85_vs_q90_yardstick': _summary(yardstick_parts),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print (and with --out write) the parity JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='', help='ONNX model (default: shipped)')
    parser.add_argument('--out', help='also write the JSON here')
    args = parser.parse_args(argv)
    document = measure(args.model)
    text = json.dumps(document, indent=2) + '\n'
    sys.stdout.write(text)
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as handle:
            handle.write(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
