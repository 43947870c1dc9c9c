"""
Field simulation: PlantVillage leaves cut out and composited into vine-row tiles.

Owns everything that turns lab photos (one detached leaf on a plain background) into
tiles that look like what the node classifies in a vineyard:

- :func:`segment_leaf`: leaf mask of a PlantVillage photo (saturation / colour distance
  to the border colour, Otsu, morphology, largest component, hole filling, then a short
  GrabCut refinement at half resolution).
- procedural, licence-clean backgrounds: soil, dry grass, sky gradients with clouds,
  wooden or metal posts with wires, grape bunches, and canopy built from *other healthy
  leaves*; plus crops of real field photos used only as backgrounds / negatives.
- :func:`field_photometry`: sun and shade (global gain, gamma, dappled shadow), white
  balance, saturation, blur, motion blur, sensor noise, JPEG.
- tile kinds at the node's scales (a 256-px tile of a ~1280-px frame): a leaf filling
  the tile, several leaves, a leaf edge, healthy canopy, and non-leaf background.
- :func:`build_cache`: pre-generates composites into one ``uint8`` array
  ``(N, S, S, 3)`` BGR at the model input size (resized from 256 px with the runtime's
  own :func:`leaf_disease_ros.perception.preprocess.resize_to_input`, as the node does), with
  targets, tile kinds and the source leaf of every tile, so training costs no CPU on
  compositing.

Targets: the four PlantVillage classes plus ``background`` (index 4) for non-leaf
tiles; the pipeline treats ``background`` like ``healthy`` (a non-finding).

Splits: leaves are split by PlantVillage photo-number blocks (``build_split``, block 40,
seed 0); backgrounds are split by source: validation uses other random seeds, canopy
from validation healthy leaves only, and held-out field photos (see
:data:`FIELD_NEGATIVES`). :func:`build_validation` makes the validation material in a
tuning half and a test half split by leaf block and by source photo
(:mod:`leaf_disease_ros.training.field_manifest`), with a record of every tile's source.
"""
from dataclasses import dataclass, field
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.perception.atomic_io import atomic_write_json
from leaf_disease_ros.perception.errors import DatasetError
from leaf_disease_ros.perception.image_folders import Sample
from leaf_disease_ros.perception.model_card import card_from_dict, ModelCard
from leaf_disease_ros.perception.preprocess import resize_to_input
from leaf_disease_ros.training.dataset import build_split
from leaf_disease_ros.training.field_manifest import (background_photos, BLOCK_SIZE,
                                                      check_field_folder, HALVES, leaf_rows,
                                                      manifest_document, photos_with_role,
                                                      SPLIT_SEED, TEST_SHARE, VAL_FRACTION,
                                                      validation_halves)

Log = Callable[[str], None]

TILE_PX = 256
FRAME_WIDTH_PX = 1280
LABELS: Tuple[str, ...] = ('black_rot', 'esca', 'healthy', 'leaf_blight', 'background')
HEALTHY_LABELS: Tuple[str, ...] = ('healthy', 'background')
BACKGROUND = 4
ESCA = 1
HEALTHY = 2
DISEASES: Tuple[int, ...] = (0, 1, 3)

# Tile kinds (stored per cached tile; the field-like measures are split by them).
KINDS: Tuple[str, ...] = ('leaf_fill', 'several_leaves', 'leaf_edge', 'canopy',
                          'background', 'field_crop', 'pv_plain')
# How the focal leaf was drawn (stored per cached tile): as photographed, with painted
# field esca symptoms (from a healthy leaf), or in autumn colours (still healthy).
VARIANTS: Tuple[str, ...] = ('as_photographed', 'esca_field_symptoms', 'autumn_colouring')
# Shares of focal esca leaves painted from healthy leaves, and of focal healthy leaves
# recoloured for autumn, when a bank has ``field_symptoms`` on.
ESCA_FIELD_SHARE = 0.5
AUTUMN_SHARE = 0.2

# Field photos of ../shared/datasets/field_grape_small used as backgrounds / negatives
# only (never esca, never a disease), from the manifest (training/field_manifest.py):
# 'train' the training backgrounds, 'val' the tuning photos (the old validation cache's
# backgrounds; the validation material now puts them in its tuning half only).
FIELD_NEGATIVES: Dict[str, Tuple[str, ...]] = {
    'train': photos_with_role('train', negatives_only=True),
    'val': background_photos('tune'),
}
# Field-photo folders whose vegetation tiles count as healthy leaves (others: background).
_HEALTHY_FIELD_FOLDERS = ('healthy', 'unlabeled_field')


# --------------------------------------------------------------------------- leaves
def read_bgr(path: str) -> np.ndarray:
    """Return the BGR uint8 image of ``path``; raise ValueError when it cannot be read."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f'{path}: not a readable image')
    return np.asarray(image)


@dataclass
class Leaf:
    """A segmented leaf: BGR crop ``(h, w, 3)`` uint8 and alpha ``(h, w)`` float32 [0, 1]."""

    bgr: np.ndarray
    alpha: np.ndarray
    label: int
    source: str


def _border_colour(image: np.ndarray, width_px: int = 6) -> np.ndarray:
    """Median BGR colour of the image border, ``(3,)`` float32."""
    border = np.concatenate([image[:width_px].reshape(-1, 3), image[-width_px:].reshape(-1, 3),
                             image[:, :width_px].reshape(-1, 3),
                             image[:, -width_px:].reshape(-1, 3)])
    return np.median(border, axis=0).astype(np.float32)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a binary ``uint8`` mask (flood fill from the border)."""
    h, w = mask.shape
    flood = mask.copy()
    ff = np.zeros((h + 2, w + 2), np.uint8)
    # Seed from every border pixel that is background.
    for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)):
        if flood[y, x] == 0:
            cv2.floodFill(flood, ff, (x, y), 255)
    holes = cv2.bitwise_not(flood)
    return cv2.bitwise_or(mask, holes)


