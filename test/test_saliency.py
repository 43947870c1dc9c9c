"""Saliency through the backend (occlusion, RISE), overlays, leaf mask, leaf-disease-explain."""

import json
import math
import os

import cv2
import numpy as np
import pytest

from leaf_disease_ros.cli.explain import main
from leaf_disease_ros.explain.leaf_mask import leaf_mask
from leaf_disease_ros.explain.overlay import blend, saliency_picture
from leaf_disease_ros.explain.saliency import explain_tiles, log_odds, mass_inside
from leaf_disease_ros.inference.onnxruntime_backend import OnnxRuntimeBackend
from leaf_disease_ros.perception.errors import LeafDiseaseError


class CornerModel:
    """A fake backend whose class-0 logit is the brightness of the input's top-left quarter."""

    def __init__(self, max_batch: int = 5) -> None:
        self.max_batch = max_batch
        self.calls = 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        assert 1 <= batch.shape[0] <= self.max_batch
        self.calls += 1
        h, w = batch.shape[2:]
        corner = batch[:, :, :h // 4, :w // 4].mean(axis=(1, 2, 3))
        logits = np.zeros((batch.shape[0], 4), np.float32)
        logits[:, 0] = 4.0 * corner
        return logits


def _bright_tile(size=48):
    tile = np.full((size, size, 3), 250, np.uint8)
    return tile


@pytest.mark.parametrize('method', ['occlusion', 'rise'])
def test_saliency_finds_the_region_the_model_uses(method, tiny_card):
    model = CornerModel()
    run = explain_tiles([_bright_tile(), _bright_tile(64)], model, tiny_card, method,
                        targets=[0, 0], grid=7, masks=64)
    per_tile = 50 if method == 'occlusion' else 65
    assert run.inferences == 2 * per_tile
    assert run.batches == model.calls == math.ceil(2 * per_tile / model.max_batch)
    for saliency, side in zip(run.maps, (48, 64)):
        assert saliency.heat.shape == (side, side)
        assert 0.0 <= saliency.heat.min() and saliency.heat.max() == pytest.approx(1.0)
        quarter = side // 4
        top_left = saliency.heat[:quarter, :quarter].mean()
        far = saliency.heat[side // 2:, side // 2:].mean()
        assert top_left > 4 * far + 0.05, (method, top_left, far)
        assert saliency.label == 'black_rot' and saliency.inferences == per_tile


def test_saliency_on_a_real_onnx_model(tiny_model_path, tiny_card, leaf_images):
    backend = OnnxRuntimeBackend(tiny_model_path, tiny_card, max_batch=16)
    tiles = [cv2.imread(paths[0]) for paths in leaf_images.values()]
    run = explain_tiles(tiles, backend, tiny_card, 'occlusion', grid=4)
    assert run.inferences == 4 * 17 and run.batches == math.ceil(68 / 16)
    logits = backend.infer(
        __import__('leaf_disease_ros.perception.preprocess', fromlist=['x']).preprocess(
            tiles, tiny_card))
    assert [m.label_index for m in run.maps] == logits.argmax(axis=1).tolist()
    assert run.ms_per_tile > 0


def test_bad_settings_are_errors(tiny_card):
    with pytest.raises(LeafDiseaseError, match='not one of'):
        explain_tiles([_bright_tile()], CornerModel(), tiny_card, 'lime')
    with pytest.raises(LeafDiseaseError, match='targets'):
        explain_tiles([_bright_tile()], CornerModel(), tiny_card, 'occlusion', targets=[9])
    assert explain_tiles([], CornerModel(), tiny_card).maps == ()


def test_log_odds_does_not_saturate():
    logits = np.array([[40.0, 0.0, 0.0], [20.0, 0.0, 0.0]])
    odds = log_odds(logits, 1.0, np.array([0, 0]))
    assert odds[0] > odds[1] > 19


def test_mass_inside():
    heat = np.zeros((10, 10), np.float32)
    heat[:5] = 1.0
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    assert mass_inside(heat, mask) == pytest.approx(1.0)
    assert mass_inside(heat, ~mask) == pytest.approx(0.0)
    assert mass_inside(np.zeros((3, 3)), mask[:3, :3]) == 0.0


def test_leaf_mask_covers_the_leaf_not_the_background(leaf_images):
    for paths in leaf_images.values():
        image = cv2.imread(paths[0])
        mask = leaf_mask(image)
        assert 0.15 < mask.mean() < 0.9
        # PlantVillage leaves are centred: the centre is leaf, the corners background
        h, w = mask.shape
        assert mask[h // 2 - 5:h // 2 + 5, w // 2 - 5:w // 2 + 5].mean() > 0.9
        assert not mask[:4, :4].any() or not mask[-4:, -4:].any()


def test_overlay_tints_only_where_hot():
    image = np.full((40, 40, 3), 128, np.uint8)
    heat = np.zeros((40, 40), np.float32)
    heat[:10, :10] = 1.0
    mixed = blend(image, heat)
    assert (mixed[30:, 30:] == 128).all() and not (mixed[:10, :10] == 128).all()
    picture = saliency_picture(image, heat, 'esca', 0.9, 'occlusion')
    assert min(picture.shape[:2]) >= 256  # enlarged so the caption is legible


def test_explain_command_writes_pictures_and_timing(leaves_dir, tiny_model_path, tmp_path,
                                                    capsys):
    out = tmp_path / 'sal'
    report = tmp_path / 'sal.json'
    assert main([os.path.join(leaves_dir, 'esca'), leaves_dir + '/healthy', '--model',
                 tiny_model_path, '--out', str(out), '--grid', '3', '--json',
                 str(report)]) == 0
    printed = capsys.readouterr().out
    assert '10 inferences per tile' in printed and 'ms per tile' in printed
    pngs = sorted(p for p in os.listdir(out) if p.endswith('.saliency.png'))
    assert len(pngs) == 12
    assert cv2.imread(str(out / pngs[0])) is not None
    document = json.loads(report.read_text())
    assert document['totals']['tiles'] == 12 and document['totals']['inferences'] == 120


def test_explain_command_tiles_and_targets(leaf_images, tiny_model_path, tmp_path, capsys):
    out = tmp_path / 'tiled'
    assert main([leaf_images['esca'][0], '--model', tiny_model_path, '--out', str(out),
                 '--tile-size', '128', '--grid', '2', '--method', 'rise', '--masks', '4',
                 '--target', 'healthy']) == 0
    printed = capsys.readouterr().out
    assert 'healthy' in printed and '4 tiles of 1 images' in printed
    assert main([leaf_images['esca'][0], '--model', tiny_model_path, '--out', str(out),
                 '--target', 'mildew']) == 2
    assert "'mildew' is not a label" in capsys.readouterr().err


def test_explain_command_errors(tmp_path, tiny_model_path, capsys):
    assert main([str(tmp_path / 'none.jpg'), '--model', tiny_model_path,
                 '--out', str(tmp_path)]) == 1
    with pytest.raises(SystemExit):
        main([str(tmp_path), '--method', 'gradcam'])
    assert 'needs --checkpoint' in capsys.readouterr().err


def test_saliency_in_leaf_tool(leaves_dir, tiny_model_path, tmp_path, capsys):
    import importlib.util
    from conftest import REPO_DIR
    spec = importlib.util.spec_from_file_location(
        'saliency_in_leaf', os.path.join(REPO_DIR, 'tools', 'saliency_in_leaf.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / 'mass.json'
    assert tool.main([leaves_dir, '--per-class', '2', '--model', tiny_model_path, '--grid',
                      '3', '--json', str(out)]) == 0
    printed = capsys.readouterr().out
    assert '| esca | 2 |' in printed and '10 inferences per tile' in printed
    result = json.loads(out.read_text())
    assert result['tiles'] == 8
    for row in result['classes'].values():
        assert 0.0 <= row['mass_in_leaf_mean'] <= 1.0
        assert 0.15 < row['leaf_area_fraction_mean'] < 0.9
