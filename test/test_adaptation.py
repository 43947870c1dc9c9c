"""
A vineyard's own data in four commands, end to end (docs/adaptation.md), on a tiny model.

1. ``leaf-disease-replay BAG --harvest-tiles DIR``: the recording's tiles by predicted label;
2. a person corrects the labels by moving files (here: from the bag's ground truth;
   soil tiles go to a new ``background`` folder, one doubtful tile to ``unknown``);
3. ``leaf-disease-train DIR --init-from tiny.onnx --base-data LEAVES``: fine-tune from
   the ONNX file itself (new head row for ``background``), weights-only checkpoint;
4. ``leaf-disease-export`` the run, then replay the same bag with both models side by
   side (``--compare-model``).

Tier 1: a 32 px model, a 12-frame bag, one epoch; needs the ``train`` extra (PyTorch,
onnx2torch) and is skipped without it unless ``LEAF_DISEASE_REQUIRE_TRAIN=1`` (CI).
"""

import csv
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from bag_builder import Frame, GpsFix, NS, Truth, write_bag
from leaf_disease_ros.cli import export as export_cli
from leaf_disease_ros.cli import replay as replay_cli
from leaf_disease_ros.cli import train as train_cli
from leaf_disease_ros.geo.geodesy import offset_latlon
from leaf_disease_ros.perception.model_card import load_card, sha256_file

try:
    import onnx2torch  # noqa: F401
    import torch
    HAVE_TRAIN = True
except ImportError:
    HAVE_TRAIN = False

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not HAVE_TRAIN and os.environ.get('LEAF_DISEASE_REQUIRE_TRAIN') != '1',
    reason="PyTorch or onnx2torch is not installed (pip install '.[train]')")]

FRAME_STEP_S = 2.0  # a slow pass: frames 2 s apart, so the tiles span several 10 s blocks
SOIL_BGR = (40, 70, 110)


@pytest.fixture(scope='module')
def recording(tmp_path_factory, leaf_images):
    """Write the bag: 12 frames of two leaves (+ a soil tile on every third); return paths."""
    folder = tmp_path_factory.mktemp('adaptation')
    leaves = [(label, cv2.imread(path)) for label in sorted(leaf_images)
              for path in leaf_images[label]]
    frames, truth, expected = [], [], {}
    soil = np.full((256, 256, 3), SOIL_BGR, dtype=np.uint8)
    for i in range(12):
        pair = [leaves[i], leaves[i + 12]]
        stamp = int((1.0 + FRAME_STEP_S * i) * NS)
        images = [cv2.resize(image, (256, 256)) for _, image in pair]
        boxes = []
        for column, (label, _) in enumerate(pair):
            boxes.append(((256.0 * column, 0.0, 256.0 * (column + 1), 256.0), label))
            expected[(stamp, 256 * column)] = label
        if i % 3 == 0:
            images.append(soil)
            expected[(stamp, 512)] = 'background'
        frames.append(Frame(stamp, np.hstack(images)))
        truth.append(Truth(stamp, boxes))
    fixes = [GpsFix(int(0.2 * k * NS), *offset_latlon(46.0, 7.0, 0.05 * k, 0.0))
             for k in range(130)]
    bag = write_bag(str(folder / 'bag'), 'mcap', frames, fixes, truth)
    return folder, bag, expected


