r"""
Fine-tuning a shipped model on a vineyard's own tiles (PyTorch + onnx2torch, ``train`` extra).

Usage (step 3 of docs/adaptation.md)::

    leaf-disease-train harvest/ --init-from engines/leaf_lite0_field.onnx \\
        --base-data ../shared/datasets/plantvillage_grape --out runs/mine
    leaf-disease-export runs/mine --out engines/mine.onnx

What it does:

- **weights from the ONNX file itself**: onnx2torch turns the model's graph into a
  trainable torch module (no checkpoint needs shipping; the model's card must match
  the file's sha256). The card of the run is the model's card: input, preprocessing,
  labels, healthy and background labels; ``--input-size`` and ``--arch`` do not apply.
- **labels**: the model's labels in their order, then any new label folder of DATA
  or of the base data (sorted). When the label set differs, the classifier head (the
  last fully connected layer) is replaced: rows of labels in both are kept, a new
  label's row starts as the mean of the old rows (a neutral start). ``--healthy-labels``
  and ``--background-labels`` add to the card's lists.
- **data**: DATA is a class-folder dataset, typically a harvest
  (``leaf-disease-replay --harvest-tiles``) whose labels a person corrected by moving
  files. Its ``unknown`` folder is ignored (tiles nobody labelled; the log says how
  many), and ``index.csv`` is only read to count the corrections. Harvested tiles are
  grouped for the split by 10 s blocks of their frame stamp (views of one leaf stay on
  one side); other files one group each; a class with a single group trains only.
  ``--base-data`` (e.g. the PlantVillage folders) is split by photo blocks as in
  :mod:`.train` and mixed in so the model does not forget what it knew:
  ``--field-share`` (0.5) of the draws are DATA tiles, each source balanced by class.
  ``--max-per-class`` limits the base data only.
- **training**: the recipe of :mod:`.train` (its augmentations, runtime
  preprocessing, AdamW, one-cycle schedule, label smoothing, best epoch by validation
  macro-F1 on both sources together) with fine-tuning defaults
  (:data:`~leaf_disease_ros.training.recipe.FINETUNE_EPOCHS` = 8 epochs, peak learning
  rate :data:`~leaf_disease_ros.training.recipe.FINETUNE_LR` = 1e-4).
- **run folder**: as :mod:`.train` writes it (``train.log``, ``metrics.json`` with the
  accuracy per source, ``curves.png``, ``confusion_matrix.png``, ``split.json``),
  plus ``base_model.onnx`` and ``base_model.json`` (the model it started from, so the
  run exports on its own); the checkpoint ``checkpoint_best.pt`` is the package's
  weights-only format (:mod:`.checkpoint`: tensors plus the JSON metadata that rebuilds
  the network around them).
"""

import argparse
import csv
import os
import re
import shutil
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple
import warnings

import numpy as np

from leaf_disease_ros.perception.atomic_io import atomic_path, atomic_write_json
from leaf_disease_ros.perception.errors import (DatasetError, LeafDiseaseError,
                                                MissingDependencyError, ModelLoadError)
from leaf_disease_ros.perception.image_folders import entry_is_folder, is_image_file, Sample
from leaf_disease_ros.perception.metrics import classification_report, format_report
from leaf_disease_ros.perception.model_card import (card_from_dict, card_path_for_model,
                                                    card_to_dict, check_model_file, load_card,
                                                    ModelCard, UNKNOWN_LABEL)
from leaf_disease_ros.perception.preprocess import preprocess
from leaf_disease_ros.training.checkpoint import save_checkpoint
from leaf_disease_ros.training.dataset import build_split, grouped_split
from leaf_disease_ros.training.recipe import TRAIN_EXTRA_HINT
from leaf_disease_ros.training.run_folder import claim_run_folder
from leaf_disease_ros.training.train import (choose_device, EpochSampler, evaluate, LeafDataset,
                                             LOG, setup_logging, train_epoch, write_run_record)

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(f'fine-tuning needs PyTorch: {TRAIN_EXTRA_HINT}') from exc

ARCH = 'onnx2torch'
BASE_MODEL = 'base_model.onnx'
STAMP_BLOCK_S = 10
HARVEST_INDEX = 'index.csv'
# t<seconds>.<nanoseconds> in a harvested tile's name (replay/harvest.py)
_STAMP_RE = re.compile(r'_t(\d+)\.(\d{9})_')


