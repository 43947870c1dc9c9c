"""
The debug image: a frame with its classified tiles drawn on it (pure OpenCV).

Each tile gets a rectangle coloured by what it is and a label box with
``<label> <score>``: a disease finding red, a disease below the finding threshold
orange, a healthy tile green, an ``unknown`` tile grey. An optional status line
(findings, GPS state) is written on a dark strip at the bottom. The input frame is
never modified; the node publishes the returned copy on ``~/debug_image`` only while
someone subscribes, rate-limited.
"""

from typing import Dict, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.perception.pipeline import Detection
from leaf_disease_ros.perception.tiling import check_frame

FINDING = 'finding'
DISEASE = 'disease'
HEALTHY = 'healthy'
UNKNOWN = 'unknown'

#: BGR colour of each category
COLORS_BGR: Dict[str, Tuple[int, int, int]] = {
    FINDING: (0, 0, 255),
    DISEASE: (0, 165, 255),
    HEALTHY: (0, 200, 0),
    UNKNOWN: (160, 160, 160),
}
_TEXT_BGR = (255, 255, 255)
_STRIP_BGR = (32, 32, 32)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def category(detection: Detection) -> str:
    """Return the drawing category of a detection (one of the keys of COLORS_BGR)."""
    if detection.is_unknown:
        return UNKNOWN
    if detection.is_finding:
        return FINDING
    if detection.is_disease:
        return DISEASE
    return HEALTHY


def _scale(height: int, width: int) -> Tuple[float, int]:
    """Return (font scale, line thickness px) readable on a frame of this size."""
    side = min(height, width)
    font_scale = max(0.35, side / 900.0)
    thickness = max(1, int(round(side / 400.0)))
    return font_scale, thickness


def _label_box(image: np.ndarray, text: str, x: int, y: int, color: Tuple[int, int, int],
               font_scale: float, thickness: int) -> None:
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, font_scale, thickness)
    pad = max(1, thickness)
    x1 = min(image.shape[1], x + text_w + 2 * pad)
    y1 = min(image.shape[0], y + text_h + baseline + 2 * pad)
    cv2.rectangle(image, (x, y), (x1 - 1, y1 - 1), color, thickness=-1)
    cv2.putText(image, text, (x + pad, y + pad + text_h), _FONT, font_scale, _TEXT_BGR,
                thickness, cv2.LINE_AA)


def draw_detections(frame_bgr: np.ndarray, detections: Sequence[Detection],
                    status_text: str = '') -> np.ndarray:
    """
    Return a copy of ``frame_bgr`` with every detection's tile, label and score drawn.

    :param frame_bgr: ``(H, W, 3)`` uint8 BGR frame (left untouched).
    :param detections: the frame's detections (boxes in frame pixels, x1/y1 exclusive).
    :param status_text: one line written at the bottom; empty for none.
    :returns: ``(H, W, 3)`` uint8 BGR image.

    :raises FrameError: ``frame_bgr`` is not an ``(H, W, 3)`` uint8 image.
    """
    height, width = check_frame(frame_bgr)
    image = frame_bgr.copy()
    font_scale, thickness = _scale(height, width)
    for detection in detections:
        x0, y0, x1, y1 = (int(v) for v in detection.box_xyxy_px)
        color = COLORS_BGR[category(detection)]
        cv2.rectangle(image, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), color, thickness)
        _label_box(image, f'{detection.label} {detection.score:.2f}', x0, y0, color,
                   font_scale, thickness)
    if status_text:
        (_, text_h), baseline = cv2.getTextSize(status_text, _FONT, font_scale, thickness)
        strip_h = min(height, text_h + baseline + 4 * thickness)
        cv2.rectangle(image, (0, height - strip_h), (width - 1, height - 1), _STRIP_BGR,
                      thickness=-1)
        cv2.putText(image, status_text, (2 * thickness, height - baseline - thickness),
                    _FONT, font_scale, _TEXT_BGR, thickness, cv2.LINE_AA)
    return image
