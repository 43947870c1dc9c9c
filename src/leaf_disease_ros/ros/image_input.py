"""
Checks around image decoding that are not decoding.

Images are converted by ``cv_bridge`` in the node (and by rosbags-image in replay);
nothing here knows an encoding. These checks only keep a malformed message from
reaching the converter and a failed conversion from reaching the pipeline:

- :func:`check_raw_layout`: a ``sensor_msgs/Image`` whose size fields contradict its
  data (empty, or fewer bytes than ``step * height``) would make the converter read
  past the buffer; it is rejected with the numbers;
- :func:`check_compressed` : an empty ``sensor_msgs/CompressedImage``;
- :func:`check_decoded`: the converter's result must be an ``(H, W, 3)`` uint8 array
  (a corrupt JPEG decodes to nothing).

Each raises :class:`~leaf_disease_ros.perception.errors.ImageDecodeError`, a FrameError the
node counts as a failed frame.
"""

from typing import Any

import numpy as np

from leaf_disease_ros.perception.errors import ImageDecodeError


def check_raw_layout(height: int, width: int, step: int, data_len: int,
                     encoding: str) -> None:
    """
    Reject a raw image whose size fields do not fit its data.

    :param height: rows (``Image.height``).
    :param width: columns (``Image.width``).
    :param step: bytes per row (``Image.step``).
    :param data_len: ``len(Image.data)``.
    :param encoding: ``Image.encoding`` (for the message only).

    :raises ImageDecodeError: an empty image, a row shorter than its width, or less
        data than ``step * height``.
    """
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f'image is empty ({width}x{height}, encoding {encoding!r})',
                               encoding)
    if step < width:
        raise ImageDecodeError(f'image step {step} bytes is shorter than its width {width} '
                               f'(encoding {encoding!r}): the publisher fills step wrongly',
                               encoding)
    if data_len < step * height:
        raise ImageDecodeError(f'image data has {data_len} bytes, step {step} x height '
                               f'{height} needs {step * height} (encoding {encoding!r}): '
                               'truncated message', encoding)


def check_compressed(fmt: str, data_len: int) -> None:
    """
    Reject an empty compressed image.

    :param fmt: ``CompressedImage.format`` (for the message only).
    :param data_len: ``len(CompressedImage.data)``.

    :raises ImageDecodeError: no data.
    """
    if data_len <= 0:
        raise ImageDecodeError(f'compressed image (format {fmt!r}) has no data', fmt)


def check_decoded(image: Any, source: str) -> np.ndarray:
    """
    Return the converter's output if it is an ``(H, W, 3)`` uint8 image.

    :param image: what the converter returned (None for an undecodable JPEG/PNG).
    :param source: what was decoded, e.g. ``"compressed image (format 'jpeg')"``.

    :raises ImageDecodeError: anything else (the frame is dropped and counted).
    """
    if not isinstance(image, np.ndarray):
        raise ImageDecodeError(f'{source} could not be decoded (corrupt or truncated data)')
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise ImageDecodeError(f'{source} decoded to shape {image.shape} {image.dtype}, '
                               'expected (H, W, 3) uint8 BGR')
    return image
