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
  least 16 px).
"""

from typing import Tuple

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
    blue, green, red = sample[..., 0], sample[..., 1], sample[..., 2]
    return bool(np.any(blue != green) or np.any(green != red))


def min_side_px(input_hw_px: Tuple[int, int]) -> int:
    """Return the smallest image side the model's input size makes sense for."""
    return max(MIN_SIDE_PX, int(min(input_hw_px) * MIN_SIDE_FRACTION))


def too_small(image_bgr: np.ndarray, input_hw_px: Tuple[int, int]) -> bool:
    """Return whether the image is too small to classify with a model of this input size."""
    return min(image_bgr.shape[:2]) < min_side_px(input_hw_px)


NO_COLOUR_REASON = ('has no colour (all three channels equal: a grey camera, a grey image '
                    'or a black frame); the model classifies colour photos of leaves, so it '
                    'is not classified')
