"""
Fitting a site head: the model's output layer re-fitted on one recorded pass (NumPy only).

The recipe ``leaf-disease-site`` runs (docs/adaptation.md, "One-pass site adaptation"):

1. **The model's own head.** The model's logits are a linear function of its
   embedding output (the embedding is the input of the output layer), so ``W0, b0``
   are recovered exactly by least squares from pairs of embeddings and logits
   (:func:`base_head`; a residual above :data:`MAX_HEAD_RESIDUAL` means the output
   is not linear in the embedding, and the model cannot take a site head).
2. **The training rows.** The pass's tiles, each labelled with the non-disease label
   the model prefers for it (healthy or background): the site's normal. Diseased
   and healthy leaves of the leaf bank composited into the pass's own tiles
   (:func:`composite_tiles`): disease as it would look on this site, so the head
   cannot learn "this canopy is healthy" by forgetting disease; healthy pasted leaves
   keep the paste itself from becoming a disease cue. Tiles the grower moved to a
   disease folder, with that label. Each group carries a fixed share of the loss
   (:data:`GROUP_WEIGHTS`).
3. **The fit.** Softmax cross-entropy at the card's temperature plus
   ``l2 * |W - W0|^2`` (:func:`fit_head`), full batch, Adam, a fixed number of
   steps: the head moves only as far as the site's material asks, so the lab
   accuracy and the taught diseases stay (measured by the developer script
   ``site_adaptation_eval.py``; docs/adaptation.md has the figures).

Nothing here imports torch: a site is fitted in seconds on the robot's CPU.
"""

from dataclasses import dataclass
import os
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.perception.errors import DatasetError
from leaf_disease_ros.perception.image_folders import list_class_folders
from leaf_disease_ros.training.dataset import build_split
from leaf_disease_ros.training.field_sim import Leaf, leaf_from_image, paste_leaf, read_bgr

#: largest |logit| error of the least-squares head before the model counts as non-linear
MAX_HEAD_RESIDUAL = 1e-2
#: share of the loss of each group of training rows
GROUP_WEIGHTS: Dict[str, float] = {'site': 1.0, 'disease': 1.0, 'healthy_leaf': 0.5,
                                   'labelled': 1.0}
DEFAULT_L2 = 1e-3
DEFAULT_STEPS = 300
DEFAULT_LEARNING_RATE = 1e-3
COMPOSITE_CANVAS_PX = 256


@dataclass
class LeafBank:
    """Segmented leaves by label name (the card's labels), for compositing."""

    leaves: Dict[str, List[Leaf]]
    root: str

    def count(self) -> Dict[str, int]:
        """Return leaves per label."""
        return {name: len(items) for name, items in self.leaves.items()}


def load_leaf_bank(root: str, labels: Sequence[str], per_class: int, seed: int,
                   train_side_only: bool) -> LeafBank:
    """
    Segment up to ``per_class`` leaves of each class folder of ``root`` that is a label.

    :param root: a folder of class folders of single-leaf photos on a plain background
        (PlantVillage layout: the shipped ``engines/leaf_bank`` or the full data set).
    :param train_side_only: take only the training side of the leaf-grouped split
        (photo-number blocks of 40, fraction 0.2, seed 0): for the full data set,
        whose validation side measures the adaptation.

    :raises DatasetError: no folder of ``root`` is a label, or no leaf segments.
    """
    if train_side_only:
        names, train, _, _ = build_split(root, None, 'photo-blocks', 40, None, 0.2, 0)
        by_label: Dict[str, List[str]] = {}
        for sample in train:
            by_label.setdefault(names[sample.label_index], []).append(sample.path)
    else:
        names, samples, _ = list_class_folders(root)
        by_label = {}
        for sample in samples:
            by_label.setdefault(names[sample.label_index], []).append(sample.path)
    rng = np.random.default_rng(seed)
    leaves: Dict[str, List[Leaf]] = {}
    for name in labels:
        paths = by_label.get(name, [])
        found: List[Leaf] = []
        for path in rng.permutation(np.array(paths, dtype=object)) if paths else []:
            try:
                image = read_bgr(str(path))
            except ValueError:
                continue
            leaf = leaf_from_image(image, list(labels).index(name), os.path.basename(str(path)))
            if leaf is not None:
                found.append(leaf)
            if len(found) >= per_class:
                break
        if found:
            leaves[name] = found
    if not leaves:
        raise DatasetError(f'{root}: no class folder named like a label of the model '
                           f'({", ".join(labels)}) holds a leaf photo that segments')
    return LeafBank(leaves, root)