def load_onnx_model(onnx_path: str) -> Tuple[nn.Module, ModelCard]:
    """
    Return the ONNX model as a trainable torch module, with its checked card.

    :raises ModelLoadError: the file is missing or onnx2torch cannot convert it.
    :raises ModelCardError: the card is missing or belongs to another file.
    :raises MissingDependencyError: onnx2torch is not installed.
    """
    if not os.path.isfile(onnx_path):
        raise ModelLoadError(f'--init-from {onnx_path} does not exist; give an ONNX model '
                             'with its card beside it (e.g. engines/leaf_lite0_field.onnx)')
    card = load_card(card_path_for_model(onnx_path))
    check_model_file(card, onnx_path)
    try:
        import onnx2torch
    except ImportError as exc:
        raise MissingDependencyError(f'fine-tuning from an ONNX model needs onnx2torch: '
                                     f'{TRAIN_EXTRA_HINT}') from exc
    import onnx
    try:
        graph = onnx.load(onnx_path)
    except Exception as exc:  # noqa: B902 - a damaged file raises protobuf or OS errors
        raise ModelLoadError(f'{onnx_path} is not a loadable ONNX model: {exc}') from exc
    outputs = [output.name for output in graph.graph.output]
    if card.output_name not in outputs:
        raise ModelLoadError(f'{onnx_path} has no output {card.output_name!r} (the '
                             f'output.name of its card); it has {outputs}')
    # Train on the logits alone: a second output (the shipped models' embedding) would
    # make the module return a tuple and hide the classifier head.
    keep = [output for output in graph.graph.output if output.name == card.output_name]
    del graph.graph.output[:]
    graph.graph.output.extend(keep)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            module = onnx2torch.convert(graph)
    except Exception as exc:  # noqa: B902 - onnx2torch raises many kinds on unknown graphs
        raise ModelLoadError(f'onnx2torch cannot convert {onnx_path}: {exc}') from exc
    return module, card


def classifier_head(module: nn.Module, num_classes: int) -> Tuple[str, nn.Linear]:
    """
    Return the name and layer of the fully connected layer that makes the model's output.

    :raises ModelLoadError: the output is not made by a Linear layer of ``num_classes``.
    """
    graph = getattr(module, 'graph', None)
    outputs = [node for node in graph.nodes if node.op == 'output'] if graph is not None else []
    producer = None
    if outputs:
        value = outputs[0].args[0]
        while isinstance(value, (tuple, list)) and len(value) == 1:
            value = value[0]
        producer = value
    if producer is not None and getattr(producer, 'op', '') == 'call_module':
        layer = module.get_submodule(producer.target)
        if isinstance(layer, nn.Linear) and layer.out_features == num_classes:
            return str(producer.target), layer
    raise ModelLoadError('the model output is not made by a fully connected layer of '
                         f'{num_classes} outputs, so its classifier head cannot be replaced; '
                         'fine-tune a model exported by leaf-disease-export')


def replace_head(module: nn.Module, name: str, old_labels: Sequence[str],
                 new_labels: Sequence[str]) -> Dict[str, Any]:
    """
    Give the module a head for ``new_labels``; return what was kept, added and dropped.

    Rows of labels in both lists are copied; a new label's row is the mean of the old
    rows (weights and bias). A head whose label list is unchanged is left alone.
    """
    old = module.get_submodule(name)
    if not isinstance(old, nn.Linear):
        raise ModelLoadError(f'{name} is not a fully connected layer; fine-tune a model '
                             'exported by leaf-disease-export')
    record = {'layer': name, 'kept': [lab for lab in new_labels if lab in old_labels],
              'added': [lab for lab in new_labels if lab not in old_labels],
              'dropped': [lab for lab in old_labels if lab not in new_labels],
              'replaced': list(new_labels) != list(old_labels)}
    if not record['replaced']:
        return record
    new = nn.Linear(old.in_features, len(new_labels), bias=old.bias is not None)
    with torch.no_grad():
        for row, label in enumerate(new_labels):
            if label in old_labels:
                source = old_labels.index(label)
                new.weight[row] = old.weight[source]
                if old.bias is not None:
                    new.bias[row] = old.bias[source]
            else:
                new.weight[row] = old.weight.mean(dim=0)
                if old.bias is not None:
                    new.bias[row] = old.bias.mean()
    setattr(module, name, new)
    return record


def stamp_group(path: str, label_index: int) -> str:
    """Return a harvested tile's split group: its 10 s block of frame stamp (else the file)."""
    match = _STAMP_RE.search(os.path.basename(path))
    if match is None:
        return f'{label_index}:file:{path}'
    return f'{label_index}:t{int(match.group(1)) // STAMP_BLOCK_S}'


