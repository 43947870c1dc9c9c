"""
Fine-tuning from an ONNX model (training/finetune.py): head surgery, data rules, weights.

Needs the ``train`` extra (PyTorch, onnx2torch); skipped without it, except where
``LEAF_DISEASE_REQUIRE_TRAIN=1`` (CI) turns the skip into a failure.
"""

import argparse
import csv
import json
import os
import shutil

import numpy as np
import pytest

from leaf_disease_ros.perception.errors import DatasetError, ModelCardError, ModelLoadError
from leaf_disease_ros.perception.model_card import card_from_dict, load_card
from tiny_model import make_tiny_model, tiny_card_dict

try:
    import onnx2torch  # noqa: F401
    import torch
    HAVE_TRAIN = True
except ImportError:
    HAVE_TRAIN = False

pytestmark = pytest.mark.skipif(
    not HAVE_TRAIN and os.environ.get('LEAF_DISEASE_REQUIRE_TRAIN') != '1',
    reason="PyTorch or onnx2torch is not installed (pip install '.[train]')")


@pytest.fixture()
def finetune():
    """Return the fine-tuning module (imports torch)."""
    from leaf_disease_ros.training import finetune as module
    return module


def test_the_onnx_model_becomes_a_trainable_module_with_the_same_outputs(finetune,
                                                                         tiny_model_path):
    import onnxruntime as ort
    module, card = finetune.load_onnx_model(tiny_model_path)
    assert card.name == 'tiny' and card.labels == ('black_rot', 'esca', 'healthy',
                                                   'leaf_blight')
    batch = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    expected = ort.InferenceSession(tiny_model_path).run(None, {'input': batch})[0]
    with torch.no_grad():
        assert np.abs(module(torch.from_numpy(batch)).numpy() - expected).max() < 1e-5
    assert any(p.requires_grad for p in module.parameters())


def test_a_model_with_an_embedding_output_trains_on_its_logits(
        finetune, tmp_path, tiny_model_path):
    """The shipped models also output their penultimate features: the head is still found."""
    import onnx
    import onnxruntime as ort
    graph = onnx.load(tiny_model_path)
    head = [node for node in graph.graph.node if node.op_type == 'Gemm'][-1]
    features = onnx.helper.make_tensor_value_info(head.input[0], onnx.TensorProto.FLOAT,
                                                  ['N', None])
    graph.graph.output.append(features)  # a second output, like 'embedding'
    path = tmp_path / 'two.onnx'
    onnx.save(graph, str(path))
    doc = tiny_card_dict(str(path))
    with open(tmp_path / 'two.json', 'w', encoding='utf-8') as stream:
        json.dump(doc, stream)
    batch = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {'input': batch})
    assert len(expected) == 2
    module, _ = finetune.load_onnx_model(str(path))
    with torch.no_grad():
        logits = module(torch.from_numpy(batch))
    assert isinstance(logits, torch.Tensor)  # one output: the logits
    assert np.abs(logits.numpy() - expected[0]).max() < 1e-5
    name, layer = finetune.classifier_head(module, 4)
    assert layer.out_features == 4 and name


def test_a_card_naming_an_absent_output_is_refused(finetune, tmp_path, tiny_model_path):
    shutil.copy(tiny_model_path, tmp_path / 'tiny.onnx')
    doc = tiny_card_dict(str(tmp_path / 'tiny.onnx'))
    doc['output']['name'] = 'scores'
    with open(tmp_path / 'tiny.json', 'w', encoding='utf-8') as stream:
        json.dump(doc, stream)
    with pytest.raises(ModelLoadError) as info:
        finetune.load_onnx_model(str(tmp_path / 'tiny.onnx'))
    assert "has no output 'scores'" in str(info.value) and "'logits'" in str(info.value)


