"""
Frame -> square tiles, and the tile gate (excess-green vegetation and leaf area).

``grid`` mode cuts a frame into square tiles of ``tile_size_px`` every
``tile_stride_px``; when the stride does not land on the frame's edge, one more
tile is aligned to the right (bottom) edge so the whole frame is covered. A tile
larger than the frame is clamped to the frame's shorter side. ``none`` mode takes
one centred square crop of the shorter side (a close-up leaf camera).

Boxes are pixel rectangles ``(x0, y0, x1, y1)`` in the original frame, half-open
(``x1``/``y1`` exclusive), int32 array of shape ``(K, 4)``.

The vegetation gate skips tiles of soil, sky and posts: a pixel is vegetation when
its excess green ``2g - r - b`` in chromatic coordinates (``r = R / (R + G + B)``,
Woebbecke et al. 1995) exceeds ``exg_threshold``. The fraction per tile comes from
one summed-area table of the mask, so the gate costs one pass over the frame
whatever the number of tiles. The mask is computed on every 4th pixel of every 4th
row (a strided view, no copy): an unbiased sample of the fraction, 16x less work,
and no resize (an INTER_AREA downscale alone cost 8x the mask on the benchmark
machine).

The leaf-area gate asks whether a tile holds enough *leaf* to be classified: a tile of
sky, wire, post or soil that a leaf edge enters has a little vegetation but is
background, and the classifier, shown the edge with sky around it, calls it a disease
with high confidence. Excess green misses the brown and black necrotic spots of a
diseased leaf, so leaf area is the vegetation mask closed morphologically (a kernel of
:data:`LEAF_CLOSE_TILE_FRACTION` of a tile side: bridges the veins, blotches and notches
of one leaf; isolated noise pixels are dropped first) with its holes filled
(background regions enclosed by vegetation, up to
:data:`LEAF_HOLE_TILE_FRACTION` of a tile's area: lesions, not the sky seen through a
gap in the canopy). Sky or soil *beside* a leaf edge is not enclosed and does not count.
It runs on the same strided mask, one summed-area table per frame (see
:func:`gate_fractions`).
"""

from typing import List, Optional, Tuple

import cv2
import numpy as np

from leaf_disease_ros.perception.errors import FrameError

GATE_DOWNSCALE = 4
#: side of the closing kernel of the leaf mask, as a share of the tile side
LEAF_CLOSE_TILE_FRACTION = 1.0 / 16.0
#: largest enclosed non-vegetation region filled as leaf, as a share of the tile area
LEAF_HOLE_TILE_FRACTION = 0.25


def check_frame(frame_bgr: np.ndarray) -> Tuple[int, int]:
    """Return ``(height, width)`` of a ``(H, W, 3)`` uint8 BGR frame, or raise FrameError."""
    if not isinstance(frame_bgr, np.ndarray):
        raise FrameError(f'frame is a {type(frame_bgr).__name__}, expected a numpy array')
    if frame_bgr.dtype != np.uint8 or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        raise FrameError(f'frame has shape {frame_bgr.shape} {frame_bgr.dtype}, '
                         'expected (H, W, 3) uint8 BGR')
    height, width = frame_bgr.shape[:2]
    if height == 0 or width == 0:
        raise FrameError(f'frame is empty ({height}x{width})')
    return height, width


def _positions(length: int, size: int, stride: int) -> List[int]:
    positions = list(range(0, length - size + 1, stride))
    if positions[-1] + size < length:
        positions.append(length - size)  # cover the far edge
    return positions


def tile_boxes(height: int, width: int, mode: str, tile_size_px: int,
               tile_stride_px: int) -> np.ndarray:
    """
    Return the tile boxes of a ``height`` x ``width`` frame as ``(K, 4)`` int32.

    :param height: frame height in pixels.
    :param width: frame width in pixels.
    :param mode: ``grid`` or ``none``.
    :param tile_size_px: tile side (grid mode), clamped to ``min(height, width)``.
    :param tile_stride_px: step between tiles (grid mode), > 0.
    """
    side = min(height, width)
    if mode == 'none':
        x0 = (width - side) // 2
        y0 = (height - side) // 2
        return np.array([[x0, y0, x0 + side, y0 + side]], dtype=np.int32)
    if mode != 'grid':
        raise FrameError(f"tiling mode {mode!r} is not 'grid' or 'none'")
    if tile_size_px <= 0 or tile_stride_px <= 0:
        raise FrameError(f'tile size {tile_size_px} and stride {tile_stride_px} must be > 0')
    size = min(tile_size_px, side)
    xs = _positions(width, size, tile_stride_px)
    ys = _positions(height, size, tile_stride_px)
    grid_x, grid_y = np.meshgrid(np.asarray(xs), np.asarray(ys))  # row-major: y then x
    x0 = grid_x.ravel()
    y0 = grid_y.ravel()
    return np.stack([x0, y0, x0 + size, y0 + size], axis=1).astype(np.int32)


def vegetation_mask(image_bgr: np.ndarray, exg_threshold: float) -> np.ndarray:
    """
    Return a ``(h, w)`` uint8 mask (1 = vegetation) by excess green.

    ``2G - R - B > t * (R + G + B)`` is the chromatic-coordinate test multiplied out,
    so no division; dark pixels (sum 0) are not vegetation.
    """
    return _masks(image_bgr, exg_threshold, leaf=False)[0]


