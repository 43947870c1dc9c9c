"""One-pass site adaptation: the site file, the head fit, the pipeline with a site, the command."""

import io
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from bag_builder import Frame, GpsFix, NS, write_bag
from leaf_disease_ros.cli import adapt_site as site_cli
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.embedding_distance import EmbeddingDistance, fit_distance
from leaf_disease_ros.perception.errors import ConfigError, DatasetError
from leaf_disease_ros.perception.model_card import load_card
from leaf_disease_ros.perception.pipeline import Detector, NearestReference
from leaf_disease_ros.perception.site_model import (load_site, site_for_parameters, site_from_dict,
                                                    SiteError, SiteModel, stale_site_note)
from leaf_disease_ros.replay.runner import ReplayOptions, run_replay
from leaf_disease_ros.training.site_head import (base_head, fit_head, frame_blocks,
                                                 group_weights, softmax_rows)
from tiny_model import make_tiny_model, TINY_EMBEDDING_SIZE

LEAVES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'leaves')


@pytest.fixture(scope='module')
def embedding_model(tmp_path_factory):
    """Return (onnx path, card) of the tiny model with an embedding output."""
    folder = str(tmp_path_factory.mktemp('tiny_embedding'))
    card = make_tiny_model(folder, embedding_name='embedding')
    return os.path.join(folder, 'tiny.onnx'), card


def _site(card, weights=None, bias=None, **kwargs) -> SiteModel:
    classes = len(card.labels)
    return SiteModel(name='row7', model_sha256=card.onnx_sha256, model_name=card.name,
                     created_utc='2026-06-18T09:00:00Z',
                     weights=(np.zeros((classes, TINY_EMBEDDING_SIZE), np.float32)
                              if weights is None else weights),
                     bias=np.zeros(classes, np.float32) if bias is None else bias, **kwargs)


# --- the site file ----------------------------------------------------------------------

def test_a_site_round_trips_through_its_json(embedding_model):
    _, card = embedding_model
    rng = np.random.default_rng(0)
    site = _site(card, rng.normal(size=(4, 8)).astype(np.float32),
                 rng.normal(size=4).astype(np.float32), finding_threshold=0.9,
                 record={'bag': 'pass1'})
    back = site_from_dict(json.loads(json.dumps(site.to_dict())), card)
    np.testing.assert_array_equal(back.weights, site.weights)
    np.testing.assert_array_equal(back.bias, site.bias)
    assert back.finding_threshold == 0.9
    assert back.site_id == 'row7@2026-06-18'
    x = rng.normal(size=(3, 8)).astype(np.float32)
    np.testing.assert_allclose(back.logits(x), x @ site.weights.T + site.bias, rtol=1e-6)


def test_a_site_of_another_model_is_refused_naming_both(embedding_model):
    _, card = embedding_model
    doc = _site(card).to_dict()
    doc['model_sha256'] = 'ab' * 32
    doc['model_name'] = 'other_model'
    with pytest.raises(SiteError, match=r'made for model other_model@abababababab, not '
                                        rf'tiny@{card.onnx_sha256[:12]}'):
        site_from_dict(doc, card, 'site.json')


@pytest.mark.parametrize('change, message', [
    ({'kind': 'model_card'}, "field 'kind'"),
    ({'schema_version': 7}, 'schema_version 7'),
    ({'model_sha256': 'xyz'}, 'is not a sha256'),
    ({'finding_threshold': 1.5}, r'1.5 is not in \(0, 1\]'),
])
def test_a_malformed_site_names_the_field(embedding_model, change, message):
    _, card = embedding_model
    doc = _site(card).to_dict()
    doc.update(change)
    with pytest.raises(SiteError, match=message):
        site_from_dict(doc, card)


def test_a_head_of_the_wrong_shape_is_refused(embedding_model):
    _, card = embedding_model
    doc = _site(card, np.zeros((4, 5), np.float32)).to_dict()
    with pytest.raises(SiteError, match='shape'):
        site_from_dict(doc, card)


def test_a_model_without_embedding_output_cannot_take_a_site(tiny_card, embedding_model):
    _, card = embedding_model
    doc = _site(card).to_dict()
    doc['model_sha256'] = tiny_card.onnx_sha256
    with pytest.raises(SiteError, match='has no embedding output'):
        site_from_dict(doc, tiny_card)


