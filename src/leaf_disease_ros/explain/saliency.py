"""
Saliency through the backend: occlusion sensitivity and RISE for any tile, any runtime.

Both methods only call ``infer(batch) -> logits``, so they explain exactly what the
robot runs: an ONNX Runtime session or a TensorRT engine, no PyTorch needed
(Grad-CAM, which needs PyTorch and the training checkpoint, is
:mod:`leaf_disease_ros.training.gradcam`).

The score explained is the calibrated log-odds of the target class (the predicted
one unless given), ``log p_t - log(1 - p_t)`` from ``softmax(logits / T)``: unlike
the probability it does not saturate at 1.0, so a model that is 0.999 sure still
shows where its evidence lies.

- **occlusion**: a ``grid`` x ``grid`` lattice of square windows (side
  ``window_fraction`` of the input) is replaced, one at a time, by the card's mean
  colour (0 after normalisation); a pixel's saliency is the mean drop of the score
  over the windows that cover it. Cost per tile: ``grid**2 + 1`` inferences
  (50 for the default grid of 7).
- **RISE** (Petsiuk et al., 2018): ``masks`` random smooth masks keep each of
  ``cells`` x ``cells`` cells with probability ``keep``; a pixel's saliency is the
  covariance of its mask value with the score. Cost per tile: ``masks + 1``
  inferences.

Variants of all tiles are streamed to the backend in chunks of its ``max_batch``, so
the inferences per tile are bounded and batched: ``ceil(tiles * per_tile /
max_batch)`` calls, with one chunk of inputs in memory at a time. Heat maps are
``(h, w)`` float32 in [0, 1] on the tile's own pixel grid (1 = most salient).
"""

from dataclasses import dataclass
import math
import time
from typing import Iterator, List, Optional, Protocol, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.perception.errors import LeafDiseaseError
from leaf_disease_ros.perception.model_card import ModelCard
from leaf_disease_ros.perception.postprocess import softmax
from leaf_disease_ros.perception.preprocess import preprocess

METHODS = ('occlusion', 'rise')
DEFAULT_GRID = 7
DEFAULT_WINDOW_FRACTION = 0.25
DEFAULT_MASKS = 128
DEFAULT_CELLS = 8
DEFAULT_KEEP = 0.5


class LogitsBackend(Protocol):
    """What saliency needs of a backend (any of ``inference/``)."""

    max_batch: int

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Return ``(N, C)`` float32 logits of a ``(N, 3, H, W)`` float32 batch."""


@dataclass(frozen=True)
class Saliency:
    """
    The saliency of one tile.

    ``heat`` is ``(h, w)`` float32 in [0, 1] on the tile's pixels; ``label`` and
    ``score`` are the explained class and its calibrated probability on the whole
    tile; ``inferences`` counts the images this tile sent to the backend and
    ``seconds`` its share of the wall time of the call.
    """

    heat: np.ndarray
    label: str
    label_index: int
    score: float
    method: str
    inferences: int
    seconds: float


@dataclass(frozen=True)
class SaliencyRun:
    """The result of one call: per-tile maps plus what the call cost."""

    maps: Tuple[Saliency, ...]
    inferences: int
    batches: int
    seconds: float

    @property
    def ms_per_tile(self) -> float:
        """Wall milliseconds per tile of the whole call."""
        return 1e3 * self.seconds / max(1, len(self.maps))


def log_odds(logits: np.ndarray, temperature: float, target: np.ndarray) -> np.ndarray:
    """Return ``(N,)`` calibrated log-odds of class ``target[i]`` for each row of logits."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    rows = np.arange(len(scaled))
    chosen = scaled[rows, target]
    others = scaled.copy()
    others[rows, target] = -np.inf
    peak = others.max(axis=1)
    rest = peak + np.log(np.exp(others - peak[:, None]).sum(axis=1))
    return chosen - rest


def occlusion_windows(size_px: int, grid: int, window_fraction: float) -> List[Tuple[int, int]]:
    """Return the ``(start, stop)`` of ``grid`` windows along one input axis of ``size_px``."""
    side = max(1, int(round(size_px * window_fraction)))
    starts = np.linspace(0, size_px - side, grid).round().astype(int)
    return [(int(s), int(s) + side) for s in starts]