def _image_files(folder: str) -> List[str]:
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if not name.startswith('.') and os.path.isfile(os.path.join(folder, name))
                  and is_image_file(name))


def _label_folders(root: str) -> List[str]:
    return sorted(entry.name for entry in os.scandir(root)
                  if entry_is_folder(entry) and not entry.name.startswith('.'))


def label_corrections(root: str) -> Dict[str, Any]:
    """
    Count the labels a person corrected in a harvest (files moved between folders).

    :returns: ``{}`` without ``root/index.csv``; else ``moved`` (``'from -> to'`` ->
        count), ``unchanged`` and ``removed`` (tiles of the index no longer present).
    """
    index = os.path.join(root, HARVEST_INDEX)
    if not os.path.isfile(index):
        return {}
    with open(index, 'r', encoding='utf-8', newline='') as stream:
        predicted = {os.path.basename(row['file']): row['predicted_label']
                     for row in csv.DictReader(stream) if row.get('file')}
    moved: Dict[str, int] = {}
    unchanged = 0
    found = set()
    for folder in _label_folders(root):
        for path in _image_files(os.path.join(root, folder)):
            name = os.path.basename(path)
            if name not in predicted:
                continue
            found.add(name)
            if predicted[name] == folder:
                unchanged += 1
            else:
                key = f'{predicted[name]} -> {folder}'
                moved[key] = moved.get(key, 0) + 1
    return {'moved': dict(sorted(moved.items())), 'moved_total': sum(moved.values()),
            'unchanged': unchanged, 'removed': len(set(predicted) - found)}


def field_samples(root: str) -> Tuple[Dict[str, List[str]], int]:
    """
    List a (harvested, corrected) class-folder dataset: label -> image paths.

    The ``unknown`` folder is left out; its image count is returned.

    :raises DatasetError: ``root`` is not a folder or holds no labelled image.
    """
    if not os.path.isdir(root):
        raise DatasetError(f'{root} is not a folder; expected one subfolder per label (a '
                           'harvest of leaf-disease-replay --harvest-tiles)')
    by_label: Dict[str, List[str]] = {}
    ignored = 0
    for folder in _label_folders(root):
        files = _image_files(os.path.join(root, folder))
        if folder == UNKNOWN_LABEL:
            ignored = len(files)
        elif files:
            by_label[folder] = files
    if not by_label:
        raise DatasetError(f'{root} has no label folder with images'
                           + (f' ({ignored} tiles in {UNKNOWN_LABEL}/ are not labelled: move '
                              'them into the folder of their label, or a new one)'
                              if ignored else ''))
    return by_label, ignored


def choose_labels(card: ModelCard, field: Sequence[str], base: Sequence[str],
                  labels_arg: Optional[str]) -> Tuple[str, ...]:
    """Return the run's labels: ``--labels``, else the card's then new folders (sorted)."""
    if labels_arg:
        labels = tuple(label for label in labels_arg.split(',') if label)
    else:
        labels = tuple(card.labels) + tuple(sorted((set(field) | set(base))
                                                   - set(card.labels)))
    if UNKNOWN_LABEL in labels:
        raise DatasetError(f'{UNKNOWN_LABEL!r} cannot be a label: it is what the model says '
                           'when it is not sure')
    unused = [label for label in set(field) | set(base) if label not in labels]
    if unused:
        raise DatasetError(f'folder(s) {", ".join(sorted(unused))} are not in --labels '
                           f'{",".join(labels)}')
    return labels


def run_card(card: ModelCard, labels: Sequence[str], args: argparse.Namespace) -> ModelCard:
    """Return the card the run trains against: the base card with the run's labels."""
    doc = card_to_dict(card)
    healthy = [lab for lab in labels if lab in card.healthy_labels
               or lab in (args.healthy_labels or '').split(',')]
    background = [lab for lab in labels if lab not in healthy and (
        lab in card.background_labels or lab in (args.background_labels or '').split(','))]
    doc.update({'name': args.name, 'labels': list(labels), 'healthy_labels': healthy,
                'background_labels': background, 'model_file': '', 'onnx_sha256': '',
                'training': {}, 'metrics': {}})
    doc['calibration'] = {'temperature': 1.0, 'unknown_threshold': 0.0,
                          'finding_threshold': card.finding_threshold,
                          'finding_score': card.finding_score}
    return card_from_dict(doc, path='<fine-tuning card>')