def test_load_site_takes_the_folder_or_the_file(tmp_path, embedding_model):
    _, card = embedding_model
    (tmp_path / 'site.json').write_text(json.dumps(_site(card).to_dict()))
    assert load_site(str(tmp_path), card).name == 'row7'
    assert load_site(str(tmp_path / 'site.json'), card).name == 'row7'
    assert site_for_parameters({'site_path': ''}, card) is None
    with pytest.raises(SiteError, match='cannot be read.*leaf-disease-site'):
        load_site(str(tmp_path / 'missing.json'), card)
    (tmp_path / 'bad.json').write_text('{not json')
    with pytest.raises(SiteError, match='is not JSON'):
        load_site(str(tmp_path / 'bad.json'), card)


def test_an_old_site_says_to_redo_it(embedding_model):
    _, card = embedding_model
    old = SiteModel(**{**_site(card).__dict__, 'created_utc': '2025-01-01T00:00:00Z'})
    assert 'new reference pass' in stale_site_note(old)
    fresh = SiteModel(**{**_site(card).__dict__, 'created_utc': site_cli.utc_now_iso()})
    assert stale_site_note(fresh) == ''


# --- the head fit (known answers) -------------------------------------------------------

def test_base_head_recovers_a_linear_output_layer_exactly():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 6))
    b = rng.normal(size=3)
    x = rng.normal(size=(20, 6))
    w0, b0 = base_head(x, x @ w.T + b)
    np.testing.assert_allclose(w0, w, atol=1e-9)
    np.testing.assert_allclose(b0, b, atol=1e-9)


def test_base_head_refuses_too_few_rows_and_non_linear_outputs():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 6))
    with pytest.raises(DatasetError, match='5 tiles cannot determine an output layer of 7'):
        base_head(x, x[:, :3])
    x = rng.normal(size=(40, 6))
    with pytest.raises(DatasetError, match='not a linear function'):
        base_head(x, np.tanh(3 * x[:, :3]) * 10)


def test_a_huge_l2_keeps_the_model_head_and_no_l2_learns_the_site():
    rng = np.random.default_rng(3)
    w0 = np.array([[1.0, 0.0], [0.0, 1.0]])
    b0 = np.zeros(2)
    x = rng.normal(loc=(2.0, 0.0), scale=0.3, size=(50, 2))  # the model says class 0
    y = np.ones(50, dtype=np.int64)  # the site says class 1
    weights = np.full(50, 1 / 50)
    w, b = fit_head(w0, b0, x, y, weights, temperature=1.0, l2=1e6, steps=200)
    np.testing.assert_allclose(w, w0, atol=1e-3)
    w, b = fit_head(w0, b0, x, y, weights, temperature=1.0, l2=0.0, steps=400,
                    learning_rate=0.05)
    assert np.all(softmax_rows(x @ w.T + b).argmax(axis=1) == 1)


def test_group_weights_give_each_group_its_share():
    weights = group_weights(['site'] * 3 + ['disease'] * 2 + ['healthy_leaf'])
    np.testing.assert_allclose(weights, [1 / 3] * 3 + [0.5] * 2 + [0.5])