def composite_tiles(tiles: Sequence[np.ndarray], bank: LeafBank, names: Sequence[str],
                    count: int, rng: np.random.Generator
                    ) -> Tuple[List[np.ndarray], List[str]]:
    """
    Paste one bank leaf into each of ``count`` randomly drawn ``tiles``.

    The leaf spans 0.75-1.2 of the tile (as a 200-300 px leaf on a 256 px tile), its
    centre anywhere inside the tile's middle 80 % (so a tile may hold only part of it),
    its brightness scaled towards the tile's. Labels cycle through ``names``.

    :returns: ``(images (S, S, 3) uint8 BGR, label names)``.
    """
    if not tiles:
        raise DatasetError('the pass has no classified tile to composite leaves into')
    usable = [name for name in names if bank.leaves.get(name)]
    if not usable:
        raise DatasetError(f'the leaf bank {bank.root} has none of {", ".join(names)}')
    size = COMPOSITE_CANVAS_PX
    images: List[np.ndarray] = []
    out_names: List[str] = []
    for i in range(count):
        tile = tiles[int(rng.integers(len(tiles)))]
        canvas = cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA
                            if tile.shape[0] > size else cv2.INTER_LINEAR).astype(np.float32)
        name = usable[i % len(usable)]
        leaf = bank.leaves[name][int(rng.integers(len(bank.leaves[name])))]
        leaf_luma = float(leaf.bgr[leaf.alpha > 0.5].mean()) if (leaf.alpha > 0.5).any() else 1.0
        gain = float(np.clip(canvas.mean() / max(leaf_luma, 1.0) * rng.uniform(0.95, 1.25),
                             0.45, 1.2))
        canvas, _ = paste_leaf(canvas, leaf, rng, scale=float(rng.uniform(0.75, 1.2)),
                               centre=(float(rng.uniform(0.1, 0.9)) * size,
                                       float(rng.uniform(0.1, 0.9)) * size), gain=gain)
        images.append(np.clip(canvas, 0, 255).astype(np.uint8))
        out_names.append(name)
    return images, out_names


def base_head(embeddings: np.ndarray, logits: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """
    Return the model's output layer ``(W0 (C, D), b0 (C,))`` from embedding/logit pairs.

    :raises DatasetError: fewer than ``D + 1`` independent rows (the pass is too
        short), or the logits are not a linear function of the embedding.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(logits, dtype=np.float64)
    design = np.hstack([x, np.ones((len(x), 1))])
    if len(x) < design.shape[1]:
        raise DatasetError(f'{len(x)} tiles cannot determine an output layer of '
                           f'{design.shape[1]} weights per class: record a longer pass (or '
                           'raise --composites)')
    # Least squares, minimum norm: a direction in which no tile's embedding ever varies
    # (a unit that never fires) gets no weight; every tile's logits are reproduced.
    solution, _, _, _ = np.linalg.lstsq(design, y, rcond=None)
    residual = float(np.abs(design @ solution - y).max())
    if residual > MAX_HEAD_RESIDUAL:
        raise DatasetError(f'the logits are not a linear function of the embedding output '
                           f'(residual {residual:.3g}): this model cannot take a site head')
    return solution[:-1].T.astype(np.float64), solution[-1].astype(np.float64)


def softmax_rows(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float64 ``z``."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_head(w0: np.ndarray, b0: np.ndarray, x: np.ndarray, y: np.ndarray,
             row_weights: np.ndarray, temperature: float, l2: float = DEFAULT_L2,
             steps: int = DEFAULT_STEPS, learning_rate: float = DEFAULT_LEARNING_RATE
             ) -> Tuple[np.ndarray, np.ndarray]:
    """
    Fit ``W, b`` from ``W0, b0`` (module docstring, step 3).

    :param x: ``(N, D)`` embeddings; ``y``: ``(N,)`` label indices; ``row_weights``:
        ``(N,)`` non-negative, summing to the loss's total weight.
    :returns: ``(W (C, D) float32, b (C,) float32)``.
    """
    xs = np.asarray(x, dtype=np.float64)
    classes = w0.shape[0]
    target = np.eye(classes)[np.asarray(y, dtype=np.int64)]
    weights = np.asarray(row_weights, dtype=np.float64)[:, None]
    w, b = w0.copy(), b0.copy()
    moments = [np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, steps + 1):
        probs = softmax_rows((xs @ w.T + b) / temperature)
        grad = (probs - target) * weights / temperature
        grads = (grad.T @ xs + 2.0 * l2 * (w - w0), grad.sum(axis=0))
        for k, (param, g) in enumerate(zip((w, b), grads)):
            m, v = moments[2 * k], moments[2 * k + 1]
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            param -= (learning_rate * (m / (1 - beta1 ** step))
                      / (np.sqrt(v / (1 - beta2 ** step)) + eps))
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
        raise DatasetError('fitting the site head diverged (non-finite weights)')
    return w.astype(np.float32), b.astype(np.float32)


def group_weights(groups: Sequence[str]) -> np.ndarray:
    """Return per-row weights: each group's :data:`GROUP_WEIGHTS` share spread over its rows."""
    names = np.asarray(groups)
    weights = np.zeros(len(names), dtype=np.float64)
    for name, share in GROUP_WEIGHTS.items():
        rows = names == name
        if rows.any():
            weights[rows] = share / rows.sum()
    return weights


def frame_blocks(frame_index: np.ndarray, holdout_fraction: float, block_frames: int = 10
                 ) -> np.ndarray:
    """
    Return ``(N,)`` bool: rows whose frame falls in a held-out block of frames.

    Frames are cut into blocks of ``block_frames`` consecutive frames (consecutive
    frames see the same leaves) and every ``round(1 / holdout_fraction)``-th block is
    held out, so held-out tiles never share a leaf with the fitted ones.
    """
    if holdout_fraction <= 0.0:
        return np.zeros(len(frame_index), dtype=bool)
    period = max(2, int(round(1.0 / holdout_fraction)))
    block = np.asarray(frame_index) // block_frames
    return (block % period) == period - 1
