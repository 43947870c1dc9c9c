"""The debug image: tiles drawn with label and score, coloured by category."""

import cv2
import numpy as np
import pytest

from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.errors import FrameError
from leaf_disease_ros.perception.pipeline import Detection, Detector
from leaf_disease_ros.ros.debug_image import (category, COLORS_BGR, DISEASE, draw_detections,
                                              FINDING, HEALTHY, UNKNOWN)


def detection(box, label='esca', score=0.9, unknown=False, disease=True, finding=True):
    """Return a Detection with the given flags."""
    return Detection(box_xyxy_px=box, label=label, label_index=1, score=score,
                     top_k=((label, score),), is_unknown=unknown, is_disease=disease,
                     is_finding=finding, vegetation_fraction=1.0)


FINDING_DET = detection((0, 0, 128, 128))
DISEASE_DET = detection((128, 0, 256, 128), score=0.4, finding=False)
HEALTHY_DET = detection((0, 128, 128, 256), label='healthy', disease=False, finding=False)
UNKNOWN_DET = detection((128, 128, 256, 256), label='unknown', score=0.2, unknown=True,
                        disease=False, finding=False)


def test_categories():
    assert category(FINDING_DET) == FINDING
    assert category(DISEASE_DET) == DISEASE
    assert category(HEALTHY_DET) == HEALTHY
    assert category(UNKNOWN_DET) == UNKNOWN
    assert len(set(COLORS_BGR.values())) == 4


def test_each_tile_is_outlined_in_its_category_colour_and_the_input_is_untouched():
    frame = np.full((256, 256, 3), 90, dtype=np.uint8)
    before = frame.copy()
    out = draw_detections(frame, [FINDING_DET, DISEASE_DET, HEALTHY_DET, UNKNOWN_DET])
    assert np.array_equal(frame, before)
    assert out.shape == frame.shape and out.dtype == np.uint8
    for det in (FINDING_DET, DISEASE_DET, HEALTHY_DET, UNKNOWN_DET):
        x0, y0, x1, y1 = det.box_xyxy_px
        mid_y = (y0 + y1) // 2
        # the right edge at mid height: the outline, away from the label box
        assert tuple(int(v) for v in out[mid_y, x1 - 1]) == COLORS_BGR[category(det)]
        # the tile's centre keeps the frame
        assert tuple(int(v) for v in out[mid_y, (x0 + x1) // 2]) == (90, 90, 90)


def test_the_label_box_carries_text():
    frame = np.full((256, 256, 3), 90, dtype=np.uint8)
    out = draw_detections(frame, [FINDING_DET])
    label_area = out[2:14, 2:60]
    assert (label_area == (255, 255, 255)).all(axis=2).any()  # white text pixels
    assert (label_area == COLORS_BGR[FINDING]).all(axis=2).any()  # on the label colour


def test_status_text_gets_a_dark_strip_at_the_bottom():
    frame = np.full((200, 300, 3), 200, dtype=np.uint8)
    plain = draw_detections(frame, [])
    assert np.array_equal(plain, frame)
    out = draw_detections(frame, [], status_text='2 finding(s); GPS: interpolated')
    assert tuple(int(v) for v in out[199, 299]) == (32, 32, 32)
    assert tuple(int(v) for v in out[0, 0]) == (200, 200, 200)


def test_a_bad_frame_is_a_frame_error():
    with pytest.raises(FrameError):
        draw_detections(np.zeros((10, 10), dtype=np.uint8), [])


def test_draws_a_real_pipeline_result(tiny_model_path, leaf_images):
    frame = np.hstack([cv2.imread(leaf_images['esca'][0]), cv2.imread(leaf_images['healthy'][0])])
    backend = load_backend(tiny_model_path, 'onnxruntime')
    try:
        result = Detector(backend, backend.card, DetectorConfig(
            disease_score_threshold=0.0, min_vegetation_fraction=0.0)).process(frame, 0)
    finally:
        backend.close()
    assert len(result.detections) == 2
    out = draw_detections(frame, result.detections, 'status')
    assert out.shape == frame.shape
    assert not np.array_equal(out, frame)
