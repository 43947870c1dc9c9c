"""
Image messages of a bag -> ``(H, W, 3)`` uint8 BGR frames, through rosbags-image.

``sensor_msgs/Image`` in any 8-bit colour or mono encoding (:data:`EIGHT_BIT_ENCODINGS`)
and ``sensor_msgs/CompressedImage`` (JPEG, PNG, anything OpenCV decodes) are
converted by ``rosbags.image`` (the replay's counterpart of cv_bridge in the node);
mono and 4-channel results are expanded or reduced to BGR with OpenCV. No encoding is
hand-written here. Failures are typed: :class:`UnsupportedEncodingError` for an
encoding the replay does not take (16-bit, float, depth), :class:`ImageDecodeError`
for bytes that do not decode; the replay skips and counts such frames.
"""

import dataclasses
from typing import Any, Tuple

import cv2
import numpy as np

from leaf_disease_ros.perception.errors import ImageDecodeError, UnsupportedEncodingError

IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE_TYPE = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)

# encoding -> bytes per pixel: the 8-bit encodings of sensor_msgs/image_encodings that
# rosbags-image converts to bgr8, plus the generic 8UC1/8UC3/8UC4 (mono, BGR, BGRA).
EIGHT_BIT_ENCODINGS = {
    'mono8': 1, 'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4,
    'bayer_rggb8': 1, 'bayer_bggr8': 1, 'bayer_gbrg8': 1, 'bayer_grbg8': 1,
    'uyvy': 2, 'yuv422': 2, 'yuyv': 2, 'yuv422_yuy2': 2,
    '8UC1': 1, '8UC3': 3, '8UC4': 4,
}


def _to_bgr(image: Any) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise UnsupportedEncodingError(f'decoded image is {array.dtype}, expected 8-bit')
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
        return cv2.cvtColor(array.reshape(array.shape[:2]), cv2.COLOR_GRAY2BGR)
    if array.ndim == 3 and array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    raise ImageDecodeError(f'decoded image has shape {array.shape}, expected (H, W, 3)')


#: 8-bit raw encodings that carry one grey channel (Bayer patterns are colour)
MONO_ENCODINGS = ('mono8', '8UC1')  # 16-bit ones are unsupported_encoding anyway


def grey_source(msg: Any, msgtype: str) -> str:
    """
    Return what kind of grey image a message holds ('' for colour or undecidable).

    Raw: a mono encoding. Compressed: the PNG / JPEG decodes to one channel.
    """
    if msgtype == IMAGE_TYPE:
        encoding = str(getattr(msg, 'encoding', ''))
        return encoding if encoding in MONO_ENCODINGS else ''
    if msgtype == COMPRESSED_IMAGE_TYPE:
        data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
        if data.size == 0:
            return ''
        try:
            image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        except cv2.error:
            return ''
        if image is not None and (image.ndim == 2 or image.shape[2] == 1):
            return f'grey {msg.format or "compressed"}'
    return ''


def _check_raw(msg: Any) -> Tuple[int, int]:
    encoding = str(msg.encoding)
    if encoding not in EIGHT_BIT_ENCODINGS:
        raise UnsupportedEncodingError(
            f'image encoding {encoding!r} is not supported: the replay takes 8-bit colour or '
            f'mono images ({", ".join(sorted(EIGHT_BIT_ENCODINGS))}) and compressed images',
            encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f'image is empty ({width}x{height})', encoding)
    row_bytes = width * EIGHT_BIT_ENCODINGS[encoding]
    if step < row_bytes:
        raise ImageDecodeError(f'{encoding} image of width {width} has step {step}, less than '
                               f'its {row_bytes} bytes per row', encoding)
    if len(msg.data) < step * height:
        raise ImageDecodeError(f'{encoding} image {width}x{height} has {len(msg.data)} bytes, '
                               f'expected {step * height}', encoding)
    return height, width


def decode_image(msg: Any, msgtype: str) -> np.ndarray:
    """
    Return the ``(H, W, 3)`` uint8 BGR frame of an Image or CompressedImage message.

    :param msg: the deserialised message (rosbags class).
    :param msgtype: ``sensor_msgs/msg/Image`` or ``sensor_msgs/msg/CompressedImage``.

    :raises UnsupportedEncodingError: a raw encoding other than 8-bit colour or mono.
    :raises ImageDecodeError: the bytes do not decode (corrupt JPEG, short buffer).
    """
    from rosbags.image import compressed_image_to_cvimage, ImageError, message_to_cvimage

    if msgtype == COMPRESSED_IMAGE_TYPE:
        if len(msg.data) == 0:
            raise ImageDecodeError(f'compressed image ({msg.format or "no format"}) has no '
                                   'data (0 bytes): the publisher sent an empty payload, '
                                   'nothing to decode', str(msg.format))
        try:
            image = compressed_image_to_cvimage(msg)
        except (AssertionError, cv2.error, ImageError) as exc:
            # OpenCV's own text is an assertion of its source ("(-215:Assertion failed)
            # !buf.empty() in function 'imdecode_'"): not for an operator
            detail = '' if isinstance(exc, cv2.error) else str(exc)
            raise ImageDecodeError(
                f'compressed image ({msg.format or "no format"}, {len(msg.data)} bytes) does '
                f'not decode: corrupt or not an image{": " + detail if detail else ""}'
            ) from exc
        if image is None:
            raise ImageDecodeError(f'compressed image ({msg.format or "no format"}, '
                                   f'{len(msg.data)} bytes) does not decode')
        return _to_bgr(image)
    if msgtype != IMAGE_TYPE:
        raise UnsupportedEncodingError(f'{msgtype} is not an image message type')
    height, width = _check_raw(msg)
    encoding = str(msg.encoding)
    row_bytes = width * EIGHT_BIT_ENCODINGS[encoding]
    if int(msg.step) != row_bytes or len(msg.data) != row_bytes * height:
        # padded rows (step > width x bytes per pixel) or trailing bytes: keep the pixels
        rows = np.asarray(msg.data, dtype=np.uint8)[:int(msg.step) * height]
        pixels = rows.reshape(height, int(msg.step))[:, :row_bytes]
        msg = dataclasses.replace(msg, step=row_bytes,
                                  data=np.ascontiguousarray(pixels).reshape(-1))
    try:
        if encoding.startswith('8UC'):
            image = message_to_cvimage(msg)  # generic: channels taken as mono/BGR/BGRA
        else:
            image = message_to_cvimage(msg, 'bgr8')
    except (ImageError, cv2.error, TypeError, ValueError) as exc:
        raise ImageDecodeError(f'{encoding} image does not convert to bgr8: {exc}',
                               encoding) from exc
    return _to_bgr(image)
