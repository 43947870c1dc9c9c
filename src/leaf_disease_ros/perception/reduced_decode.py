"""
Decoding a JPEG frame at 1/2 or 1/4 scale when the card shrinks every tile at least that much.

With the shipped card (128-px input) and 256-px tiles, every tile is shrunk 2x by the
card's ``stretch`` + ``area`` rule anyway: decoding the JPEG at half scale (libjpeg's
scaled IDCT, ``cv2.IMREAD_REDUCED_COLOR_2``) gives each tile at the model's input size
directly, for less decoding, gating and resizing work. The scaled IDCT is a low-pass
reduction of each 8x8 block, like the card's area average, but not the same numbers:
the developer script ``reduced_decode_parity`` of the source repository measures what
it changes on real frames against a JPEG-quality yardstick, and its tests hold the
replay to those figures (the table is in the season documentation).

:func:`reduced_scale` says which scale a frame may be decoded at: only

- with a card that resizes by ``stretch`` with ``area`` interpolation (the rule the
  parity is measured for; any other rule decodes at full size);
- when every tile box, in full-size pixels, is at least ``scale`` times the model's
  input on each side, every box corner and both frame sides are multiples of
  ``scale`` (the boxes map exactly onto the reduced image);
- up to :data:`~leaf_disease_ros.perception.tiling.GATE_DOWNSCALE` (the vegetation gate
  samples every 4th pixel of a full-size frame: a reduced frame is sampled on the same
  grid, each sample a block average instead of one pixel).

The frame's full size comes from the JPEG's own header (:func:`jpeg_size_px`), before
decoding; a frame whose reduced decode does not have exactly the expected size (EXIF
rotation, a header that lies) is decoded again at full size by the caller.
"""

from typing import Optional, Tuple, Union

import cv2
import numpy as np

from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.errors import FrameError
from leaf_disease_ros.perception.model_card import ModelCard
from leaf_disease_ros.perception.tiling import GATE_DOWNSCALE, tile_boxes

#: scales tried, largest first
SCALES = (4, 2)
_READ_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
#: start-of-frame markers that carry the image size (not DHT 0xC4, JPG 0xC8, DAC 0xCC)
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: markers without a length field (TEM, RSTn, SOI, EOI)
_STANDALONE = frozenset([0x01, *range(0xD0, 0xDA)])
#: how far into the data the header is looked for (EXIF thumbnails can be large)
MAX_HEADER_BYTES = 1 << 20

Buffer = Union[bytes, bytearray, memoryview, np.ndarray]


def jpeg_size_px(data: Buffer) -> Optional[Tuple[int, int]]:
    """
    Return ``(height, width)`` from a JPEG's start-of-frame header, or None.

    None for anything that is not a JPEG with a readable header within
    :data:`MAX_HEADER_BYTES` (PNG, truncated or corrupt data, a zero height): the caller
    then decodes at full size, and the full decode says what is wrong with the data.
    """
    view = (np.ascontiguousarray(data, dtype=np.uint8).reshape(-1).data
            if isinstance(data, np.ndarray) else memoryview(data).cast('B'))
    end = min(len(view), MAX_HEADER_BYTES)
    if end < 4 or view[0] != 0xFF or view[1] != 0xD8:
        return None
    index = 2
    while index + 4 <= end:
        if view[index] != 0xFF:
            return None  # not at a marker: corrupt
        marker = view[index + 1]
        if marker == 0xFF:  # fill byte before a marker
            index += 1
            continue
        if marker in _STANDALONE:
            if marker == 0xD9:  # end of image before any frame header
                return None
            index += 2
            continue
        length = (view[index + 2] << 8) | view[index + 3]
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if index + 9 > end or length < 7:
                return None
            height = (view[index + 5] << 8) | view[index + 6]
            width = (view[index + 7] << 8) | view[index + 8]
            return (height, width) if height > 0 and width > 0 else None
        if marker == 0xDA:  # start of scan before a frame header
            return None
        index += 2 + length
    return None


def reduced_scale(frame_hw_px: Tuple[int, int], config: DetectorConfig,
                  card: ModelCard) -> int:
    """Return the scale (4, 2, or 1 = full size) a frame of this size may be decoded at."""
    if card.resize != 'stretch' or card.interpolation != 'area':
        return 1
    height, width = frame_hw_px
    if height <= 0 or width <= 0:
        return 1
    try:
        boxes = tile_boxes(height, width, config.tiling, config.tile_size_px,
                           config.tile_stride_px)
    except FrameError:
        return 1
    if not len(boxes):
        return 1
    box_sides = np.concatenate([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])
    input_side = max(card.input_hw_px)
    for scale in SCALES:
        if scale > GATE_DOWNSCALE or height % scale or width % scale:
            continue
        if int(box_sides.min()) >= scale * input_side and not np.any(boxes % scale):
            return scale
    return 1


def decode_jpeg_reduced(data: Buffer, scale: int) -> Optional[np.ndarray]:
    """Return the ``(H/scale, W/scale, 3)`` BGR decode of JPEG bytes, None if it fails."""
    flag = _READ_FLAGS.get(scale)
    if flag is None:
        raise ValueError(f'scale {scale} is not one of {sorted(_READ_FLAGS)}')
    array = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    try:
        image = cv2.imdecode(array, flag)
    except cv2.error:
        return None
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        return None
    return image


def try_reduced_decode(data: Buffer, config: DetectorConfig, card: ModelCard
                       ) -> Optional[Tuple[np.ndarray, int]]:
    """
    Return ``(reduced BGR image, scale)`` of JPEG bytes, or None to decode at full size.

    None when the data is no JPEG with a readable header, when :func:`reduced_scale`
    is 1, or when the reduced decode fails or does not have exactly the header's size
    divided by the scale (EXIF rotation, a header that lies): the full-size decode
    then runs and reports whatever is wrong with the data.
    """
    size = jpeg_size_px(data)
    if size is None:
        return None
    scale = reduced_scale(size, config, card)
    if scale == 1:
        return None
    image = decode_jpeg_reduced(data, scale)
    if image is None or image.shape[:2] != (size[0] // scale, size[1] // scale):
        return None
    return image, scale
