"""
The leaf-area gate on robot-view tiles (issue 17 item 5), with real leaves and the shipped model.

Material: the PlantVillage photos of ``test/data/leaves`` (leaves cut out with the field
simulation's segmentation) composited onto backgrounds synthesised here: a hazy blue
sky (which passes the excess-green test), brown soil, a wooden post against the sky and
trellis wires against the sky. A leaf *edge* entering such a tile (the leaf covers at
most a fifth of it) must never be classified, so never a disease; a diseased leaf
filling a tile must still be classified and found by the shipped model.
"""

import os

import cv2
import numpy as np
import pytest

from conftest import REPO_DIR
from leaf_disease_ros.perception.config import DetectorConfig, PARAMETERS_BY_NAME
from leaf_disease_ros.perception.pipeline import Detector
from leaf_disease_ros.perception.tiling import fill_leaf_area, gate_fractions
from leaf_disease_ros.training.field_sim import leaf_from_image, paste_leaf

SHIPPED_MODEL = os.path.join(REPO_DIR, 'engines', 'leaf_lite0_field.onnx')
TILE = 256
DISEASES = ('black_rot', 'esca', 'leaf_blight')


def _sky(rng: np.random.Generator) -> np.ndarray:
    """Hazy light-blue sky (BGR ~ (235, 206, 140)): excess green > 0.05, blue above green."""
    top = np.array([235, 200, 120], np.float32)
    bottom = np.array([240, 215, 150], np.float32)
    t = np.linspace(0, 1, TILE, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(top * (1 - t) + bottom * t, (TILE, TILE, 3)).copy()
    return img + rng.normal(0, 3, img.shape).astype(np.float32)


def _soil(rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((TILE, TILE, 3), np.float32) + np.array([70, 95, 125], np.float32)
    img += cv2.resize(rng.normal(0, 18, (16, 16)).astype(np.float32), (TILE, TILE))[..., None]
    for _ in range(40):
        centre = (int(rng.integers(TILE)), int(rng.integers(TILE)))
        cv2.circle(img, centre, int(rng.integers(2, 7)), (50, 70, 95), -1)
    return img


def _post(rng: np.random.Generator) -> np.ndarray:
    img = _sky(rng)
    x0 = int(rng.integers(40, 140))
    img[:, x0:x0 + 90] = np.array([60, 90, 120], np.float32) + rng.normal(0, 8, (TILE, 90, 3))
    return img


def _wires(rng: np.random.Generator) -> np.ndarray:
    img = _sky(rng)
    for y in (60, 130, 200):
        cv2.line(img, (0, y), (TILE, y + int(rng.integers(-20, 20))), (70, 70, 72), 3,
                 cv2.LINE_AA)
    return img


BACKGROUNDS = {'sky': _sky, 'soil': _soil, 'post': _post, 'wires': _wires}


@pytest.fixture(scope='module')
def diseased_leaves(leaf_images):
    """Return segmented diseased PlantVillage leaves of test/data/leaves (label, Leaf)."""
    out = []
    for label in DISEASES:
        for path in leaf_images[label]:
            leaf = leaf_from_image(cv2.imread(path), 0, os.path.basename(path))
            if leaf is not None:
                out.append((label, leaf))
    assert len(out) >= 12
    return out


@pytest.fixture(scope='module')
def shipped_backend():
    from leaf_disease_ros.inference.factory import load_backend
    backend = load_backend(SHIPPED_MODEL, 'onnxruntime', onnx_provider='cpu',
                           intra_op_threads=1, max_batch=16)
    yield backend
    backend.close()


def _edge_tiles(leaves, seed: int = 3):
    """Yield (background, tile uint8, leaf share) with a leaf edge entering from a side."""
    rng = np.random.default_rng(seed)
    for name, make in BACKGROUNDS.items():
        made = 0
        while made < 12:
            _, leaf = leaves[int(rng.integers(len(leaves)))]
            side = int(rng.integers(4))
            inside = rng.uniform(0.08, 0.22) * TILE  # how far the leaf reaches in
            along = rng.uniform(0.2, 0.8) * TILE
            scale = rng.uniform(0.8, 1.1)
            half = scale * TILE / 2
            centre = [(inside - half, along), (TILE - inside + half, along),
                      (along, inside - half), (along, TILE - inside + half)][side]
            image, alpha = paste_leaf(make(rng), leaf, rng, scale, centre)
            share = float(alpha.mean())
            if not 0.03 <= share <= 0.2:
                continue
            made += 1
            yield name, np.clip(image, 0, 255).astype(np.uint8), share


def test_sky_beside_a_leaf_edge_is_not_leaf_area_but_an_enclosed_lesion_is():
    vegetation = np.zeros((64, 64), np.uint8)
    vegetation[:, :20] = 1                      # a leaf along the left side, sky beside it
    vegetation[30:60, 40:64] = 1                # a second leaf ...
    vegetation[38:50, 48:58] = 0                # ... with a necrotic spot inside it
    leaf = fill_leaf_area(vegetation, close_px=3, max_hole_px=400)
    assert leaf[:, 20:38].sum() == 0            # the sky beside the edge stays background
    assert leaf[38:50, 48:58].all()             # the lesion counts as leaf
    assert leaf[:30, 40:].sum() == 0


def test_a_sky_hole_bigger_than_a_lesion_is_not_filled():
    vegetation = np.ones((128, 128), np.uint8)
    vegetation[20:100, 20:100] = 0              # a gap in the canopy: 6400 px of sky
    leaf = fill_leaf_area(vegetation, close_px=3, max_hole_px=1024)
    assert leaf[30:90, 30:90].sum() == 0


def test_hazy_sky_is_vegetation_by_excess_green_but_not_leaf_area():
    rng = np.random.default_rng(0)
    sky = np.clip(_sky(rng), 0, 255).astype(np.uint8)
    vegetation, leaf = gate_fractions(sky, np.array([[0, 0, TILE, TILE]]), 0.05)
    assert vegetation[0] > 0.8   # why excess green alone lets sky tiles through
    assert leaf is not None and leaf[0] < 0.01


def test_leaf_edges_on_sky_soil_posts_and_wires_are_never_classified(
        diseased_leaves, shipped_backend):
    gated = Detector(shipped_backend, shipped_backend.card, DetectorConfig())
    ungated = Detector(shipped_backend, shipped_backend.card,
                       DetectorConfig(min_leaf_area_fraction=0.0))
    classified_without_gate = 0
    tiles = 0
    for name, tile, share in _edge_tiles(diseased_leaves):
        tiles += 1
        result = gated.process(tile, 1)
        assert result.detections == () and result.tiles_gated == 1, (name, share)
        classified_without_gate += len(ungated.process(tile, 1).detections)
    assert tiles == 12 * len(BACKGROUNDS)
    # the vegetation gate alone lets most of them through to the classifier (a hazy sky
    # is excess green), where the model's label is all that stands between them and a
    # finding
    assert classified_without_gate >= tiles * 3 // 4, classified_without_gate


def test_a_diseased_leaf_filling_a_tile_is_still_classified_and_found(
        diseased_leaves, shipped_backend):
    detector = Detector(shipped_backend, shipped_backend.card, DetectorConfig())
    rng = np.random.default_rng(7)
    found = 0
    for index, (_, leaf) in enumerate(diseased_leaves):
        make = list(BACKGROUNDS.values())[index % len(BACKGROUNDS)]
        image, _ = paste_leaf(make(rng), leaf, rng, 1.2, (TILE / 2, TILE / 2))
        result = detector.process(np.clip(image, 0, 255).astype(np.uint8), 1)
        assert len(result.detections) == 1, index
        detection = result.detections[0]
        assert detection.leaf_area_fraction is not None
        assert detection.leaf_area_fraction >= DetectorConfig().min_leaf_area_fraction
        found += detection.is_finding
    assert found >= len(diseased_leaves) - 1, found


def test_the_default_floor_is_in_the_parameter_table():
    spec = PARAMETERS_BY_NAME['min_leaf_area_fraction']
    assert spec.default == DetectorConfig().min_leaf_area_fraction == 0.30
    assert spec.group == 'tiling' and not spec.read_only
