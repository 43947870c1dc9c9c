"""
Materialise the leaf-grouped train/validation split as class folders of links.

The split is the one ``leaf-disease-train`` makes with the same arguments (same rule,
same defaults, ``training.dataset.build_split``), so the validation folder it writes is
exactly the images the shipped model was validated on::

    leaf-disease-split ../shared/datasets/plantvillage_grape --out /tmp/pv_split
    leaf-disease-classify /tmp/pv_split/val

``OUT/train/<class>/`` and ``OUT/val/<class>/`` get symbolic links to the original
files (copies with ``--copy``). ``OUT`` must be new or empty and lie outside the data
(a split inside the dataset would be read as a class "split" by the next run): the
shared output rule, :mod:`leaf_disease_ros.perception.output_paths`. The split is
written into a staging folder beside ``OUT`` and renamed into place when complete, so
a failure (a full disk, an unreadable file) leaves no partial ``OUT``. No PyTorch
needed.
"""

import argparse
import os
import shutil
import sys
import tempfile
from typing import List, Optional, Sequence, Tuple

from leaf_disease_ros.perception.errors import LeafDiseaseError, OutputError
from leaf_disease_ros.perception.image_folders import Sample
from leaf_disease_ros.perception.output_paths import check_output_folder, write_manifest
from leaf_disease_ros.training.dataset import build_split

SPLIT_COMMAND = 'leaf-disease-split'


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


def write_split(out: str, labels: Sequence[str],
                sides: Sequence[Tuple[str, List[Sample]]], copy: bool) -> None:
    """
    Write the class folders of links (or copies) into a staging folder, then into ``out``.

    :raises OSError: a file cannot be linked, copied or written (nothing is left).
    """
    target_dir = os.path.abspath(out).rstrip(os.sep)
    parent = os.path.dirname(target_dir) or os.sep
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(target_dir)}.partial-', dir=parent)
    try:
        for side, samples in sides:
            for label in labels:
                os.makedirs(os.path.join(staging, side, label), exist_ok=True)
            for sample in samples:
                target = os.path.join(staging, side, labels[sample.label_index],
                                      os.path.basename(sample.path))
                if copy:
                    shutil.copy2(sample.path, target)
                else:
                    os.symlink(os.path.abspath(sample.path), target)
        write_manifest(staging, SPLIT_COMMAND)
        os.chmod(staging, 0o777 & ~_umask())
        os.replace(staging, target_dir)  # over an empty folder: allowed, atomic
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    try:
        check_output_folder(args.out, [args.data], what='--out', command=SPLIT_COMMAND,
                            allow_rerun=False, rerun_hint='choose a new folder')
        labels, train, val, _ = build_split(
            args.data, tuple(args.labels.split(',')) if args.labels else None, args.group,
            args.block_size, args.group_regex, args.val_fraction, args.seed)
    except LeafDiseaseError as exc:
        sys.stderr.write(f'error: {exc}\n')
        return 1
    try:
        check_output_folder(args.out, [args.data], what='--out', command=SPLIT_COMMAND,
                            allow_rerun=False, rerun_hint='choose a new folder')
        write_split(args.out, labels, (('train', train), ('val', val)), args.copy)
    except OutputError as exc:
        sys.stderr.write(f'error: {exc}\n')
        return 1
    except OSError as exc:
        sys.stderr.write(f'error: cannot write the split into {args.out}: {exc}; nothing was '
                         'written\n')
        return 1
    sys.stdout.write(f'{args.out}: {len(train)} train and {len(val)} validation images, '
                     f'{len(labels)} classes, split by {args.group}\n')
    return 0


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