def test_the_head_keeps_the_rows_of_labels_in_both(finetune, tiny_model_path):
    module, card = finetune.load_onnx_model(tiny_model_path)
    name, old = finetune.classifier_head(module, 4)
    old_weight = old.weight.detach().clone()
    batch = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = module(batch)
    new_labels = ['esca', 'healthy', 'erinose', 'black_rot']  # leaf_blight dropped
    record = finetune.replace_head(module, name, list(card.labels), new_labels)
    assert record == {'layer': name, 'kept': ['esca', 'healthy', 'black_rot'],
                      'added': ['erinose'], 'dropped': ['leaf_blight'], 'replaced': True}
    _, new = finetune.classifier_head(module, 4)
    assert new is not old
    with torch.no_grad():
        after = module(batch)
        assert torch.allclose(after[:, 0], before[:, 1], atol=1e-6)  # esca
        assert torch.allclose(after[:, 1], before[:, 2], atol=1e-6)  # healthy
        assert torch.allclose(after[:, 3], before[:, 0], atol=1e-6)  # black_rot
        assert torch.allclose(new.weight[2], old_weight.mean(dim=0))  # new: the mean row
    unchanged = finetune.replace_head(module, name, new_labels, new_labels)
    assert not unchanged['replaced']


def test_a_model_without_a_linear_head_is_refused(finetune):
    traced = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(4, 3),
                                                         torch.nn.ReLU()))
    with pytest.raises(ModelLoadError) as info:
        finetune.classifier_head(traced, 3)
    assert 'fully connected layer of 3 outputs' in str(info.value)


def test_the_model_file_must_exist_and_match_its_card(finetune, tmp_path, tiny_model_copy):
    with pytest.raises(ModelLoadError) as info:
        finetune.load_onnx_model(str(tmp_path / 'missing.onnx'))
    assert 'engines/leaf_lite0_field.onnx' in str(info.value)
    with open(tiny_model_copy, 'ab') as stream:
        stream.write(b'\0')
    with pytest.raises(ModelCardError):
        finetune.load_onnx_model(tiny_model_copy)


def _png(path):
    import cv2
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), 90, dtype=np.uint8))


def test_the_unknown_folder_is_ignored_and_counted(finetune, tmp_path):
    for rel in ('esca/00001_t10.000000000_nofix_x0y0.png', 'unknown/00002_t11.0_nofix.png',
                'unknown/00003_t12.0_nofix.png', 'healthy/a.jpg', '.hidden/x.png'):
        _png(tmp_path / 'h' / rel)
    (tmp_path / 'h' / 'index.csv').write_text('rank,file\n')
    by_label, ignored = finetune.field_samples(str(tmp_path / 'h'))
    assert sorted(by_label) == ['esca', 'healthy'] and ignored == 2
    _png(tmp_path / 'only' / 'unknown' / 'a.png')
    with pytest.raises(DatasetError) as info:
        finetune.field_samples(str(tmp_path / 'only'))
    assert '1 tiles in unknown/ are not labelled' in str(info.value)
    with pytest.raises(DatasetError):
        finetune.field_samples(str(tmp_path / 'absent'))


def test_corrections_are_counted_from_the_harvest_index(finetune, tmp_path):
    root = tmp_path / 'h'
    root.mkdir()
    rows = [('esca/1_t1.000000000_nofix_x0y0.png', 'esca'),
            ('esca/2_t1.000000000_nofix_x256y0.png', 'esca'),
            ('healthy/3_t2.000000000_nofix_x0y0.png', 'healthy'),
            ('unknown/4_t3.000000000_nofix_x0y0.png', 'unknown')]
    with open(root / 'index.csv', 'w', newline='') as stream:
        writer = csv.writer(stream)
        writer.writerow(['rank', 'file', 'predicted_label'])
        writer.writerows([[i, f, p] for i, (f, p) in enumerate(rows)])
    _png(root / 'esca' / '1_t1.000000000_nofix_x0y0.png')  # kept
    _png(root / 'healthy' / '2_t1.000000000_nofix_x256y0.png')  # esca -> healthy
    _png(root / 'background' / '4_t3.000000000_nofix_x0y0.png')  # unknown -> background
    # 3 was deleted
    assert finetune.label_corrections(str(root)) == {
        'moved': {'esca -> healthy': 1, 'unknown -> background': 1}, 'moved_total': 2,
        'unchanged': 1, 'removed': 1}
    assert finetune.label_corrections(str(tmp_path)) == {}


def test_split_groups_by_stamp_blocks(finetune):
    assert finetune.stamp_group('/h/esca/00001_t1757665812.250000000_nofix_x0y0.png', 1) == \
        '1:t175766581'
    assert finetune.stamp_group('/h/esca/00002_t1757665819.999999999_lat1_lon2_x0y0.png', 1) \
        == '1:t175766581'
    assert finetune.stamp_group('/h/esca/photo.jpg', 1) == '1:file:/h/esca/photo.jpg'
    from leaf_disease_ros.perception.image_folders import Sample
    samples = ([Sample(f'a{i}', 0, f'0:t{i}') for i in range(10)]
               + [Sample(f'b{i}', 1, '1:t0') for i in range(3)])
    train, val, train_only = finetune.split_field(samples, 0.2, 0)
    assert train_only == [1] and all(s.label_index == 0 for s in val) and len(val) == 2
    assert not {s.group for s in train} & {s.group for s in val}


