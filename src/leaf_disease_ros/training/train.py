r"""
Train a ResNet leaf classifier on a class-folder dataset (PyTorch, ``train`` extra).

Usage (the shipped model's command is in engines/README.md)::

    leaf-disease-train ../shared/datasets/plantvillage_grape --out runs/leaf_resnet18 \\
        --arch resnet18 --input-size 128 --epochs 36 --seed 0
    leaf-disease-export runs/leaf_resnet18 --out engines/leaf_lite0_field.onnx

What it does:

- data: one subfolder per class; classes are the sorted folder names unless
  ``--labels`` is given. The split is by group, never per image: PlantVillage
  photo-number blocks (``--group photo-blocks``, default), a file-name regex
  (``--group regex --group-regex ...``) or one group per file (``--group file``).
  The split is written to ``split.json``; ``leaf-disease-split`` with the same
  arguments materialises the same split as folders.
- preprocessing is the runtime's own (:func:`leaf_disease_ros.perception.preprocess.preprocess`)
  from the model card the run starts with, after augmentations on uint8 BGR
  (:mod:`leaf_disease_ros.training.augment`), reproducible from ``--seed``.
- class imbalance: weighted sampling (``--balance sampler``, default) or a
  class-weighted loss (``--balance loss``); the choice is written to the log.
- AdamW, one-cycle schedule, label smoothing, early stopping on validation macro-F1,
  best checkpoint kept, ``--resume``, mixed precision on a GPU, CPU otherwise.
- the run folder gets ``train.log``, ``metrics.json``, ``curves.png``,
  ``confusion_matrix.png``, ``split.json``, ``checkpoint_last.pt``, ``checkpoint_best.pt``
  (tensors + JSON metadata: they load with ``weights_only=True``, see
  :mod:`leaf_disease_ros.training.checkpoint`).

Nothing is downloaded: ``--weights PATH`` starts from a local state dict (loaded with
``weights_only=True``: a file that would run code is refused).
"""

import argparse
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple
import warnings

import cv2
import numpy as np


from leaf_disease_ros.perception.atomic_io import atomic_path, atomic_write_json
from leaf_disease_ros.perception.errors import (DatasetError, LeafDiseaseError,
                                                MissingDependencyError)
from leaf_disease_ros.perception.image_folders import Sample
from leaf_disease_ros.perception.metrics import classification_report, format_report
from leaf_disease_ros.perception.model_card import card_from_dict, card_to_dict, ModelCard
from leaf_disease_ros.perception.plots import write_confusion_matrix_png
from leaf_disease_ros.perception.preprocess import preprocess
from leaf_disease_ros.training.augment import augment, AugmentConfig, sample_rng
from leaf_disease_ros.training.checkpoint import load_checkpoint, load_weights, save_checkpoint
from leaf_disease_ros.training.dataset import build_split
from leaf_disease_ros.training.recipe import IMAGENET_MEAN, IMAGENET_STD, TRAIN_EXTRA_HINT
from leaf_disease_ros.training.run_folder import claim_run_folder, mark_run_folder

try:
    import torch
    from torch import nn
    import torchvision
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        f'training needs PyTorch and torchvision: {TRAIN_EXTRA_HINT}') from exc

LOG = logging.getLogger('train')


def setup_logging(run_dir: str) -> None:
    """Log to OUT/train.log and stderr."""
    LOG.setLevel(logging.INFO)
    LOG.handlers.clear()
    fmt = logging.Formatter('%(asctime)s %(levelname)s %(message)s')
    for handler in (logging.FileHandler(os.path.join(run_dir, 'train.log')),
                    logging.StreamHandler(sys.stderr)):
        handler.setFormatter(fmt)
        LOG.addHandler(handler)


def make_split(args: argparse.Namespace) -> Tuple[Tuple[str, ...], List[Sample], List[Sample]]:
    """List the dataset, group it and split it (the rule of ``training.dataset.build_split``)."""
    labels, train, val, skipped = build_split(
        args.data, tuple(args.labels.split(',')) if args.labels else None, args.group,
        args.block_size, args.group_regex, args.val_fraction, args.seed, args.max_per_class)
    if skipped:
        LOG.warning('skipped %d non-image files, e.g. %s', len(skipped), skipped[0])
    return labels, train, val


