"""
A bounded, labelled sample of a replay's tiles, written as class folders for the embedding map.

With ``leaf-disease-replay --save-tiles N`` every classified tile is offered to a
:class:`TileSample`: it keeps at most ``N`` tiles per label by reservoir sampling
(uniform over the whole bag, seeded, so a rerun keeps the same tiles), each resized
to the model input by the card's own rule and stored losslessly, so the embedding
command sees exactly the pixels the replay classified. The label is the ground truth of the box the
tile overlaps (the replay's own matching rule, :func:`.evaluation.match_tiles`) when
the bag has ground truth, else the predicted label. At the end the tiles are written
as ``OUT/tiles/<label>/<stamp>_<x0>_<y0>.png``, a folder of class subfolders that
``leaf-disease-embed OUT/tiles`` maps (misclassified tiles marked where the label is
the ground truth).
"""

import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from leaf_disease_ros.perception.atomic_io import atomic_write_bytes
from leaf_disease_ros.perception.model_card import ModelCard
from leaf_disease_ros.perception.pipeline import FrameResult
from leaf_disease_ros.perception.plots import encode_png
from leaf_disease_ros.perception.preprocess import resize_to_input
from leaf_disease_ros.replay.evaluation import match_tiles
from leaf_disease_ros.ros.conversions import GroundTruthBox

TILES_FOLDER = 'tiles'


class TileSample:
    """At most ``per_label`` tiles per label, a uniform sample of every tile offered."""

    def __init__(self, per_label: int, card: ModelCard, seed: int = 0) -> None:
        self.per_label = max(0, int(per_label))
        self.card = card
        self._rng = np.random.default_rng(seed)
        self._seen: Dict[str, int] = {}
        self._kept: Dict[str, List[Tuple[str, np.ndarray]]] = {}

    def add(self, frame_bgr: np.ndarray, result: FrameResult,
            truth: Optional[Sequence[GroundTruthBox]], pixel_scale: int = 1) -> None:
        """
        Offer every tile of one processed frame.

        ``pixel_scale``: the frame was decoded at ``1/pixel_scale`` of the camera's size
        (boxes are in full-size pixels); tiles are saved at the model's input size either way.
        """
        if not self.per_label or not result.detections:
            return
        matches = (match_tiles(result.detections, truth) if truth
                   else [None] * len(result.detections))
        for detection, match in zip(result.detections, matches):
            label = detection.label if match is None or truth is None else truth[match].label
            seen = self._seen.get(label, 0) + 1
            self._seen[label] = seen
            kept = self._kept.setdefault(label, [])
            slot = len(kept) if len(kept) < self.per_label else int(self._rng.integers(seen))
            if slot >= self.per_label:
                continue
            x0, y0, x1, y1 = detection.box_xyxy_px
            crop = frame_bgr[y0 // pixel_scale:y1 // pixel_scale,
                             x0 // pixel_scale:x1 // pixel_scale]
            tile = resize_to_input(np.ascontiguousarray(crop), self.card)
            item = (f'{result.stamp_ns}_{x0}_{y0}.png', np.ascontiguousarray(tile).copy())
            if slot == len(kept):
                kept.append(item)
            else:
                kept[slot] = item

    def counts(self) -> Dict[str, Dict[str, int]]:
        """Return ``{label: {'seen': n, 'kept': k}}``."""
        return {label: {'seen': seen, 'kept': len(self._kept.get(label, []))}
                for label, seen in sorted(self._seen.items())}

    def write(self, out_dir: str) -> str:
        """Write the kept tiles as ``out_dir/tiles/<label>/*.png``; return that folder."""
        folder = os.path.join(out_dir, TILES_FOLDER)
        if os.path.isdir(folder):
            shutil.rmtree(folder)  # tiles of an earlier run of this report folder
        for label, items in self._kept.items():
            os.makedirs(os.path.join(folder, label), exist_ok=True)
            for name, tile in items:
                atomic_write_bytes(os.path.join(folder, label, name), encode_png(tile))
        return folder
