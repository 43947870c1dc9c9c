"""Checks around decoding: malformed messages and failed conversions are frame errors."""

import array

import cv2
import numpy as np
import pytest

from leaf_disease_ros.perception.errors import FrameError, ImageDecodeError
from leaf_disease_ros.ros.image_input import (bytes_per_pixel, check_compressed,
                                              check_decoded, check_raw_layout,
                                              decode_compressed)


def test_a_consistent_raw_image_passes():
    check_raw_layout(height=4, width=6, step=18, data_len=72, encoding='bgr8')
    check_raw_layout(height=4, width=6, step=24, data_len=96, encoding='rgba8')  # padded rows


@pytest.mark.parametrize('height, width, step, data_len, words', [
    (0, 6, 18, 0, 'empty'),
    (4, 0, 0, 0, 'empty'),
    (4, 6, 5, 72, 'shorter than a row of 6 pixels'),
    (4, 6, 6, 72, 'shorter than a row of 6 pixels'),  # step in pixels, not bytes
    (4, 6, 17, 72, r"'bgr8' \(18 bytes\)"),
    (4, 6, 18, 71, 'truncated'),
])
def test_a_malformed_raw_image_is_an_image_decode_error(height, width, step, data_len, words):
    with pytest.raises(ImageDecodeError, match=words) as info:
        check_raw_layout(height, width, step, data_len, 'bgr8')
    assert isinstance(info.value, FrameError)  # the node counts it as a failed frame
    assert info.value.encoding == 'bgr8'


@pytest.mark.parametrize('encoding, expected', [
    ('bgr8', 3), ('rgba8', 4), ('mono8', 1), ('mono16', 2), ('rgb16', 6), ('bgra16', 8),
    ('bayer_rggb8', 1), ('bayer_grbg16', 2), ('yuv422', 2), ('uyvy', 2), ('nv12', 1),
    ('8UC3', 3), ('16UC1', 2), ('32FC1', 4), ('64FC2', 16), ('8UC', 1), ('jpeg', None),
])
def test_bytes_per_pixel_follows_image_encodings_hpp(encoding, expected):
    assert bytes_per_pixel(encoding) == expected


@pytest.mark.parametrize('encoding, step', [('mono16', 6), ('rgba8', 18), ('32FC1', 12)])
def test_a_step_counted_in_pixels_or_too_short_is_refused(encoding, step):
    with pytest.raises(ImageDecodeError, match='shorter than a row'):
        check_raw_layout(4, 6, step, 4 * 48, encoding)
    check_raw_layout(4, 6, 6 * bytes_per_pixel(encoding), 4 * 48, encoding)


def test_an_empty_compressed_image_is_rejected():
    check_compressed('jpeg', 10)
    with pytest.raises(ImageDecodeError, match="format 'jpeg'"):
        check_compressed('jpeg', 0)


def test_decoded_output_must_be_a_bgr_uint8_image():
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    assert check_decoded(image, 'image') is image
    with pytest.raises(ImageDecodeError, match='could not be decoded'):
        check_decoded(None, "compressed image (format 'jpeg')")
    with pytest.raises(ImageDecodeError, match='expected'):
        check_decoded(np.zeros((4, 6), dtype=np.uint8), 'image')
    with pytest.raises(ImageDecodeError, match='expected'):
        check_decoded(np.zeros((4, 6, 3), dtype=np.uint16), 'image')


def _encoded(ext: str, image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize('kind', ['mono_jpeg', 'bgr_jpeg', 'rgba_png', 'png_16_bit',
                                  'mono_png_16_bit'])
def test_compressed_frames_decode_to_8_bit_bgr_whatever_was_encoded(kind):
    # cv_bridge would return a mono JPEG 2-D (Humble, IMREAD_ANYCOLOR) and an RGBA or
    # 16-bit PNG as is (Jazzy, IMREAD_UNCHANGED), all labelled bgr8
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    data = {
        'mono_jpeg': lambda: _encoded('.jpg', gray),
        'bgr_jpeg': lambda: _encoded('.jpg', bgr),
        'rgba_png': lambda: _encoded('.png', cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)),
        'png_16_bit': lambda: _encoded('.png', bgr.astype(np.uint16) * 257),
        'mono_png_16_bit': lambda: _encoded('.png', gray.astype(np.uint16) * 257),
    }[kind]()
    for payload in (data, array.array('B', data), list(data)):
        image = decode_compressed('png', payload)
        assert image.dtype == np.uint8 and image.shape == (24, 40, 3)
    if kind in ('rgba_png', 'png_16_bit'):
        np.testing.assert_array_equal(image, bgr)  # lossless: the same pixels
    if kind == 'mono_png_16_bit':
        np.testing.assert_array_equal(image[:, :, 0], gray)


def test_undecodable_compressed_frames_are_image_decode_errors():
    with pytest.raises(ImageDecodeError, match="format 'jpeg'\\) could not be decoded"):
        decode_compressed('jpeg', b'\xff\xd8 not really a jpeg')
    with pytest.raises(ImageDecodeError, match='has no data'):
        decode_compressed('jpeg', b'')