def initial_card(args: argparse.Namespace, labels: Sequence[str]) -> ModelCard:
    """Return the card the run trains against (calibration is filled in at export)."""
    healthy = [h for h in args.healthy_labels.split(',') if h]
    missing = [h for h in healthy if h not in labels]
    if missing:
        raise DatasetError(f'healthy label(s) {", ".join(missing)} are not classes '
                           f'({", ".join(labels)}); set --healthy-labels')
    return card_from_dict({
        'schema_version': 1, 'name': args.name, 'labels': list(labels),
        'healthy_labels': healthy,
        'input': {'name': 'input', 'height_px': args.input_size,
                  'width_px': args.input_size, 'layout': 'NCHW', 'color_order': 'RGB'},
        'preprocessing': {'resize': 'stretch', 'interpolation': 'area',
                          'scale': 1.0 / 255.0, 'mean': list(IMAGENET_MEAN),
                          'std': list(IMAGENET_STD)},
        'output': {'name': 'logits'},
        'calibration': {'temperature': 1.0, 'unknown_threshold': 0.0},
    }, path='<training card>')


def read_bgr(path: str) -> np.ndarray:
    """Decode an image file to BGR uint8, or raise DatasetError naming it."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f'cannot decode image {path}')
    return image


class LeafDataset(torch.utils.data.Dataset):
    """
    Decoded images held in memory; items are ``(epoch, position, index)`` keys.

    Keying augmentation randomness by epoch and position (not by worker) makes an
    epoch identical whatever ``--workers`` is, and two draws of the same image in
    one epoch (weighted sampling) get different augmentations.
    """

    def __init__(self, samples: Sequence[Sample], card: ModelCard, seed: int,
                 train: bool) -> None:
        self.samples = list(samples)
        self.card = card
        self.seed = seed
        self.train = train
        self.augment_config = AugmentConfig()
        # Decoded once: PlantVillage is ~0.6 GB as uint8, and decoding is a large
        # share of a CPU epoch. Forked loader workers share these pages.
        self.images = [read_bgr(s.path) for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Any) -> Tuple[Any, int]:
        epoch, position, index = key if isinstance(key, tuple) else (0, key, key)
        image = self.images[index]
        if self.train:
            image = augment(image, sample_rng(self.seed, epoch, position), self.augment_config)
        tensor = torch.from_numpy(preprocess([image], self.card)[0])
        return tensor, self.samples[index].label_index


class EpochSampler(torch.utils.data.Sampler):
    """Yield ``(epoch, position, index)``: weighted or shuffled, seeded per epoch."""

    def __init__(self, weights: Optional[np.ndarray], count: int, seed: int) -> None:
        self.weights = weights
        self.count = count
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self):  # noqa: D105
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        if self.weights is None:
            order = rng.permutation(self.count)
        else:
            order = rng.choice(len(self.weights), size=self.count, replace=True,
                               p=self.weights / self.weights.sum())
        return iter([(self.epoch, pos, int(i)) for pos, i in enumerate(order)])


def build_model(arch: str, num_classes: int, weights: Optional[str]) -> nn.Module:
    """Return a torchvision ResNet with ``num_classes`` outputs (no download)."""
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if weights:
        state = load_weights(weights)  # weights_only: a shared file cannot run code
        fc_weight = state.get('fc.weight')
        if fc_weight is not None and fc_weight.shape[0] != num_classes:
            LOG.info('--weights has %d classes, this run %d: fc re-initialised',
                     fc_weight.shape[0], num_classes)
            state = {k: v for k, v in state.items() if not k.startswith('fc.')}
        missing, unexpected = model.load_state_dict(state, strict=False)
        LOG.info('loaded %s (missing %d, unexpected %d keys)', weights, len(missing),
                 len(unexpected))
    return model


def choose_device(name: str) -> torch.device:
    """Return the torch device for ``--device``."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise LeafDiseaseError(f'--device {name}: no CUDA device is available')
    return device


def train_epoch(model: nn.Module, batches: Any, criterion: nn.Module, optimizer: Any,
                scheduler: Any, scaler: Any, device: torch.device, amp: bool,
                channels_last: bool = False) -> Tuple[float, int, int]:
    """
    Run one training epoch over ``batches``; return ``(summed loss, correct, seen)``.

    One optimiser and scheduler step per batch, mixed precision through ``scaler``
    when ``amp``; the loss sum is per sample, so ``loss / seen`` is the epoch mean.
    """
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for inputs, targets in batches:
        inputs = inputs.to(device, non_blocking=True)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            outputs = model(inputs)
            loss = criterion(outputs, targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.item() * targets.shape[0]
        correct += int((outputs.argmax(1) == targets).sum())
        seen += targets.shape[0]
    return total_loss, correct, seen


def evaluate(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
             device: torch.device, batch_size: int, amp: bool) -> Tuple[np.ndarray, float]:
    """Return ``(logits (N, C) float32, mean cross-entropy)`` of a preprocessed set."""
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            batch = inputs[start:start + batch_size].to(device, non_blocking=True)
            batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=amp):
                outputs.append(model(batch).float().cpu())
    logits = torch.cat(outputs)
    loss = nn.functional.cross_entropy(logits, targets).item()
    return logits.numpy(), loss


