"""
Image input of the node: checks around decoding, and the decoding of compressed frames.

Raw images are converted by ``cv_bridge`` in the node (and by rosbags-image in replay);
these checks keep a malformed message from reaching the converter and a failed
conversion from reaching the pipeline:

- :func:`check_raw_layout`: a ``sensor_msgs/Image`` whose size fields contradict its
  data (empty, or fewer bytes than ``step * height``) would make the converter read
  past the buffer; it is rejected with the numbers;
- :func:`check_compressed` : an empty ``sensor_msgs/CompressedImage``;
- :func:`check_decoded`: the converter's result must be an ``(H, W, 3)`` uint8 array
  (a corrupt JPEG decodes to nothing).

Compressed frames are decoded here (:func:`decode_compressed`), not by cv_bridge:
``CvBridge.compressed_imgmsg_to_cv2`` decodes with ``IMREAD_ANYCOLOR`` (Humble) or
``IMREAD_UNCHANGED`` (Jazzy) and then labels the result ``bgr8`` whatever it holds, so
a mono JPEG comes back 2-D and an RGBA or 16-bit PNG with 4 channels or 16 bits.
``cv2.imdecode(..., IMREAD_COLOR)`` always gives 8-bit BGR, whatever was encoded.

Each raises :class:`~leaf_disease_ros.perception.errors.ImageDecodeError`, a FrameError the
node counts as a failed frame.
"""

from typing import Any

import cv2
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


def _as_uint8(data: Any) -> np.ndarray:
    """Return the bytes of a message's ``data`` field (bytes, array.array or list) as uint8."""
    try:
        return np.frombuffer(memoryview(data), dtype=np.uint8)
    except TypeError:  # a list of ints (no buffer protocol)
        return np.asarray(data, dtype=np.uint8)


def decode_compressed(fmt: str, data: Any) -> np.ndarray:
    """
    Decode a ``sensor_msgs/CompressedImage`` payload to ``(H, W, 3)`` uint8 BGR.

    Mono, colour, RGBA and 16-bit images all come back as 8-bit BGR
    (``cv2.IMREAD_COLOR``), which is what the pipeline takes.

    :param fmt: ``CompressedImage.format`` (for messages only; the bytes say what they are).
    :param data: ``CompressedImage.data``.

    :raises ImageDecodeError: no data, or bytes that do not decode (corrupt, truncated,
        not an image).
    """
    buffer = _as_uint8(data)
    check_compressed(fmt, int(buffer.size))
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        # OpenCV's text is an assertion of its source, not for an operator
        raise ImageDecodeError(f'compressed image (format {fmt!r}, {buffer.size} bytes) could '
                               'not be decoded (corrupt or not an image)', fmt) from exc
    return check_decoded(image, f'compressed image (format {fmt!r})')
