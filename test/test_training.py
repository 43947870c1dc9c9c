"""
Training for real on a tiny run: train -> export -> parity -> card -> runtime backend.

Needs the ``train`` extra (PyTorch). It is skipped without it, except where
``LEAF_DISEASE_REQUIRE_TRAIN=1`` (CI sets it) turns the skip into a failure, so CI
cannot pass without running it.
"""

import importlib
import json
import os
import shutil

import cv2
import pytest

from leaf_disease_ros.inference.onnxruntime_backend import OnnxRuntimeBackend
from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.model_card import load_card, sha256_file
from leaf_disease_ros.perception.output_paths import read_manifest
from leaf_disease_ros.perception.pipeline import Detector
from leaf_disease_ros.perception.preprocess import preprocess

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

pytestmark = pytest.mark.skipif(
    not HAVE_TORCH and os.environ.get('LEAF_DISEASE_REQUIRE_TRAIN') != '1',
    reason="PyTorch is not installed (pip install '.[train]')")


def _tool(name):
    """Return the installed command's module (``leaf_disease_ros.cli.<name>``)."""
    return importlib.import_module('leaf_disease_ros.cli.' + name)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, leaves_dir):
    """Train one epoch at 64 px on the 24 test leaves; return (run folder, data folder)."""
    base = tmp_path_factory.mktemp('train')
    data = base / 'data'
    shutil.copytree(leaves_dir, data)
    run = base / 'run'
    train = _tool('train')
    status = train.main([str(data), '--out', str(run), '--input-size', '64', '--epochs', '1',
                         '--batch-size', '4', '--workers', '0', '--no-progress', '--seed', '3',
                         '--val-fraction', '0.3', '--name', 'tiny_leaf'])
    assert status == 0
    return run, data


def test_run_folder_has_everything(tiny_run):
    run, _ = tiny_run
    for name in ('metrics.json', 'confusion_matrix.png', 'curves.png', 'split.json',
                 'train.log', 'checkpoint_best.pt', 'checkpoint_last.pt'):
        assert (run / name).is_file(), name
    metrics = json.loads((run / 'metrics.json').read_text())
    assert len(metrics['history']) == 1
    for key in ('train_loss', 'train_accuracy', 'val_loss', 'val_accuracy', 'val_macro_f1'):
        assert key in metrics['history'][0]
    assert set(metrics['final']['per_class']) == {'black_rot', 'esca', 'healthy',
                                                  'leaf_blight'}
    assert 'weighted sampling' in (run / 'train.log').read_text()
    assert cv2.imread(str(run / 'curves.png')) is not None


def test_split_keeps_leaves_apart(tiny_run):
    run, _ = tiny_run
    split = json.loads((run / 'split.json').read_text())
    train_groups = {group for _, _, group in split['train']}
    val_groups = {group for _, _, group in split['val']}
    assert train_groups and val_groups and not train_groups & val_groups
    assert len(split['train']) + len(split['val']) == 24


def test_export_parity_card_and_runtime(tiny_run, tmp_path, leaf_images):
    run, _ = tiny_run
    export = _tool('export')
    out = tmp_path / 'engines' / 'tiny_leaf.onnx'
    assert export.main([str(run), '--out', str(out)]) == 0
    card = load_card(str(tmp_path / 'engines' / 'tiny_leaf.json'))
    assert card.onnx_sha256 == sha256_file(str(out))
    assert card.input_hw_px == (64, 64)
    assert card.labels == ('black_rot', 'esca', 'healthy', 'leaf_blight')
    assert card.healthy_labels == ('healthy',)
    assert card.metrics['parity_max_abs_logit_diff'] <= 1e-3
    assert 'ece_before' in card.calibration_extra and card.temperature > 0
    assert card.training['arch'] == 'resnet18'
    backend = OnnxRuntimeBackend(str(out), card)
    image = cv2.imread(leaf_images['esca'][0])
    result = Detector(backend, card, DetectorConfig(tiling='none')).process(image, 0)
    assert len(result.detections) == 1 and result.detections[0].label in card.labels + (
        'unknown',)
    backend.close()
    # a second export does not overwrite without --force
    assert export.main([str(run), '--out', str(out)]) == 1


def test_export_refuses_a_broken_run(tmp_path, capsys):
    export = _tool('export')
    assert export.main([str(tmp_path), '--out', str(tmp_path / 'm.onnx')]) == 1
    assert 'checkpoint_best.pt does not exist' in capsys.readouterr().err


