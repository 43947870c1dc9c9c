"""
The one preprocessing function: BGR uint8 crops -> model input, as the card says.

Training (``leaf-disease-train``), the export parity check, the INT8 calibrator, the
node, the replay and the CLI all call :func:`preprocess`; none of them resizes or
normalises on its own, so the numbers the model sees in the field are the numbers
it saw in training.

Per crop (any size, ``(h, w, 3)`` uint8, BGR as OpenCV decodes):

1. resize to the card's ``(H, W)``: ``stretch`` resizes directly; ``center_crop``
   scales so the crop covers ``(H, W)`` and cuts the centre. ``area`` interpolation
   means INTER_AREA when shrinking and INTER_LINEAR when enlarging (INTER_AREA
   enlarges like nearest-neighbour);
2. reorder channels to the card's colour order;
3. ``x * scale``, minus ``mean``, divided by ``std`` per channel;
4. lay out as ``(N, 3, H, W)`` float32.

Steps 2-4 run once on the whole batch as one fused numpy expression.
"""

from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from leaf_disease_ros.perception.errors import FrameError
from leaf_disease_ros.perception.model_card import ModelCard

_INTERPOLATION = {'linear': cv2.INTER_LINEAR, 'cubic': cv2.INTER_CUBIC}

Crops = Union[np.ndarray, Sequence[np.ndarray]]


def _check_crop(crop: np.ndarray, index: int) -> None:
    if not isinstance(crop, np.ndarray) or crop.dtype != np.uint8:
        raise FrameError(f'crop {index}: expected a uint8 numpy array, got '
                         f'{getattr(crop, "dtype", type(crop).__name__)}')
    if crop.ndim != 3 or crop.shape[2] != 3:
        raise FrameError(f'crop {index}: expected shape (h, w, 3) BGR, got {crop.shape}')
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise FrameError(f'crop {index}: is empty ({crop.shape})')


def resize_to_input(crop: np.ndarray, card: ModelCard) -> np.ndarray:
    """Resize one BGR uint8 crop to the card's ``(H, W, 3)`` by its resize rule."""
    height, width = card.input_hw_px
    h, w = crop.shape[:2]
    if (h, w) == (height, width):
        return crop
    if card.resize == 'center_crop':
        scale = max(height / h, width / w)
        new_h = max(height, int(round(h * scale)))
        new_w = max(width, int(round(w * scale)))
        resized = cv2.resize(crop, (new_w, new_h), interpolation=_interp(card, scale < 1.0))
        top = (new_h - height) // 2
        left = (new_w - width) // 2
        return resized[top:top + height, left:left + width]
    shrinking = height * width < h * w
    return cv2.resize(crop, (width, height), interpolation=_interp(card, shrinking))


def _interp(card: ModelCard, shrinking: bool) -> int:
    if card.interpolation == 'area':
        return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return _INTERPOLATION[card.interpolation]


def normalisation(card: ModelCard) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int, int]]:
    """
    Return ``(gain, offset, bgr_to_model_order)`` so that input = x[order]*gain + offset.

    ``gain`` and ``offset`` are float32 of shape ``(3,)`` in the model's channel order.
    """
    std = np.asarray(card.std, dtype=np.float64)
    mean = np.asarray(card.mean, dtype=np.float64)
    gain = (card.scale / std).astype(np.float32)
    offset = (-mean / std).astype(np.float32)
    order = (2, 1, 0) if card.color_order == 'RGB' else (0, 1, 2)
    return gain, offset, order


def preprocess(crops: Crops, card: ModelCard, out: Optional[np.ndarray] = None) -> np.ndarray:
    """
    Turn BGR uint8 crops into the model's input batch.

    :param crops: a sequence of ``(h_i, w_i, 3)`` uint8 BGR arrays of any sizes, or one
        ``(N, h, w, 3)`` uint8 array.
    :param card: the model card (input size, colour order, resize, scale, mean, std).
    :param out: optional preallocated ``(>=N, 3, H, W)`` float32 array to write into
        (saves an allocation per frame); its first N rows are returned.

    :returns: ``(N, 3, H, W)`` float32, C-contiguous.

    :raises FrameError: a crop is not ``(h, w, 3)`` uint8 or is empty, or no crops.
    """
    count = len(crops)
    if count == 0:
        raise FrameError('no crops to preprocess')
    height, width = card.input_hw_px
    stack = np.empty((count, height, width, 3), dtype=np.uint8)
    for index in range(count):
        crop = crops[index]
        _check_crop(crop, index)
        stack[index] = resize_to_input(crop, card)

    gain, offset, order = normalisation(card)
    if out is None:
        out = np.empty((count, 3, height, width), dtype=np.float32)
    elif out.dtype != np.float32 or out.shape[0] < count or out.shape[1:] != (3, height, width):
        raise FrameError(f'output buffer has shape {out.shape} {out.dtype}, expected '
                         f'(>={count}, 3, {height}, {width}) float32')
    result = out[:count]
    # One pass per output channel: read the BGR plane, scale and shift into NCHW.
    # dtype=float32 pins the loop: NumPy 1.x value-based casting would otherwise pick
    # a float16 loop for uint8 * float32-scalar and lose precision.
    for channel, source in enumerate(order):
        plane = result[:, channel]
        np.multiply(stack[..., source], gain[channel], out=plane, dtype=np.float32,
                    casting='unsafe')
        np.add(plane, offset[channel], out=plane, dtype=np.float32)
    return result
