"""
Whether an image can be classified at all: colour, and enough pixels.

The model classifies colour photos of leaves (the vegetation gate and the disease
symptoms are colours); a grey or black frame has no colour to classify, and an image
far smaller than the model's input is mostly interpolation. Rather than return a
confident label for such an image (a lie), the replay skips the frame and the
classify command skips the file, each saying why:

- :func:`has_colour`: not every pixel has three equal channels (a sample of every
  4th pixel of every 4th row; a grey camera, a grey PNG or a black frame has none);
- :func:`too_small`: a side shorter than a quarter of the model's input side (at
  least 16 px); :func:`too_small_reason` says so.

:func:`read_image_file` reads an image file and says why it could not (unreadable,
empty, not an image), so a locked file is one skipped file, never a traceback.
"""

import os
from typing import Optional, Tuple

import cv2
import numpy as np

GREY_SAMPLE_STEP = 4
MIN_SIDE_FRACTION = 0.25
MIN_SIDE_PX = 16


def has_colour(image_bgr: np.ndarray) -> bool:
    """Return whether a ``(H, W, 3)`` uint8 image has any pixel with unequal channels."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] < 3:
        return False
    step = GREY_SAMPLE_STEP if min(image_bgr.shape[:2]) >= 8 * GREY_SAMPLE_STEP else 1
    sample = image_bgr[::step, ::step]
    # A colour frame shows it in its first sampled rows: look there first (per frame this
    # was 4 ms of a 1280x720 replay frame), then at the whole sample (same answer).
    for part in (sample[:8], sample):
        blue, green, red = part[..., 0], part[..., 1], part[..., 2]
        if np.any(blue != green) or np.any(green != red):
            return True
    return False


def min_side_px(input_hw_px: Tuple[int, int]) -> int:
    """Return the smallest image side the model's input size makes sense for."""
    return max(MIN_SIDE_PX, int(min(input_hw_px) * MIN_SIDE_FRACTION))


def too_small(image_bgr: np.ndarray, input_hw_px: Tuple[int, int]) -> bool:
    """Return whether the image is too small to classify with a model of this input size."""
    return min(image_bgr.shape[:2]) < min_side_px(input_hw_px)


def too_small_reason(image_bgr: np.ndarray, input_hw_px: Tuple[int, int]) -> str:
    """Return why the image is too small for the model's input, or '' when it is not."""
    if not too_small(image_bgr, input_hw_px):
        return ''
    height, width = input_hw_px
    return (f'{image_bgr.shape[1]}x{image_bgr.shape[0]} px is too small for the '
            f"model's {width}x{height} input (at least {min_side_px(input_hw_px)} px a "
            'side), not classified')


def read_image_file(path: str) -> Tuple[Optional[np.ndarray], str]:
    """
    Return ``(BGR uint8 image, '')``, or ``(None, why not)`` for a file that is no image.

    A file that cannot be read (permission denied, I/O error) says so with the system's
    reason; an empty or undecodable one is ``'not a readable image'``.
    """
    if not os.path.isfile(path):
        return None, 'not a readable image'
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        return None, f'cannot be read ({exc.strerror or exc})'
    if data.size == 0:
        return None, 'not a readable image'
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        return None, 'not a readable image'
    return image, ''


NO_COLOUR_REASON = ('has no colour (all three channels equal: a grey camera, a grey image '
                    'or a black frame); the model classifies colour photos of leaves, so it '
                    'is not classified')