def test_training_refuses_bad_healthy_label(tmp_path, leaves_dir):
    train = _tool('train')
    status = train.main([leaves_dir, '--out', str(tmp_path / 'r'), '--epochs', '1',
                         '--healthy-labels', 'vigorous', '--no-progress', '--workers', '0'])
    assert status == 2
    assert 'vigorous' in (tmp_path / 'r' / 'train.log').read_text()


def test_export_writes_the_embedding_output_and_distance(tiny_run, tmp_path, leaves_dir):
    run, _ = tiny_run
    export = _tool('export')
    out = tmp_path / 'engines' / 'emb.onnx'
    assert export.main([str(run), '--out', str(out), '--embedding-components', '4',
                        '--ood-data', os.path.join(leaves_dir, 'healthy')]) == 0
    card = load_card(str(tmp_path / 'engines' / 'emb.json'))
    assert card.embedding_name == 'embedding' and card.embedding_size == 512
    distance = card.embedding_distance
    assert distance is not None and distance.basis.shape == (512, 4)
    assert distance.unknown_threshold is not None and distance.unknown_threshold > 0
    check = distance.record['domain_check']
    assert {'auroc_distance', 'auroc_softmax', 'distance_separates_better'} <= set(check)
    assert distance.use_for_unknown == check['distance_separates_better']
    backend = OnnxRuntimeBackend(str(out), card)
    image = cv2.imread(os.path.join(leaves_dir, 'esca', os.listdir(
        os.path.join(leaves_dir, 'esca'))[0]))
    detector = Detector(backend, card, DetectorConfig(tiling='none'))
    detection = detector.process(image, 0).detections[0]
    # the card's distance with its threshold is the domain check's reference either way
    # (it decides unknown only when use_for_unknown): every tile carries its distance
    assert detection.distance == pytest.approx(float(distance.distances(
        backend.infer_with_embedding(preprocess([image], card))[1])[0]), rel=1e-5)
    assert detection.out_of_domain == (detection.distance > distance.unknown_threshold)
    assert detection.is_unknown or not distance.use_for_unknown or \
        detection.distance <= distance.unknown_threshold
    backend.close()
    # without --ood-data the statistics are written but not used
    plain = tmp_path / 'plain.onnx'
    assert export.main([str(run), '--out', str(plain), '--embedding-components', '4']) == 0
    assert not load_card(str(tmp_path / 'plain.json')).embedding_distance.use_for_unknown
    # --no-embedding: the old single-output model and card
    old = tmp_path / 'old.onnx'
    assert export.main([str(run), '--out', str(old), '--no-embedding']) == 0
    old_card = load_card(str(tmp_path / 'old.json'))
    assert old_card.embedding_name == '' and old_card.embedding_distance is None


def test_gradcam_from_the_training_checkpoint(tiny_run, leaf_images, tmp_path, capsys):
    run, _ = tiny_run
    explain = _tool('explain')
    out = tmp_path / 'cam'
    assert explain.main([leaf_images['esca'][0], leaf_images['healthy'][0], '--method',
                         'gradcam', '--checkpoint', str(run / 'checkpoint_best.pt'),
                         '--out', str(out), '--target', 'esca']) == 0
    printed = capsys.readouterr().out
    assert 'gradcam: 2 tiles of 2 images' in printed and 'PyTorch' in printed
    assert len([p for p in out.iterdir() if not p.name.startswith('.')]) == 2  # + manifest
    from leaf_disease_ros.training.gradcam import gradcam, load_checkpoint_model
    model, card = load_checkpoint_model(str(run / 'checkpoint_best.pt'))
    maps = gradcam(model, card, [cv2.imread(leaf_images['esca'][0])])
    assert maps[0].heat.shape == cv2.imread(leaf_images['esca'][0]).shape[:2]
    assert 0.0 <= maps[0].heat.min() and maps[0].heat.max() <= 1.0
    assert explain.main([leaf_images['esca'][0], '--method', 'gradcam', '--checkpoint',
                         str(tmp_path / 'missing.pt'), '--out', str(out)]) == 2
# --- case 8 of issue 11: a checkpoint must never run code ---------------------------------


def test_checkpoints_load_with_weights_only(tiny_run):
    run, _ = tiny_run
    for name in ('checkpoint_best.pt', 'checkpoint_last.pt'):
        loaded = torch.load(str(run / name), map_location='cpu', weights_only=True)
        assert loaded['format'] == 'leaf_disease_ros.checkpoint/1'
        assert 'fc.weight' in loaded['state']['model']
        assert isinstance(json.loads(loaded['metadata_json']), dict)


