r"""
``leaf-disease-train``: train a leaf classifier on a class-folder dataset.

Usage (the shipped model's command is in engines/README.md)::

    leaf-disease-train ../shared/datasets/plantvillage_grape --out runs/leaf_resnet18 \\
        --arch resnet18 --input-size 128 --epochs 36 --seed 0
    leaf-disease-export runs/leaf_resnet18 --out engines/leaf_lite0_field.onnx

    # fine-tune the shipped model on harvested, corrected tiles (docs/adaptation.md)
    leaf-disease-train harvest/ --init-from engines/leaf_lite0_field.onnx \\
        --base-data ../shared/datasets/plantvillage_grape --out runs/mine

The recipe is :mod:`leaf_disease_ros.training.train`, fine-tuning from an ONNX model
:mod:`leaf_disease_ros.training.finetune`; PyTorch (the ``train`` extra) is imported
only after the arguments are parsed, so ``--help`` works without it.
Exit status: 0 trained, 2 bad data or arguments, or PyTorch missing.
"""

import argparse
import logging
import math
import sys
from typing import Optional, Sequence

from leaf_disease_ros.perception.errors import LeafDiseaseError
from leaf_disease_ros.training.recipe import ARCHS, FINETUNE_EPOCHS, FINETUNE_LR
from leaf_disease_ros.training.run_folder import check_run_folder


def _finite(text: str) -> float:
    """Return ``text`` as a finite float (argparse type); nan and inf are usage errors."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'{text!r} is not a finite number')
    return value


def _positive(text: str) -> float:
    value = _finite(text)
    if value <= 0.0:
        raise argparse.ArgumentTypeError(f'{text!r} must be > 0')
    return value


def _non_negative(text: str) -> float:
    value = _finite(text)
    if value < 0.0:
        raise argparse.ArgumentTypeError(f'{text!r} must be >= 0')
    return value


def _fraction(text: str) -> float:
    value = _finite(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'{text!r} must be between 0 and 1')
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description='Train a ResNet leaf disease classifier on a class-folder dataset.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('data', help='dataset root with one subfolder per class')
    parser.add_argument('--out', required=True,
                        help='run folder: new or empty (or an earlier run with --resume), '
                             'never inside the data')
    parser.add_argument('--name', default='leaf_resnet18', help='model name for the card')
    parser.add_argument('--arch', choices=ARCHS, default='resnet18')
    parser.add_argument('--weights', help='local state dict to start from (fc is re-made '
                        'when its class count differs); nothing is downloaded')
    parser.add_argument('--labels', help='comma-separated class list (index order); '
                        'default: sorted folder names')
    parser.add_argument('--healthy-labels', default='healthy',
                        help='comma-separated labels that are not a disease')
    parser.add_argument('--input-size', type=int, default=128, help='model input side, px')
    parser.add_argument('--epochs', type=int, default=None,
                        help=f'36; {FINETUNE_EPOCHS} with --init-from')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--lr', type=_positive, default=None,
                        help=f'peak learning rate: 2e-3; {FINETUNE_LR:g} with --init-from')
    parser.add_argument('--weight-decay', type=_non_negative, default=0.05)
    parser.add_argument('--label-smoothing', type=_fraction, default=0.1)
    parser.add_argument('--patience', type=int, default=10,
                        help='stop after this many epochs without a better val macro-F1')
    parser.add_argument('--val-fraction', type=_fraction, default=0.2)
    parser.add_argument('--group', choices=('photo-blocks', 'regex', 'file'),
                        default='photo-blocks', help='how images are grouped for the split')
    parser.add_argument('--block-size', type=int, default=40,
                        help='photo numbers per block for --group photo-blocks')
    parser.add_argument('--group-regex', help='regex on the file name for --group regex '
                        '(group 1, or the whole match)')
    parser.add_argument('--balance', choices=('sampler', 'loss', 'none'), default='sampler')
    parser.add_argument('--max-per-class', type=int, default=0,
                        help='use at most this many images per class (0 = all; quick runs)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--workers', type=int, default=1, help='data loader processes')
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0 = auto)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--no-amp', action='store_true', help='no mixed precision on GPU')
    parser.add_argument('--resume', action='store_true',
                        help='continue from OUT/checkpoint_last.pt')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    tune = parser.add_argument_group(
        'fine-tuning from a model (docs/adaptation.md): the card gives input, '
        'preprocessing and labels; --arch and --input-size do not apply')
    tune.add_argument('--init-from', metavar='MODEL.onnx',
                      help='start from this ONNX model (its card beside it), e.g. '
                           'engines/leaf_lite0_field.onnx; DATA is then a harvest whose '
                           'unknown/ folder is ignored')
    tune.add_argument('--base-data', metavar='DIR',
                      help='class folders mixed in so the model keeps what it knew, e.g. '
                           '../shared/datasets/plantvillage_grape (--max-per-class limits it)')
    tune.add_argument('--field-share', type=_fraction, default=0.5,
                      help='share of the training draws taken from DATA when --base-data '
                           'is given')
    tune.add_argument('--background-labels', default='',
                      help="comma-separated labels that are not leaves (added to the card's)")
    args = parser.parse_args(argv)
    tuning = bool(args.init_from)
    if args.epochs is None:
        args.epochs = FINETUNE_EPOCHS if tuning else 36
    if args.lr is None:
        args.lr = FINETUNE_LR if tuning else 2e-3
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    try:
        check_run_folder(args)  # before PyTorch is imported: refused at once
    except LeafDiseaseError as exc:  # no run folder of this run yet: no log of it either
        sys.stderr.write(f'error: {exc}\n')
        return 2
    try:
        if args.init_from:
            from leaf_disease_ros.training import finetune  # torch: imported only now
            finetune.check_args(args)
            finetune.finetune(args)
        else:
            from leaf_disease_ros.training.train import train  # torch: imported only now
            train(args)
    except LeafDiseaseError as exc:
        log = logging.getLogger('train')  # the run's train.log, once the run folder exists
        log.error('%s', exc) if log.handlers else sys.stderr.write(f'error: {exc}\n')
        return 2
    return 0