def test_labels_weights_and_card(finetune, tmp_path):
    make_tiny_model(str(tmp_path))
    card = load_card(os.path.join(str(tmp_path), 'tiny.json'))
    labels = finetune.choose_labels(card, ['esca', 'sky', 'erinose'], ['black_rot'], None)
    assert labels == ('black_rot', 'esca', 'healthy', 'leaf_blight', 'erinose', 'sky')
    with pytest.raises(DatasetError):
        finetune.choose_labels(card, ['esca'], [], 'esca,unknown')
    with pytest.raises(DatasetError):
        finetune.choose_labels(card, ['esca', 'sky'], [], 'esca')
    args = argparse.Namespace(name='mine', healthy_labels='healthy',
                              background_labels='sky')
    doc = tiny_card_dict(str(tmp_path / 'tiny.onnx'))
    doc['calibration']['finding_threshold'] = 0.8
    doc['calibration']['finding_score'] = 'disease_mass'
    run = finetune.run_card(card_from_dict(doc), labels, args)
    assert run.labels == labels and run.healthy_labels == ('healthy',)
    assert run.background_labels == ('sky',) and run.finding_threshold == 0.8
    assert run.finding_score == 'disease_mass'  # the threshold keeps its meaning
    assert run.input_hw_px == (32, 32) and run.mean == card.mean
    weights = finetune.sample_weights(['field'] * 3 + ['base'] * 5, [0, 0, 1, 0, 0, 0, 0, 1],
                                      0.7)
    field, base = weights[:3].sum(), weights[3:].sum()
    assert field / (field + base) == pytest.approx(0.7)
    assert weights[0] + weights[1] == pytest.approx(weights[2])  # classes balanced
    assert finetune.sample_weights(['field'] * 2, [0, 1], 0.5).sum() == pytest.approx(1.0)


def test_options_that_do_not_apply_are_refused(finetune):
    from leaf_disease_ros.perception.errors import LeafDiseaseError
    with pytest.raises(LeafDiseaseError):
        finetune.check_args(argparse.Namespace(resume=True, weights=None))
    with pytest.raises(LeafDiseaseError):
        finetune.check_args(argparse.Namespace(resume=False, weights='w.pt'))
    finetune.check_args(argparse.Namespace(resume=False, weights=None))


def test_the_command_defaults(tmp_path):
    from leaf_disease_ros.cli import train
    args = train.parse_args(['data', '--out', 'run', '--init-from', 'm.onnx'])
    assert (args.epochs, args.lr, args.field_share) == (8, 1e-4, 0.5)
    args = train.parse_args(['data', '--out', 'run'])
    assert (args.epochs, args.lr) == (36, 2e-3)
    json.dumps(vars(args))  # recorded in metrics.json


def test_export_of_a_fine_tune_with_a_label_without_images(tmp_path, tiny_model_path,
                                                           leaves_dir, capsys):
    """A base label none of the tiles has: the export works and says why it has no distance."""
    from leaf_disease_ros.cli import export as export_cli
    from leaf_disease_ros.cli import train as train_cli
    tiles = tmp_path / 'tiles'
    for label in ('black_rot', 'esca', 'healthy'):  # no leaf_blight tile
        shutil.copytree(os.path.join(leaves_dir, label), tiles / label)
    run = tmp_path / 'run'
    assert train_cli.main([str(tiles), '--init-from', tiny_model_path, '--out', str(run),
                           '--epochs', '1', '--batch-size', '4', '--workers', '0',
                           '--no-progress', '--val-fraction', '0.3', '--seed', '1']) == 0
    model = tmp_path / 'engines' / 'mine.onnx'
    assert export_cli.main([str(run), '--out', str(model)]) == 0
    err = capsys.readouterr().err
    assert 'no embedding distance in the card: no training image of leaf_blight' in err
    card = load_card(str(tmp_path / 'engines' / 'mine.json'))
    assert 'leaf_blight' in card.labels and card.embedding_distance is None