class _RunsCode:
    """A pickled object that creates a folder when it is unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture()
def booby_trapped(tmp_path):
    """Return (a checkpoint that runs code when unpickled, the folder it would create)."""
    marker = str(tmp_path / 'code_ran')
    path = tmp_path / 'evil.pt'
    torch.save({'model': {'fc.weight': torch.zeros(4, 2)}, 'arch': 'resnet18',
                'payload': _RunsCode(marker)}, str(path))
    return path, marker


def test_export_refuses_a_checkpoint_that_runs_code(tiny_run, tmp_path, capsys,
                                                    booby_trapped):
    run, _ = tiny_run
    evil, marker = booby_trapped
    export = _tool('export')
    code = export.main([str(run), '--checkpoint', str(evil), '--out',
                        str(tmp_path / 'm.onnx')])
    err = capsys.readouterr().err
    assert code == 1
    assert 'is not a safe checkpoint' in err and 'weights_only' in err
    assert not os.path.exists(marker)  # weights_only=False would have run it
    assert not (tmp_path / 'm.onnx').exists()


def test_train_refuses_unsafe_weights_and_resume(tiny_run, tmp_path, booby_trapped):
    _, data = tiny_run
    evil, marker = booby_trapped
    train = _tool('train')
    run = tmp_path / 'r'
    common = [str(data), '--out', str(run), '--input-size', '64', '--epochs', '1',
              '--batch-size', '4', '--workers', '0', '--no-progress']
    assert train.main(common + ['--weights', str(evil)]) == 2
    assert 'is not a safe checkpoint' in (run / 'train.log').read_text()
    run.mkdir(exist_ok=True)
    shutil.copy(str(evil), str(run / 'checkpoint_last.pt'))
    assert train.main(common + ['--resume']) == 2
    assert 'is not a safe checkpoint' in (run / 'train.log').read_text()
    assert not os.path.exists(marker)


# --- issue 18: outputs never land on the run or the data -----------------------------------


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob('*') if p.is_file()}


def test_a_second_train_into_the_run_is_refused_without_resume(tiny_run, capsys):
    run, data = tiny_run
    before = _files(run)
    status = _tool('train').main([str(data), '--out', str(run), '--input-size', '64',
                                  '--epochs', '1', '--workers', '0', '--no-progress'])
    assert status == 2
    assert 'holds an earlier output of leaf-disease-train: pass --resume' in \
        capsys.readouterr().err
    assert _files(run) == before


def test_the_run_folder_is_marked_by_train(tiny_run):
    run, _ = tiny_run
    manifest = read_manifest(str(run))
    assert manifest is not None and manifest.command == 'leaf-disease-train'
    assert {'checkpoint_best.pt', 'checkpoint_last.pt', 'metrics.json'} <= set(manifest.files)


@pytest.mark.parametrize('where', ['data', 'data/esca/run'])
def test_train_into_the_data_is_refused(tiny_run, capsys, where):
    _, data = tiny_run
    before = _files(data)
    out = data.parent / where
    status = _tool('train').main([str(data), '--out', str(out), '--epochs', '1'])
    assert status == 2
    assert 'is the input' in capsys.readouterr().err or where != 'data'
    assert _files(data) == before
    assert not out.exists() or where == 'data'


def test_export_never_writes_the_card_over_its_model(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    code = _tool('export').main([str(run), '--out', str(tmp_path / 'm.json')])
    assert code == 1
    assert 'which is --out itself, so no model would remain' in capsys.readouterr().err
    assert not (tmp_path / 'm.json').exists()


@pytest.mark.parametrize('target', ['checkpoint_best.pt', 'split.json', 'train.log'])
def test_export_never_writes_over_its_run(tiny_run, capsys, target):
    run, _ = tiny_run
    before = _files(run)
    code = _tool('export').main([str(run), '--out', str(run / target), '--force'])
    assert code == 1
    assert 'is the input' in capsys.readouterr().err
    assert _files(run) == before


def test_export_into_the_data_is_refused(tiny_run, capsys):
    run, data = tiny_run
    before = _files(data)
    code = _tool('export').main([str(run), '--out', str(data / 'model.onnx')])
    assert code == 1
    assert f'is inside the input {data}' in capsys.readouterr().err
    assert _files(data) == before
