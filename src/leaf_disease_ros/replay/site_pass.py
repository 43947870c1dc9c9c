"""
Collecting one recorded pass for site adaptation: every tile's embedding, a few images.

:class:`PassCollector` is a frame observer of the replay (:mod:`.runner`): for each
frame, the tiles the pipeline classified are preprocessed with the card and run
through the backend's embedding output (one batch per frame), and it keeps

- every tile's embedding, base logits, frame index, stamp and box (float32: about
  5 kB a tile for a 1280-d embedding, so 20,000 tiles, a 10-minute pass at 33 tiles a
  frame, take 100 MB; ``max_tiles`` bounds it, later tiles are sampled);
- a reservoir of ``keep_images`` tile images at the model's input size ×2, the
  canvases the diseased leaves are composited into;
- the ``review_tiles`` tiles the model as it stands would call most diseased (the
  highest finding score), PNG-encoded at the frame's resolution: the tiles the
  adaptation is about to teach as normal, which a grower should look at first.

Memory is bounded by those three numbers, whatever the length of the pass.
"""

from dataclasses import dataclass
import heapq
from typing import Any, List, Optional, Tuple

import cv2
import numpy as np

from leaf_disease_ros.perception.errors import InferenceError
from leaf_disease_ros.perception.pipeline import FrameResult
from leaf_disease_ros.perception.postprocess import finding_scores, softmax
from leaf_disease_ros.perception.preprocess import preprocess


@dataclass(frozen=True)
class ReviewTile:
    """One tile kept for review: its score, where it was, and its PNG bytes."""

    score: float
    label: str
    stamp_ns: int
    frame_index: int
    box_xyxy_px: Tuple[int, int, int, int]
    png: bytes


class PassCollector:
    """Frame observer collecting a pass's tiles for :mod:`leaf_disease_ros.training.site_head`."""

    def __init__(self, backend: Any, card: Any, max_tiles: int = 20000,
                 keep_images: int = 2000, review_tiles: int = 200, seed: int = 0) -> None:
        self._backend = backend
        self._card = card
        self._rng = np.random.default_rng(seed)
        self.max_tiles = int(max_tiles)
        self.keep_images = int(keep_images)
        self.review_tiles = int(review_tiles)
        self.embeddings: List[np.ndarray] = []
        self.logits: List[np.ndarray] = []
        self.frame_index: List[int] = []
        self.stamps_ns: List[int] = []
        self.boxes: List[Tuple[int, int, int, int]] = []
        self.images: List[np.ndarray] = []
        self.tiles_seen = 0
        self.frames = 0
        self._review: List[Tuple[float, int, ReviewTile]] = []  # min-heap by score
        height, width = card.input_hw_px
        self._image_px = (2 * width, 2 * height)

    def observe(self, image_bgr: np.ndarray, result: FrameResult, truth: Any) -> None:
        """Take one frame (see :class:`~leaf_disease_ros.replay.runner.FrameObserver`)."""
        frame = self.frames
        self.frames += 1
        if not result.detections:
            return
        crops = [image_bgr[y0:y1, x0:x1] for x0, y0, x1, y1 in
                 (d.box_xyxy_px for d in result.detections)]
        chunk = max(1, int(getattr(self._backend, 'max_batch', 16)))
        parts = [self._backend.infer_with_embedding(preprocess(crops[i:i + chunk], self._card))
                 for i in range(0, len(crops), chunk)]
        logits = np.concatenate([p[0] for p in parts]).astype(np.float32)
        embeddings = np.concatenate([p[1] for p in parts]).astype(np.float32)
        if not (np.all(np.isfinite(logits)) and np.all(np.isfinite(embeddings))):
            raise InferenceError('the model returned NaN or infinite values on a frame of the '
                                 'pass; check the model with leaf-disease-classify')
        probs = softmax(logits, self._card.temperature)
        scores = finding_scores(probs, self._card.labels, self._card.non_disease_labels,
                                self._card.finding_score)
        for row, (detection, crop) in enumerate(zip(result.detections, crops)):
            self.tiles_seen += 1
            slot = len(self.embeddings)
            if slot >= self.max_tiles:  # reservoir sampling keeps a uniform sample
                slot = int(self._rng.integers(self.tiles_seen))
                if slot >= self.max_tiles:
                    continue
            row_data = (embeddings[row], logits[row], frame, result.stamp_ns,
                        detection.box_xyxy_px)
            if slot == len(self.embeddings):
                self.embeddings.append(row_data[0])
                self.logits.append(row_data[1])
                self.frame_index.append(frame)
                self.stamps_ns.append(result.stamp_ns)
                self.boxes.append(detection.box_xyxy_px)
            else:
                (self.embeddings[slot], self.logits[slot], self.frame_index[slot],
                 self.stamps_ns[slot], self.boxes[slot]) = row_data
            self._keep_image(crop)
            self._keep_review(float(scores[row]), probs[row], frame, result.stamp_ns,
                              detection.box_xyxy_px, crop)

    def _keep_image(self, crop: np.ndarray) -> None:
        if len(self.images) < self.keep_images:
            self.images.append(cv2.resize(crop, self._image_px, interpolation=cv2.INTER_AREA))
            return
        slot = int(self._rng.integers(self.tiles_seen))
        if slot < self.keep_images:
            self.images[slot] = cv2.resize(crop, self._image_px, interpolation=cv2.INTER_AREA)

    def _keep_review(self, score: float, probs: np.ndarray, frame: int, stamp_ns: int,
                     box: Tuple[int, int, int, int], crop: np.ndarray) -> None:
        if self.review_tiles < 1:
            return
        if len(self._review) >= self.review_tiles and score <= self._review[0][0]:
            return
        ok, png = cv2.imencode('.png', crop)
        if not ok:
            return
        label = self._card.labels[int(np.argmax(probs))]
        tile = ReviewTile(score, label, int(stamp_ns), frame, box, png.tobytes())
        entry = (score, self.tiles_seen, tile)
        if len(self._review) < self.review_tiles:
            heapq.heappush(self._review, entry)
        else:
            heapq.heapreplace(self._review, entry)

    def review(self, count: Optional[int] = None) -> List[ReviewTile]:
        """Return the kept review tiles, highest score first (at most ``count``)."""
        ranked = [entry[2] for entry in sorted(self._review, key=lambda e: (-e[0], e[1]))]
        return ranked if count is None else ranked[:count]

    def arrays(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(embeddings (N, D), logits (N, C), frame, stamp_ns, boxes (N, 4))``."""
        if not self.embeddings:
            raise InferenceError('the pass has no classified tile')
        return (np.stack(self.embeddings), np.stack(self.logits),
                np.asarray(self.frame_index, dtype=np.int64),
                np.asarray(self.stamps_ns, dtype=np.int64),
                np.asarray(self.boxes, dtype=np.int32).reshape(-1, 4))
