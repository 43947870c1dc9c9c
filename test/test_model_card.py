"""Model card: validation errors name the file and field; cards round-trip; hashes match."""

import copy
import json
import os

import pytest

from conftest import REPO_DIR
from leaf_disease_ros.inference.onnxruntime_backend import OnnxRuntimeBackend
from leaf_disease_ros.perception.errors import ModelCardError, ModelLoadError
from leaf_disease_ros.perception.model_card import (card_from_dict, card_path_for_model,
                                                    card_to_dict, check_model_file, load_card,
                                                    sha256_file, write_card)
from tiny_model import build_tiny_onnx, tiny_card_dict


@pytest.fixture()
def doc(tiny_model_path):
    """Return a valid card document of the tiny model."""
    return tiny_card_dict(tiny_model_path)


def test_roundtrip(doc, tmp_path):
    card = card_from_dict(doc, 'x.json')
    path = str(tmp_path / 'card.json')
    write_card(card, path)
    again = load_card(path)
    assert card_to_dict(again) == card_to_dict(card)
    assert again.labels == ('black_rot', 'esca', 'healthy', 'leaf_blight')
    assert again.input_hw_px == (32, 32)
    assert again.is_healthy('healthy') and not again.is_healthy('esca')


@pytest.mark.parametrize('mutate, field', [
    (lambda d: d.pop('labels'), 'labels'),
    (lambda d: d.update(labels=['a']), 'labels'),
    (lambda d: d.update(labels=['a', 'a']), 'labels'),
    (lambda d: d.update(labels=['a', 'unknown']), 'labels'),
    (lambda d: d.update(labels=['a', 'b c']), 'labels'),
    (lambda d: d.update(healthy_labels=['nope']), 'healthy_labels'),
    (lambda d: d.update(background_labels=['nope']), 'background_labels'),
    (lambda d: d.update(background_labels=['healthy']), 'background_labels'),
    (lambda d: d.update(background_labels='esca'), 'background_labels'),
    (lambda d: d['calibration'].update(finding_threshold=1.5), 'calibration.finding_threshold'),
    (lambda d: d['calibration'].update(finding_threshold='high'),
     'calibration.finding_threshold'),
    (lambda d: d['calibration'].update(finding_score='max'), 'calibration.finding_score'),
    (lambda d: d['calibration'].update(finding_score=1), 'calibration.finding_score'),
    (lambda d: d.update(schema_version=2), 'schema_version'),
    (lambda d: d['input'].update(height_px=0), 'input.height_px'),
    (lambda d: d['input'].update(width_px='32'), 'input.width_px'),
    (lambda d: d['input'].update(layout='NHWC'), 'input.layout'),
    (lambda d: d['input'].update(color_order='RGBA'), 'input.color_order'),
    (lambda d: d['input'].update(dtype='float16'), 'input.dtype'),
    (lambda d: d['preprocessing'].update(std=[0.2, 0.0, 0.2]), 'preprocessing.std'),
    (lambda d: d['preprocessing'].update(mean=[0.5, 0.5]), 'preprocessing.mean'),
    (lambda d: d['preprocessing'].update(resize='pad'), 'preprocessing.resize'),
    (lambda d: d['preprocessing'].pop('scale'), 'preprocessing.scale'),
    (lambda d: d['calibration'].update(temperature=0), 'calibration.temperature'),
    (lambda d: d['calibration'].update(unknown_threshold=1.5), 'calibration.unknown_threshold'),
    (lambda d: d.update(onnx_sha256='abc'), 'onnx_sha256'),
    (lambda d: d.update(model_file='../elsewhere.onnx'), 'model_file'),
    (lambda d: d.pop('calibration'), 'calibration'),
])
def test_invalid_fields_are_named(doc, mutate, field):
    bad = copy.deepcopy(doc)
    mutate(bad)
    with pytest.raises(ModelCardError) as info:
        card_from_dict(bad, '/models/m.json')
    assert info.value.field == field
    assert '/models/m.json' in str(info.value) and field in str(info.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ModelCardError, match='does not exist'):
        load_card(str(tmp_path / 'none.json'))
    broken = tmp_path / 'broken.json'
    broken.write_text('{"schema_version": 1,')
    with pytest.raises(ModelCardError, match='not valid JSON'):
        load_card(str(broken))


def test_card_path_for_model():
    assert card_path_for_model('/a/b/leaf_resnet18.onnx') == '/a/b/leaf_resnet18.json'