def _masks(image_bgr: np.ndarray, exg_threshold: float,
           leaf: bool) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """
    Return ``(vegetation, leaf pixels or None)`` uint8 masks of one image.

    A leaf pixel is vegetation whose green also exceeds its blue: a hazy or cyan sky
    passes the excess-green test (``2G - R - B`` of light blue is positive) but is
    blue above green; leaves in sun, shade or autumn colours are not.
    """
    channels = image_bgr.astype(np.int32)
    b = channels[..., 0]
    g = channels[..., 1]
    r = channels[..., 2]
    total = r + g + b
    exg = 2 * g - r - b
    vegetation = (exg > exg_threshold * total) & (total > 0)
    leaf_pixels = (vegetation & (g > b)).astype(np.uint8) if leaf else None
    return vegetation.astype(np.uint8), leaf_pixels


def _gate_step(height: int, width: int) -> int:
    return GATE_DOWNSCALE if min(height, width) >= 8 * GATE_DOWNSCALE else 1


def fill_leaf_area(vegetation: np.ndarray, close_px: int, max_hole_px: int) -> np.ndarray:
    """
    Return the ``(h, w)`` uint8 leaf-area mask (1 = leaf) of a vegetation mask.

    Isolated pixels are dropped first (a 3x3 median: sensor noise on wood, soil or
    sky passes the excess-green test here and there, and closing would join the
    specks into area); then the mask is closed with an elliptic ``close_px`` kernel,
    and every region of non-leaf pixels that does not touch the image border and
    holds at most ``max_hole_px`` pixels (a lesion enclosed by leaf) is filled.
    """
    mask = cv2.medianBlur(vegetation, 3)
    if close_px >= 2:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_px, close_px))
        # pad so the closing does not erode leaves at the frame border
        pad = close_px
        padded = cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        mask = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel)[pad:-pad, pad:-pad]
    if max_hole_px < 1:
        return mask
    count, labels, stats, _ = cv2.connectedComponentsWithStats(1 - mask, connectivity=4)
    if count <= 1:
        return mask
    fill = stats[:, cv2.CC_STAT_AREA] <= max_hole_px
    fill[0] = False  # label 0: the leaf pixels themselves
    h, w = mask.shape
    x0 = stats[:, cv2.CC_STAT_LEFT]
    y0 = stats[:, cv2.CC_STAT_TOP]
    fill &= (x0 > 0) & (y0 > 0) & (x0 + stats[:, cv2.CC_STAT_WIDTH] < w) \
        & (y0 + stats[:, cv2.CC_STAT_HEIGHT] < h)  # touching the border: not enclosed
    if not fill.any():
        return mask
    return np.where(fill[labels], np.uint8(1), mask).astype(np.uint8)


def _box_means(mask: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return the mean of ``mask`` over each frame box (one summed-area table)."""
    integral = cv2.integral(mask, sdepth=cv2.CV_32S)  # (h+1, w+1)
    sh, sw = mask.shape
    sx = sw / width
    sy = sh / height
    x0 = np.clip(np.round(boxes[:, 0] * sx).astype(np.int64), 0, sw)
    x1 = np.clip(np.round(boxes[:, 2] * sx).astype(np.int64), 0, sw)
    y0 = np.clip(np.round(boxes[:, 1] * sy).astype(np.int64), 0, sh)
    y1 = np.clip(np.round(boxes[:, 3] * sy).astype(np.int64), 0, sh)
    x1 = np.maximum(x1, x0 + 1).clip(max=sw)
    y1 = np.maximum(y1, y0 + 1).clip(max=sh)
    sums = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return (sums / area).astype(np.float32)


def vegetation_fractions(frame_bgr: np.ndarray, boxes: np.ndarray,
                         exg_threshold: float) -> np.ndarray:
    """
    Return the vegetation fraction of each box as ``(K,)`` float32 in [0, 1].

    Uses one summed-area table over the mask of every 4th pixel; box corners are
    rounded to that grid.
    """
    return gate_fractions(frame_bgr, boxes, exg_threshold, leaf_area=False)[0]


def gate_fractions(frame_bgr: np.ndarray, boxes: np.ndarray, exg_threshold: float,
                   leaf_area: bool = True, pixel_scale: int = 1
                   ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """
    Return ``(vegetation (K,), leaf area (K,) or None)`` fractions of each box, float32.

    One vegetation mask of every 4th pixel per frame; the leaf-area mask
    (:func:`fill_leaf_area`, only with ``leaf_area``) is derived from it with the
    kernel and hole limits scaled to the boxes' side. ``pixel_scale``: the frame was
    decoded at ``1/pixel_scale`` of its size (``perception/reduced_decode.py``; boxes in
    its pixels): it is sampled every ``4 / pixel_scale`` pixels, the same grid as the
    full-size frame.
    """
    height, width = frame_bgr.shape[:2]
    step = _gate_step(height * pixel_scale, width * pixel_scale)
    if pixel_scale > 1:
        step = max(1, step // pixel_scale)
    mask, leaf_pixels = _masks(frame_bgr[::step, ::step], exg_threshold,
                               leaf_area and len(boxes) > 0)
    vegetation = _box_means(mask, boxes, height, width)
    if leaf_pixels is None:
        return vegetation, None
    side_px = float(boxes[0, 2] - boxes[0, 0]) * mask.shape[1] / width
    close_px = int(round(side_px * LEAF_CLOSE_TILE_FRACTION))
    max_hole_px = int(side_px * side_px * LEAF_HOLE_TILE_FRACTION)
    leaf = fill_leaf_area(leaf_pixels, close_px, max_hole_px)
    return vegetation, _box_means(leaf, boxes, height, width)


def crops(frame_bgr: np.ndarray, boxes: np.ndarray) -> List[np.ndarray]:
    """Return views of ``frame_bgr`` for each box (no copies)."""
    return [frame_bgr[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes.tolist()]
