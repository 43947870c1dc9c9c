"""Preprocessing: numbers against a hand-computed pixel, layout, resize rules, errors."""

from dataclasses import replace

import cv2
import numpy as np
import pytest

from leaf_disease_ros.perception.errors import FrameError
from leaf_disease_ros.perception.preprocess import preprocess, resize_to_input


def test_hand_computed_pixel(tiny_card):
    # A 32x32 crop needs no resize: the numbers are pure normalisation.
    crop = np.zeros((32, 32, 3), dtype=np.uint8)
    crop[5, 7] = (10, 200, 30)  # B, G, R
    out = preprocess([crop], tiny_card)
    assert out.shape == (1, 3, 32, 32) and out.dtype == np.float32
    # RGB order: channel 0 is R=30, 1 is G=200, 2 is B=10; ImageNet mean/std.
    expected = [(30 / 255 - 0.485) / 0.229, (200 / 255 - 0.456) / 0.224,
                (10 / 255 - 0.406) / 0.225]
    assert out[0, :, 5, 7] == pytest.approx(expected, abs=1e-5)
    assert out[0, :, 0, 0] == pytest.approx([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],
                                            abs=1e-5)


def test_bgr_card_keeps_order(tiny_card):
    card = replace(tiny_card, color_order='BGR', mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    crop = np.full((32, 32, 3), (10, 20, 30), dtype=np.uint8)
    out = preprocess([crop], card)
    assert out[0, :, 0, 0] == pytest.approx([10 / 255, 20 / 255, 30 / 255], abs=1e-6)


def test_float32_precision_under_numpy_casting(tiny_card):
    # Regression guard: uint8 * float32-scalar must not run in float16 (NumPy 1.x).
    card = replace(tiny_card, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    crop = np.full((32, 32, 3), 251, dtype=np.uint8)
    out = preprocess([crop], card)
    assert abs(float(out[0, 0, 0, 0]) - 251 / 255) < 1e-6


def test_batch_of_mixed_sizes_matches_one_by_one(tiny_card, leaf_images):
    crops = [cv2.imread(leaf_images['esca'][0]),
             cv2.imread(leaf_images['healthy'][0])[10:200, 30:250],
             np.ascontiguousarray(cv2.imread(leaf_images['black_rot'][0])[::2, ::3])]
    batch = preprocess(crops, tiny_card)
    assert batch.shape == (3, 3, 32, 32)
    for i, crop in enumerate(crops):
        np.testing.assert_array_equal(batch[i], preprocess([crop], tiny_card)[0])


def test_stretch_uses_cv2_area_when_shrinking(tiny_card, leaf_images):
    image = cv2.imread(leaf_images['esca'][0])
    expected = cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(resize_to_input(image, tiny_card), expected)


def test_center_crop_rule(tiny_card):
    card = replace(tiny_card, resize='center_crop')
    crop = np.zeros((32, 64, 3), dtype=np.uint8)
    crop[:, 16:48] = 255  # the centre square is white, the sides black
    out = resize_to_input(crop, card)
    assert out.shape == (32, 32, 3)
    assert out.min() == 255


def test_output_buffer_is_reused(tiny_card):
    buffer = np.empty((8, 3, 32, 32), dtype=np.float32)
    crop = np.full((40, 40, 3), 128, dtype=np.uint8)
    out = preprocess([crop, crop], tiny_card, out=buffer)
    assert out.shape == (2, 3, 32, 32)
    assert np.shares_memory(out, buffer)
    with pytest.raises(FrameError, match='output buffer'):
        preprocess([crop], tiny_card, out=np.empty((1, 3, 16, 16), dtype=np.float32))


@pytest.mark.parametrize('crop, message', [
    (np.zeros((10, 10), dtype=np.uint8), 'shape'),
    (np.zeros((10, 10, 4), dtype=np.uint8), 'shape'),
    (np.zeros((10, 10, 3), dtype=np.float32), 'uint8'),
    (np.zeros((0, 10, 3), dtype=np.uint8), 'empty'),
])
def test_bad_crops(tiny_card, crop, message):
    with pytest.raises(FrameError, match=message):
        preprocess([crop], tiny_card)


def test_no_crops(tiny_card):
    with pytest.raises(FrameError, match='no crops'):
        preprocess([], tiny_card)
