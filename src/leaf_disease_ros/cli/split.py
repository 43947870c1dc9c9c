"""
Materialise the leaf-grouped train/validation split as class folders of links.

The split is the one ``leaf-disease-train`` makes with the same arguments (same rule,
same defaults, ``training.dataset.build_split``), so the validation folder it writes is
exactly the images the shipped model was validated on::

    leaf-disease-split ../shared/datasets/plantvillage_grape --out /tmp/pv_split
    leaf-disease-classify /tmp/pv_split/val

``OUT/train/<class>/`` and ``OUT/val/<class>/`` get symbolic links to the original
files (copies with ``--copy``). ``OUT`` must not exist yet. No PyTorch needed.
"""

import argparse
import os
import shutil
import sys
from typing import Optional, Sequence

from leaf_disease_ros.perception.errors import LeafDiseaseError
from leaf_disease_ros.training.dataset import build_split


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line (defaults equal leaf-disease-train's)."""
    parser = argparse.ArgumentParser(
        description='Write the leaf-grouped train/validation split as class folders.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('data', help='dataset root with one subfolder per class')
    parser.add_argument('--out', required=True, help='folder to create')
    parser.add_argument('--labels', help='comma-separated class list; default: folder names')
    parser.add_argument('--val-fraction', type=float, default=0.2)
    parser.add_argument('--group', choices=('photo-blocks', 'regex', 'file'),
                        default='photo-blocks')
    parser.add_argument('--block-size', type=int, default=40)
    parser.add_argument('--group-regex')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--copy', action='store_true', help='copy files instead of linking')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    if os.path.exists(args.out):
        sys.stderr.write(f'error: {args.out} exists; choose a new folder\n')
        return 1
    try:
        labels, train, val, _ = build_split(
            args.data, tuple(args.labels.split(',')) if args.labels else None, args.group,
            args.block_size, args.group_regex, args.val_fraction, args.seed)
    except LeafDiseaseError as exc:
        sys.stderr.write(f'error: {exc}\n')
        return 1
    for side, samples in (('train', train), ('val', val)):
        for label in labels:
            os.makedirs(os.path.join(args.out, side, label), exist_ok=True)
        for sample in samples:
            target = os.path.join(args.out, side, labels[sample.label_index],
                                  os.path.basename(sample.path))
            if args.copy:
                shutil.copy2(sample.path, target)
            else:
                os.symlink(os.path.abspath(sample.path), target)
    sys.stdout.write(f'{args.out}: {len(train)} train and {len(val)} validation images, '
                     f'{len(labels)} classes, split by {args.group}\n')
    return 0