def save_curves(history: List[Dict[str, float]], path: str) -> None:
    """Plot loss, accuracy and macro-F1 per epoch to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    epochs = [h['epoch'] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(epochs, [h['train_loss'] for h in history], label='train')
    axes[0].plot(epochs, [h['val_loss'] for h in history], label='validation')
    axes[0].set_xlabel('epoch')
    axes[0].set_ylabel('cross-entropy')
    axes[0].legend()
    axes[1].plot(epochs, [h['train_accuracy'] for h in history], label='train accuracy')
    axes[1].plot(epochs, [h['val_accuracy'] for h in history], label='val accuracy')
    axes[1].plot(epochs, [h['val_macro_f1'] for h in history], label='val macro-F1')
    axes[1].set_xlabel('epoch')
    axes[1].set_ylim(max(0.0, min(h['val_accuracy'] for h in history) - 0.05), 1.0)
    axes[1].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def split_record(labels: Sequence[str], train: Sequence[Sample], val: Sequence[Sample],
                 args: argparse.Namespace) -> Dict[str, Any]:
    """Return the JSON record of the split (paths relative to the data root)."""
    def rel(samples: Sequence[Sample]) -> List[List[Any]]:
        return [[os.path.relpath(s.path, args.data), s.label_index, s.group] for s in samples]
    return {'data': os.path.abspath(args.data), 'labels': list(labels),
            'group': args.group, 'block_size': args.block_size,
            'group_regex': args.group_regex, 'val_fraction': args.val_fraction,
            'seed': args.seed, 'train': rel(train), 'val': rel(val)}


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """
    Run the training; return the metrics document.

    :raises OutputError: ``args.out`` is refused (:mod:`.run_folder`).
    """
    claim_run_folder(args)
    setup_logging(args.out)
    warnings.filterwarnings('ignore', category=UserWarning, module='torch.utils.data')
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    amp = device.type == 'cuda' and not args.no_amp

    labels, train_set, val_set = make_split(args)
    card = initial_card(args, labels)
    atomic_write_json(os.path.join(args.out, 'split.json'),
                      split_record(labels, train_set, val_set, args))
    counts = np.bincount([s.label_index for s in train_set], minlength=len(labels))
    val_counts = np.bincount([s.label_index for s in val_set], minlength=len(labels))
    LOG.info('classes: %s', ', '.join(f'{lab} (train {c}, val {v})'
                                      for lab, c, v in zip(labels, counts, val_counts)))
    LOG.info('split: %s groups, %d train / %d validation images, no group on both sides',
             args.group, len(train_set), len(val_set))
    LOG.info('device: %s%s, input %d px, arch %s', device, ' (mixed precision)' if amp else '',
             args.input_size, args.arch)

    class_weights = counts.sum() / np.maximum(counts, 1) / len(labels)
    if args.balance == 'sampler':
        sample_weights = np.array([class_weights[s.label_index] for s in train_set])
        LOG.info('class imbalance: weighted sampling, per-class weights %s',
                 dict(zip(labels, np.round(class_weights, 3).tolist())))
    else:
        sample_weights = None
        LOG.info('class imbalance: %s', 'class-weighted loss %s' % dict(
            zip(labels, np.round(class_weights, 3).tolist()))
            if args.balance == 'loss' else 'not handled (--balance none)')

    train_data = LeafDataset(train_set, card, args.seed, train=True)
    val_data = LeafDataset(val_set, card, args.seed, train=False)
    val_inputs = torch.from_numpy(preprocess(val_data.images, card))
    val_targets = torch.tensor([s.label_index for s in val_set])
    sampler = EpochSampler(sample_weights, len(train_set), args.seed)
    loader = torch.utils.data.DataLoader(
        train_data, batch_size=args.batch_size, sampler=sampler, drop_last=True,
        num_workers=args.workers, persistent_workers=args.workers > 0,
        pin_memory=device.type == 'cuda')

    model = build_model(args.arch, len(labels), args.weights).to(device)
    model = model.to(memory_format=torch.channels_last)
    loss_weights = (torch.tensor(class_weights, dtype=torch.float32, device=device)
                    if args.balance == 'loss' else None)
    criterion = nn.CrossEntropyLoss(weight=loss_weights, label_smoothing=args.label_smoothing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                  weight_decay=args.weight_decay)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise DatasetError(f'{len(train_set)} training images is less than one batch of '
                           f'{args.batch_size}; lower --batch-size')
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=0.15)
    scaler = torch.amp.GradScaler('cuda', enabled=amp)

    history: List[Dict[str, float]] = []
    best_f1, best_epoch, start_epoch = -1.0, 0, 0
    last_path = os.path.join(args.out, 'checkpoint_last.pt')
    best_path = os.path.join(args.out, 'checkpoint_best.pt')
    if args.resume:
        if not os.path.exists(last_path):
            raise LeafDiseaseError(f'--resume: {last_path} does not exist')
        state = load_checkpoint(last_path, map_location=device)
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        scaler.load_state_dict(state['scaler'])
        history, best_f1, best_epoch = state['history'], state['best_f1'], state['best_epoch']
        start_epoch = state['epoch'] + 1
        LOG.info('resumed from %s at epoch %d (best macro-F1 %.4f at epoch %d)',
                 last_path, start_epoch, best_f1, best_epoch)

    progress = None
    if not args.no_progress:
        from tqdm import tqdm
        progress = tqdm
    started = time.monotonic()
    for epoch in range(start_epoch, args.epochs):
        if epoch - best_epoch > args.patience and best_epoch > 0:
            LOG.info('early stop: no better validation macro-F1 for %d epochs', args.patience)
            break
        epoch_start = time.monotonic()
        sampler.epoch = epoch
        batches = loader if progress is None else progress(
            loader, desc=f'epoch {epoch + 1}/{args.epochs}', unit='batch', leave=False)
        total_loss, correct, seen = train_epoch(model, batches, criterion, optimizer,
                                                scheduler, scaler, device, amp,
                                                channels_last=True)
        logits, val_loss = evaluate(model, val_inputs, val_targets, device,
                                    args.batch_size * 2, amp)
        report = classification_report(val_targets.numpy(), logits.argmax(1), labels)
        record = {'epoch': epoch + 1, 'train_loss': total_loss / seen,
                  'train_accuracy': correct / seen, 'val_loss': val_loss,
                  'val_accuracy': report['accuracy'], 'val_macro_f1': report['macro_f1'],
                  'lr': scheduler.get_last_lr()[0],
                  'seconds': time.monotonic() - epoch_start}
        history.append(record)
        improved = report['macro_f1'] > best_f1
        if improved:
            best_f1, best_epoch = report['macro_f1'], epoch + 1
            with atomic_path(best_path) as tmp:
                save_checkpoint(tmp, {'model': model.state_dict()},
                                {'arch': args.arch, 'card': card_to_dict(card),
                                 'epoch': epoch + 1, 'val_report': report,
                                 'data': os.path.abspath(args.data)})
        LOG.info('epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f '
                 'macro-F1 %.4f%s | %.0f s', epoch + 1, args.epochs, record['train_loss'],
                 record['train_accuracy'], val_loss, report['accuracy'], report['macro_f1'],
                 '  (best)' if improved else '', record['seconds'])
        with atomic_path(last_path) as tmp:
            save_checkpoint(tmp, {'model': model.state_dict(),
                                  'optimizer': optimizer.state_dict(),
                                  'scheduler': scheduler.state_dict(),
                                  'scaler': scaler.state_dict()},
                            {'history': history, 'best_f1': best_f1, 'best_epoch': best_epoch,
                             'epoch': epoch, 'args': vars(args)})

    best = load_checkpoint(best_path)
    final = best['val_report']
    elapsed = time.monotonic() - started
    LOG.info('best epoch %d:\n%s', best_epoch, format_report(final))
    metrics = {'args': vars(args), 'labels': list(labels), 'device': str(device),
               'mixed_precision': amp, 'balance': args.balance,
               'train_images': len(train_set), 'val_images': len(val_set),
               'train_class_counts': dict(zip(labels, counts.tolist())),
               'val_class_counts': dict(zip(labels, val_counts.tolist())),
               'history': history, 'best_epoch': best_epoch,
               'training_seconds_this_session': elapsed,
               'training_seconds_total': sum(h['seconds'] for h in history),
               'final': final}
    write_run_record(args.out, args.name, labels, metrics, final, history, best_epoch)
    return metrics


def write_run_record(out_dir: str, name: str, labels: Sequence[str], metrics: Dict[str, Any],
                     final: Dict[str, Any], history: List[Dict[str, float]],
                     best_epoch: int) -> None:
    """Write a run's ``metrics.json``, ``confusion_matrix.png`` and ``curves.png``."""
    atomic_write_json(os.path.join(out_dir, 'metrics.json'), metrics)
    write_confusion_matrix_png(final['confusion_matrix'], list(labels),
                               os.path.join(out_dir, 'confusion_matrix.png'),
                               title=f'{name} validation (epoch {best_epoch})')
    save_curves(history, os.path.join(out_dir, 'curves.png'))
    mark_run_folder(out_dir)
