"""
JPEG frames decoded at reduced size (perception/reduced_decode.py).

The rule, the header reader, the pipeline's pixel scale, the replay and the parity
figures.
"""

import dataclasses
import json
import os
import struct
import subprocess
import sys

import cv2
from hypothesis import given, HealthCheck, settings, strategies as st
import numpy as np
import pytest

from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.model_card import card_path_for_model, load_card
from leaf_disease_ros.perception.pipeline import Detector
from leaf_disease_ros.perception.reduced_decode import (decode_jpeg_reduced, jpeg_size_px,
                                                        reduced_scale, try_reduced_decode)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, 'engines', 'leaf_lite0_field.onnx')
FIELD = os.path.join(REPO, '..', 'shared', 'datasets', 'field_grape_small')
PARITY = os.path.join(REPO, 'benchmarks', 'reduced_decode_parity.json')


@pytest.fixture(scope='module')
def shipped_card():
    return load_card(card_path_for_model(SHIPPED))


@pytest.fixture(scope='module')
def leafy_frame(leaf_images):
    """Return a 1280x720 frame of real leaf photos (a 5x3 grid of 256-px leaves)."""
    paths = [p for label in sorted(leaf_images) for p in leaf_images[label]]
    rows = []
    for r in range(3):
        row = [cv2.resize(cv2.imread(paths[(r * 5 + c) % len(paths)]), (256, 256),
                          interpolation=cv2.INTER_AREA) for c in range(5)]
        rows.append(np.concatenate(row, axis=1))
    frame = np.concatenate(rows, axis=0)
    return cv2.resize(frame, (1280, 720), interpolation=cv2.INTER_AREA)


def jpeg(image, quality=90, progressive=False):
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    if progressive:
        params += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    ok, data = cv2.imencode('.jpg', image, params)
    assert ok
    return data.tobytes()


