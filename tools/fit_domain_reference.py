#!/usr/bin/env python3
r"""
Fit a model card's ``embedding_distance`` section: the domain check's reference.

Usage (what made the section of ``engines/leaf_lite0_field.json``)::

    python3 tools/fit_domain_reference.py engines/leaf_lite0_field.json \\
        --pv-root ../shared/datasets/plantvillage_grape \\
        --field-root ../shared/datasets/field_grape_small --write

Material, split as the model's own training was:

- **leaves**: the PlantVillage photos of the leaf-grouped split that
  ``leaf-disease-train`` makes with its defaults (photo-number blocks of 40,
  validation fraction 0.2, seed 0): the training side fits the class means and the
  shared covariance, the validation side chooses the threshold;
- **background label**: non-leaf tiles made by the field simulation's ``background``
  and ``field_crop`` tile makers (procedural soil, dry grass, sky, posts and wires,
  bunches; crops of the field photos that already trained the model as backgrounds,
  :data:`~leaf_disease_ros.training.field_sim.FIELD_NEGATIVES` ``train``), field
  photometry; training side with ``--seed``, validation side with ``--seed + 1`` and
  the held-out photos of ``FIELD_NEGATIVES['val']``. Field crops the simulation would
  call healthy canopy are left out.

Embeddings come from the card's ONNX model through ONNX Runtime and the card's own
preprocessing (the node's path). The threshold is the ``--quantile`` of the validation
distances (leaves and backgrounds together): a tile farther than that is farther from
the training data than all but ``1 - quantile`` of held-out in-domain tiles. The
section is written with ``use_for_unknown: false``: classification does not change,
the node's domain check counts the far tiles. Only that section of the card changes.
"""

import argparse
import json
import os
import sys
from typing import List, Sequence, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'src'))

from leaf_disease_ros.inference.factory import load_backend  # noqa: E402
from leaf_disease_ros.perception.embedding_distance import fit_distance  # noqa: E402
from leaf_disease_ros.perception.preprocess import preprocess  # noqa: E402
from leaf_disease_ros.training import field_sim  # noqa: E402
from leaf_disease_ros.training.dataset import build_split  # noqa: E402

BATCH = 64


def embed(backend: object, images: Sequence[np.ndarray]) -> np.ndarray:
    """Return ``(N, D)`` embeddings of BGR images (card preprocessing, batches of 64)."""
    card = backend.card  # type: ignore[attr-defined]
    parts = []
    for start in range(0, len(images), BATCH):
        batch = preprocess(list(images[start:start + BATCH]), card)
        parts.append(backend.infer_with_embedding(batch)[1])  # type: ignore[attr-defined]
    return np.concatenate(parts)


def backgrounds(field_root: str, photos: Sequence[str], count: int,
                seed: int) -> List[np.ndarray]:
    """Return ``count`` background-label tiles (uint8 BGR, 256 px) of the simulation."""
    banks = field_sim.Banks(leaves={}, healthy=[],
                            photos=field_sim.FieldPhotos(field_root, photos))
    rng = np.random.default_rng(seed)
    out: List[np.ndarray] = []
    while len(out) < count:
        kind = 'field_crop' if rng.random() < 0.3 else 'background'
        tile, target, _, _ = field_sim.make_tile(kind, -1, rng, banks)
        if target == field_sim.BACKGROUND:
            out.append(tile)
    return out


def plantvillage(pv_root: str) -> Tuple[List[np.ndarray], np.ndarray, List[np.ndarray],
                                        np.ndarray]:
    """Return ``(train images, train labels, val images, val labels)`` of the split."""
    _, train, val, _ = build_split(pv_root, None, 'photo-blocks', 40, None, 0.2, 0)
    return ([field_sim.read_bgr(s.path) for s in train],
            np.array([s.label_index for s in train]),
            [field_sim.read_bgr(s.path) for s in val],
            np.array([s.label_index for s in val]))


