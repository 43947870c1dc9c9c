"""
Saliency pictures for image files: what ``leaf-disease-explain`` and ``classify --explain`` write.

:func:`explain_images` explains a list of decoded images with one backend (or a
Grad-CAM function) and writes one PNG per image into a folder:

- whole-image mode (``tile_size_px`` 0): the photo is one crop, resized to the
  model input as the classifier does; the PNG is the photo with its heat map and
  the label, score and method written on it;
- tiled mode: the image is cut into tiles like the pipeline cuts a camera frame
  (:func:`leaf_disease_ros.perception.tiling.tile_boxes`); each tile gets its own
  map, placed where the tile is, with its label and score at its corner.

Images are processed a few at a time (``chunk_images``), so memory stays bounded
whatever the number of files.
"""

from dataclasses import dataclass
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from leaf_disease_ros.explain.overlay import frame_picture, saliency_picture
from leaf_disease_ros.explain.saliency import explain_tiles, LogitsBackend, Saliency
from leaf_disease_ros.perception.atomic_io import atomic_write_bytes
from leaf_disease_ros.perception.image_checks import read_image_file
from leaf_disease_ros.perception.model_card import ModelCard
from leaf_disease_ros.perception.plots import encode_png
from leaf_disease_ros.perception.tiling import crops, tile_boxes

SUFFIX = '.saliency.png'

#: ``tiles -> maps``: an alternative explainer (Grad-CAM) in place of the backend's
Explainer = Callable[[Sequence[np.ndarray]], List[Saliency]]


@dataclass(frozen=True)
class ExplainSettings:
    """How to explain: method and its size, tiling, and the class to explain."""

    method: str = 'occlusion'
    grid: int = 7
    masks: int = 128
    tile_size_px: int = 0  # 0: the whole image is one crop
    tile_stride_px: int = 0  # 0: = tile_size_px
    target: Optional[int] = None  # class index; None: the predicted class
    chunk_images: int = 4


def read_image(path: str) -> Optional[np.ndarray]:
    """Return the BGR uint8 image at ``path``, or None when it cannot be read or decoded."""
    return read_image_file(path)[0]


def output_name(name: str) -> str:
    """Return the PNG file name for an input named ``name`` (a relative path is kept)."""
    return os.path.splitext(name)[0] + SUFFIX


def _explain(tiles: Sequence[np.ndarray], backend: Optional[LogitsBackend], card: ModelCard,
             settings: ExplainSettings, explainer: Optional[Explainer]) -> Tuple[List[Saliency],
                                                                                 int]:
    """Return the maps and the number of batched backend calls."""
    if explainer is not None:
        return explainer(tiles), 1
    if backend is None:
        raise ValueError('explain needs a backend or an explainer')
    targets = None if settings.target is None else [settings.target] * len(tiles)
    run = explain_tiles(tiles, backend, card, settings.method, targets=targets,
                        grid=settings.grid, masks=settings.masks)
    return list(run.maps), run.batches


def explain_images(items: Sequence[Tuple[str, np.ndarray]], card: ModelCard, out_dir: str,
                   settings: ExplainSettings, backend: Optional[LogitsBackend] = None,
                   explainer: Optional[Explainer] = None
                   ) -> Tuple[List[Dict[str, Any]], Dict[str, float]]:
    """
    Explain ``(name, BGR image)`` pairs and write ``out_dir/<name>.saliency.png`` each.

    :returns: one record per image (name, png, label and score of its most confident
        tile, method, per-tile labels, inferences, seconds) and the totals (images,
        tiles, inferences, batched calls, seconds, ms per tile).
    """
    records: List[Dict[str, Any]] = []
    totals = {'images': 0, 'tiles': 0, 'inferences': 0, 'batched_calls': 0, 'seconds': 0.0}
    for start in range(0, len(items), max(1, settings.chunk_images)):
        chunk = items[start:start + max(1, settings.chunk_images)]
        tiles: List[np.ndarray] = []
        layout: List[Tuple[str, np.ndarray, np.ndarray]] = []
        for name, image in chunk:
            if settings.tile_size_px > 0:
                boxes = tile_boxes(image.shape[0], image.shape[1], 'grid', settings.tile_size_px,
                                   settings.tile_stride_px or settings.tile_size_px)
            else:
                boxes = np.array([[0, 0, image.shape[1], image.shape[0]]], dtype=np.int32)
            layout.append((name, image, boxes))
            tiles += [np.ascontiguousarray(c) for c in crops(image, boxes)]
        maps, batches = _explain(tiles, backend, card, settings, explainer)
        totals['images'] += len(chunk)
        totals['tiles'] += len(maps)
        totals['inferences'] += sum(m.inferences for m in maps)
        totals['batched_calls'] += batches
        totals['seconds'] += sum(m.seconds for m in maps)
        offset = 0
        for name, image, boxes in layout:
            mine = maps[offset:offset + len(boxes)]
            offset += len(boxes)
            if settings.tile_size_px > 0:
                picture = frame_picture(image, boxes, [m.heat for m in mine],
                                        [f'{m.label} {m.score:.2f}' for m in mine])
            else:
                only = mine[0]
                picture = saliency_picture(image, only.heat, only.label, only.score, only.method)
            png = os.path.join(out_dir, output_name(name))
            os.makedirs(os.path.dirname(png) or '.', exist_ok=True)
            atomic_write_bytes(png, encode_png(picture))
            best = max(mine, key=lambda m: m.score)
            records.append({
                'name': name, 'png': png, 'label': best.label, 'score': best.score,
                'method': best.method, 'tiles': len(mine),
                'tile_labels': [[m.label, m.score] for m in mine],
                'inferences': sum(m.inferences for m in mine),
                'seconds': sum(m.seconds for m in mine)})
    totals['ms_per_tile'] = 1e3 * totals['seconds'] / max(1, totals['tiles'])
    return records, totals
