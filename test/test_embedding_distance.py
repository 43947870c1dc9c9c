"""Embedding output and distance to the training data: card fields, backends, pipeline."""

import copy
import json
import os

import cv2
import numpy as np
import pytest

from leaf_disease_ros.inference.onnxruntime_backend import OnnxRuntimeBackend
from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.embedding_distance import fit_distance
from leaf_disease_ros.perception.errors import InferenceError, ModelCardError
from leaf_disease_ros.perception.model_card import (card_from_dict, card_path_for_model,
                                                    card_to_dict, load_card, write_card)
from leaf_disease_ros.perception.pipeline import Detector
from leaf_disease_ros.perception.preprocess import preprocess
from tiny_model import tiny_card_dict


def _clustered(rng, count=400, size=8, classes=4):
    """Return embeddings in ``classes`` Gaussian clusters and their labels."""
    centres = rng.normal(0, 5, size=(classes, size))
    labels = rng.integers(0, classes, size=count)
    return centres[labels] + rng.normal(0, 1, size=(count, size)), labels


def test_distance_is_about_one_on_training_data_and_large_far_away():
    rng = np.random.default_rng(0)
    x, y = _clustered(rng)
    distance = fit_distance(x, y, 4, components=3)
    near = distance.distances(x)
    assert 0.6 < float(np.median(near)) < 1.2
    far = distance.distances(x + 40.0)
    assert float(far.min()) > float(near.max())
    # PPCA with every direction kept is the full Mahalanobis distance
    full = fit_distance(x, y, 4, components=7)
    assert full.basis.shape == (8, 7)


def test_fit_needs_every_class():
    with pytest.raises(ValueError, match='class counts'):
        fit_distance(np.zeros((4, 3)), np.array([0, 0, 1, 1]), 3)


def test_card_roundtrip_with_embedding_distance(tiny_embedding_model_path, tmp_path):
    card = load_card(card_path_for_model(tiny_embedding_model_path))
    assert card.embedding_name == 'embedding' and card.embedding_size == 8
    rng = np.random.default_rng(1)
    x, y = _clustered(rng)
    distance = fit_distance(x, y, 4, components=3, record={'fitted_on': 'test'})
    doc = card_to_dict(card)
    doc['embedding_distance'] = distance.to_dict()
    doc['embedding_distance'].update(unknown_threshold=2.5, use_for_unknown=True)
    again = card_from_dict(json.loads(json.dumps(doc)), 'x.json')
    assert again.embedding_distance is not None
    assert again.embedding_distance.use_for_unknown
    assert again.embedding_distance.record == {'fitted_on': 'test'}
    np.testing.assert_allclose(again.embedding_distance.distances(x), distance.distances(x),
                               rtol=1e-5)
    path = str(tmp_path / 'card.json')
    write_card(again, path)
    assert load_card(path).embedding_distance == again.embedding_distance


def test_old_cards_have_no_embedding(tiny_card):
    assert tiny_card.embedding_name == '' and tiny_card.embedding_distance is None
    assert 'embedding_name' not in card_to_dict(tiny_card)['output']


@pytest.mark.parametrize('mutate, field', [
    (lambda d: d['output'].update(embedding_name='logits'), 'output.embedding_name'),
    (lambda d: d['output'].pop('embedding_size'), 'output.embedding_size'),
    (lambda d: d['embedding_distance'].update(kind='knn'), 'embedding_distance.kind'),
    (lambda d: d['embedding_distance']['class_means'].update(shape=[3, 8]),
     'embedding_distance.class_means.shape'),
    (lambda d: d['embedding_distance']['basis'].update(base64='abc'),
     'embedding_distance.basis.base64'),
    (lambda d: d['embedding_distance'].update(variances=[1.0]), 'embedding_distance.variances'),
    (lambda d: d['embedding_distance'].update(use_for_unknown=True),
     'embedding_distance.unknown_threshold'),
    (lambda d: d['output'].pop('embedding_name'), 'embedding_distance'),
])
def test_bad_embedding_fields_name_the_field(tiny_embedding_model_path, mutate, field):
    doc = tiny_card_dict(tiny_embedding_model_path, embedding_name='embedding')
    rng = np.random.default_rng(2)
    x, y = _clustered(rng)
    doc['embedding_distance'] = fit_distance(x, y, 4, components=3).to_dict()
    card_from_dict(copy.deepcopy(doc), 'ok.json')
    mutate(doc)
    with pytest.raises(ModelCardError) as info:
        card_from_dict(doc, 'bad.json')
    assert info.value.field == field


