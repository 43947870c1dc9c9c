#!/usr/bin/env python3
r"""
Build the shipped leaf bank ``engines/leaf_bank``: the leaves ``leaf-disease-site`` composites.

Usage::

    python3 tools/make_leaf_bank.py ../shared/datasets/plantvillage_grape \\
        --out engines/leaf_bank [--per-class 60]

It takes PlantVillage photos from the **training** side of the leaf-grouped split
(photo-number blocks of 40, validation fraction 0.2, seed 0: the split the shipped
models were trained with), one photo per physical leaf (photo numbers at least
:data:`LEAF_SPACING` apart), only photos whose leaf segments cleanly, and writes them
unchanged in size (256 px) as JPEG (quality 90), one folder per class. The validation
side stays unseen: the site adaptation is measured on it (tools/site_adaptation_eval.py).
Licence: CC BY-SA 3.0 (PlantVillage), see ``README.md`` written beside them.
"""

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from leaf_disease_ros.training.dataset import build_split, photo_number
from leaf_disease_ros.training.field_sim import leaf_from_image, read_bgr

LEAF_SPACING = 5
README = """# Leaf bank of `leaf-disease-site`

{count} PlantVillage grape leaf photos ({per_class}), one per physical leaf, from the
training side of the leaf-grouped split the shipped models were trained with
(photo-number blocks of 40, validation fraction 0.2, seed 0). `leaf-disease-site`
composites them into the tiles of a grower's reference pass so that the site head keeps
seeing disease on the site's own canopy. Made by `tools/make_leaf_bank.py`.

Source and licence: the PlantVillage dataset, D. P. Hughes and M. Salathé, "An open
access repository of images on plant health to enable the development of mobile disease
diagnostics", arXiv:1511.08060 (2015); S. P. Mohanty, D. P. Hughes and M. Salathé, "Using
Deep Learning for Image-Based Plant Disease Detection", Frontiers in Plant Science 7:1419
(2016). Creative Commons Attribution-ShareAlike 3.0; these files are under the same licence.
"""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('data', help='PlantVillage grape folder (one folder per class)')
    parser.add_argument('--out', required=True, help='new folder for the bank')
    parser.add_argument('--per-class', type=int, default=60)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write the bank and say how many leaves per class."""
    args = parse_args(argv)
    if os.path.exists(args.out) and os.listdir(args.out):
        sys.stderr.write(f'--out {args.out} is not empty; give a new folder\n')
        return 2
    labels, train, _, _ = build_split(args.data, None, 'photo-blocks', 40, None, 0.2, 0)
    rng = np.random.default_rng(args.seed)
    by_label: Dict[str, List[str]] = {}
    for sample in train:
        by_label.setdefault(labels[sample.label_index], []).append(sample.path)
    counts = {}
    for label, paths in sorted(by_label.items()):
        folder = os.path.join(args.out, label)
        os.makedirs(folder, exist_ok=True)
        taken: List[int] = []
        kept = 0
        for path in rng.permutation(np.array(sorted(paths), dtype=object)):
            number = photo_number(str(path))
            if number is not None and any(abs(number[1] - n) < LEAF_SPACING for n in taken):
                continue  # another photo of a leaf already in the bank
            image = read_bgr(str(path))
            if leaf_from_image(image, 0, str(path)) is None:
                continue
            name = os.path.splitext(os.path.basename(str(path)))[0] + '.jpg'
            cv2.imwrite(os.path.join(folder, name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if number is not None:
                taken.append(number[1])
            kept += 1
            if kept >= args.per_class:
                break
        counts[label] = kept
    summary = ', '.join(f'{n} {label}' for label, n in counts.items())
    with open(os.path.join(args.out, 'README.md'), 'w', encoding='utf-8') as stream:
        stream.write(README.format(count=sum(counts.values()), per_class=summary))
    sys.stdout.write(f'wrote {args.out}: {summary}\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
