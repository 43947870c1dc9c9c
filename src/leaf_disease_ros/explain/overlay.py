"""
Saliency pictures: a heat map blended over the tile, with the label and score written on it.

Drawn with OpenCV only (a runtime dependency), so the robot, the replay and the
CLI can all write them. Small tiles are enlarged (nearest neighbour for the photo,
so pixels stay honest) until the caption is legible.
"""

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.perception.atomic_io import atomic_write_bytes
from leaf_disease_ros.perception.plots import encode_png

_FONT = cv2.FONT_HERSHEY_SIMPLEX
MIN_SIDE_PX = 256
DEFAULT_ALPHA = 0.45


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """Return the ``(h, w, 3)`` BGR colours of a ``(h, w)`` [0, 1] heat map (JET)."""
    scaled = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0) * 255.0
    return cv2.applyColorMap(scaled.astype(np.uint8), cv2.COLORMAP_JET)


def blend(image_bgr: np.ndarray, heat: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """
    Return ``image_bgr`` with ``heat`` blended over it.

    Cold pixels stay close to the photo: the heat colour's weight is ``alpha * heat``,
    so only the salient parts are tinted.
    """
    if heat.shape[:2] != image_bgr.shape[:2]:
        heat = cv2.resize(heat, (image_bgr.shape[1], image_bgr.shape[0]),
                          interpolation=cv2.INTER_LINEAR)
    weight = (alpha * np.clip(heat, 0.0, 1.0))[..., None]
    mixed = image_bgr.astype(np.float32) * (1.0 - weight) + heat_colours(heat) * weight
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def _enlarge(image: np.ndarray, min_side_px: int) -> np.ndarray:
    side = min(image.shape[:2])
    if side >= min_side_px:
        return image
    factor = int(np.ceil(min_side_px / max(side, 1)))
    return cv2.resize(image, (image.shape[1] * factor, image.shape[0] * factor),
                      interpolation=cv2.INTER_NEAREST)


def caption(image_bgr: np.ndarray, lines: Sequence[str],
            colour_bgr: Tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Write ``lines`` on a dark band at the top of a copy of ``image_bgr``."""
    out = image_bgr.copy()
    scale = max(0.4, min(0.8, out.shape[1] / 500.0))
    line_px = int(24 * scale / 0.6)
    band = 8 + line_px * len(lines)
    top = out[:band].astype(np.float32) * 0.35
    out[:band] = top.astype(np.uint8)
    for index, text in enumerate(lines):
        cv2.putText(out, text, (6, 4 + line_px * (index + 1) - 6), _FONT, scale, colour_bgr,
                    1, cv2.LINE_AA)
    return out


def saliency_picture(image_bgr: np.ndarray, heat: np.ndarray, label: str, score: float,
                     method: str, extra: Optional[str] = None,
                     alpha: float = DEFAULT_ALPHA, min_side_px: int = MIN_SIDE_PX
                     ) -> np.ndarray:
    """
    Return the tile with its heat map blended and ``label score (method)`` written on it.

    :param image_bgr: ``(h, w, 3)`` uint8 tile or photo.
    :param heat: ``(h, w)`` [0, 1] saliency on the same pixels.
    :param extra: an optional second caption line (e.g. GPS, stamp).
    """
    enlarged = _enlarge(image_bgr, min_side_px)
    if enlarged.shape[:2] != heat.shape[:2]:
        heat = cv2.resize(heat, (enlarged.shape[1], enlarged.shape[0]),
                          interpolation=cv2.INTER_LINEAR)
    lines = [f'{label} {score:.3f} ({method})'] + ([extra] if extra else [])
    return caption(blend(enlarged, heat, alpha), lines)


def write_saliency_png(path: str, image_bgr: np.ndarray, heat: np.ndarray, label: str,
                       score: float, method: str, extra: Optional[str] = None) -> None:
    """Write :func:`saliency_picture` as a PNG at ``path`` (atomically)."""
    atomic_write_bytes(path, encode_png(saliency_picture(image_bgr, heat, label, score,
                                                         method, extra)))


def frame_picture(frame_bgr: np.ndarray, boxes_xyxy_px: np.ndarray, heats: Sequence[np.ndarray],
                  captions: Sequence[str], alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """
    Return a frame with the heat map of each tile blended in place and its caption.

    :param boxes_xyxy_px: ``(K, 4)`` tile boxes (x1, y1 exclusive); overlapping tiles
        keep the larger heat.
    :param heats: ``K`` heat maps, each ``(y1 - y0, x1 - x0)``.
    :param captions: ``K`` short texts (label and score), written at each tile's corner.
    """
    heat = np.zeros(frame_bgr.shape[:2], dtype=np.float32)
    for (x0, y0, x1, y1), tile_heat in zip(np.asarray(boxes_xyxy_px).tolist(), heats):
        np.maximum(heat[y0:y1, x0:x1], tile_heat, out=heat[y0:y1, x0:x1])
    out = blend(frame_bgr, heat, alpha)
    scale = max(0.4, min(0.7, frame_bgr.shape[1] / 1600.0))
    for (x0, y0, x1, y1), text in zip(np.asarray(boxes_xyxy_px).tolist(), captions):
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), 1)
        (width, height), _ = cv2.getTextSize(text, _FONT, scale, 1)
        cv2.rectangle(out, (x0 + 1, y0 + 1), (x0 + width + 6, y0 + height + 8), (0, 0, 0), -1)
        cv2.putText(out, text, (x0 + 3, y0 + height + 4), _FONT, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out