def with_exif_orientation(data: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment with one Orientation tag after the SOI marker."""
    tiff = b'II*\x00' + struct.pack('<I', 8) + struct.pack('<H', 1) \
        + struct.pack('<HHIHH', 0x0112, 3, 1, orientation, 0) + struct.pack('<I', 0)
    body = b'Exif\x00\x00' + tiff
    return data[:2] + b'\xff\xe1' + struct.pack('>H', len(body) + 2) + body + data[2:]


# --- the header reader -------------------------------------------------------------

@pytest.mark.parametrize('progressive', [False, True])
def test_the_header_gives_the_frame_size_of_baseline_and_progressive_jpeg(progressive):
    image = np.full((720, 1280, 3), 90, np.uint8)
    assert jpeg_size_px(jpeg(image, progressive=progressive)) == (720, 1280)
    assert jpeg_size_px(np.frombuffer(jpeg(image), np.uint8)) == (720, 1280)


def test_the_header_is_found_after_an_exif_segment_and_fill_bytes():
    data = with_exif_orientation(jpeg(np.zeros((48, 64, 3), np.uint8)), 1)
    assert jpeg_size_px(data) == (48, 64)
    assert jpeg_size_px(data[:2] + b'\xff\xff' + data[2:]) == (48, 64)


@pytest.mark.parametrize('data', [b'', b'\xff\xd8', b'\x89PNG\r\n\x1a\n' + b'\x00' * 40,
                                  b'\xff\xd8\xff\xd9', b'\xff\xd8\xff\xda\x00\x08' + b'\x00' * 8,
                                  b'\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x01\x00\x03'],
                         ids=['empty', 'soi-only', 'png', 'eoi', 'scan-first', 'zero-height'])
def test_no_readable_header_gives_none(data):
    assert jpeg_size_px(data) is None


def test_a_png_frame_is_never_decoded_reduced(shipped_card):
    ok, png = cv2.imencode('.png', np.zeros((720, 1280, 3), np.uint8))
    assert try_reduced_decode(png.tobytes(), DetectorConfig(), shipped_card) is None


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(prefix=st.binary(max_size=64), cut=st.integers(0, 2000), flips=st.lists(
    st.tuples(st.integers(0, 1999), st.integers(0, 255)), max_size=6))
def test_fuzz_the_header_reader_never_raises_and_never_invents_a_size(prefix, cut, flips):
    good = bytearray(jpeg(np.full((40, 72, 3), 120, np.uint8)))
    for where, value in flips:
        good[where % len(good)] = value
    for data in (bytes(prefix), bytes(good[:cut]), bytes(good), bytes(prefix) + bytes(good)):
        size = jpeg_size_px(data)
        assert size is None or (size[0] > 0 and size[1] > 0 and max(size) < 1 << 16)


# --- the rule ----------------------------------------------------------------------

def test_the_shipped_card_and_default_tiles_decode_a_1280x720_frame_at_half_size(shipped_card):
    assert shipped_card.input_hw_px == (128, 128)
    assert reduced_scale((720, 1280), DetectorConfig(), shipped_card) == 2


@pytest.mark.parametrize('size_hw,changes,expected', [
    ((720, 1281), {}, 1),                                   # odd width: boxes off the grid
    ((720, 1280), {'tile_size_px': 200, 'tile_stride_px': 200}, 1),  # tile < 2x input
    ((720, 1280), {'tile_size_px': 512, 'tile_stride_px': 512}, 4),  # 4x input: quarter size
    ((720, 1280), {'tile_size_px': 256, 'tile_stride_px': 255}, 1),  # stride off the grid
    ((720, 1280), {'tiling': 'none'}, 4),                   # one 720-px centred square
    ((100, 100), {}, 1),                                    # a tile clamped to 100 px
])
def test_the_scale_follows_the_tiles_and_the_grid(shipped_card, size_hw, changes, expected):
    config = dataclasses.replace(DetectorConfig(), **changes)
    assert reduced_scale(size_hw, config, shipped_card) == expected


@pytest.mark.parametrize('rule', [{'interpolation': 'linear'}, {'resize': 'center_crop'}])
def test_a_card_with_another_resize_rule_always_decodes_full_size(shipped_card, rule):
    card = dataclasses.replace(shipped_card, **rule)
    assert reduced_scale((720, 1280), DetectorConfig(), card) == 1


def test_an_exif_rotated_jpeg_falls_back_to_full_size(shipped_card, leafy_frame):
    rotated = with_exif_orientation(jpeg(leafy_frame), 6)  # 90 deg: OpenCV turns it
    assert jpeg_size_px(rotated) == (720, 1280)
    assert cv2.imdecode(np.frombuffer(rotated, np.uint8), cv2.IMREAD_COLOR).shape[:2] \
        == (1280, 720)
    assert try_reduced_decode(rotated, DetectorConfig(), shipped_card) is None
    image, scale = try_reduced_decode(jpeg(leafy_frame), DetectorConfig(), shipped_card)
    assert scale == 2 and image.shape == (360, 640, 3)


def test_a_corrupt_jpeg_body_falls_back_or_decodes_the_same_size(shipped_card, leafy_frame):
    data = bytearray(jpeg(leafy_frame))
    data[len(data) // 2:] = b'\x00' * (len(data) - len(data) // 2)
    found = try_reduced_decode(bytes(data), DetectorConfig(), shipped_card)
    assert found is None or found[0].shape == (360, 640, 3)
    with pytest.raises(ValueError):
        decode_jpeg_reduced(bytes(data), 3)


# --- the pipeline at a pixel scale --------------------------------------------------

def test_prepare_at_half_scale_keeps_full_size_boxes_and_gates_alike(
        tiny_model_path, leafy_frame):
    from leaf_disease_ros.inference.onnxruntime_backend import OnnxRuntimeBackend

    card = load_card(card_path_for_model(tiny_model_path))
    detector = Detector(OnnxRuntimeBackend(tiny_model_path, card), card, DetectorConfig())
    data = jpeg(leafy_frame)
    full = detector.prepare(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    half = detector.prepare(decode_jpeg_reduced(data, 2), pixel_scale=2)
    assert (half.height_px, half.width_px) == (720, 1280)
    assert half.tiles_total == full.tiles_total == 15
    assert np.array_equal(half.kept_boxes, full.kept_boxes)
    assert np.allclose(half.vegetation, full.vegetation, atol=0.05)
    result = detector.process_prepared(half, 7)
    assert result.frame_width_px == 1280 and result.stamp_ns == 7
    assert {d.box_xyxy_px for d in result.detections} == \
        {tuple(int(v) for v in b) for b in full.kept_boxes}
    with pytest.raises(Exception, match='pixel scale 3'):
        detector.prepare(leafy_frame, pixel_scale=3)


# --- the replay --------------------------------------------------------------------

def test_the_demo_replay_finds_the_same_with_and_without_reduced_decode(tmp_path):
    """The demo's 768x256 JPEG frames decode at half size; the findings do not move."""
    from leaf_disease_ros.replay.demo import demo_bag_path
    from leaf_disease_ros.replay.runner import ReplayOptions, run_replay

    states = {}
    for reduced in (True, False):
        out = tmp_path / f'reduced_{reduced}'
        out.mkdir()
        states[reduced] = run_replay(ReplayOptions(
            bag_path=demo_bag_path(), out_dir=str(out), write_bag=False,
            parameters={'reduced_jpeg_decode': reduced}))
    fast, slow = states[True], states[False]
    assert fast.frames_processed == slow.frames_processed > 100
    assert fast.tiles_classified == slow.tiles_classified
    assert abs(fast.findings - slow.findings) <= max(2, slow.findings // 50)
    # the gallery's tiles are cut from the full-size frame, not from the reduced one
    tiles = [t.tile_bgr for t in fast.gallery.tiles()]
    assert tiles and max(t.shape[0] for t in tiles) == 256


# --- the parity figures --------------------------------------------------------------

@pytest.mark.skipif(not os.path.isdir(FIELD), reason='../shared/datasets is not beside the repo')
def test_the_parity_figures_are_reproduced_and_within_the_jpeg_quality_yardstick():
    run = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'reduced_decode_parity.py')],
                         capture_output=True, text=True, check=True, cwd=REPO)
    measured = json.loads(run.stdout)
    with open(PARITY, encoding='utf-8') as handle:
        published = json.load(handle)
    for part in ('reduced_vs_full', 'q85_vs_q90_yardstick'):
        for key, value in published[part].items():
            assert measured[part][key] == pytest.approx(value, abs=1e-4), (part, key)
    assert measured['material'] == published['material']
    reduced = measured['reduced_vs_full']
    yardstick = measured['q85_vs_q90_yardstick']
    assert reduced['finding_flips'] <= yardstick['finding_flips']
    assert reduced['finding_score_change_mean'] <= yardstick['finding_score_change_mean']
    assert reduced['finding_score_change_max'] <= yardstick['finding_score_change_max']
    assert reduced['top_label_agreement'] >= 0.97
