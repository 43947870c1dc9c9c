"""Checks around decoding: malformed messages and failed conversions are frame errors."""

import numpy as np
import pytest

from leaf_disease_ros.perception.errors import FrameError, ImageDecodeError
from leaf_disease_ros.ros.image_input import check_compressed, check_decoded, check_raw_layout


def test_a_consistent_raw_image_passes():
    check_raw_layout(height=4, width=6, step=18, data_len=72, encoding='bgr8')
    check_raw_layout(height=4, width=6, step=24, data_len=96, encoding='rgba8')  # padded rows


@pytest.mark.parametrize('height, width, step, data_len, words', [
    (0, 6, 18, 0, 'empty'),
    (4, 0, 0, 0, 'empty'),
    (4, 6, 5, 72, 'shorter than its width'),
    (4, 6, 18, 71, 'truncated'),
])
def test_a_malformed_raw_image_is_an_image_decode_error(height, width, step, data_len, words):
    with pytest.raises(ImageDecodeError, match=words) as info:
        check_raw_layout(height, width, step, data_len, 'bgr8')
    assert isinstance(info.value, FrameError)  # the node counts it as a failed frame
    assert info.value.encoding == 'bgr8'


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
