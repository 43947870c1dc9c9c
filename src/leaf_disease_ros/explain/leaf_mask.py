"""
The leaf mask of a photo of one leaf on a plain background (PlantVillage-style).

Used to measure where saliency falls: the share of saliency mass inside the leaf
(:func:`leaf_disease_ros.explain.saliency.mass_inside`), compared with the leaf's
share of the area (what a uniform map would score). The leaf is the largest
region that differs from the background in colour (chroma distance in Lab from the
median border colour plus HSV saturation, above Otsu's threshold; closed, holes
filled, so dark lesions inside the leaf count as leaf); the plain background and
its shadows differ in lightness, not in chroma. Not for field images, where the
background is canopy.
"""

import cv2
import numpy as np


def leaf_mask(image_bgr: np.ndarray) -> np.ndarray:
    """Return a ``(h, w)`` bool mask of the leaf in a single-leaf photo."""
    lab = cv2.cvtColor(cv2.GaussianBlur(image_bgr, (5, 5), 0), cv2.COLOR_BGR2LAB)
    lab = lab.astype(np.float32)
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    background = np.median(border, axis=0)
    # chroma distance from the background colour: shadows change lightness, not chroma
    chroma = np.sqrt(((lab[..., 1:] - background[1:]) ** 2).sum(axis=-1))
    saturation = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2HSV)[..., 1].astype(np.float32)
    score = chroma / max(float(chroma.max()), 1e-6) + saturation / 255.0
    score8 = np.clip(score * 127.5, 0, 255).astype(np.uint8)
    _, mask = cv2.threshold(score8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    side = max(3, (min(mask.shape[:2]) // 15) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    small = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, small)
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    leaf = (components == largest).astype(np.uint8) * 255
    # fill holes: flood the background from the border, what is left unflooded is leaf
    padded = cv2.copyMakeBorder(leaf, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8),
                  (0, 0), 255)
    holes = cv2.bitwise_not(flood)[1:-1, 1:-1]
    return (leaf > 0) | (holes > 0)