def test_onnxruntime_returns_embeddings(tiny_embedding_model_path, leaf_images):
    card = load_card(card_path_for_model(tiny_embedding_model_path))
    backend = OnnxRuntimeBackend(tiny_embedding_model_path, card)
    batch = preprocess([cv2.imread(p) for p in leaf_images['esca'][:3]], card)
    logits, embeddings = backend.infer_with_embedding(batch)
    assert logits.shape == (3, 4) and embeddings.shape == (3, 8)
    np.testing.assert_allclose(logits, backend.infer(batch), rtol=1e-5)


def test_backend_without_embedding_says_how_to_get_one(tiny_model_path, tiny_card):
    backend = OnnxRuntimeBackend(tiny_model_path, tiny_card)
    with pytest.raises(InferenceError, match='leaf-disease-export'):
        backend.infer_with_embedding(np.zeros((1, 3, 32, 32), np.float32))


def test_card_naming_a_missing_embedding_output_fails_at_load(tiny_model_copy):
    path = card_path_for_model(tiny_model_copy)
    with open(path, encoding='utf-8') as stream:
        doc = json.load(stream)
    doc['output'].update(embedding_name='features', embedding_size=8)
    with open(path, 'w', encoding='utf-8') as stream:
        json.dump(doc, stream)
    with pytest.raises(ModelCardError) as info:
        OnnxRuntimeBackend(tiny_model_copy, load_card(path))
    assert info.value.field == 'output.embedding_name'


def test_pipeline_rejects_tiles_far_from_the_training_data(tiny_embedding_model_path,
                                                           leaf_images, tmp_path):
    card = load_card(card_path_for_model(tiny_embedding_model_path))
    backend = OnnxRuntimeBackend(tiny_embedding_model_path, card)
    images = [cv2.imread(paths[0]) for paths in leaf_images.values()]
    _, embeddings = backend.infer_with_embedding(preprocess(images, card))
    labels = np.arange(len(images)) % 4
    # fitted on the leaves themselves (plus jitter): leaves are near, a grey wall is far
    rng = np.random.default_rng(3)
    train = np.concatenate([embeddings + rng.normal(0, 0.05, embeddings.shape)
                            for _ in range(20)])
    distance = fit_distance(train, np.tile(labels, 20), 4, components=2)
    doc = card_to_dict(card)
    doc['calibration']['unknown_threshold'] = 0.0
    doc['embedding_distance'] = distance.to_dict()
    doc['embedding_distance'].update(unknown_threshold=3.0, use_for_unknown=True)
    far_card = card_from_dict(doc, os.path.join(str(tmp_path), 'tiny_emb.json'))
    detector = Detector(backend, far_card, DetectorConfig(tiling='none'))
    assert detector.distance is not None
    leaf = detector.process(images[0], 0).detections[0]
    assert leaf.distance is not None and leaf.distance < 3.0 and not leaf.is_unknown
    wall = np.full((64, 64, 3), (40, 200, 60), np.uint8)
    far = detector.process(wall, 0).detections[0]
    assert far.distance > 3.0 and far.is_unknown and far.label == 'unknown'
    # not in use for unknown: it is still the domain reference (its threshold), so the
    # tile is flagged out of the domain but keeps its label
    doc['embedding_distance']['use_for_unknown'] = False
    plain = Detector(backend, card_from_dict(doc, 'x.json'), DetectorConfig(tiling='none'))
    assert plain.distance is None and plain.domain_reference is not None
    flagged = plain.process(wall, 0).detections[0]
    assert flagged.out_of_domain and flagged.distance > 3.0 and not flagged.is_unknown
    assert not plain.process(images[0], 0).detections[0].out_of_domain
    # the reference is swapped with one assignment (a site reference), or removed
    plain.domain_reference = None
    assert plain.process(wall, 0).detections[0].distance is None
