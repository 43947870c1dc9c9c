"""
Tile accuracy against ground truth boxes, accumulated in bounded memory.

A classified tile is matched to the ground-truth box of its frame with the largest
overlap (intersection over union); the match counts when that IoU is at least
:data:`IOU_THRESHOLD` (0.5), and the tile is then scored against the box's label.
Tiles without such a box, ground-truth boxes no tile matched (a tile gated out, or a
box across tiles) and labels the model does not know are counted, not scored.

:class:`TileEvaluator` keeps only a ``(C, C + 1)`` count matrix (the last column is
``unknown``), so a bag of any length costs the same memory; the report comes from
:func:`~leaf_disease_ros.perception.metrics.classification_report_from_counts`, the same
figures as the training and classify reports.
"""

from typing import Any, Dict, Optional, Sequence

import numpy as np
from numpy.typing import ArrayLike

from leaf_disease_ros.perception.metrics import classification_report_from_counts
from leaf_disease_ros.perception.pipeline import Detection
from leaf_disease_ros.ros.conversions import GroundTruthBox

IOU_THRESHOLD = 0.5


def accuracy_text(accuracy: Dict[str, Any], digits: int = 3) -> str:
    """
    Return ``'accuracy A, macro-F1 F'`` of a report, or why nothing was scored.

    With no tile scored the figures are None (metrics.json), never 0: every summary
    (terminal, report.md, report.html, the comparison) says so in these words.
    """
    if accuracy.get('accuracy') is None:
        return ('accuracy: nothing scored (ground truth on '
                f"{accuracy.get('frames_with_ground_truth', 0)} processed frames, no tile "
                'matched a box; joined by header stamp, IoU >= '
                f'{accuracy.get("iou_threshold", IOU_THRESHOLD)})')
    return (f"accuracy {accuracy['accuracy']:.{digits}f}, "
            f"macro-F1 {accuracy['macro_f1']:.{digits}f}")


def iou_matrix(boxes_a: ArrayLike, boxes_b: ArrayLike) -> np.ndarray:
    """
    Return the ``(A, B)`` IoU of two sets of ``(x0, y0, x1, y1)`` boxes (x1/y1 exclusive).

    :param boxes_a: ``(A, 4)`` boxes.
    :param boxes_b: ``(B, 4)`` boxes.
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0.0, None) * np.clip(y1 - y0, 0.0, None)
    area_a = (a[:, 2] - a[:, 0]).clip(0.0) * (a[:, 3] - a[:, 1]).clip(0.0)
    area_b = (b[:, 2] - b[:, 0]).clip(0.0) * (b[:, 3] - b[:, 1]).clip(0.0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_tiles(detections: Sequence[Detection], truth: Sequence[GroundTruthBox],
                iou_threshold: float = IOU_THRESHOLD) -> Sequence[Optional[int]]:
    """Return, per detection, the index of its ground-truth box (None: no box with IoU >= t)."""
    if not detections or not truth:
        return [None] * len(detections)
    ious = iou_matrix([d.box_xyxy_px for d in detections], [t.box_xyxy_px for t in truth])
    best = ious.argmax(axis=1)
    return [int(j) if ious[i, j] >= iou_threshold else None for i, j in enumerate(best)]


class TileEvaluator:
    """Accumulates (true label, predicted label) counts of matched tiles."""

    def __init__(self, labels: Sequence[str], iou_threshold: float = IOU_THRESHOLD) -> None:
        self.labels = tuple(labels)
        self.iou_threshold = iou_threshold
        self._index = {label: i for i, label in enumerate(self.labels)}
        self.pair_counts = np.zeros((len(self.labels), len(self.labels) + 1), dtype=np.int64)
        self.frames = 0
        self.boxes = 0
        self.boxes_unmatched = 0
        self.tiles_unmatched = 0
        self.labels_not_in_model: Dict[str, int] = {}

    def add_frame(self, detections: Sequence[Detection],
                  truth: Sequence[GroundTruthBox]) -> None:
        """Score one frame's tiles against its ground-truth boxes."""
        self.frames += 1
        self.boxes += len(truth)
        matches = match_tiles(detections, truth, self.iou_threshold)
        matched_boxes = set()
        for detection, match in zip(detections, matches):
            if match is None:
                self.tiles_unmatched += 1
                continue
            matched_boxes.add(match)
            label = truth[match].label
            true_index = self._index.get(label)
            if true_index is None:
                self.labels_not_in_model[label] = self.labels_not_in_model.get(label, 0) + 1
                continue
            predicted = len(self.labels) if detection.is_unknown else detection.label_index
            self.pair_counts[true_index, predicted] += 1
        self.boxes_unmatched += len(truth) - len(matched_boxes)

    def report(self) -> Dict[str, Any]:
        """Return the classification report of the matched tiles plus the match counts."""
        report = classification_report_from_counts(self.pair_counts, self.labels)
        if not report['count']:  # no figure at all, never "accuracy 0.000"
            report['accuracy'] = report['macro_f1'] = None
        report.update({
            'iou_threshold': self.iou_threshold,
            'frames_with_ground_truth': self.frames,
            'ground_truth_boxes': self.boxes,
            'ground_truth_boxes_unmatched': self.boxes_unmatched,
            'tiles_without_ground_truth': self.tiles_unmatched,
            'ground_truth_labels_not_in_model': dict(sorted(self.labels_not_in_model.items())),
        })
        return report