def rise_masks(count: int, height: int, width: int, cells: int, keep: float,
               seed: int) -> np.ndarray:
    """Return ``(count, height, width)`` float32 smooth random masks in [0, 1] (RISE)."""
    rng = np.random.default_rng(seed)
    cell_h = math.ceil(height / cells)
    cell_w = math.ceil(width / cells)
    grids = (rng.random((count, cells, cells)) < keep).astype(np.float32)
    masks = np.empty((count, height, width), dtype=np.float32)
    for index in range(count):
        up = cv2.resize(grids[index], ((cells + 1) * cell_w, (cells + 1) * cell_h),
                        interpolation=cv2.INTER_LINEAR)
        dy = int(rng.integers(0, cell_h))
        dx = int(rng.integers(0, cell_w))
        masks[index] = up[dy:dy + height, dx:dx + width]
    return masks


class _Plan:
    """The variants of one method for an ``(H, W)`` input (shared by every tile)."""

    def __init__(self, method: str, height: int, width: int, grid: int,
                 window_fraction: float, masks: int, cells: int, keep: float,
                 seed: int) -> None:
        if method not in METHODS:
            raise LeafDiseaseError(f'saliency method {method!r} is not one of '
                                   f'{", ".join(METHODS)} (Grad-CAM: --method gradcam)')
        self.method = method
        if method == 'occlusion':
            if grid < 1 or not 0.0 < window_fraction <= 1.0:
                raise LeafDiseaseError(f'occlusion needs grid >= 1 and 0 < window fraction '
                                       f'<= 1, got {grid} and {window_fraction}')
            rows = occlusion_windows(height, grid, window_fraction)
            cols = occlusion_windows(width, grid, window_fraction)
            keep_masks = np.ones((len(rows) * len(cols), height, width), dtype=np.float32)
            for index, ((y0, y1), (x0, x1)) in enumerate(
                    (r, c) for r in rows for c in cols):
                keep_masks[index, y0:y1, x0:x1] = 0.0
        else:
            if masks < 2 or cells < 1 or not 0.0 < keep < 1.0:
                raise LeafDiseaseError(f'RISE needs masks >= 2, cells >= 1 and 0 < keep < 1, '
                                       f'got {masks}, {cells} and {keep}')
            keep_masks = rise_masks(masks, height, width, cells, keep, seed)
        self.keep_masks = keep_masks  # (V, H, W): 1 keeps the pixel, 0 replaces it

    @property
    def variants(self) -> int:
        """Masked variants per tile (the original is one more inference)."""
        return int(self.keep_masks.shape[0])

    def heat(self, original: float, scores: np.ndarray) -> np.ndarray:
        """Return the ``(H, W)`` saliency from the variants' scores (not normalised)."""
        masks = self.keep_masks
        if self.method == 'occlusion':
            hidden = 1.0 - masks
            coverage = hidden.sum(axis=0)
            drop = np.tensordot(original - scores, hidden, axes=1)
            return np.where(coverage > 0, drop / np.maximum(coverage, 1e-6), 0.0)
        centred = scores - scores.mean()
        return np.tensordot(centred, masks, axes=1) / (masks.sum(axis=0) + 1e-6)


def _normalise(heat: np.ndarray) -> np.ndarray:
    positive = np.maximum(np.asarray(heat, dtype=np.float32), 0.0)
    peak = float(positive.max()) if positive.size else 0.0
    return positive / peak if peak > 0 else positive