def main(argv: Sequence[str] = ()) -> int:
    """Fit the section; print it (and write it into the card with ``--write``)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('card', help='model card (.json beside its .onnx)')
    parser.add_argument('--pv-root', required=True)
    parser.add_argument('--field-root', required=True)
    parser.add_argument('--backgrounds', type=int, default=1500,
                        help='background tiles on the training side (a third on validation)')
    parser.add_argument('--seed', type=int, default=1000)
    parser.add_argument('--components', type=int, default=32)
    parser.add_argument('--quantile', type=float, default=0.99)
    parser.add_argument('--write', action='store_true', help='update the card in place')
    args = parser.parse_args(list(argv) or None)

    backend = load_backend(os.path.splitext(args.card)[0] + '.onnx', 'onnxruntime',
                           onnx_provider='cpu', max_batch=BATCH)
    card = backend.card
    background = card.labels.index(card.background_labels[0])
    train_x, train_y, val_x, val_y = plantvillage(args.pv_root)
    bg_train = backgrounds(args.field_root, field_sim.FIELD_NEGATIVES['train'],
                           args.backgrounds, args.seed)
    bg_val = backgrounds(args.field_root, field_sim.FIELD_NEGATIVES['val'],
                         args.backgrounds // 3, args.seed + 1)
    train_e = np.concatenate([embed(backend, train_x), embed(backend, bg_train)])
    labels = np.concatenate([train_y, np.full(len(bg_train), background)])
    val_leaf = embed(backend, val_x)
    val_bg = embed(backend, bg_val)
    record = {
        'fitted_by': 'tools/fit_domain_reference.py ' + ' '.join(
            [os.path.relpath(args.card), '--pv-root', args.pv_root, '--field-root',
             args.field_root, '--backgrounds', str(args.backgrounds), '--seed', str(args.seed),
             '--components', str(args.components), '--quantile', str(args.quantile)]),
        'fit_material': (f'{len(train_x)} PlantVillage photos (training side of the '
                         'leaf-grouped split: photo-number blocks of 40, validation 0.2, '
                         f'seed 0) + {len(bg_train)} background tiles of the field '
                         'simulation (procedural soil, dry grass, sky, posts and wires, '
                         'bunches; crops of the field photos that trained the model as '
                         'backgrounds: ' + ', '.join(field_sim.FIELD_NEGATIVES['train'])
                         + f'; seed {args.seed}) for the background label'),
        'threshold_material': (f'{len(val_x)} PlantVillage validation photos + '
                               f'{len(bg_val)} validation background tiles (seed '
                               f'{args.seed + 1}, held-out photos '
                               + ', '.join(field_sim.FIELD_NEGATIVES['val']) + ')'),
        'threshold_rule': (f'{args.quantile:g} quantile of the distances of the validation '
                           'leaves: the domain check counts a tile farther than this as far '
                           'from the training data'),
        'components': args.components,
    }
    distance = fit_distance(train_e, labels, card.num_classes, args.components, record)
    val_d = distance.distances(val_leaf)
    threshold = float(np.quantile(val_d, args.quantile))
    distance.unknown_threshold = round(threshold, 4)
    distance.use_for_unknown = False
    train_d = distance.distances(train_e)
    distance.record['checks'] = {
        'train_median': round(float(np.median(train_d)), 4),
        'validation_leaf_median': round(float(np.median(val_d)), 4),
        'validation_leaf_far_share': round(float(np.mean(val_d > distance.unknown_threshold)),
                                           4),
        'validation_background_far_share': round(float(np.mean(
            distance.distances(val_bg) > distance.unknown_threshold)), 4),
    }
    backend.close()
    section = distance.to_dict()
    shown = {k: v for k, v in section.items() if k not in ('class_means', 'basis', 'variances')}
    print(json.dumps(shown, indent=2))
    if args.write:
        with open(args.card, encoding='utf-8') as stream:
            doc = json.load(stream)
        doc['embedding_distance'] = section
        with open(args.card, 'w', encoding='utf-8') as stream:
            json.dump(doc, stream, indent=2)
            stream.write('\n')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
