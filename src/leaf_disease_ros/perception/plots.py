"""
PNG figures drawn with OpenCV: the confusion matrix.

The runtime depends on OpenCV but not on matplotlib, so report figures that the CLI
and the replay write are drawn here with plain OpenCV primitives. Files are written
atomically.
"""

from typing import Optional, Sequence

import cv2
import numpy as np

from leaf_disease_ros.perception.atomic_io import atomic_write_bytes
from leaf_disease_ros.perception.errors import LeafDiseaseError

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def encode_png(image_bgr: np.ndarray) -> bytes:
    """Return PNG bytes of a BGR uint8 image."""
    ok, buffer = cv2.imencode('.png', image_bgr)
    if not ok:
        raise LeafDiseaseError('OpenCV could not encode a PNG')
    return buffer.tobytes()


def render_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str],
                            title: Optional[str] = None, cell_px: int = 90) -> np.ndarray:
    """
    Draw a confusion matrix (rows true, columns predicted) as a BGR uint8 image.

    Cells are shaded by the share of their row (recall view) and print the count.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    n = len(labels)
    margin_left = 20 + 9 * max(len(label) for label in labels)
    margin_top = 70 if title else 45
    width = margin_left + n * cell_px + 20
    height = margin_top + n * cell_px + 60
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    row_sums = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    shares = counts / row_sums
    if title:
        cv2.putText(image, title, (10, 25), _FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, 'predicted', (margin_left, margin_top - 25), _FONT, 0.5,
                (60, 60, 60), 1, cv2.LINE_AA)
    for col, label in enumerate(labels):
        x = margin_left + col * cell_px + 4
        cv2.putText(image, label[:11], (x, margin_top - 6), _FONT, 0.42, (0, 0, 0), 1,
                    cv2.LINE_AA)
    for row in range(n):
        y0 = margin_top + row * cell_px
        cv2.putText(image, labels[row], (8, y0 + cell_px // 2 + 5), _FONT, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
        for col in range(n):
            x0 = margin_left + col * cell_px
            # White -> blue (BGR) with the row share.
            shade = int(255 - 200 * shares[row, col])
            colour = (255, shade, shade)
            cv2.rectangle(image, (x0, y0), (x0 + cell_px - 2, y0 + cell_px - 2), colour, -1)
            text = str(int(counts[row, col]))
            ink = (255, 255, 255) if shares[row, col] > 0.6 else (0, 0, 0)
            (tw, th), _ = cv2.getTextSize(text, _FONT, 0.55, 1)
            cv2.putText(image, text, (x0 + (cell_px - tw) // 2, y0 + (cell_px + th) // 2),
                        _FONT, 0.55, ink, 1, cv2.LINE_AA)
    cv2.putText(image, 'rows: true class; shade: share of the row', (10, height - 20),
                _FONT, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
    return image


def write_confusion_matrix_png(matrix: Sequence[Sequence[int]], labels: Sequence[str],
                               path: str, title: Optional[str] = None) -> None:
    """Render and write a confusion matrix PNG atomically."""
    atomic_write_bytes(path, encode_png(render_confusion_matrix(matrix, labels, title)))