def _chunks(inputs: np.ndarray, plan: _Plan, chunk: int
            ) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(batch, tile index, variant index)``; variant -1 is the unmasked tile."""
    per_tile = plan.variants + 1
    total = inputs.shape[0] * per_tile
    for start in range(0, total, chunk):
        flat = np.arange(start, min(total, start + chunk))
        tiles, variants = np.divmod(flat, per_tile)
        variants = variants - 1
        batch = inputs[tiles].copy()
        masked = variants >= 0
        if masked.any():
            batch[masked] *= plan.keep_masks[variants[masked]][:, None, :, :]
        yield batch, tiles, variants


def explain_tiles(tiles_bgr: Sequence[np.ndarray], backend: LogitsBackend, card: ModelCard,
                  method: str = 'occlusion', targets: Optional[Sequence[int]] = None,
                  grid: int = DEFAULT_GRID, window_fraction: float = DEFAULT_WINDOW_FRACTION,
                  masks: int = DEFAULT_MASKS, cells: int = DEFAULT_CELLS,
                  keep: float = DEFAULT_KEEP, seed: int = 0) -> SaliencyRun:
    """
    Return the saliency of each tile for its predicted (or given) class.

    :param tiles_bgr: ``(h_i, w_i, 3)`` uint8 BGR tiles of any sizes (a whole photo is
        one tile: it is resized to the input like the classifier does).
    :param backend: any backend (``infer`` and ``max_batch``); the card's preprocessing
        and temperature are applied here.
    :param method: ``occlusion`` or ``rise``.
    :param targets: class index per tile to explain; default the predicted class.

    :raises LeafDiseaseError: bad method settings; InferenceError from the backend.
    """
    start = time.perf_counter()
    if not len(tiles_bgr):
        return SaliencyRun((), 0, 0, 0.0)
    height, width = card.input_hw_px
    plan = _Plan(method, height, width, grid, window_fraction, masks, cells, keep, seed)
    inputs = preprocess(list(tiles_bgr), card)
    count = inputs.shape[0]
    scores = np.zeros((count, plan.variants), dtype=np.float64)
    originals: List[Optional[np.ndarray]] = [None] * count
    chunk = max(1, int(backend.max_batch))
    batches = 0
    pending: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for batch, tile_index, variant in _chunks(inputs, plan, chunk):
        logits = backend.infer(batch)
        batches += 1
        pending.append((logits, tile_index, variant))
    # targets are known only once the unmasked rows are in: resolve them, then score
    for logits, tile_index, variant in pending:
        for row in np.flatnonzero(variant < 0):
            originals[int(tile_index[row])] = logits[row]
    base_logits = np.stack([o for o in originals if o is not None])
    if targets is None:
        target = base_logits.argmax(axis=1)
    else:
        target = np.asarray(list(targets), dtype=np.int64)
        if target.shape != (count,) or target.min() < 0 or target.max() >= card.num_classes:
            raise LeafDiseaseError(f'targets must be {count} class indices in '
                                   f'0..{card.num_classes - 1}')
    base = log_odds(base_logits, card.temperature, target)
    for logits, tile_index, variant in pending:
        masked = variant >= 0
        rows = tile_index[masked]
        scores[rows, variant[masked]] = log_odds(logits[masked], card.temperature,
                                                 target[rows])
    probs = softmax(base_logits, card.temperature)
    seconds = time.perf_counter() - start
    maps = []
    for index, tile in enumerate(tiles_bgr):
        heat = plan.heat(float(base[index]), scores[index]).astype(np.float32)
        heat = _normalise(cv2.resize(heat, (tile.shape[1], tile.shape[0]),
                                     interpolation=cv2.INTER_LINEAR))
        label_index = int(target[index])
        maps.append(Saliency(heat=np.clip(heat, 0.0, 1.0).astype(np.float32),
                             label=card.labels[label_index], label_index=label_index,
                             score=float(probs[index, label_index]), method=method,
                             inferences=plan.variants + 1, seconds=seconds / count))
    return SaliencyRun(tuple(maps), count * (plan.variants + 1), batches, seconds)


def mass_inside(heat: np.ndarray, mask: np.ndarray) -> float:
    """Return the share of the saliency mass of ``heat`` that lies where ``mask`` is set."""
    heat = np.maximum(np.asarray(heat, dtype=np.float64), 0.0)
    total = float(heat.sum())
    if total <= 0.0:
        return 0.0
    return float(heat[np.asarray(mask).astype(bool)].sum() / total)
