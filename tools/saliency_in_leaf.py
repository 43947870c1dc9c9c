#!/usr/bin/env python3
"""
Where does the saliency fall? Its share of mass inside the leaf, per class, on single-leaf photos.

Usage::

    leaf-disease-split ../shared/datasets/plantvillage_grape --out /tmp/pv_split
    python3 tools/saliency_in_leaf.py /tmp/pv_split/val --per-class 20 [--model M.onnx]
        [--method occlusion|rise] [--grid 7] [--json out.json]

For the first ``--per-class`` images (sorted by name) of every class folder, the
saliency of the predicted class (:mod:`leaf_disease_ros.explain.saliency`, through the
backend) and the leaf mask (:mod:`leaf_disease_ros.explain.leaf_mask`) give the share
of saliency mass inside the leaf, next to the leaf's share of the image (what a
uniform map would score). Prints a table and the time per tile; ``--json`` writes
the per-image figures.
"""

import argparse
import json
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from leaf_disease_ros.explain.images import read_image
from leaf_disease_ros.explain.leaf_mask import leaf_mask
from leaf_disease_ros.explain.saliency import explain_tiles, mass_inside
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.image_folders import list_class_folders


def measure(data: str, per_class: int, model: str = '', method: str = 'occlusion',
            grid: int = 7, threads: int = 0) -> Dict[str, Any]:
    """Return per-class and per-image figures (see the module doc)."""
    labels, samples, _ = list_class_folders(data)
    backend = load_backend(model, 'auto', intra_op_threads=threads)
    per_image: List[Dict[str, Any]] = []
    started = time.perf_counter()
    inferences = batches = 0
    try:
        for index, label in enumerate(labels):
            paths = [s.path for s in samples if s.label_index == index][:per_class]
            images = [img for img in (read_image(p) for p in paths) if img is not None]
            run = explain_tiles(images, backend, backend.card, method, grid=grid)
            inferences += run.inferences
            batches += run.batches
            for path, image, saliency in zip(paths, images, run.maps):
                mask = leaf_mask(image)
                per_image.append({'path': path, 'label': label, 'predicted': saliency.label,
                                  'score': saliency.score,
                                  'mass_in_leaf': mass_inside(saliency.heat, mask),
                                  'leaf_area_fraction': float(mask.mean())})
    finally:
        backend.close()
    seconds = time.perf_counter() - started
    classes = {}
    for label in labels:
        rows = [r for r in per_image if r['label'] == label]
        mass = np.array([r['mass_in_leaf'] for r in rows])
        area = np.array([r['leaf_area_fraction'] for r in rows])
        classes[label] = {'tiles': len(rows), 'mass_in_leaf_mean': float(mass.mean()),
                          'mass_in_leaf_median': float(np.median(mass)),
                          'mass_in_leaf_min': float(mass.min()),
                          'leaf_area_fraction_mean': float(area.mean()),
                          'correct': sum(r['label'] == r['predicted'] for r in rows)}
    return {'data': data, 'method': method, 'grid': grid, 'classes': classes,
            'tiles': len(per_image), 'inferences': inferences, 'batched_calls': batches,
            'ms_per_tile': 1e3 * seconds / max(1, len(per_image)), 'images': per_image}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the table; optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('data', help='folder of class subfolders of single-leaf photos')
    parser.add_argument('--per-class', type=int, default=20)
    parser.add_argument('--model', default='')
    parser.add_argument('--method', default='occlusion', choices=('occlusion', 'rise'))
    parser.add_argument('--grid', type=int, default=7)
    parser.add_argument('--threads', type=int, default=0)
    parser.add_argument('--json', default='')
    args = parser.parse_args(argv)
    result = measure(args.data, args.per_class, args.model, args.method, args.grid,
                     args.threads)
    out = sys.stdout
    out.write('| class | tiles | saliency mass in leaf (mean / median / min) | leaf area '
              '| correct |\n|---|---|---|---|---|\n')
    for label, row in result['classes'].items():
        out.write(f"| {label} | {row['tiles']} | {row['mass_in_leaf_mean']:.3f} / "
                  f"{row['mass_in_leaf_median']:.3f} / {row['mass_in_leaf_min']:.3f} | "
                  f"{row['leaf_area_fraction_mean']:.3f} | {row['correct']} |\n")
    per_tile = result['inferences'] / max(1, result['tiles'])
    out.write(f"{result['method']}: {per_tile:.0f} inferences per tile in "
              f"{result['batched_calls']} batched calls for {result['tiles']} tiles, "
              f"{result['ms_per_tile']:.0f} ms per tile\n")
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as stream:
            json.dump(result, stream, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
