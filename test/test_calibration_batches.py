"""INT8 calibration batching: image folder -> batches through the card's own preprocessing."""

import os
import shutil

import cv2
import numpy as np
import pytest

from leaf_disease_ros.inference.engine.calibration_batches import (CalibrationBatches,
                                                                   list_calibration_images,
                                                                   read_bgr)
from leaf_disease_ros.perception.errors import DatasetError
from leaf_disease_ros.perception.model_card import ModelCard
from leaf_disease_ros.perception.preprocess import preprocess


def test_lists_every_image_recursively_and_sorted(leaves_dir: str, leaf_images) -> None:
    found = list_calibration_images(leaves_dir)
    expected = sorted(p for paths in leaf_images.values() for p in paths)
    assert found == expected and len(found) == 24


def test_subset_is_spread_over_the_classes(leaves_dir: str) -> None:
    found = list_calibration_images(leaves_dir, max_images=8)
    assert len(found) == 8
    classes = [os.path.basename(os.path.dirname(p)) for p in found]
    assert sorted(set(classes)) == ['black_rot', 'esca', 'healthy', 'leaf_blight']
    assert all(classes.count(c) == 2 for c in set(classes))


def test_missing_or_empty_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(DatasetError, match='does not exist'):
        list_calibration_images(str(tmp_path / 'nope'))
    (tmp_path / 'notes.txt').write_text('not an image')
    with pytest.raises(DatasetError, match='no image files'):
        list_calibration_images(str(tmp_path))


def test_batches_equal_the_card_preprocessing(leaf_images, tiny_card: ModelCard) -> None:
    paths = sorted(p for values in leaf_images.values() for p in values)
    batches = CalibrationBatches(paths, tiny_card, batch_size=5)
    got = list(batches)
    assert len(got) == 4 and batches.count_batches() == 4
    assert batches.used == 20 and batches.dropped == 4 and batches.skipped == []
    for index, batch in enumerate(got):
        assert batch.shape == batches.batch_shape == (5, 3, 32, 32)
        assert batch.dtype == np.float32 and batch.flags['C_CONTIGUOUS']
        images = [cv2.imread(p, cv2.IMREAD_COLOR) for p in paths[index * 5:(index + 1) * 5]]
        assert np.array_equal(batch, preprocess(images, tiny_card))


def test_unreadable_files_are_skipped_and_recorded(tmp_path, leaf_images,
                                                   tiny_card: ModelCard) -> None:
    good = leaf_images['esca'][:4]
    for path in good:
        shutil.copy(path, tmp_path / os.path.basename(path))
    broken = tmp_path / '000_broken.jpg'
    broken.write_bytes(b'this is not a jpeg')
    paths = list_calibration_images(str(tmp_path))
    assert paths[0] == str(broken)
    batches = CalibrationBatches(paths, tiny_card, batch_size=2)
    got = list(batches)
    assert batches.skipped == [str(broken)]
    assert len(got) == 2 and batches.used == 4 and batches.dropped == 0
    readable = [cv2.imread(p) for p in paths[1:]]
    assert np.array_equal(np.concatenate(got), preprocess(readable, tiny_card))


def test_a_custom_reader_is_used(tiny_card: ModelCard) -> None:
    images = {'a': np.full((40, 50, 3), 10, np.uint8), 'b': None,
              'c': np.full((20, 20, 3), 200, np.uint8)}
    batches = CalibrationBatches(['a', 'b', 'c'], tiny_card, 2, reader=images.get)
    (batch,) = list(batches)
    assert batches.skipped == ['b']
    assert np.array_equal(batch, preprocess([images['a'], images['c']], tiny_card))


@pytest.mark.parametrize('size', [0, -2, 1.5, True])
def test_bad_batch_size(size, tiny_card: ModelCard) -> None:
    with pytest.raises(DatasetError, match='batch size'):
        CalibrationBatches(['x.jpg'], tiny_card, size)
    with pytest.raises(DatasetError, match='no calibration images'):
        CalibrationBatches([], tiny_card, 2)


def test_read_bgr_rejects_non_images(tmp_path, leaf_images) -> None:
    path = tmp_path / 'x.png'
    path.write_bytes(b'\x89PNG broken')
    assert read_bgr(str(path)) is None
    image = read_bgr(leaf_images['healthy'][0])
    assert image is not None and image.dtype == np.uint8 and image.shape[2] == 3
