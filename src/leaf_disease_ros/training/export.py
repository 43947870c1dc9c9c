"""
Export a training run to ONNX and write its model card (PyTorch, ``train`` extra).

Usage::

    leaf-disease-export runs/leaf_resnet18 --out engines/leaf_resnet18.onnx

Steps, all on the run's leaf-grouped validation split (``RUN/split.json``):

1. the best checkpoint -> ONNX, opset 17, input ``input`` ``(N, 3, H, W)`` with a
   dynamic batch, output ``logits`` ``(N, C)``;
2. parity: PyTorch and onnxruntime logits on every validation image must agree to
   ``--tolerance`` (default 1e-3, max absolute difference); otherwise nothing is
   written and the exit status is 1;
3. calibration: the softmax temperature that minimises validation NLL, with ECE
   before and after; the ``unknown`` threshold by the rule in
   :mod:`leaf_disease_ros.training.calibration` (reject at most ``--max-reject`` of the
   validation images);
4. the card (labels, input, preprocessing from the training card, calibration, the
   ONNX sha256, how the model was trained and its validation figures) is written
   beside the model. Model and card are written atomically, the card last.

Validation images go through :func:`leaf_disease_ros.perception.preprocess.preprocess`,
the runtime's own preprocessing.
"""

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Tuple
import warnings

import cv2
import numpy as np


from leaf_disease_ros.perception.atomic_io import atomic_path
from leaf_disease_ros.perception.errors import LeafDiseaseError, MissingDependencyError
from leaf_disease_ros.perception.metrics import classification_report, format_report
from leaf_disease_ros.perception.model_card import (card_from_dict, card_path_for_model,
                                                    card_to_dict, ModelCard, sha256_file,
                                                    write_card)
from leaf_disease_ros.perception.postprocess import softmax
from leaf_disease_ros.perception.preprocess import preprocess
from leaf_disease_ros.training.calibration import calibrate
from leaf_disease_ros.training.checkpoint import load_checkpoint
from leaf_disease_ros.training.recipe import TRAIN_EXTRA_HINT

try:
    import torch
    import torchvision
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(f'export needs PyTorch: {TRAIN_EXTRA_HINT}') from exc


def load_run(args: argparse.Namespace) -> Tuple[Dict[str, Any], Dict[str, Any],
                                                Dict[str, Any]]:
    """Return (checkpoint, split record, run metrics or {}) of the run folder."""
    checkpoint_path = args.checkpoint or os.path.join(args.run, 'checkpoint_best.pt')
    split_path = os.path.join(args.run, 'split.json')
    for path in (checkpoint_path, split_path):
        if not os.path.isfile(path):
            raise LeafDiseaseError(
                f'{path} does not exist; is {args.run} a leaf-disease-train run?')
    checkpoint = load_checkpoint(checkpoint_path)  # weights_only: refuses code
    with open(split_path, 'r', encoding='utf-8') as stream:
        split = json.load(stream)
    metrics_path = os.path.join(args.run, 'metrics.json')
    metrics: Dict[str, Any] = {}
    if os.path.isfile(metrics_path):
        with open(metrics_path, 'r', encoding='utf-8') as stream:
            metrics = json.load(stream)
    return checkpoint, split, metrics


def build_model(checkpoint: Dict[str, Any], num_classes: int) -> torch.nn.Module:
    """Return the checkpoint's network in eval mode, float32, on the CPU."""
    factory = getattr(torchvision.models, checkpoint['arch'])
    model = factory(weights=None, num_classes=num_classes)
    model.load_state_dict(checkpoint['model'])
    return model.eval().float()


def export(model: torch.nn.Module, card: ModelCard, path: str, opset: int) -> None:
    """Export ``model`` to ONNX at ``path`` (dynamic batch, names from the card)."""
    import onnx

    dummy = torch.zeros(2, 3, card.input_height_px, card.input_width_px)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export; it is kept
        # because its output needs no onnxscript and TensorRT parses it well.
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(model, (dummy,), path, input_names=[card.input_name],
                          output_names=[card.output_name], opset_version=opset,
                          dynamic_axes={card.input_name: {0: 'batch'},
                                        card.output_name: {0: 'batch'}},
                          do_constant_folding=True, dynamo=False)
    onnx.checker.check_model(onnx.load(path))


def validation_set(split: Dict[str, Any], root: str) -> Tuple[List[np.ndarray], np.ndarray]:
    """Return the decoded validation images and their class indices."""
    images: List[np.ndarray] = []
    labels: List[int] = []
    for rel, label_index, _group in split['val']:
        path = os.path.join(root, rel)
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise LeafDiseaseError(f'cannot read validation image {path}')
        images.append(image)
        labels.append(int(label_index))
    return images, np.asarray(labels, dtype=np.int64)


