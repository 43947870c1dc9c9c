"""
Export a training run to ONNX and write its model card (PyTorch, ``train`` extra).

Usage::

    leaf-disease-export runs/leaf_resnet18 --out engines/leaf_lite0_field.onnx

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

Unless ``--no-embedding``, the ONNX model has a second output ``embedding``
``(N, D)``, the penultimate-layer features (the input of the output layer), named in the card
(``output.embedding_name``, ``output.embedding_size``; parity is checked on it too),
and the card gets ``embedding_distance``: the distance-to-training-data statistics
fitted on the training split's embeddings, with a threshold that rejects at most
``--max-reject`` of the validation images. The pipeline uses it for ``unknown``
only when ``--ood-data DIR`` (out-of-domain images: field tiles, soil, sky) shows it
separates validation from those images better than the softmax score (AUROC,
:mod:`leaf_disease_ros.explain.domain_check`); both AUROCs are recorded.

Validation images go through :func:`leaf_disease_ros.perception.preprocess.preprocess`,
the runtime's own preprocessing. A fine-tuning run (``leaf-disease-train --init-from``)
has the same weights-only checkpoint and its network is rebuilt from the ONNX model it started from
(:func:`leaf_disease_ros.training.finetune.rebuild_model`); its card keeps the base
card's labels, healthy and background labels and finding threshold.
"""

import argparse
from dataclasses import replace
import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple
import warnings

import cv2
import numpy as np


from leaf_disease_ros.explain.domain_check import (compare_scores, DISTANCE_RULE,
                                                   distance_threshold)
from leaf_disease_ros.perception.atomic_io import atomic_path
from leaf_disease_ros.perception.embedding_distance import fit_distance
from leaf_disease_ros.perception.errors import (LeafDiseaseError, MissingDependencyError,
                                                OutputError)
from leaf_disease_ros.perception.image_folders import is_image_file
from leaf_disease_ros.perception.metrics import classification_report, format_report
from leaf_disease_ros.perception.model_card import (card_from_dict, card_path_for_model,
                                                    card_to_dict, ModelCard, sha256_file,
                                                    write_card)
from leaf_disease_ros.perception.output_paths import check_output_file
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
    checkpoint['run_dir'] = args.run
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
    if checkpoint['arch'] == 'onnx2torch':  # a fine-tuning run (training/finetune.py)
        from leaf_disease_ros.training.finetune import rebuild_model
        model = rebuild_model(checkpoint['run_dir'], checkpoint)
        model.load_state_dict(checkpoint['model'])
        return model.eval().float()
    factory = getattr(torchvision.models, checkpoint['arch'])
    model = factory(weights=None, num_classes=num_classes)
    model.load_state_dict(checkpoint['model'])
    return model.eval().float()


EMBEDDING_NAME = 'embedding'