def test_sha_mismatch_names_both_hashes(tiny_model_copy):
    card = load_card(card_path_for_model(tiny_model_copy))
    assert check_model_file(card, tiny_model_copy) == card.onnx_sha256
    build_tiny_onnx(tiny_model_copy, seed=99)  # another model under the same name
    with pytest.raises(ModelCardError, match='onnx_sha256') as info:
        check_model_file(card, tiny_model_copy)
    assert card.onnx_sha256[:12] in str(info.value)
    assert 'leaf-disease-export' in str(info.value)


def test_backend_refuses_card_of_other_shape(tiny_model_copy):
    card_path = card_path_for_model(tiny_model_copy)
    doc = json.load(open(card_path))
    doc['input']['height_px'] = doc['input']['width_px'] = 64
    with pytest.raises(ModelCardError, match='input.height_px'):
        OnnxRuntimeBackend(tiny_model_copy, card_from_dict(doc, card_path))


def test_backend_refuses_card_with_other_class_count(tiny_model_copy):
    card_path = card_path_for_model(tiny_model_copy)
    doc = json.load(open(card_path))
    doc['labels'].append('powdery_mildew')
    with pytest.raises(ModelCardError, match="'labels'"):
        OnnxRuntimeBackend(tiny_model_copy, card_from_dict(doc, card_path))


def test_backend_refuses_card_with_other_input_name(tiny_model_copy):
    card_path = card_path_for_model(tiny_model_copy)
    doc = json.load(open(card_path))
    doc['input']['name'] = 'images'
    with pytest.raises(ModelCardError, match='input.name'):
        OnnxRuntimeBackend(tiny_model_copy, card_from_dict(doc, card_path))


def test_backend_missing_or_garbage_model(tmp_path, tiny_card):
    with pytest.raises(ModelLoadError, match='does not exist'):
        OnnxRuntimeBackend(str(tmp_path / 'nope.onnx'), tiny_card)
    garbage = tmp_path / 'garbage.onnx'
    garbage.write_bytes(b'not a model')
    doc = card_to_dict(tiny_card)
    doc['onnx_sha256'] = sha256_file(str(garbage))  # the card matches: the bytes are bad
    with pytest.raises(ModelLoadError, match='not a loadable ONNX model'):
        OnnxRuntimeBackend(str(garbage), card_from_dict(doc))
    assert os.path.exists(garbage)


def test_background_labels_and_finding_threshold_roundtrip(doc):
    doc['background_labels'] = ['leaf_blight']
    doc['calibration']['finding_threshold'] = 0.83
    doc['calibration']['operating_point_material'] = 'composites'
    card = card_from_dict(doc, 'x.json')
    assert card.background_labels == ('leaf_blight',)
    assert card.non_disease_labels == ('healthy', 'leaf_blight')
    assert card.finding_threshold == 0.83
    assert card.calibration_extra['operating_point_material'] == 'composites'
    again = card_from_dict(card_to_dict(card), 'y.json')
    assert again == card.__class__(**{**card.__dict__, 'path': 'y.json'})


def test_old_cards_get_the_default_operating_point(doc):
    doc.pop('background_labels', None)
    doc['calibration'].pop('finding_threshold', None)
    doc['calibration'].pop('finding_score', None)
    card = card_from_dict(doc, 'x.json')
    assert card.background_labels == () and card.finding_threshold == 0.5
    assert card.finding_score == 'top_label'


def test_finding_score_roundtrip(doc):
    doc['calibration']['finding_score'] = 'disease_mass'
    card = card_from_dict(doc, 'x.json')
    assert card.finding_score == 'disease_mass'
    assert 'finding_score' not in card.calibration_extra
    assert card_to_dict(card)['calibration']['finding_score'] == 'disease_mass'
    assert card_from_dict(card_to_dict(card), 'x.json') == card


def test_display_names_roundtrip_and_default(doc):
    doc['display_names'] = {'black_rot': 'Black rot (Guignardia bidwellii)'}
    card = card_from_dict(doc)
    assert card.display_name('black_rot') == 'Black rot (Guignardia bidwellii)'
    assert card.display_name('leaf_blight') == 'Leaf blight'  # no name: humanised
    assert card.display_name_map()['unknown'] == 'Unknown'
    assert card_from_dict(card_to_dict(card)).display_names == doc['display_names']
    for bad in ({'powdery_mildew': 'Powdery mildew'}, {'esca': ''}, {'esca': 3}, ['esca']):
        doc['display_names'] = bad
        with pytest.raises(ModelCardError, match='display_names'):
            card_from_dict(doc)


@pytest.mark.parametrize('name', ['leaf_lite0_field', 'leaf_resnet18_field'])
def test_shipped_cards_name_every_label_for_people(name):
    card = load_card(os.path.join(REPO_DIR, 'engines', name + '.json'))
    assert set(card.display_names) == set(card.labels)
    assert card.display_name('black_rot') == 'Black rot'