def test_frame_blocks_hold_out_whole_blocks_of_frames():
    frames = np.arange(80)
    held = frame_blocks(frames, 0.25, block_frames=10)
    assert held.tolist() == [(f // 10) % 4 == 3 for f in range(80)]
    assert not frame_blocks(frames, 0.0).any()


# --- the pipeline with a site ------------------------------------------------------------

def test_the_detector_classifies_with_the_site_head(embedding_model, leaf_images):
    path, card = embedding_model
    backend = load_backend(path, 'onnxruntime')
    try:
        # a head that always says esca (index 1), and one that always says healthy
        config = DetectorConfig(tiling='none', min_vegetation_fraction=0.0,
                                unknown_threshold=0.0)
        image = cv2.imread(leaf_images['healthy'][0])
        for index, label in ((1, 'esca'), (2, 'healthy')):
            bias = np.full(4, -20.0, np.float32)
            bias[index] = 20.0
            detector = Detector(backend, card, config, site=_site(card, bias=bias))
            result = detector.process(image, 1)
            assert [d.label for d in result.detections] == [label]
        site = _site(card, bias=bias, finding_threshold=0.5)
        assert Detector(backend, card, config, site=site).finding_threshold() == 0.5
        assert Detector(backend, card, config).finding_threshold() == card.finding_threshold
    finally:
        backend.close()


def test_a_site_on_a_model_without_embeddings_fails_at_start(tiny_model_path, tiny_card,
                                                             embedding_model):
    _, card = embedding_model
    backend = load_backend(tiny_model_path, 'onnxruntime')
    try:
        with pytest.raises(ConfigError, match='site_path'):
            Detector(backend, tiny_card, DetectorConfig(), site=_site(card))
    finally:
        backend.close()


# --- the command ---------------------------------------------------------------------------

def _pass_bag(path: str, leaf_images, frames: int = 12) -> str:
    """Write a pass of mosaics of real leaves (4 tiles of 64 px a frame) with fixes."""
    rng = np.random.default_rng(0)
    pool = [cv2.resize(cv2.imread(p), (64, 64)) for label in ('healthy', 'esca')
            for p in leaf_images[label]]
    out = []
    for k in range(frames):
        tiles = [pool[int(rng.integers(len(pool)))] for _ in range(4)]
        out.append(Frame((k + 1) * NS, np.hstack(tiles), kind='png'))
    fixes = [GpsFix(int(t * NS / 2), 46.3 + t * 1e-6, 4.8) for t in range(2 * frames + 4)]
    return write_bag(path, 'mcap', out, fixes)


@pytest.fixture(scope='module')
def pass_bag(tmp_path_factory, leaf_images):
    return _pass_bag(str(tmp_path_factory.mktemp('pass') / 'bag'), leaf_images)


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    status = site_cli.main(argv, out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_the_command_builds_a_site_then_reads_the_review(tmp_path, pass_bag, embedding_model):
    path, card = embedding_model
    out_dir = str(tmp_path / 'site')
    params = tmp_path / 'params.yaml'
    params.write_text('/**:\n  ros__parameters:\n    tile_size_px: 64\n    tile_stride_px: 64\n'
                      '    min_vegetation_fraction: 0.0\n')
    argv = [pass_bag, '--out', out_dir, '--model', path, '--params-file', str(params),
            '--leaves', LEAVES, '--composites', '200', '--review-percent', '50']
    status, out, err = _run(argv)
    assert status == 0, err
    assert 'wrote' in out and 'site_path:=' in out
    site = load_site(out_dir, card)
    assert site.record['figures']['tiles'] == 48
    review = sorted(os.listdir(os.path.join(out_dir, 'review', 'normal')))
    assert len(review) == 24
    for folder in ('black_rot', 'esca', 'healthy', 'leaf_blight', 'exclude'):
        assert os.listdir(os.path.join(out_dir, 'review', folder)) == []
    assert 'Review (24 tiles)' in (tmp_path / 'site' / 'report.html').read_text()

    # the grower moves one tile to esca and one to exclude, and runs it again
    normal = os.path.join(out_dir, 'review', 'normal')
    shutil.move(os.path.join(normal, review[0]), os.path.join(out_dir, 'review', 'esca'))
    shutil.move(os.path.join(normal, review[1]), os.path.join(out_dir, 'review', 'exclude'))
    (tmp_path / 'site' / 'review' / 'esca' / 'notes.txt').write_text('mine')
    status, out, err = _run(argv)
    assert status == 0, err
    again = load_site(out_dir, card)
    assert again.record['figures']['labelled_tiles'] == {'esca': 1}
    assert again.record['figures']['excluded_tiles'] == 1
    assert 'review/esca/notes.txt is not a review tile' in out
    assert not np.array_equal(again.weights, site.weights)
    assert sorted(os.listdir(os.path.join(out_dir, 'review', 'esca'))) == sorted(
        [review[0], 'notes.txt'])  # the rerun keeps review/ as the grower left it

    # the replay loads it and names it
    state = run_replay(ReplayOptions(bag_path=pass_bag, write_bag=False, gallery_size=0,
                                     parameters={'model_path': path, 'site_path': out_dir,
                                                 'tile_size_px': 64, 'tile_stride_px': 64,
                                                 'min_vegetation_fraction': 0.0}))
    assert state.model['site'] == again.site_id


@pytest.mark.parametrize('where', ['foreign', 'inside_bag', 'file'])
def test_the_command_refuses_an_out_it_would_damage(tmp_path, pass_bag, embedding_model,
                                                    where):
    path, _ = embedding_model
    if where == 'foreign':
        out_dir = tmp_path / 'mine'
        out_dir.mkdir()
        (out_dir / 'thesis.txt').write_text('keep me')
        message = 'was not made by leaf-disease-site'
    elif where == 'inside_bag':
        out_dir = tmp_path / 'bagcopy' / 'site'
        shutil.copytree(pass_bag, tmp_path / 'bagcopy')
        message = 'inside the input'
    else:
        out_dir = tmp_path / 'a_file'
        out_dir.write_text('keep me')
        message = 'exists and is not a folder'
    bag = str(tmp_path / 'bagcopy') if where == 'inside_bag' else pass_bag
    before = sorted(os.listdir(tmp_path))
    status, _, err = _run([bag, '--out', str(out_dir), '--model', path, '--leaves', LEAVES])
    assert status == 2
    assert message in err
    assert sorted(os.listdir(tmp_path)) == before
    if where == 'foreign':
        assert (out_dir / 'thesis.txt').read_text() == 'keep me'


def test_the_command_refuses_a_model_without_embeddings(tmp_path, pass_bag, tiny_model_path):
    status, _, err = _run([pass_bag, '--out', str(tmp_path / 's'), '--model', tiny_model_path,
                           '--leaves', LEAVES])
    assert status == 2
    assert 'has no embedding output' in err
    assert not (tmp_path / 's').exists()


def test_the_shipped_leaf_bank_is_training_side_and_named_in_the_card_material():
    bank = site_cli.default_leaf_bank()
    card = load_card(os.path.join(os.path.dirname(bank), 'leaf_lite0_field.json'))
    folders = sorted(f for f in os.listdir(bank) if os.path.isdir(os.path.join(bank, f)))
    assert folders == sorted(set(card.labels) - {'background'})
    for folder in folders:
        assert len(os.listdir(os.path.join(bank, folder))) >= 40


# --- the domain check on an adapted model ----------------------------------------------

class _Reference:
    """A domain reference with fixed distances (known answers)."""

    def __init__(self, values, threshold):
        self.values = np.asarray(values, dtype=np.float64)
        self.threshold = threshold

    def distances(self, embeddings):
        return self.values[:len(embeddings)]


def test_a_tile_is_in_domain_when_near_the_training_data_or_the_site():
    training = _Reference([1.0, 9.0, 9.0, 2.0], threshold=4.0)   # relative 0.25 2.25 2.25 0.5
    site = _Reference([10.0, 1.0, 30.0, 30.0], threshold=20.0)   # relative 0.5 0.05 1.5 1.5
    nearest = NearestReference((training, site))
    np.testing.assert_allclose(nearest.distances(np.zeros((4, 2))), [0.25, 0.05, 1.5, 0.5])
    assert (nearest.distances(np.zeros((4, 2))) > nearest.threshold).tolist() == [
        False, False, True, False]


def test_an_adapted_detector_judges_the_domain_against_the_site_too(embedding_model):
    path, card = embedding_model
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, TINY_EMBEDDING_SIZE))
    distance = fit_distance(x, np.zeros(40, dtype=np.int64), 1)
    site_distance = EmbeddingDistance(distance.class_means, distance.basis, distance.variances,
                                      distance.residual_variance, 3.0, False)
    backend = load_backend(path, 'onnxruntime')
    try:
        plain = Detector(backend, card, DetectorConfig())
        assert plain.domain_reference is None  # the tiny card has no distance
        adapted = Detector(backend, card, DetectorConfig(),
                           site=_site(card, domain=site_distance))
        reference = adapted.domain_reference
        assert reference is not None and reference.threshold == 3.0
        np.testing.assert_allclose(reference.distances(x), site_distance.distances(x))
    finally:
        backend.close()


def test_base_head_gives_no_weight_to_a_unit_that_never_fires():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(3, 6))
    x = rng.normal(size=(30, 6))
    x[:, 2] = 0.0  # a dead unit: the data cannot tell its weight
    w0, b0 = base_head(x, x @ w.T + 1.0)
    np.testing.assert_allclose(x @ w0.T + b0, x @ w.T + 1.0, atol=1e-9)
    np.testing.assert_allclose(w0[:, 2], 0.0, atol=1e-9)