def test_the_four_commands(recording, tiny_model_path, leaves_dir, capsys):
    folder, bag, expected = recording
    common = ['--no-progress', '--no-output-bag', '--param', 'min_vegetation_fraction=0.0']

    # 1. harvest
    harvest = folder / 'harvest'
    assert replay_cli.main([bag, '--model', tiny_model_path, '--out', str(folder / 'before'),
                            '--harvest-tiles', str(harvest)] + common) == 0
    assert 'harvested 28 of 28 tiles' in capsys.readouterr().out
    with open(harvest / 'index.csv', encoding='utf-8') as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 28
    with open(folder / 'before' / 'metrics.json', encoding='utf-8') as stream:
        before = json.load(stream)
    assert 'comparison' not in before and before['harvest']['tiles_harvested'] == 28

    # 2. correct the labels by moving files (one doubtful tile goes to unknown/)
    for number, row in enumerate(rows):
        label = expected[(int(row['stamp_ns']), int(row['box_x0']))]
        if number == 5:
            label = 'unknown'
        source = harvest / row['file']
        target = harvest / label / source.name
        target.parent.mkdir(exist_ok=True)
        if source != target:
            shutil.move(str(source), str(target))
    assert len(list((harvest / 'background').iterdir())) in (3, 4)

    # 3. fine-tune from the ONNX file, mixing in the base data; the base card's operating
    #    point (threshold and what it is compared with) must survive into the new card
    base_dir = folder / 'base'
    base_dir.mkdir()
    shutil.copy(tiny_model_path, base_dir / 'tiny.onnx')
    with open(os.path.splitext(tiny_model_path)[0] + '.json', encoding='utf-8') as stream:
        base_doc = json.load(stream)
    base_doc['calibration'].update(finding_threshold=0.7, finding_score='disease_mass')
    with open(base_dir / 'tiny.json', 'w', encoding='utf-8') as stream:
        json.dump(base_doc, stream)
    run = folder / 'run'
    assert train_cli.main([str(harvest), '--init-from', str(base_dir / 'tiny.onnx'),
                           '--base-data',
                           leaves_dir, '--out', str(run), '--epochs', '1', '--batch-size',
                           '4', '--workers', '0', '--no-progress', '--val-fraction', '0.3',
                           '--background-labels', 'background', '--seed', '1']) == 0
    for name in ('train.log', 'metrics.json', 'curves.png', 'confusion_matrix.png',
                 'split.json', 'checkpoint_best.pt',
                 'base_model.onnx', 'base_model.json'):
        assert (run / name).is_file(), name
    state = torch.load(str(run / 'checkpoint_best.pt'), weights_only=True)
    assert state['format'] == 'leaf_disease_ros.checkpoint/1'
    assert all(isinstance(v, torch.Tensor) for v in state['state']['model'].values())
    assert json.loads(state['metadata_json'])['head']['base_labels'] == [
        'black_rot', 'esca', 'healthy', 'leaf_blight']
    log = (run / 'train.log').read_text()
    assert '1 tiles in' in log and 'are ignored: nobody labelled them' in log
    assert 'head Gemm replaced (kept black_rot, esca, healthy, leaf_blight; new background' \
        in log
    with open(run / 'metrics.json', encoding='utf-8') as stream:
        metrics = json.load(stream)
    assert metrics['labels'] == ['black_rot', 'esca', 'healthy', 'leaf_blight', 'background']
    assert metrics['field_tiles_ignored_unknown'] == 1
    assert metrics['label_corrections']['moved_total'] >= 4  # at least the soil tiles
    assert set(metrics['val_sources']) <= {'field', 'base'} and 'base' in metrics['val_sources']

    # 4a. export (parity checked by the tool), card from the ONNX model's card
    model = folder / 'engines' / 'mine.onnx'
    assert export_cli.main([str(run), '--out', str(model)]) == 0
    card = load_card(str(folder / 'engines' / 'mine.json'))
    assert card.onnx_sha256 == sha256_file(str(model))
    assert card.labels == ('black_rot', 'esca', 'healthy', 'leaf_blight', 'background')
    assert card.background_labels == ('background',) and card.healthy_labels == ('healthy',)
    assert card.input_hw_px == (32, 32)
    assert card.training['arch'] == 'onnx2torch' and card.training['init_from']['name'] == 'tiny'
    assert card.metrics['parity_max_abs_logit_diff'] <= 1e-3
    assert card.finding_threshold == 0.7 and card.finding_score == 'disease_mass'

    # 4b. the same bag with both models side by side
    capsys.readouterr()
    after = folder / 'after'
    assert replay_cli.main([bag, '--model', str(model), '--compare-model', tiny_model_path,
                            '--out', str(after)] + common) == 0
    assert 'same label on' in capsys.readouterr().out
    with open(after / 'metrics.json', encoding='utf-8') as stream:
        compared = json.load(stream)['comparison']
    assert compared['tiles_compared'] == 28 and compared['tiles_not_compared'] == 0
    assert compared['agreement']['rows_main'][-2:] == ['background', 'unknown']
    assert compared['models']['compared']['model_id'].startswith('tiny@')
    assert compared['models']['main']['model_id'].startswith('mine@')
    for role in ('main', 'compared'):
        assert compared['per_model'][role]['accuracy']['count'] == 24  # the leaves
        assert compared['per_model'][role]['tiles'] == 28
    text = (after / 'report.md').read_text()
    assert '## Comparison: mine' in text and 'Tile agreement' in text