def output_layer(model: torch.nn.Module, num_classes: int) -> torch.nn.Linear:
    """
    Return the fully connected layer that makes the logits (its input is the embedding).

    The last ``Linear`` of ``num_classes`` outputs in module order: ``fc`` of a
    torchvision ResNet, ``classifier`` of an EfficientNet, the converted ``Gemm`` of an
    onnx2torch graph (a fine-tuning run).

    :raises LeafDiseaseError: the model has no such layer (export with --no-embedding).
    """
    heads = [m for m in model.modules()
             if isinstance(m, torch.nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise LeafDiseaseError(f'the model has no fully connected layer of {num_classes} '
                               'outputs to take the embedding from; export with --no-embedding')
    return heads[-1]


class LogitsAndEmbedding(torch.nn.Module):
    """A classifier returning ``(logits, features)``: the features feed its output layer."""

    def __init__(self, model: torch.nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.head = output_layer(model, num_classes)
        self._seen: List[torch.Tensor] = []
        # a forward hook sees the head's input; tracing (ONNX export) records it as an output
        self.head.register_forward_hook(lambda _m, inputs, _out: self._seen.append(inputs[0]))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        self._seen.clear()
        logits = self.model(x)
        features = self._seen[-1]
        self._seen.clear()
        return logits, features


def export(model: torch.nn.Module, card: ModelCard, path: str, opset: int) -> None:
    """
    Export ``model`` to ONNX at ``path`` (dynamic batch, names from the card).

    With ``card.embedding_name`` the model must return ``(logits, embedding)``
    (:class:`LogitsAndEmbedding`) and both are outputs.
    """
    import onnx

    dummy = torch.zeros(2, 3, card.input_height_px, card.input_width_px)
    names = [card.output_name] + ([card.embedding_name] if card.embedding_name else [])
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export; it is kept
        # because its output needs no onnxscript and TensorRT parses it well.
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(model, (dummy,), path, input_names=[card.input_name],
                          output_names=names, opset_version=opset,
                          dynamic_axes={name: {0: 'batch'}
                                        for name in [card.input_name] + names},
                          do_constant_folding=True, dynamo=False)
    onnx.checker.check_model(onnx.load(path))


def validation_set(split: Dict[str, Any], root: str, side: str = 'val'
                   ) -> Tuple[List[np.ndarray], np.ndarray]:
    """Return the decoded images of one side of the split and their class indices."""
    images: List[np.ndarray] = []
    labels: List[int] = []
    for rel, label_index, _group in split[side]:
        path = os.path.join(root, rel)
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise LeafDiseaseError(f'cannot read validation image {path}')
        images.append(image)
        labels.append(int(label_index))
    return images, np.asarray(labels, dtype=np.int64)


def logits_both(model: torch.nn.Module, onnx_path: str, card: ModelCard,
                images: List[np.ndarray], batch_size: int
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """
    Return PyTorch and onnxruntime logits ``(N, C)`` and embeddings ``(N, D)``.

    Without ``card.embedding_name`` the embeddings are ``(N, 0)``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=['CPUExecutionProvider'])
    names = [card.output_name] + ([card.embedding_name] if card.embedding_name else [])
    outputs: List[List[np.ndarray]] = [[], [], [], []]
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = preprocess(images[start:start + batch_size], card)
            mine = model(torch.from_numpy(batch))
            theirs = session.run(names, {card.input_name: batch})
            if not card.embedding_name:
                empty = np.zeros((batch.shape[0], 0), np.float32)
                mine, theirs = (mine, torch.from_numpy(empty)), theirs + [empty]
            for slot, value in enumerate((mine[0].numpy(), theirs[0], mine[1].numpy(),
                                          theirs[1])):
                outputs[slot].append(value)
    torch_logits, ort_logits, torch_emb, ort_emb = (np.concatenate(o) for o in outputs)
    return torch_logits, ort_logits, torch_emb, ort_emb


def onnx_outputs(session: Any, card: ModelCard, images: List[np.ndarray],
                 batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Return onnxruntime ``(logits, embeddings)`` of ``images`` (the embedding output)."""
    logits: List[np.ndarray] = []
    embeddings: List[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        batch = preprocess(images[start:start + batch_size], card)
        out = session.run([card.output_name, card.embedding_name], {card.input_name: batch})
        logits.append(out[0])
        embeddings.append(out[1])
    return np.concatenate(logits), np.concatenate(embeddings)


def ood_images(folder: str, limit: int = 2000) -> List[np.ndarray]:
    """Return up to ``limit`` decoded images found under ``folder`` (recursively)."""
    images: List[np.ndarray] = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            if is_image_file(name) and len(images) < limit:
                image = cv2.imread(os.path.join(root, name), cv2.IMREAD_COLOR)
                if image is not None:
                    images.append(image)
    if not images:
        raise LeafDiseaseError(f'--ood-data {folder} holds no readable image')
    return images


def embedding_distance_section(args: argparse.Namespace, onnx_path: str, card: ModelCard,
                               split: Dict[str, Any], root: str, val_logits: np.ndarray,
                               val_embeddings: np.ndarray, temperature: float,
                               softmax_threshold: float) -> Optional[Dict[str, Any]]:
    """
    Fit the distance on the training split; threshold, check and decide (module doc).

    Returns None (and says why on stderr) when a label has no training image: there is
    no class mean to measure from (e.g. a fine-tune from a model with ``background``
    on tiles that hold none); the card then has no distance and unknown uses the score.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=['CPUExecutionProvider'])
    parts: List[np.ndarray] = []
    labels: List[np.ndarray] = []
    step = max(1, args.batch_size) * 8  # decode a few batches at a time, not the whole split
    for start in range(0, len(split['train']), step):
        part = {'train': split['train'][start:start + step]}
        images, indices = validation_set(part, root, 'train')
        parts.append(onnx_outputs(session, card, images, args.batch_size)[1])
        labels.append(indices)
    train_embeddings = np.concatenate(parts)
    train_labels = np.concatenate(labels)
    counts = np.bincount(train_labels, minlength=card.num_classes)
    missing = [label for label, count in zip(card.labels, counts.tolist()) if count == 0]
    if missing:
        sys.stderr.write('note: no embedding distance in the card: no training image of '
                         f"{', '.join(missing)} (add tiles of it to fit one)\n")
        return None
    distance = fit_distance(train_embeddings, train_labels, card.num_classes,
                            components=args.embedding_components)
    val_distances = distance.distances(val_embeddings)
    threshold = distance_threshold(val_distances, args.max_reject)
    record: Dict[str, Any] = {
        'fitted_on': f'training split: {len(train_labels)} images',
        'components': int(distance.basis.shape[1]),
        'threshold_rule': DISTANCE_RULE.format(reject=args.max_reject),
        'validation_rejected_fraction': float(np.mean(val_distances > threshold)),
        'validation_median_distance': float(np.median(val_distances)),
    }
    use = False
    if args.ood_data:
        images = ood_images(args.ood_data)
        ood_logits, ood_embeddings = onnx_outputs(session, card, images, args.batch_size)
        check = compare_scores(distance, temperature, val_logits, val_embeddings, ood_logits,
                               ood_embeddings, threshold, softmax_threshold)
        check['ood_data'] = os.path.abspath(args.ood_data)
        record['domain_check'] = check
        use = bool(check['distance_separates_better'])
        record['use_rule'] = ('used for unknown: its AUROC beats the softmax score on the '
                              'check set' if use else 'not used: the softmax score separates '
                              'the check set as well or better')
    else:
        record['use_rule'] = ('not used for unknown: no out-of-domain check set was given '
                              '(leaf-disease-export --ood-data DIR)')
    distance.unknown_threshold = threshold
    distance.use_for_unknown = use
    distance.record.update(record)
    return distance.to_dict()


def export_inputs(args: argparse.Namespace, data_root: str = '') -> List[str]:
    """Return what an export reads: every file of the run folder, checkpoint, data."""
    inputs = [args.checkpoint or os.path.join(args.run, 'checkpoint_best.pt'), args.data,
              args.ood_data, data_root]
    if os.path.isdir(args.run):
        inputs += [entry.path for entry in os.scandir(args.run) if not entry.is_dir()]
    return [path for path in inputs if path]


def check_export_outputs(args: argparse.Namespace, data_root: str = '') -> None:
    """
    Refuse an ``--out`` (or its card) that would land on an input or on itself.

    The shared output rule (:mod:`leaf_disease_ros.perception.output_paths`) for the
    model and for its card (``<out>.json``): never a file of the run (its checkpoint,
    split, log), never inside the data, never a special file; and the card is never
    the model itself (``--out m.json``).

    :raises OutputError: naming the conflict and what to do instead.
    """
    inputs = export_inputs(args, data_root)
    check_output_file(args.out, inputs, what='--out', allow_stdout=False, create_parent=True)
    card = card_path_for_model(args.out)
    if os.path.abspath(card) == os.path.abspath(args.out):
        raise OutputError(f'--out {args.out}: the model card is written beside the model as '
                          '<name>.json, which is --out itself, so no model would remain; give '
                          'the model an .onnx name (e.g. --out '
                          f'{os.path.splitext(args.out)[0]}.onnx)')
    check_output_file(card, inputs, what='the card (written beside --out)', allow_stdout=False,
                      create_parent=True)


def run_export(args: argparse.Namespace) -> Dict[str, Any]:
    """
    Export, check, calibrate and write; return the card's metrics section.

    :raises OutputError: ``--out`` or its card would land on an input
        (:func:`check_export_outputs`).
    """
    check_export_outputs(args)
    if os.path.exists(args.out) and not args.force:
        raise LeafDiseaseError(f'{args.out} exists; pass --force to replace it (the old model '
                               'stays in git history)')
    checkpoint, split, run_metrics = load_run(args)
    base = card_from_dict(checkpoint['card'], '<checkpoint card>')
    root = args.data or split['data']
    check_export_outputs(args, root)
    images, labels = validation_set(split, root)
    model = build_model(checkpoint, base.num_classes)
    if not args.no_embedding:
        wrapped = LogitsAndEmbedding(model, base.num_classes).eval()
        size = int(wrapped.head.in_features)
        base = replace(base, embedding_name=EMBEDDING_NAME, embedding_size=size)
        model = wrapped

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix='.export-') as scratch:
        tmp_model = os.path.join(scratch, 'model.onnx')
        export(model, base, tmp_model, args.opset)
        torch_logits, ort_logits, torch_emb, ort_emb = logits_both(model, tmp_model, base,
                                                                   images, args.batch_size)
        max_diff = float(np.max(np.abs(torch_logits - ort_logits)))
        if base.embedding_name:
            embedding_diff = float(np.max(np.abs(torch_emb - ort_emb)))
            sys.stdout.write(f'parity: max |PyTorch - onnxruntime| embedding difference '
                             f'{embedding_diff:.2e}\n')
            if not embedding_diff <= args.tolerance:
                raise LeafDiseaseError(f'onnxruntime and PyTorch embeddings disagree by '
                                       f'{embedding_diff:.2e} > {args.tolerance:.0e}; nothing '
                                       'was written')
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
                'min_recall': min(v for v in recall.values() if v is not None),
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
        for key in ('init_from', 'head'):  # fine-tuning runs
            if key in checkpoint:
                training[key] = checkpoint[key]
        for key in ('args', 'balance', 'training_seconds_total', 'device', 'mixed_precision',
                    'train_class_counts', 'val_class_counts', 'field_share',
                    'label_corrections', 'val_sources'):
            if key in run_metrics:
                training[key] = run_metrics[key]
        if 'history' in run_metrics:
            training['epochs_run'] = len(run_metrics['history'])

        name = os.path.splitext(os.path.basename(args.out))[0]
        doc = card_to_dict(base)
        doc['name'] = name
        # the operating point the run started with (0.5 unless the card had one) stays
        calibration.setdefault('finding_threshold', base.finding_threshold)
        calibration.setdefault('finding_score', base.finding_score)  # what it is compared with
        doc['calibration'] = calibration
        doc['training'] = training
        doc['metrics'] = metrics
        section = (embedding_distance_section(
            args, tmp_model, base, split, root, ort_logits, ort_emb,
            calibration['temperature'], calibration['unknown_threshold'])
            if base.embedding_name else None)
        if section is not None:
            doc['embedding_distance'] = section
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