def segment_leaf(image_bgr: np.ndarray, grabcut_iterations: int = 2) -> Tuple[np.ndarray, float]:
    """
    Return ``(mask, area_fraction)`` of the leaf in a PlantVillage photo.

    The background of a PlantVillage photo is a plain, weakly saturated board, so the
    leaf is what is far (in colour and saturation) from the border colour. Otsu picks
    the cut, morphology closes lesions and veins, the largest component is kept and
    its holes filled; GrabCut at half resolution, initialised from that mask, refines
    the outline.

    :param image_bgr: ``(H, W, 3)`` uint8.
    :param grabcut_iterations: 0 disables GrabCut.
    :returns: ``mask`` ``(H, W)`` float32 in [0, 1] (soft edge), and its mean.
    """
    h, w = image_bgr.shape[:2]
    img = image_bgr.astype(np.float32)
    border = _border_colour(image_bgr)
    distance = np.sqrt(((img - border) ** 2).sum(axis=2))
    hsv = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2HSV)
    sat = hsv[..., 1].astype(np.float32)
    score = 0.3 * distance + 1.0 * sat
    score = cv2.GaussianBlur(score, (5, 5), 0)
    score_u8 = np.clip(score / max(score.max(), 1.0) * 255, 0, 255).astype(np.uint8)
    _, mask = cv2.threshold(score_u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    count, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count > 1:
        biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        mask = np.where(comp == biggest, 255, 0).astype(np.uint8)
    mask = _fill_holes(mask)
    if grabcut_iterations > 0 and 0.05 < mask.mean() / 255 < 0.97:
        small = cv2.resize(image_bgr, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        m_small = cv2.resize(mask, (w // 2, h // 2), interpolation=cv2.INTER_NEAREST)
        sure_fg = cv2.erode(m_small, kernel, iterations=2)
        maybe = cv2.dilate(m_small, kernel, iterations=2)
        gc = np.full(m_small.shape, cv2.GC_BGD, np.uint8)
        gc[maybe > 0] = cv2.GC_PR_BGD
        gc[m_small > 0] = cv2.GC_PR_FGD
        gc[sure_fg > 0] = cv2.GC_FGD
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        try:
            # GrabCut seeds its colour models with k-means on OpenCV's global random
            # state: seed it, so a leaf's mask does not depend on what ran before.
            cv2.setRNGSeed(0)
            cv2.grabCut(small, gc, (0, 0, 0, 0), bgd, fgd, grabcut_iterations,
                        cv2.GC_INIT_WITH_MASK)
            refined: np.ndarray = np.where((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD),
                                           255, 0).astype(np.uint8)
            refined = cv2.resize(refined, (w, h), interpolation=cv2.INTER_LINEAR)
            refined = np.where(refined > 127, 255, 0).astype(np.uint8)
            count, comp, stats, _ = cv2.connectedComponentsWithStats(refined, connectivity=8)
            if count > 1:
                biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
                refined = np.where(comp == biggest, 255, 0).astype(np.uint8)
                refined = _fill_holes(refined)
                # Keep GrabCut only when it did not collapse or explode the mask.
                ratio = refined.mean() / max(mask.mean(), 1e-6)
                if 0.8 < ratio < 1.15:
                    mask = refined
        except cv2.error:
            pass
    # Pull the edge in by 1 px and feather it, so no board colour leaks into composites.
    mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (5, 5), 1.2)
    return soft, float(soft.mean())


def leaf_from_image(image_bgr: np.ndarray, label: int, source: str) -> Optional[Leaf]:
    """Segment and crop a leaf to its bounding box; None when segmentation failed."""
    alpha, area = segment_leaf(image_bgr)
    if not 0.08 < area < 0.95:
        return None
    ys, xs = np.nonzero(alpha > 0.5)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return Leaf(image_bgr[y0:y1, x0:x1].copy(), alpha[y0:y1, x0:x1].copy(), label, source)


# ------------------------------------------------------------- field symptoms
def _leaf_field(rng: np.random.Generator, h: int, w: int,
                octaves: Sequence[int] = (3, 8, 24)) -> np.ndarray:
    """Smooth noise ``(h, w)`` float32 (a square fractal resized to the leaf crop)."""
    return cv2.resize(_fractal(rng, max(h, w), octaves), (w, h))


def _vein_distance(leaf: Leaf) -> Optional[np.ndarray]:
    """
    Distance to the nearest vein-like ridge, ``(h, w)`` float32, ~[0, 1.5] inside the leaf.

    Veins of a PlantVillage leaf are lighter lines: a white top-hat of the grey image
    with a kernel of 1/18 of the leaf size, the brightest 10 % inside the leaf. None when
    the leaf is too small to tell.
    """
    inside = leaf.alpha > 0.5
    grey = cv2.cvtColor(leaf.bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    h, w = inside.shape
    k = max(5, int(max(h, w) / 18) | 1)
    ridge = cv2.morphologyEx(grey, cv2.MORPH_TOPHAT,
                             cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    inner = cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    values = ridge[inner]
    if values.size < 50:
        return None
    veins = ((ridge > np.percentile(values, 90)) & inner).astype(np.uint8)
    veins = cv2.morphologyEx(veins, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    distance = cv2.distanceTransform(1 - veins, cv2.DIST_L2, 5)
    return np.clip(distance / (np.percentile(distance[inner], 95) + 1e-3), 0, 1.5)


def esca_field_symptoms(leaf: Leaf, rng: np.random.Generator) -> Optional[Leaf]:
    """
    Paint field esca foliar symptoms on a healthy leaf; None when it cannot be done.

    PlantVillage's "esca (black measles)" photos show measles-like spotting; esca in a
    vineyard mostly shows the "tiger-stripe" pattern: interveinal and marginal zones
    turn chlorotic (yellow) and then necrotic (red-brown on red cultivars, brown on
    white ones), while bands along the main veins stay green. The esca photos of
    ``field_grape_small`` were looked at while designing it, so they are tuning photos,
    not a test of it (:mod:`field_manifest`). The symptom field grows
    with the distance to veins and to the leaf centre, broken up by noise; its severity
    (the chlorotic share, 25-60 % of the leaf) and colours are drawn per leaf, and the
    leaf's own shading is kept as texture.
    """
    inside = (leaf.alpha > 0.5).astype(np.uint8)
    h, w = inside.shape
    vein = _vein_distance(leaf)
    if vein is None:
        return None
    distance: np.ndarray = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    centre = distance / (float(distance.max()) + 1e-3)
    field_ = 1.0 * vein + 0.3 * (1 - centre) + 0.22 * _leaf_field(rng, h, w, (4, 12, 32))
    severity = rng.uniform(0.0, 1.0)
    chlorosis_at = float(np.percentile(field_[inside > 0], 100 * (0.75 - 0.35 * severity)))
    necrosis_at = chlorosis_at + rng.uniform(0.08, 0.2)
    sigma = max(h, w) / 120
    chlorotic = cv2.GaussianBlur(np.clip((field_ - chlorosis_at) / 0.06, 0, 1).astype(np.float32),
                                 (0, 0), sigma) * rng.uniform(0.6, 0.95)
    necrotic = cv2.GaussianBlur(np.clip((field_ - necrosis_at) / 0.05, 0, 1).astype(np.float32),
                                (0, 0), sigma)
    bgr = leaf.bgr.astype(np.float32)
    luminance = bgr.mean(axis=2, keepdims=True)
    texture = luminance / max(float(luminance[inside > 0].mean()), 1.0)
    yellow = np.array([rng.uniform(40, 100), rng.uniform(170, 215), rng.uniform(160, 230)],
                      np.float32)
    if rng.random() < 0.5:  # red cultivar: dark red-brown necrosis
        dead = np.array([rng.uniform(45, 80), rng.uniform(28, 55), rng.uniform(85, 130)],
                        np.float32)
    else:  # white cultivar: brown necrosis
        dead = np.array([rng.uniform(30, 55), rng.uniform(55, 85), rng.uniform(95, 135)],
                        np.float32)
    out = bgr * (1 - chlorotic[..., None]) + yellow * texture * chlorotic[..., None]
    out = out * (1 - necrotic[..., None]) + dead * texture * necrotic[..., None]
    return Leaf(np.clip(out, 0, 255).astype(np.uint8), leaf.alpha, ESCA, leaf.source)


def autumn_colouring(leaf: Leaf, rng: np.random.Generator) -> Leaf:
    """
    Recolour a healthy leaf yellow or red as in autumn (a look-alike, still healthy).

    Senescence colours the whole blade fairly evenly, veins included, unlike the
    interveinal pattern of :func:`esca_field_symptoms`; the model must learn that this
    is not a disease.
    """
    inside = leaf.alpha > 0.5
    h, w = inside.shape
    bgr = leaf.bgr.astype(np.float32)
    luminance = bgr.mean(axis=2, keepdims=True)
    texture = luminance / max(float(luminance[inside].mean()), 1.0)
    if rng.random() < 0.55:
        colour = np.array([rng.uniform(10, 60), rng.uniform(150, 210), rng.uniform(190, 245)],
                          np.float32)
    else:
        colour = np.array([rng.uniform(20, 60), rng.uniform(20, 60), rng.uniform(120, 190)],
                          np.float32)
    amount = np.clip(rng.uniform(0.6, 1.0) + 0.15 * _leaf_field(rng, h, w, (2, 5)), 0, 1)
    out = bgr * (1 - amount[..., None]) + colour * texture * amount[..., None]
    return Leaf(np.clip(out, 0, 255).astype(np.uint8), leaf.alpha, HEALTHY, leaf.source)


# ---------------------------------------------------------------------- backgrounds
def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise ``(size, size)`` float32 in about [-1, 1]."""
    base = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)


def _fractal(rng: np.random.Generator, size: int, octaves: Sequence[int] = (3, 8, 24, 64)
             ) -> np.ndarray:
    """Sum of value-noise octaves, ``(size, size)`` float32, roughly unit variance."""
    out = np.zeros((size, size), np.float32)
    amp = 1.0
    for cells in octaves:
        out += amp * _noise(rng, size, cells)
        amp *= 0.6
    return out / 1.6


def soil(rng: np.random.Generator, size: int = TILE_PX) -> np.ndarray:
    """Bare soil: brown-grey base, fractal texture, pebbles and clods."""
    base = np.array([rng.uniform(40, 110), rng.uniform(60, 130), rng.uniform(80, 160)],
                    np.float32)  # BGR, brownish
    if rng.random() < 0.3:
        base = np.full(3, rng.uniform(80, 170), np.float32) * np.array([0.9, 1.0, 1.05])
    tex = _fractal(rng, size)[..., None]
    img = base + tex * rng.uniform(12, 35)
    for _ in range(rng.integers(5, 60)):
        c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        ax = (int(rng.integers(1, 8)), int(rng.integers(1, 6)))
        shade = base * rng.uniform(0.5, 1.5)
        cv2.ellipse(img, c, ax, float(rng.uniform(0, 180)), 0, 360, shade.tolist(), -1)
    return np.clip(img, 0, 255)


def dry_grass(rng: np.random.Generator, size: int = TILE_PX) -> np.ndarray:
    """Dry grass / straw: tan base with many thin strokes (some still green)."""
    img = soil(rng, size) * rng.uniform(0.7, 1.0)
    for _ in range(int(rng.integers(150, 500))):
        x = float(rng.uniform(-10, size + 10))
        y = float(rng.uniform(-10, size + 10))
        angle = rng.normal(np.pi / 2, 0.5)
        length = rng.uniform(15, 90)
        x2, y2 = x + length * np.cos(angle), y - length * np.sin(angle)
        if rng.random() < 0.15:
            colour = [rng.uniform(30, 80), rng.uniform(100, 160), rng.uniform(70, 120)]
        else:
            v = rng.uniform(120, 230)
            colour = [v * rng.uniform(0.45, 0.7), v * rng.uniform(0.8, 0.95), v]
        cv2.line(img, (int(x), int(y)), (int(x2), int(y2)), colour,
                 int(rng.integers(1, 3)), cv2.LINE_AA)
    return np.clip(img, 0, 255)


def sky(rng: np.random.Generator, size: int = TILE_PX) -> np.ndarray:
    """Sky: vertical blue-to-haze gradient, optional clouds, optional overexposure."""
    top = np.array([rng.uniform(160, 255), rng.uniform(110, 200), rng.uniform(60, 150)],
                   np.float32)
    bottom = np.array([rng.uniform(200, 255), rng.uniform(190, 250), rng.uniform(170, 240)],
                      np.float32)
    if rng.random() < 0.25:  # overcast
        grey = rng.uniform(170, 250)
        top = bottom = np.array([grey, grey, grey * rng.uniform(0.95, 1.02)], np.float32)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None] * rng.uniform(0.3, 1.0)
    img = top * (1 - t) + bottom * t
    img = np.broadcast_to(img, (size, size, 3)).copy()
    if rng.random() < 0.6:
        cloud = np.clip(_fractal(rng, size, (2, 5, 12)) * 0.8 + rng.uniform(-0.6, 0.4), 0, 1)
        img = img * (1 - cloud[..., None]) + rng.uniform(220, 255) * cloud[..., None]
    return np.clip(img, 0, 255)


def posts_and_wires(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Draw a trellis post and/or wires over ``img`` (float32 BGR, modified copy)."""
    img = img.copy()
    size = img.shape[0]
    if rng.random() < 0.7:
        width = int(rng.uniform(0.1, 0.5) * size)
        x0 = int(rng.uniform(-0.2, 0.9) * size)
        if rng.random() < 0.6:  # wood
            base = np.array([rng.uniform(40, 110), rng.uniform(60, 130), rng.uniform(70, 150)])
        else:  # galvanised metal or concrete
            base = np.full(3, rng.uniform(90, 200))
        post = np.zeros((size, size, 3), np.float32) + base.astype(np.float32)
        grain = _noise(rng, size, 4)
        streaks = cv2.resize(rng.standard_normal((size, 6)).astype(np.float32), (size, size))
        post += (grain * 15 + streaks * 12)[..., None]
        ramp = np.linspace(-1, 1, max(width, 1), dtype=np.float32)
        shading = (1.0 - 0.35 * ramp ** 2 + rng.uniform(-0.15, 0.15) * ramp)
        lo, hi = max(x0, 0), min(x0 + width, size)
        if hi > lo:
            tilt = rng.uniform(-0.15, 0.15)
            sl = slice(lo - x0, hi - x0)
            img[:, lo:hi] = post[:, lo:hi] * shading[sl][None, :, None]
            if abs(tilt) > 0.05:
                m = cv2.getRotationMatrix2D((size / 2, size / 2), tilt * 30, 1.0)
                img = cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REFLECT)
    for _ in range(int(rng.integers(0, 4))):
        y = rng.uniform(0, size)
        slope = rng.uniform(-0.15, 0.15)
        v = rng.uniform(20, 200)
        cv2.line(img, (0, int(y)), (size, int(y + slope * size)), (v, v, v * 1.02),
                 int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


def bunches(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Return ``img`` with one or two shaded grape clusters drawn over it."""
    img = img.copy()
    size = img.shape[0]
    for _ in range(int(rng.integers(1, 3))):
        cx, cy = rng.uniform(0.1, 0.9) * size, rng.uniform(0.0, 0.7) * size
        red = rng.random() < 0.5
        berry_r = rng.uniform(6, 16)
        for _ in range(int(rng.integers(20, 70))):
            dy = abs(rng.normal(0, 1)) * size * 0.25
            dx = rng.normal(0, 1) * size * 0.12 * max(0.2, 1 - dy / (size * 0.6))
            centre = (int(cx + dx), int(cy + dy))
            if red:
                col = np.array([rng.uniform(40, 90), rng.uniform(10, 40), rng.uniform(30, 80)])
            else:
                col = np.array([rng.uniform(60, 110), rng.uniform(150, 200),
                                rng.uniform(130, 180)])
            cv2.circle(img, centre, int(berry_r), (col * 0.6).tolist(), -1, cv2.LINE_AA)
            cv2.circle(img, centre, int(berry_r * 0.8), col.tolist(), -1, cv2.LINE_AA)
            hl = (int(centre[0] - berry_r * 0.3), int(centre[1] - berry_r * 0.3))
            cv2.circle(img, hl, max(1, int(berry_r * 0.2)), (col * 1.6 + 40).clip(0, 255).tolist(),
                       -1, cv2.LINE_AA)
    return img


# ------------------------------------------------------------------- compositing
def paste_leaf(canvas: np.ndarray, leaf: Leaf, rng: np.random.Generator, scale: float,
               centre: Tuple[float, float], gain: float = 1.0,
               blur_sigma: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """
    Alpha-composite ``leaf`` onto ``canvas`` (float32 BGR ``(S, S, 3)``).

    :param scale: leaf bounding-box long side as a fraction of the canvas side.
    :param centre: leaf centre in canvas pixels ``(x, y)``.
    :param gain: brightness factor for the leaf (shade depth).
    :returns: ``(canvas, alpha_on_canvas (S, S) float32)``.
    """
    size = canvas.shape[0]
    h, w = leaf.alpha.shape
    zoom = scale * size / max(h, w)
    angle = float(rng.uniform(0, 360))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, zoom)
    m[0, 2] += centre[0] - w / 2
    m[1, 2] += centre[1] - h / 2
    interp = cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR
    bgr: np.ndarray = cv2.warpAffine(leaf.bgr, m, (size, size), flags=interp,
                                     borderMode=cv2.BORDER_CONSTANT).astype(np.float32)
    alpha: np.ndarray = cv2.warpAffine(leaf.alpha, m, (size, size), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if blur_sigma > 0:
        bgr = cv2.GaussianBlur(bgr, (0, 0), blur_sigma)
        alpha = cv2.GaussianBlur(alpha, (0, 0), blur_sigma)
    # Per-leaf light: lab light -> field light (gain and a colour tint).
    tint = np.array([rng.uniform(0.9, 1.08), 1.0, rng.uniform(0.92, 1.1)], np.float32)
    bgr = bgr * gain * tint
    a = alpha[..., None]
    return canvas * (1 - a) + bgr * a, alpha


def canopy(rng: np.random.Generator, healthy: Sequence[Leaf], size: int = TILE_PX,
           count: Optional[int] = None) -> np.ndarray:
    """Dense canopy: a dark green-brown depth base with layers of healthy leaves."""
    base = np.array([rng.uniform(10, 50), rng.uniform(30, 80), rng.uniform(15, 55)], np.float32)
    img = base + _fractal(rng, size)[..., None] * rng.uniform(5, 20)
    if rng.random() < 0.3:  # sky or soil gaps through the canopy
        gap = sky(rng, size) if rng.random() < 0.5 else soil(rng, size)
        holes: np.ndarray = (_fractal(rng, size, (3, 6))
                             > rng.uniform(0.6, 1.2)).astype(np.float32)
        holes = cv2.GaussianBlur(holes, (0, 0), 3)[..., None]
        img = img * (1 - holes) + gap * holes
    n = int(count if count is not None else rng.integers(5, 14))
    for i in range(n):
        depth = i / max(n - 1, 1)  # 0 = far back, 1 = front
        leaf = healthy[int(rng.integers(len(healthy)))]
        img, _ = paste_leaf(img, leaf, rng, scale=rng.uniform(0.35, 1.0),
                            centre=(rng.uniform(-0.1, 1.1) * size, rng.uniform(-0.1, 1.1) * size),
                            gain=rng.uniform(0.35, 0.7) + 0.5 * depth,
                            blur_sigma=float(rng.uniform(0, 2.0) * (1 - depth)))
    return img


class FieldPhotos:
    """Real field frames (resized to the node's frame width), cropped like tiles."""

    def __init__(self, root: str, relpaths: Sequence[str]) -> None:
        self.frames: List[np.ndarray] = []
        self.healthy: List[bool] = []
        self.names: List[str] = []
        for rel in relpaths:
            image = cv2.imread(os.path.join(root, rel), cv2.IMREAD_COLOR)
            if image is None:
                continue
            h, w = image.shape[:2]
            image = cv2.resize(image, (FRAME_WIDTH_PX, int(round(h * FRAME_WIDTH_PX / w))),
                               interpolation=cv2.INTER_AREA)
            self.frames.append(image)
            self.healthy.append(rel.split('/')[0] in _HEALTHY_FIELD_FOLDERS)
            self.names.append(rel)

    def crop(self, rng: np.random.Generator, size: int = TILE_PX,
             used: Optional[List[str]] = None) -> Tuple[np.ndarray, bool]:
        """
        Return a random tile-like crop ``(size, size, 3)`` float32 and healthy-source flag.

        :param used: the cropped photo's relative path is appended to it (nothing when
            there is no photo and procedural soil stands in).
        """
        if not self.frames:
            return soil(rng, size), False
        index = int(rng.integers(len(self.frames)))
        frame = self.frames[index]
        h, w = frame.shape[:2]
        side = int(min(h, w, size * rng.uniform(0.7, 1.5)))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        tile = cv2.resize(frame[y:y + side, x:x + side], (size, size),
                          interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)
        if used is not None:
            used.append(self.names[index])
        return tile.astype(np.float32), self.healthy[index]


def vegetation_fraction(tile_bgr: np.ndarray, exg_threshold: float = 0.05) -> float:
    """Share of excess-green pixels (the node's vegetation gate test) of a tile."""
    c = tile_bgr.astype(np.float32)
    total = c.sum(axis=2)
    exg = 2 * c[..., 1] - c[..., 0] - c[..., 2]
    return float(((exg > exg_threshold * total) & (total > 0)).mean())


# ---------------------------------------------------------------------- photometry
def field_photometry(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """
    Field light and camera on a float32 BGR tile; returns uint8 BGR.

    Sun or shade (gain, gamma), dappled shadow, white balance, saturation, defocus or
    motion blur, sensor noise and JPEG compression, each drawn at random.
    """
    size = img.shape[0]
    img = img * rng.uniform(0.5, 1.45)
    if rng.random() < 0.45:  # dappled shade / hard shadow
        shade = _noise(rng, size, int(rng.integers(2, 6)))
        shade = cv2.GaussianBlur((shade > rng.uniform(-0.5, 0.5)).astype(np.float32),
                                 (0, 0), rng.uniform(2, 12))
        depth = rng.uniform(0.35, 0.8)
        img = img * (depth + (1 - depth) * shade)[..., None]
    wb = np.array([rng.uniform(0.8, 1.2), 1.0, rng.uniform(0.8, 1.2)], np.float32)
    img = img * wb
    if rng.random() < 0.5:
        grey = img.mean(axis=2, keepdims=True)
        img = grey + (img - grey) * rng.uniform(0.6, 1.35)
    img = np.clip(img, 0, 255)
    if rng.random() < 0.5:
        gamma = rng.uniform(0.7, 1.4)
        img = 255.0 * (img / 255.0) ** gamma
    r = rng.random()
    if r < 0.25:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.0))
    elif r < 0.40:
        k = int(rng.integers(3, 10))
        kernel: np.ndarray = np.zeros((k, k), np.float32)
        kernel[k // 2] = 1.0 / k
        m = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1)
        kernel = cv2.warpAffine(kernel, m, (k, k))
        kernel = (kernel / max(float(kernel.sum()), 1e-6)).astype(np.float32)
        img = cv2.filter2D(img, -1, kernel)
    if rng.random() < 0.6:
        img = img + rng.standard_normal(img.shape).astype(np.float32) * rng.uniform(1, 8)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.8:
        ok, buf = cv2.imencode('.jpg', out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(35, 96))])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out


# --------------------------------------------------------------------- tile makers
@dataclass
class Banks:
    """Material of one side of the split (train or val)."""

    leaves: Dict[int, List[Leaf]]
    healthy: List[Leaf]
    photos: FieldPhotos
    plain: List[Tuple[np.ndarray, int]] = field(default_factory=list)
    # Paint field esca on healthy leaves and autumn colours (:data:`ESCA_FIELD_SHARE`,
    # :data:`AUTUMN_SHARE`); off reproduces the first recipe's composites.
    field_symptoms: bool = False


def random_background(rng: np.random.Generator, banks: Banks, size: int = TILE_PX,
                      used: Optional[List[str]] = None) -> Tuple[np.ndarray, bool]:
    """
    Return ``(background float32 BGR, is_leafy)`` of a random kind.

    ``is_leafy`` is True when it is healthy canopy (a field crop of healthy foliage or
    procedural canopy), which matters only when the tile has no focal leaf. A field
    photo it crops is appended to ``used``.
    """
    r = rng.random()
    leafy = False
    if r < 0.30:
        img = canopy(rng, banks.healthy, size)
        leafy = True
    elif r < 0.45:
        img = soil(rng, size)
    elif r < 0.58:
        img = dry_grass(rng, size)
    elif r < 0.70:
        img = sky(rng, size)
    else:
        img, healthy_src = banks.photos.crop(rng, size, used)
        leafy = healthy_src and vegetation_fraction(img) > 0.3
    if rng.random() < 0.25:
        img = posts_and_wires(rng, img)
    if rng.random() < 0.12:
        img = bunches(rng, img)
    return img, leafy


def _pick_leaf(rng: np.random.Generator, banks: Banks, label: int) -> Leaf:
    """Return a random leaf of class ``label`` (any leaf when that class has none)."""
    bank = banks.leaves.get(label) or [leaf for leaves in banks.leaves.values() for leaf in leaves]
    if not bank:
        raise ValueError('no leaf was segmented: the composites need leaves')
    return bank[int(rng.integers(len(bank)))]


def _focal_leaf(rng: np.random.Generator, banks: Banks, label: int) -> Tuple[Leaf, str]:
    """Return the focal leaf of class ``label`` and its variant (see :data:`VARIANTS`)."""
    if banks.field_symptoms and label == ESCA and rng.random() < ESCA_FIELD_SHARE:
        painted = esca_field_symptoms(banks.healthy[int(rng.integers(len(banks.healthy)))], rng)
        if painted is not None:
            return painted, 'esca_field_symptoms'
    leaf = _pick_leaf(rng, banks, label)
    if banks.field_symptoms and label == HEALTHY and rng.random() < AUTUMN_SHARE:
        return autumn_colouring(leaf, rng), 'autumn_colouring'
    return leaf, 'as_photographed'


def make_tile(kind: str, label: int, rng: np.random.Generator, banks: Banks,
              used: Optional[List[str]] = None) -> Tuple[np.ndarray, int, str, str]:
    """
    Make one 256-px tile of ``kind``; returns ``(uint8 BGR tile, target, source, variant)``.

    ``label`` is the focal leaf's class for leaf kinds (ignored otherwise); ``source`` is
    the focal leaf's photo ('' for none), ``variant`` how it was drawn (:data:`VARIANTS`).
    The field photos it crops (as background or as the tile) are appended to ``used``;
    the random draws are the same with or without it.
    """
    size = TILE_PX
    source = ''
    variant = VARIANTS[0]
    if kind in ('leaf_fill', 'several_leaves', 'leaf_edge'):
        img, _ = random_background(rng, banks, size, used)
        if kind == 'several_leaves':
            n_other = int(rng.integers(1, 4))
            for _ in range(n_other):
                other = banks.healthy[int(rng.integers(len(banks.healthy)))] \
                    if rng.random() < 0.7 else _pick_leaf(rng, banks, label)
                img, _ = paste_leaf(img, other, rng, scale=rng.uniform(0.35, 0.6),
                                    centre=(rng.uniform(0, 1) * size, rng.uniform(0, 1) * size),
                                    gain=rng.uniform(0.5, 1.1))
        leaf, variant = _focal_leaf(rng, banks, label)
        source = leaf.source
        for _attempt in range(4):
            if kind == 'leaf_fill':
                scale = rng.uniform(0.65, 1.25)
                centre = (size * rng.uniform(0.35, 0.65), size * rng.uniform(0.35, 0.65))
            elif kind == 'several_leaves':
                scale = rng.uniform(0.45, 0.75)
                centre = (size * rng.uniform(0.25, 0.75), size * rng.uniform(0.25, 0.75))
            else:  # leaf edge: a large leaf, off-centre
                scale = rng.uniform(1.2, 2.0)
                centre = (size * rng.uniform(-0.3, 1.3), size * rng.uniform(-0.3, 1.3))
            out, alpha = paste_leaf(img, leaf, rng, scale, centre, gain=rng.uniform(0.75, 1.15))
            if alpha.mean() >= (0.25 if kind == 'leaf_edge' else 0.15):
                img = out
                break
        else:
            img = out
        return field_photometry(img, rng), label, source, variant
    if kind == 'canopy':
        img = canopy(rng, banks.healthy, size, count=int(rng.integers(8, 18)))
        if rng.random() < 0.15:
            img = posts_and_wires(rng, img)
        if rng.random() < 0.15:
            img = bunches(rng, img)
        return field_photometry(img, rng), HEALTHY, source, variant
    if kind == 'field_crop':
        img, healthy_src = banks.photos.crop(rng, size, used)
        target = HEALTHY if healthy_src and vegetation_fraction(img) > 0.3 else BACKGROUND
        return field_photometry(img, rng), target, source, variant
    # 'background': non-leaf material
    r = rng.random()
    if r < 0.3:
        img = soil(rng, size)
    elif r < 0.55:
        img = dry_grass(rng, size)
    else:
        img = sky(rng, size)
    img = posts_and_wires(rng, img) if rng.random() < 0.6 else img
    if rng.random() < 0.35:
        img = bunches(rng, img)
    return field_photometry(img, rng), BACKGROUND, source, variant


# --------------------------------------------------------------------- the cache
def load_banks(pv_root: str, field_root: str, side: str, seed: int = SPLIT_SEED,
               log: Optional[Log] = None, field_photos: Optional[Sequence[str]] = None,
               field_symptoms: bool = False, block_size: int = BLOCK_SIZE,
               val_fraction: float = VAL_FRACTION) -> Tuple[Banks, List[Sample]]:
    """
    Segment the ``side`` (``train`` or ``val``) leaves of the leaf-grouped split.

    The split: photo-number blocks of ``block_size``, ``val_fraction`` of each class for
    validation, shuffled with ``seed`` (the shipped models': 40, 0.2, 0).

    :param field_photos: photos of ``field_root`` (relative paths) used as backgrounds;
        default :data:`FIELD_NEGATIVES` of ``side``. Missing photos are skipped (field
        crops then fall back to procedural soil).
    :param field_symptoms: composites get painted field esca and autumn colours
        (:attr:`Banks.field_symptoms`).

    :returns: the material banks and the PlantVillage samples of that side.
    """
    labels, train, val, _ = build_split(pv_root, None, 'photo-blocks', block_size, None,
                                        val_fraction, seed)
    if tuple(labels) != LABELS[:4]:
        raise DatasetError(f'unexpected PlantVillage classes {labels}')
    samples = train if side == 'train' else val
    banks = banks_from_samples(samples, field_root, FIELD_NEGATIVES[side] if field_photos
                               is None else field_photos, field_symptoms, side, log)
    return banks, samples


def banks_from_samples(samples: Sequence[Sample], field_root: str,
                       field_photos: Sequence[str], field_symptoms: bool = False,
                       name: str = '', log: Optional[Log] = None) -> Banks:
    """
    Segment the leaves of ``samples`` and load ``field_photos``: the banks of one side.

    The leaves' ``source`` is the photo's file name; ``name`` labels the log lines.
    """
    leaves: Dict[int, List[Leaf]] = {i: [] for i in range(4)}
    plain: List[Tuple[np.ndarray, int]] = []
    failed = 0
    for i, sample in enumerate(samples):
        image = read_bgr(sample.path)
        plain.append((image, sample.label_index))
        leaf = leaf_from_image(image, sample.label_index, os.path.basename(sample.path))
        if leaf is None:
            failed += 1
        else:
            leaves[sample.label_index].append(leaf)
        if log and i % 500 == 0:
            log(f'{name}: segmented {i}/{len(samples)}')
    if log:
        log(f'{name}: {sum(len(v) for v in leaves.values())} leaves segmented, '
            f'{failed} rejected')
    photos = FieldPhotos(field_root, field_photos)
    healthy = leaves[HEALTHY] or [leaf for bank in leaves.values() for leaf in bank]
    return Banks(leaves, healthy, photos, plain, field_symptoms)


def kind_plan(count: int, rng: np.random.Generator) -> List[Tuple[str, int]]:
    """
    Return the (kind, focal label) list of ``count`` tiles.

    Shares: 55 % leaf tiles (leaf fill 30 %, several leaves 13 %, leaf edge 12 %),
    balanced over the four classes; 13 % canopy; 22 % background; 10 % field crops.
    """
    plan: List[Tuple[str, int]] = []
    shares = (('leaf_fill', 0.30), ('several_leaves', 0.13), ('leaf_edge', 0.12),
              ('canopy', 0.13), ('background', 0.22), ('field_crop', 0.10))
    for kind, share in shares:
        n = int(round(share * count))
        for j in range(n):
            plan.append((kind, j % 4 if kind in ('leaf_fill', 'several_leaves', 'leaf_edge')
                         else -1))
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


def cache_card(input_px: int) -> ModelCard:
    """Return the card whose resize rule makes the cached tiles (the node's, at ``input_px``)."""
    return card_from_dict({
        'schema_version': 1, 'name': 'cache', 'labels': list(LABELS),
        'healthy_labels': list(HEALTHY_LABELS),
        'input': {'name': 'input', 'height_px': input_px, 'width_px': input_px,
                  'layout': 'NCHW', 'color_order': 'RGB'},
        'preprocessing': {'resize': 'stretch', 'interpolation': 'area', 'scale': 1 / 255,
                          'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225]},
        'output': {'name': 'logits'}, 'calibration': {'temperature': 1.0,
                                                      'unknown_threshold': 0.0}})


def build_cache(banks: Banks, count: int, seed: int, input_px: int, path: str,
                include_plain: bool, log: Optional[Log] = None) -> Dict[str, np.ndarray]:
    """
    Generate ``count`` composites (+ the plain PlantVillage images when asked) and save.

    The array file ``path`` (``.npz``, uncompressed) holds ``x`` ``(N, S, S, 3)`` uint8
    BGR at the model input size, ``y`` ``(N,)`` targets, ``kind`` ``(N,)`` indices into
    :data:`KINDS`, ``source`` (leaf file name, '' for no leaf) and ``variant`` ``(N,)``
    indices into :data:`VARIANTS`.
    """
    card = cache_card(input_px)
    rng = np.random.default_rng(seed)
    plan = kind_plan(count, rng)
    total = len(plan) + (len(banks.plain) if include_plain else 0)
    x = np.empty((total, input_px, input_px, 3), np.uint8)
    y = np.empty(total, np.int64)
    kinds = np.empty(total, np.int64)
    variants = np.zeros(total, np.int64)
    sources: List[str] = []
    for i, (kind, label) in enumerate(plan):
        tile, target, source, variant = make_tile(kind, label, rng, banks)
        x[i] = resize_to_input(tile, card)
        y[i] = target
        kinds[i] = KINDS.index(kind)
        variants[i] = VARIANTS.index(variant)
        sources.append(source)
        if log and i % 1000 == 0:
            log(f'{os.path.basename(path)}: {i}/{len(plan)} composites')
    if include_plain:
        for j, (image, label) in enumerate(banks.plain):
            i = len(plan) + j
            x[i] = resize_to_input(image, card)
            y[i] = label
            kinds[i] = KINDS.index('pv_plain')
            sources.append('')
    np.savez(path, x=x, y=y, kind=kinds, source=np.array(sources), variant=variants)
    return {'x': x, 'y': y, 'kind': kinds, 'variant': variants}


# ----------------------------------------------------------- validation material
VALIDATION_SEED = 1001
VALIDATION_FORMAT = 'leaf_disease_ros validation material 1'


def validation_plan(count: int, rng: np.random.Generator, with_photos: bool
                    ) -> List[Tuple[str, int]]:
    """
    Return the (kind, focal label) list of one validation half (:func:`kind_plan`).

    A half without field photos makes its ``field_crop`` share ``background`` tiles
    (procedural non-leaf material) instead of soil labelled as a field crop.
    """
    plan = kind_plan(count, rng)
    if with_photos:
        return plan
    return [('background', -1) if kind == 'field_crop' else (kind, label)
            for kind, label in plan]


def cache_path(out: str, side: str, input_px: int) -> str:
    """Return the cache file of one side: ``OUT/{side}_{px}.npz``."""
    return os.path.join(out, f'{side}_{input_px}.npz')


def write_validation(pv_root: str, field_root: str, out: str, count: int, input_px: int,
                     seed: int = 0, field_symptoms: bool = False, log: Optional[Log] = None,
                     split_seed: int = SPLIT_SEED, block_size: int = BLOCK_SIZE,
                     val_fraction: float = VAL_FRACTION) -> str:
    """
    Write the validation material ``OUT/val_PX.npz`` + ``OUT/val_PX.json``; return the cache.

    :func:`build_validation`; the default split is the shipped models' training split
    (photo-number blocks of 40, validation fraction 0.2, seed 0); halves by leaf block
    with ``seed``.
    """
    os.makedirs(out, exist_ok=True)
    path = cache_path(out, 'val', input_px)
    build_validation(pv_root, field_root, count, input_px, path, seed, field_symptoms,
                     split_seed, block_size, val_fraction, log)
    return path


def material_path(cache: str) -> str:
    """Return the material record beside a validation cache: ``X.npz`` -> ``X.json``."""
    return os.path.splitext(cache)[0] + '.json'


def build_validation(pv_root: str, field_root: str, count: int, input_px: int, path: str,
                     seed: int = 0, field_symptoms: bool = False,
                     split_seed: int = SPLIT_SEED, block_size: int = BLOCK_SIZE,
                     val_fraction: float = VAL_FRACTION, log: Optional[Log] = None
                     ) -> Dict[str, Any]:
    """
    Build the validation composites in a tuning half and a test half; return the record.

    The PlantVillage validation leaves of the training split (``split_seed``,
    ``block_size``, ``val_fraction``: give those of the model's training) are split by
    leaf block with ``seed``
    (:func:`field_manifest.validation_halves`). Each half is made from its own banks only:
    its leaves (focal leaves, other leaves, canopy, painted esca), its field photos
    (:func:`field_manifest.background_photos`: role ``tune`` for the tuning half, ``test``
    for the test half) and its own random stream (seed ``(1001, seed, half)``), so every
    crop of one photo and every photo of one leaf is on one side. ``count`` composites
    are shared evenly.

    Writes ``path`` (``.npz``: ``x``, ``y``, ``kind``, ``source``, ``variant`` as
    :func:`build_cache`, plus ``half`` ``(N,)`` 0 = tuning, 1 = test, ``photo`` ``(N,)``
    the field photos cropped into the tile joined by ``;``, and ``meta`` the JSON of the
    parameters) and the material record :func:`material_path` (JSON: the parameters, the
    manifest, each half's leaves with their blocks and field photos, and every tile's
    half, kind, target, variant, focal leaf, leaf block and field photos).

    :raises DatasetError: unexpected classes, a field photo without a role, or a class
        with fewer than two validation blocks.
    """
    labels, tune, test = validation_halves(pv_root, seed, split_seed, block_size, val_fraction)
    if labels != LABELS[:4]:
        raise DatasetError(f'unexpected PlantVillage classes {labels}')
    if os.path.isdir(field_root):
        check_field_folder(field_root)
    card = cache_card(input_px)
    block_of = {os.path.basename(s.path): str(s.group) for s in (*tune, *test)}
    counts = (count // 2, count - count // 2)
    x_parts: List[np.ndarray] = []
    rows: Dict[str, List[Any]] = {key: [] for key in ('half', 'kind', 'target', 'variant',
                                                      'leaf', 'block', 'photos')}
    halves: Dict[str, Any] = {}
    for h, (half, samples) in enumerate(zip(HALVES, (tune, test))):
        banks = banks_from_samples(samples, field_root, background_photos(half),
                                   field_symptoms, half, log)
        rng = np.random.default_rng([VALIDATION_SEED, seed, h])
        plan = validation_plan(counts[h], rng, bool(banks.photos.frames))
        x = np.empty((len(plan), input_px, input_px, 3), np.uint8)
        for i, (kind, label) in enumerate(plan):
            used: List[str] = []
            tile, target, source, variant = make_tile(kind, label, rng, banks, used)
            x[i] = resize_to_input(tile, card)
            for key, value in (('half', h), ('kind', KINDS.index(kind)), ('target', target),
                               ('variant', VARIANTS.index(variant)), ('leaf', source),
                               ('block', block_of.get(source, '')),
                               ('photos', ';'.join(sorted(set(used))))):
                rows[key].append(value)
            if log and i % 1000 == 0:
                log(f'{os.path.basename(path)} {half} half: {i}/{len(plan)} composites')
        x_parts.append(x)
        halves[half] = {
            'composites': len(plan),
            'composite_seed': [VALIDATION_SEED, seed, h],
            'field_photos': list(banks.photos.names),
            'leaf_blocks': len({s.group for s in samples}),
            'leaves': leaf_rows(samples, pv_root),
        }
    meta = {'format': VALIDATION_FORMAT, 'seed': seed, 'count': count, 'input_px': input_px,
            'field_symptoms': field_symptoms,
            'split': {'group': 'photo-blocks', 'block_size': block_size,
                      'val_fraction': val_fraction, 'split_seed': split_seed,
                      'halves': 'validation blocks split by leaf block with seed, test half '
                                f'>= {TEST_SHARE:.0%} of each class'},
            'plantvillage': os.path.basename(os.path.normpath(pv_root)),
            'field_photos': os.path.basename(os.path.normpath(field_root))}
    np.savez(path, x=np.concatenate(x_parts), y=np.array(rows['target'], np.int64),
             kind=np.array(rows['kind'], np.int64), source=np.array(rows['leaf']),
             variant=np.array(rows['variant'], np.int64), half=np.array(rows['half'], np.int64),
             photo=np.array(rows['photos']), meta=np.array(json.dumps(meta)))
    record = dict(meta, halves=halves, manifest=manifest_document(),
                  tiles={'columns': ['half', 'kind', 'target', 'variant', 'leaf', 'block',
                                     'photos'],
                         'names': {'half': list(HALVES), 'kind': list(KINDS),
                                   'target': list(LABELS), 'variant': list(VARIANTS)},
                         'rows': [list(r) for r in zip(*(rows[k] for k in (
                             'half', 'kind', 'target', 'variant', 'leaf', 'block',
                             'photos')))]})
    atomic_write_json(material_path(path), record)
    return record
