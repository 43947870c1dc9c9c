#!/usr/bin/env python3
"""
Contact sheet of the node's debug overlays on a folder of field photos, and counts per label.

Usage::

    python3 tools/field_contact_sheet.py ../shared/datasets/field_grape_small
        --model engines/leaf_lite0_field.onnx --out sheet.jpg [--json counts.json]

Every photo (``FOLDER/<class>/*.jpg``) is resized to the robot camera's width (1280 px,
as in the issue-10 field check) and run through the node's own
:class:`~leaf_disease_ros.perception.pipeline.Detector` with the default parameters
(tiles, vegetation gate, the card's operating point) and drawn with the node's
``~/debug_image`` renderer (:func:`leaf_disease_ros.ros.debug_image.draw_detections`:
red = finding, orange = disease below the finding threshold, green = healthy or
background, grey = unknown). Prints, and with ``--json`` writes, the counts per label
and findings per photo and per class folder.
"""

import argparse
import glob
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np

from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.pipeline import Detector
from leaf_disease_ros.ros.debug_image import draw_detections

FRAME_WIDTH_PX = 1280
THUMB_W_PX, THUMB_H_PX = 640, 720


def photo_counts(detections: Sequence[Any]) -> Dict[str, int]:
    """Return tiles per label, findings, and findings per label of one photo."""
    counts: Dict[str, int] = {'tiles_kept': len(detections), 'findings': 0}
    for d in detections:
        counts[d.label] = counts.get(d.label, 0) + 1
        if d.is_finding:
            counts['findings'] += 1
            counts[f'findings_{d.label}'] = counts.get(f'findings_{d.label}', 0) + 1
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write the contact sheet and print the counts."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('folder', help='field photos in class subfolders')
    parser.add_argument('--model', default='', help='ONNX model (default: the shipped one)')
    parser.add_argument('--out', required=True, help='contact sheet (.jpg)')
    parser.add_argument('--json', help='write the counts here')
    args = parser.parse_args(argv)
    photos = sorted(glob.glob(os.path.join(args.folder, '*', '*.jpg')))
    if not photos:
        parser.error(f'no FOLDER/<class>/*.jpg photos under {args.folder}')
    backend = load_backend(args.model, 'onnxruntime')
    detector = Detector(backend, backend.card)
    thumbs: List[np.ndarray] = []
    per_photo: Dict[str, Dict[str, int]] = {}
    per_folder: Dict[str, Dict[str, int]] = {}
    for index, path in enumerate(photos):
        frame = cv2.imread(path, cv2.IMREAD_COLOR)
        if frame is None:
            parser.error(f'{path} is not a readable image')
        height, width = frame.shape[:2]
        frame = cv2.resize(frame, (FRAME_WIDTH_PX, int(round(height * FRAME_WIDTH_PX / width))),
                           interpolation=cv2.INTER_AREA)
        result = detector.process(frame, index)
        counts = photo_counts(result.detections)
        rel = os.path.relpath(path, args.folder)
        per_photo[rel] = counts
        folder = per_folder.setdefault(os.path.dirname(rel),
                                       {'photos': 0, 'photos_with_finding': 0})
        folder['photos'] += 1
        folder['photos_with_finding'] += int(counts['findings'] > 0)
        for key, value in counts.items():
            folder[key] = folder.get(key, 0) + value
        image = draw_detections(frame, result.detections,
                                f"{rel[:48]}  findings {counts['findings']}")
        zoom = min(THUMB_W_PX / image.shape[1], THUMB_H_PX / image.shape[0])
        thumb = cv2.resize(image, (int(image.shape[1] * zoom), int(image.shape[0] * zoom)),
                           interpolation=cv2.INTER_AREA)
        canvas = np.zeros((THUMB_H_PX, THUMB_W_PX, 3), np.uint8)
        canvas[:thumb.shape[0], :thumb.shape[1]] = thumb
        thumbs.append(canvas)
    while len(thumbs) % 4:
        thumbs.append(np.zeros_like(thumbs[0]))
    rows = [np.hstack(thumbs[i:i + 4]) for i in range(0, len(thumbs), 4)]
    cv2.imwrite(args.out, np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 80])
    summary = {'model': backend.describe().get('model_id', ''),
               'finding_threshold': detector.finding_threshold(),
               'finding_score': backend.card.finding_score,
               'per_folder': per_folder, 'per_photo': per_photo}
    for name, counts in sorted(per_folder.items()):
        sys.stdout.write(f'{name}: {json.dumps(counts, sort_keys=True)}\n')
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as stream:
            json.dump(summary, stream, indent=1, sort_keys=True)
    backend.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
