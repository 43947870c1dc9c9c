"""
Image input of the node: checks around decoding, and the decoding of compressed frames.

Raw images are converted by ``cv_bridge`` in the node (and by rosbags-image in replay);
these checks keep a malformed message from reaching the converter and a failed
conversion from reaching the pipeline:

- :func:`check_raw_layout`: a ``sensor_msgs/Image`` whose size fields contradict its
  data (empty, a row of ``step`` bytes shorter than ``width`` pixels of its encoding,
  or fewer bytes than ``step * height``) would make the converter read past the
  buffer or, for a short row, silently return a narrower image (cv_bridge's
  ``imgmsg_to_cv2`` views the data as ``step / bytes_per_pixel`` columns and slices
  ``[:, :width]``); it is rejected with the numbers;
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

import re
from typing import Any, Optional

import cv2
import numpy as np

from leaf_disease_ros.perception.errors import ImageDecodeError


# sensor_msgs/image_encodings.hpp (ros2/common_interfaces): numChannels and bitDepth of the
# named encodings; the generic ones are (8|16|32|64)(U|S|F)C<n>
_NAMED_ENCODINGS = {
    'mono8': (1, 8), 'mono16': (1, 16),
    'bgr8': (3, 8), 'rgb8': (3, 8), 'bgr16': (3, 16), 'rgb16': (3, 16),
    'bgra8': (4, 8), 'rgba8': (4, 8), 'bgra16': (4, 16), 'rgba16': (4, 16),
    'bayer_rggb8': (1, 8), 'bayer_bggr8': (1, 8), 'bayer_gbrg8': (1, 8), 'bayer_grbg8': (1, 8),
    'bayer_rggb16': (1, 16), 'bayer_bggr16': (1, 16), 'bayer_gbrg16': (1, 16),
    'bayer_grbg16': (1, 16),
    'yuv422': (2, 8), 'yuv422_yuy2': (2, 8), 'uyvy': (2, 8), 'yuyv': (2, 8),
    'nv12': (1, 8), 'nv21': (1, 8), 'nv24': (2, 8),
}
_GENERIC_ENCODING = re.compile(r'(8|16|32|64)(U|S|F)C([0-9]*)')


def bytes_per_pixel(encoding: str) -> Optional[int]:
    """
    Return the bytes one pixel of a row takes in ``encoding`` (None when unknown).

    As ``sensor_msgs/image_encodings.hpp`` defines it: ``numChannels * bitDepth / 8``
    (``bgr8`` 3, ``mono16`` 2, ``32FC1`` 4, ``yuv422`` 2; the luma row of ``nv12`` 1).
    """
    named = _NAMED_ENCODINGS.get(encoding)
    if named is not None:
        channels, bits = named
    else:
        match = _GENERIC_ENCODING.fullmatch(encoding)
        if match is None:
            return None
        channels, bits = int(match.group(3) or 1), int(match.group(1))
    return channels * bits // 8


def check_raw_layout(height: int, width: int, step: int, data_len: int,
                     encoding: str) -> None:
    """
    Reject a raw image whose size fields do not fit its data.

    :param height: rows (``Image.height``).
    :param width: columns (``Image.width``).
    :param step: bytes per row (``Image.step``).
    :param data_len: ``len(Image.data)``.
    :param encoding: ``Image.encoding`` (its bytes per pixel; 1 when unknown, and the
        converter rejects an unknown encoding itself).

    :raises ImageDecodeError: an empty image, a row of ``step`` bytes shorter than
        ``width * bytes_per_pixel(encoding)``, or less data than ``step * height``.
    """
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f'image is empty ({width}x{height}, encoding {encoding!r})',
                               encoding)
    row_bytes = width * (bytes_per_pixel(encoding) or 1)
    if step < row_bytes:
        raise ImageDecodeError(f'image step {step} bytes is shorter than a row of {width} '
                               f'pixels of {encoding!r} ({row_bytes} bytes): the publisher '
                               'fills step wrongly (it must be bytes per row, not pixels)',
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
