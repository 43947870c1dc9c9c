"""Tiling boxes, the vegetation gate, softmax/top-k/unknown rejection."""

import numpy as np
import pytest

from leaf_disease_ros.perception.errors import FrameError
from leaf_disease_ros.perception.postprocess import classify, finding_scores, softmax
from leaf_disease_ros.perception.tiling import (check_frame, crops, tile_boxes,
                                                vegetation_fractions, vegetation_mask)

LABELS = ('black_rot', 'esca', 'healthy', 'leaf_blight')


def test_grid_exact_fit():
    boxes = tile_boxes(512, 768, 'grid', 256, 256)
    assert boxes.tolist() == [[0, 0, 256, 256], [256, 0, 512, 256], [512, 0, 768, 256],
                              [0, 256, 256, 512], [256, 256, 512, 512], [512, 256, 768, 512]]
    assert boxes.dtype == np.int32


def test_grid_covers_far_edge():
    boxes = tile_boxes(300, 700, 'grid', 256, 256)
    xs = sorted({b[0] for b in boxes.tolist()})
    ys = sorted({b[1] for b in boxes.tolist()})
    assert xs == [0, 256, 444] and ys == [0, 44]
    assert boxes[:, 2].max() == 700 and boxes[:, 3].max() == 300


def test_grid_overlapping_stride():
    boxes = tile_boxes(256, 512, 'grid', 256, 128)
    assert boxes[:, 0].tolist() == [0, 128, 256]


def test_tile_larger_than_frame_is_clamped():
    boxes = tile_boxes(200, 300, 'grid', 256, 256)
    assert boxes.tolist() == [[0, 0, 200, 200], [100, 0, 300, 200]]


def test_none_mode_is_centred_square():
    assert tile_boxes(480, 640, 'none', 256, 256).tolist() == [[80, 0, 560, 480]]
    assert tile_boxes(640, 480, 'none', 1, 1).tolist() == [[0, 80, 480, 560]]


def test_bad_mode_and_frames():
    with pytest.raises(FrameError, match='tiling mode'):
        tile_boxes(10, 10, 'hexagons', 4, 4)
    with pytest.raises(FrameError, match='uint8'):
        check_frame(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(FrameError, match='empty'):
        check_frame(np.zeros((0, 4, 3), dtype=np.uint8))
    with pytest.raises(FrameError, match='numpy'):
        check_frame(None)


def test_crops_are_views():
    frame = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    (view,) = crops(frame, np.array([[2, 1, 4, 3]]))
    assert np.shares_memory(view, frame)
    np.testing.assert_array_equal(view, frame[1:3, 2:4])


def test_vegetation_mask_excess_green():
    pixels = np.array([[[40, 160, 60],     # green leaf (BGR): vegetation
                        [128, 128, 128],   # grey soil
                        [200, 120, 90],    # blue sky
                        [0, 0, 0]]], dtype=np.uint8)  # black: no colour at all
    assert vegetation_mask(pixels, 0.05).tolist() == [[1, 0, 0, 0]]


def test_vegetation_fraction_per_tile():
    frame = np.full((512, 768, 3), 128, dtype=np.uint8)  # grey
    frame[:, :256] = (40, 160, 60)  # left column of tiles is green
    frame[256:, 256:384] = (40, 160, 60)  # half of the bottom-middle tile
    boxes = tile_boxes(512, 768, 'grid', 256, 256)
    fractions = vegetation_fractions(frame, boxes, 0.05)
    assert fractions.tolist() == pytest.approx([1.0, 0.0, 0.0, 1.0, 0.5, 0.0], abs=0.02)


def test_vegetation_of_real_leaves(leaf_images):
    import cv2
    for label, paths in leaf_images.items():
        image = cv2.imread(paths[0])
        fraction = vegetation_fractions(image, np.array([[0, 0, 256, 256]]), 0.05)[0]
        # a PlantVillage photo is a leaf on a plain background: well above the gate
        assert fraction > 0.15, label


def test_softmax_temperature():
    logits = np.array([[2.0, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, 0.0]])
    p1 = softmax(logits, 1.0)
    assert p1.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert p1[0, 0] == pytest.approx(np.exp(2) / (np.exp(2) + 3), rel=1e-6)
    assert p1[1, 0] == pytest.approx(1.0)  # no overflow
    p2 = softmax(logits, 2.0)
    assert p2[0, 0] == pytest.approx(np.exp(1) / (np.exp(1) + 3), rel=1e-6)


def test_classify_top_k_unknown_and_disease():
    probs = np.array([[0.70, 0.10, 0.15, 0.05],   # black_rot, confident
                      [0.05, 0.05, 0.85, 0.05],   # healthy
                      [0.30, 0.28, 0.22, 0.20]])  # unsure
    out = classify(probs, LABELS, ('healthy',), top_k=2, unknown_threshold=0.4)
    assert out[0].label == 'black_rot' and out[0].is_disease and not out[0].is_unknown
    assert out[0].top_k == (('black_rot', pytest.approx(0.7)), ('healthy', pytest.approx(0.15)))
    assert out[1].label == 'healthy' and not out[1].is_disease
    assert out[2].label == 'unknown' and out[2].label_index == -1
    assert out[2].is_unknown and not out[2].is_disease
    assert out[2].score == pytest.approx(0.30)
    assert out[2].top_k[0][0] == 'black_rot'


def test_classify_top_k_is_clamped():
    out = classify(np.array([[0.6, 0.4]]), ('a', 'b'), (), top_k=10, unknown_threshold=0.0)
    assert len(out[0].top_k) == 2


def test_finding_scores_top_label_or_disease_mass():
    labels = ['black_rot', 'esca', 'healthy', 'background']
    probs = np.array([[0.55, 0.43, 0.01, 0.01], [0.1, 0.1, 0.2, 0.6]])
    top = finding_scores(probs, labels, ['healthy', 'background'], 'top_label')
    mass = finding_scores(probs, labels, ['healthy', 'background'], 'disease_mass')
    assert np.allclose(top, [0.55, 0.6]) and np.allclose(mass, [0.98, 0.2])