def split_field(samples: Sequence[Sample], val_fraction: float, seed: int
                ) -> Tuple[List[Sample], List[Sample], List[int]]:
    """Split by group within each class; a class with one group trains only (index returned)."""
    by_class: Dict[int, List[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label_index, []).append(sample)
    train: List[Sample] = []
    val: List[Sample] = []
    train_only: List[int] = []
    for label_index in sorted(by_class):
        group = by_class[label_index]
        if len({s.group for s in group}) < 2:
            train.extend(group)
            train_only.append(label_index)
            continue
        part_train, part_val = grouped_split(group, val_fraction, seed)
        train.extend(part_train)
        val.extend(part_val)
    return train, val, train_only


def sample_weights(sources: Sequence[str], labels: Sequence[int], field_share: float
                   ) -> np.ndarray:
    """Return draw weights: ``field_share`` of the draws on field tiles, classes balanced."""
    counts: Dict[Tuple[str, int], int] = {}
    for source, label in zip(sources, labels):
        counts[(source, label)] = counts.get((source, label), 0) + 1
    present = set(sources)
    shares = {'field': field_share if 'base' in present else 1.0,
              'base': 1.0 - field_share if 'field' in present else 1.0}
    classes = {source: len({lab for src, lab in counts if src == source}) for source in present}
    return np.array([shares[src] / classes[src] / counts[(src, lab)]
                     for src, lab in zip(sources, labels)], dtype=np.float64)


def rebuild_model(run_dir: str, meta: Dict[str, Any]) -> nn.Module:
    """Return the network of a fine-tuning checkpoint's metadata (weights not loaded)."""
    path = os.path.join(run_dir, meta['base_model'])
    module, _ = load_onnx_model(path)
    head = meta['head']
    name, _ = classifier_head(module, len(head['base_labels']))
    replace_head(module, name, head['base_labels'], meta['card']['labels'])
    return module


def _source_accuracy(logits: np.ndarray, targets: np.ndarray, sources: Sequence[str]
                     ) -> Dict[str, Dict[str, float]]:
    out: Dict[str, Dict[str, float]] = {}
    predicted = logits.argmax(axis=1)
    for source in ('field', 'base'):
        mask = np.array([s == source for s in sources], dtype=bool)
        if mask.any():
            out[source] = {'images': int(mask.sum()),
                           'accuracy': float((predicted[mask] == targets[mask]).mean())}
    return out


def finetune(args: argparse.Namespace) -> Dict[str, Any]:
    """
    Fine-tune ``args.init_from`` on ``args.data`` (+ ``args.base_data``); return metrics.

    :raises OutputError: ``args.out`` is refused (:mod:`.run_folder`).
    """
    claim_run_folder(args)
    setup_logging(args.out)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    amp = device.type == 'cuda' and not args.no_amp
    if not 0.0 < args.field_share <= 1.0:
        raise DatasetError(f'--field-share must be in (0, 1], got {args.field_share}')

    module, base_card = load_onnx_model(args.init_from)
    field_by_label, ignored = field_samples(args.data)
    if ignored:
        LOG.warning('%d tiles in %s are ignored: nobody labelled them; move them into the '
                    'folder of their label (or a new one) to train on them', ignored,
                    os.path.join(args.data, UNKNOWN_LABEL))
    corrections = label_corrections(args.data)
    if corrections:
        LOG.info('harvest index: %d tiles moved to another label (%s), %d kept their '
                 'predicted label, %d removed', corrections['moved_total'],
                 ', '.join(f'{k}: {v}' for k, v in corrections['moved'].items()) or 'none',
                 corrections['unchanged'], corrections['removed'])
    base_labels: List[str] = []
    if args.base_data:
        if not os.path.isdir(args.base_data):
            raise DatasetError(f'--base-data {args.base_data} is not a folder')
        base_labels = [f for f in _label_folders(args.base_data) if f != UNKNOWN_LABEL]
    labels = choose_labels(base_card, list(field_by_label), base_labels, args.labels)
    card = run_card(base_card, labels, args)
    index = {label: i for i, label in enumerate(labels)}

    field = [Sample(path, index[label], '') for label, paths in field_by_label.items()
             for path in paths]
    field = [Sample(s.path, s.label_index, stamp_group(s.path, s.label_index)) for s in field]
    field_train, field_val, train_only = split_field(field, args.val_fraction, args.seed)
    if train_only:
        LOG.warning('label(s) %s of %s have a single group (one 10 s stretch): all their '
                    'tiles train, none validates', ', '.join(labels[i] for i in train_only),
                    args.data)
    base_train: List[Sample] = []
    base_val: List[Sample] = []
    if args.base_data:
        listed, train_part, val_part, skipped = build_split(
            args.base_data, base_labels, 'photo-blocks', args.block_size, None,
            args.val_fraction, args.seed, args.max_per_class)
        remap = {i: index[label] for i, label in enumerate(listed)}
        base_train = [Sample(s.path, remap[s.label_index], 'base:' + s.group)
                      for s in train_part]
        base_val = [Sample(s.path, remap[s.label_index], 'base:' + s.group) for s in val_part]
    else:
        LOG.warning('no --base-data: the model may forget what the harvest does not show; '
                    'pass the data it was trained on (e.g. ../shared/datasets/'
                    'plantvillage_grape)')
    train_set = field_train + base_train
    val_set = field_val + base_val
    train_sources = ['field'] * len(field_train) + ['base'] * len(base_train)
    val_sources = ['field'] * len(field_val) + ['base'] * len(base_val)
    if not val_set:
        raise DatasetError('no validation images: label more tiles (at least two 10 s '
                           'stretches per label) or pass --base-data')

    name, _ = classifier_head(module, base_card.num_classes)
    head = replace_head(module, name, list(base_card.labels), list(labels))
    head['base_labels'] = list(base_card.labels)
    LOG.info('started from %s (%s): labels %s%s', args.init_from, base_card.name,
             ', '.join(labels), (f"; head {name} replaced (kept {', '.join(head['kept'])}; "
                                 f"new {', '.join(head['added']) or 'none'}; dropped "
                                 f"{', '.join(head['dropped']) or 'none'})")
             if head['replaced'] else '')
    shutil.copyfile(args.init_from, os.path.join(args.out, BASE_MODEL))
    shutil.copyfile(card_path_for_model(args.init_from),
                    card_path_for_model(os.path.join(args.out, BASE_MODEL)))

    def rel(sample: Sample) -> str:
        inside = os.path.abspath(sample.path).startswith(os.path.abspath(args.data) + os.sep)
        return (os.path.relpath(sample.path, args.data) if inside
                else os.path.abspath(sample.path))

    atomic_write_json(os.path.join(args.out, 'split.json'), {
        'data': os.path.abspath(args.data),
        'base_data': os.path.abspath(args.base_data) if args.base_data else None,
        'labels': list(labels),
        'group': f'field: {STAMP_BLOCK_S} s blocks of frame stamp; base: photo-blocks',
        'block_size': args.block_size, 'val_fraction': args.val_fraction, 'seed': args.seed,
        'train': [[rel(s), s.label_index, s.group] for s in train_set],
        'val': [[rel(s), s.label_index, s.group] for s in val_set]})
    counts = np.bincount([s.label_index for s in train_set], minlength=len(labels))
    val_counts = np.bincount([s.label_index for s in val_set], minlength=len(labels))
    LOG.info('field tiles: %d train / %d validation; base images: %d / %d; field share of '
             'the draws %.2f', len(field_train), len(field_val), len(base_train),
             len(base_val), args.field_share if base_train else 1.0)
    LOG.info('classes: %s', ', '.join(f'{lab} (train {c}, val {v})'
                                      for lab, c, v in zip(labels, counts, val_counts)))

    train_data = LeafDataset(train_set, card, args.seed, train=True)
    val_data = LeafDataset(val_set, card, args.seed, train=False)
    val_inputs = torch.from_numpy(preprocess(val_data.images, card))
    val_targets = torch.tensor([s.label_index for s in val_set])
    sampler = EpochSampler(sample_weights(train_sources, [s.label_index for s in train_set],
                                          args.field_share), len(train_set), args.seed)
    batch_size = min(args.batch_size, len(train_set))
    loader = torch.utils.data.DataLoader(
        train_data, batch_size=batch_size, sampler=sampler, drop_last=True,
        num_workers=args.workers, persistent_workers=args.workers > 0,
        pin_memory=device.type == 'cuda')
    module = module.to(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = torch.optim.AdamW(module.parameters(), lr=args.lr,
                                  weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=len(loader),
        pct_start=0.15)
    scaler = torch.amp.GradScaler('cuda', enabled=amp)
    LOG.info('device: %s, %d epochs, peak learning rate %g, batch %d', device, args.epochs,
             args.lr, batch_size)

    best_path = os.path.join(args.out, 'checkpoint_best.pt')
    history: List[Dict[str, Any]] = []
    best_f1, best_epoch = -1.0, 0
    best_report: Dict[str, Any] = {}
    best_sources: Dict[str, Dict[str, float]] = {}
    started = time.monotonic()
    progress = None
    if not args.no_progress:
        from tqdm import tqdm
        progress = tqdm
    for epoch in range(args.epochs):
        if best_epoch and epoch - best_epoch > args.patience:
            LOG.info('early stop: no better validation macro-F1 for %d epochs', args.patience)
            break
        epoch_start = time.monotonic()
        sampler.epoch = epoch
        batches = loader if progress is None else progress(
            loader, desc=f'epoch {epoch + 1}/{args.epochs}', unit='batch', leave=False)
        total_loss, correct, seen = train_epoch(module, batches, criterion, optimizer,
                                                scheduler, scaler, device, amp)
        logits, val_loss = evaluate(module, val_inputs, val_targets, device, batch_size * 2,
                                    amp)
        report = classification_report(val_targets.numpy(), logits.argmax(1), labels)
        sources = _source_accuracy(logits, val_targets.numpy(), val_sources)
        record = {'epoch': epoch + 1, 'train_loss': total_loss / max(seen, 1),
                  'train_accuracy': correct / max(seen, 1), 'val_loss': val_loss,
                  'val_accuracy': report['accuracy'], 'val_macro_f1': report['macro_f1'],
                  'val_field_accuracy': sources.get('field', {}).get('accuracy'),
                  'val_base_accuracy': sources.get('base', {}).get('accuracy'),
                  'lr': scheduler.get_last_lr()[0], 'seconds': time.monotonic() - epoch_start}
        history.append(record)
        improved = report['macro_f1'] > best_f1
        if improved:
            best_f1, best_epoch, best_report, best_sources = (report['macro_f1'], epoch + 1,
                                                              report, sources)
            with atomic_path(best_path) as tmp:  # tensors + JSON: loads with weights_only
                save_checkpoint(tmp, {'model': module.state_dict()}, {
                    'arch': ARCH, 'base_model': BASE_MODEL,
                    'init_from': {'file': os.path.abspath(args.init_from),
                                  'name': base_card.name,
                                  'onnx_sha256': base_card.onnx_sha256},
                    'head': head, 'card': card_to_dict(card), 'epoch': epoch + 1,
                    'val_report': report, 'val_sources': sources,
                    'data': os.path.abspath(args.data),
                    'base_data': os.path.abspath(args.base_data) if args.base_data else None})
        LOG.info('epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f macro-F1 '
                 '%.4f (field %s, base %s)%s | %.0f s', epoch + 1, args.epochs,
                 record['train_loss'], record['train_accuracy'], val_loss, report['accuracy'],
                 report['macro_f1'], _fmt(sources, 'field'), _fmt(sources, 'base'),
                 '  (best)' if improved else '', record['seconds'])

    elapsed = time.monotonic() - started
    LOG.info('best epoch %d:\n%s', best_epoch, format_report(best_report))
    metrics = {'args': vars(args), 'labels': list(labels), 'device': str(device),
               'mixed_precision': amp, 'balance': 'sampler (per source and class)',
               'init_from': os.path.abspath(args.init_from), 'head': head,
               'field_share': args.field_share if base_train else 1.0,
               'field_tiles_ignored_unknown': ignored, 'label_corrections': corrections,
               'train_images': len(train_set), 'val_images': len(val_set),
               'train_class_counts': dict(zip(labels, counts.tolist())),
               'val_class_counts': dict(zip(labels, val_counts.tolist())),
               'val_sources': best_sources, 'history': history, 'best_epoch': best_epoch,
               'training_seconds_this_session': elapsed,
               'training_seconds_total': sum(h['seconds'] for h in history),
               'final': best_report}
    write_run_record(args.out, args.name, labels, metrics, best_report, history, best_epoch)
    return metrics


def _fmt(sources: Dict[str, Dict[str, float]], source: str) -> str:
    return f"{sources[source]['accuracy']:.4f}" if source in sources else '-'


def check_args(args: argparse.Namespace) -> None:
    """Refuse options that do not apply to fine-tuning, naming the reason."""
    if getattr(args, 'resume', False):
        raise LeafDiseaseError('--resume does not apply to --init-from: start the '
                               'fine-tuning again (it is short)')
    if getattr(args, 'weights', None):
        raise LeafDiseaseError('--weights and --init-from both give the starting weights; '
                               'keep one')