def logits_both(model: torch.nn.Module, onnx_path: str, card: ModelCard,
                images: List[np.ndarray], batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Return (PyTorch logits, onnxruntime logits), each ``(N, C)`` float32."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=['CPUExecutionProvider'])
    torch_out: List[np.ndarray] = []
    ort_out: List[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = preprocess(images[start:start + batch_size], card)
            torch_out.append(model(torch.from_numpy(batch)).numpy())
            ort_out.append(session.run([card.output_name], {card.input_name: batch})[0])
    return np.concatenate(torch_out), np.concatenate(ort_out)


def run_export(args: argparse.Namespace) -> Dict[str, Any]:
    """Export, check, calibrate and write; return the card's metrics section."""
    if os.path.exists(args.out) and not args.force:
        raise LeafDiseaseError(f'{args.out} exists; pass --force to replace it (the old model '
                               'stays in git history)')
    checkpoint, split, run_metrics = load_run(args)
    base = card_from_dict(checkpoint['card'], '<checkpoint card>')
    root = args.data or split['data']
    images, labels = validation_set(split, root)
    model = build_model(checkpoint, base.num_classes)

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix='.export-') as scratch:
        tmp_model = os.path.join(scratch, 'model.onnx')
        export(model, base, tmp_model, args.opset)
        torch_logits, ort_logits = logits_both(model, tmp_model, base, images, args.batch_size)
        max_diff = float(np.max(np.abs(torch_logits - ort_logits)))
        sys.stdout.write(f'parity: max |PyTorch - onnxruntime| logit difference {max_diff:.2e} '
                         f'over {len(images)} validation images (limit {args.tolerance:.0e})\n')
        if not max_diff <= args.tolerance:
            raise LeafDiseaseError(f'onnxruntime and PyTorch disagree by {max_diff:.2e} > '
                                   f'{args.tolerance:.0e}; nothing was written')

        calibration = calibrate(ort_logits, labels, args.max_reject)
        report = classification_report(labels, ort_logits.argmax(axis=1), base.labels)
        probs = softmax(ort_logits, calibration['temperature'])
        recall = {lab: report['per_class'][lab]['recall'] for lab in base.labels}
        metrics = {
            'validation': {
                'split': ('leaf-grouped: ' + split.get('group', '?') + ', block size '
                          + str(split.get('block_size')) + ', validation fraction '
                          + str(split.get('val_fraction')) + ', seed ' + str(split.get('seed'))),
                'images': int(len(labels)),
                'accuracy': report['accuracy'],
                'macro_f1': report['macro_f1'],
                'per_class': report['per_class'],
                'min_recall': min(recall.values()),
                'confusion_matrix': report['confusion_matrix'],
                'ece_before_calibration': calibration['ece_before'],
                'ece_after_calibration': calibration['ece_after'],
                'mean_top1_score': float(probs.max(axis=1).mean()),
            },
            'parity_max_abs_logit_diff': max_diff,
        }
        training = {
            'arch': checkpoint['arch'],
            'best_epoch': checkpoint.get('epoch'),
            'dataset': os.path.basename(os.path.normpath(split['data'])),
            'train_images': len(split['train']),
            'val_images': len(split['val']),
        }
        for key in ('args', 'balance', 'training_seconds_total', 'device', 'mixed_precision',
                    'train_class_counts', 'val_class_counts'):
            if key in run_metrics:
                training[key] = run_metrics[key]
        if 'history' in run_metrics:
            training['epochs_run'] = len(run_metrics['history'])

        name = os.path.splitext(os.path.basename(args.out))[0]
        doc = card_to_dict(base)
        doc['name'] = name
        doc['calibration'] = calibration
        doc['training'] = training
        doc['metrics'] = metrics
        with atomic_path(args.out) as tmp_final:
            os.replace(tmp_model, tmp_final)
        card = card_from_dict(doc, card_path_for_model(args.out)).with_model(
            os.path.basename(args.out), sha256_file(args.out))
        write_card(card, card_path_for_model(args.out))

    sys.stdout.write(format_report(report) + '\n')
    sys.stdout.write(
        f"temperature {calibration['temperature']:.3f}: ECE {calibration['ece_before']:.4f} -> "
        f"{calibration['ece_after']:.4f}; unknown threshold {calibration['unknown_threshold']:.3f}"
        f" ({calibration['unknown_threshold_rule']}; rejects "
        f"{calibration['validation_rejected_fraction']:.2%} of validation images)\n")
    sys.stdout.write(f'wrote {args.out} and {card_path_for_model(args.out)}\n')
    return metrics
