"""
``leaf-disease-export``: export a training run to ONNX and write its calibrated model card.

Usage::

    leaf-disease-export runs/leaf_resnet18 --out engines/leaf_lite0_field.onnx

The steps (parity, calibration, card) are :mod:`leaf_disease_ros.training.export`;
PyTorch is imported only after the arguments are parsed. Exit status: 0 written,
1 nothing written (parity failed, bad run, PyTorch missing).
"""

import argparse
import sys
from typing import Optional, Sequence

from leaf_disease_ros.perception.errors import LeafDiseaseError
from leaf_disease_ros.training.recipe import OPSET


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description='Export a training run to ONNX with a calibrated model card.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('run', help='run folder of leaf-disease-train')
    parser.add_argument('--out', required=True, help='ONNX file to write (card: same .json)')
    parser.add_argument('--checkpoint', help='checkpoint (default RUN/checkpoint_best.pt)')
    parser.add_argument('--data', help='dataset root (default: the one recorded in the run)')
    parser.add_argument('--opset', type=int, default=OPSET)
    parser.add_argument('--tolerance', type=float, default=1e-3,
                        help='largest |logit difference| between PyTorch and onnxruntime')
    parser.add_argument('--max-reject', type=float, default=0.02,
                        help='share of validation images the unknown threshold may reject')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--no-embedding', action='store_true',
                        help='export logits only: no embedding output, no distance statistics')
    parser.add_argument('--embedding-components', type=int, default=32,
                        help='leading covariance directions kept in the card for the distance')
    parser.add_argument('--ood-data', default='',
                        help='folder of out-of-domain images (field tiles, soil, sky): the '
                             'distance is used for unknown only if it separates them from the '
                             'validation images better than the softmax score')
    parser.add_argument('--force', action='store_true', help='overwrite an existing model')
    args = parser.parse_args(argv)
    if args.opset < 17:
        parser.error('--opset must be >= 17')
    if args.embedding_components < 1:
        parser.error('--embedding-components must be >= 1')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    try:
        from leaf_disease_ros.training.export import run_export  # torch: imported only now
        run_export(args)
    except LeafDiseaseError as exc:
        sys.stderr.write(f'error: {exc}\n')
        return 1
    return 0
