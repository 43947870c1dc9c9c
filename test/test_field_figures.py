"""
Honest field figures: manifest, grouped validation halves, commands, known answers.

The manifest of the field photos, the leaf- and photo-grouped validation halves, the
``validation`` + ``evaluate`` pair at a tiny scale, and known answers of the measures.
"""

import json
import os
from typing import Any, Dict

import numpy as np
import pytest

from leaf_disease_ros.perception.errors import DatasetError
from leaf_disease_ros.perception.model_card import card_from_dict, load_card, ModelCard

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO_DIR, '..', 'shared', 'datasets')
FIELD_PHOTOS = os.path.join(SHARED, 'field_grape_small')
PLANTVILLAGE = os.path.join(SHARED, 'plantvillage_grape')
LEAVES = os.path.join(REPO_DIR, 'test', 'data', 'leaves')
FIELD_LABELS = ['black_rot', 'esca', 'healthy', 'leaf_blight', 'background']


# ------------------------------------------------------------------ the manifest
def test_manifest_roles_and_the_old_backgrounds() -> None:
    """Training backgrounds train, the old validation backgrounds and esca photos tune."""
    from leaf_disease_ros.training import field_manifest as fm
    from leaf_disease_ros.training.field_sim import FIELD_NEGATIVES
    roles = {p.path: p.role for p in fm.FIELD_PHOTOS}
    assert len(roles) == len(fm.FIELD_PHOTOS) == 14
    assert set(roles.values()) == set(fm.ROLES)
    assert all(roles[p] == 'train' for p in FIELD_NEGATIVES['train'])
    assert len(FIELD_NEGATIVES['train']) == 3
    assert all(roles[p] == 'tune' for p in FIELD_NEGATIVES['val'])  # chose the threshold
    assert all(role == 'tune' for p, role in roles.items() if p.startswith('esca/'))
    assert fm.background_photos('test') == ()  # no healthy photo is test-only
    assert set(fm.background_photos('tune')) == set(FIELD_NEGATIVES['val'])
    assert all(p.split('/')[0] in ('downy_mildew', 'powdery_mildew', 'bois_noir')
               for p in fm.photos_with_role('test'))
    with pytest.raises(DatasetError, match='not in the manifest'):
        fm.photo_role('healthy/new_photo.jpg')
    with pytest.raises(DatasetError):
        fm.background_photos('A')


def test_manifest_covers_the_field_folder(tmp_path: Any) -> None:
    """Every photo of field_grape_small has a role; an unlisted photo is refused."""
    from leaf_disease_ros.training import field_manifest as fm
    if os.path.isdir(FIELD_PHOTOS):
        assert fm.check_field_folder(FIELD_PHOTOS) == sorted(p.path for p in fm.FIELD_PHOTOS)
    (tmp_path / 'healthy').mkdir()
    (tmp_path / 'healthy' / 'unlisted.jpg').write_bytes(b'')
    with pytest.raises(DatasetError, match='unlisted.jpg'):
        fm.check_field_folder(str(tmp_path))


def test_validation_halves_keep_leaves_together() -> None:
    """Halves are split by leaf block: no block, and no photo of one leaf, on two sides."""
    from leaf_disease_ros.training.dataset import build_split, photo_number
    from leaf_disease_ros.training.field_manifest import validation_halves
    _, train, val, _ = build_split(LEAVES, None, 'photo-blocks', 40, None, 0.5, 0)
    labels, tune, test = validation_halves(LEAVES, 0, 0, 40, 0.5)
    assert labels == tuple(FIELD_LABELS[:4])
    assert sorted(s.path for s in tune + test) == sorted(s.path for s in val)
    assert not {s.group for s in tune} & {s.group for s in test}
    assert not {s.path for s in tune + test} & {s.path for s in train}
    for class_index in range(4):  # every class on both sides
        assert any(s.label_index == class_index for s in tune)
        assert any(s.label_index == class_index for s in test)
    side = {photo_number(s.path): name for name, half in (('tune', tune), ('test', test))
            for s in half}
    for (series, number), name in side.items():  # consecutive numbers (one leaf) together
        assert side.get((series, number + 1), name) == name
    other_tune, other_test = validation_halves(LEAVES, 1, 0, 40, 0.5)[1:]
    assert {s.path for s in other_tune + other_test} == {s.path for s in val}


@pytest.mark.skipif(not os.path.isdir(PLANTVILLAGE), reason='PlantVillage is not in ../shared')
def test_audit_example_stays_on_one_side() -> None:
    """``FAM_B.Rot 3160`` and ``3161`` (one leaf) are never split (the audit's example)."""
    from leaf_disease_ros.training.field_manifest import validation_halves
    from leaf_disease_ros.training.dataset import build_split
    _, train, _, _ = build_split(PLANTVILLAGE, None, 'photo-blocks', 40, None, 0.2, 0)
    _, tune, test = validation_halves(PLANTVILLAGE)
    where: Dict[str, str] = {}
    for name, side in (('train', train), ('tune', tune), ('test', test)):
        for s in side:
            where[os.path.basename(s.path).split('___')[-1]] = name
    assert where['FAM_B.Rot 3160.JPG'] == where['FAM_B.Rot 3161.JPG']
    assert len({s.group for s in tune} & {s.group for s in test}) == 0
    assert 0.45 < len(test) / (len(tune) + len(test)) < 0.6


# ------------------------------------------------- the validation + evaluate pair
def _field_card(folder: str) -> str:
    """Write a tiny 5-class ONNX model with a field card; return the card path."""
    from tiny_model import build_tiny_onnx, tiny_card_dict
    from leaf_disease_ros.perception.model_card import write_card
    model = build_tiny_onnx(os.path.join(folder, 'tiny_field.onnx'), num_classes=5)
    doc = tiny_card_dict(model, labels=FIELD_LABELS, unknown_threshold=0.25)
    doc['name'] = 'tiny_field'
    doc['background_labels'] = ['background']
    doc['calibration'].update(finding_threshold=0.4, finding_score='disease_mass')
    doc['metrics'] = {'field_validation': {'hand': 'edited'}, 'kept': 1}
    path = os.path.join(folder, 'tiny_field.json')
    write_card(card_from_dict(doc, path), path)
    return path


@pytest.fixture(scope='module')
def pair(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """Run ``validation`` then ``evaluate --markdown --update-cards`` on the test leaves."""
    pytest.importorskip('onnxruntime')
    from leaf_disease_ros.cli.train_field import main
    work = str(tmp_path_factory.mktemp('figures'))
    field = FIELD_PHOTOS if os.path.isdir(FIELD_PHOTOS) else os.path.join(work, 'no_photos')
    os.makedirs(field, exist_ok=True)
    common = ['--plantvillage', LEAVES, '--field-photos', field]
    out = os.path.join(work, 'validation')
    again = os.path.join(work, 'again')
    for folder in (out, again):  # twice: the material must be reproducible
        assert main(['validation', *common, '--seed', '0', '--out', folder, '--count', '20',
                     '--input-px', '32', '--field-symptoms', '--val-fraction', '0.5']) == 0
    card = _field_card(work)
    results = os.path.join(work, 'results.json')
    markdown = os.path.join(work, 'results.md')
    assert main(['evaluate', card, '--val-cache', os.path.join(out, 'val_32.npz'), *common,
                 '--out', results, '--markdown', markdown, '--update-cards',
                 '--threads', '1']) == 0
    return {'work': work, 'out': out, 'again': again, 'card': card, 'results': results,
            'markdown': markdown, 'field': field}


def test_validation_record_names_every_source(pair: Dict[str, Any]) -> None:
    """Every tile's leaf and photos belong to its half; halves share no block or photo."""
    from leaf_disease_ros.training.field_manifest import photo_role
    from leaf_disease_ros.training.field_sim import KINDS
    with open(os.path.join(pair['out'], 'val_32.json'), encoding='utf-8') as stream:
        record = json.load(stream)
    cache = np.load(os.path.join(pair['out'], 'val_32.npz'))
    rows = record['tiles']['rows']
    assert record['tiles']['columns'] == ['half', 'kind', 'target', 'variant', 'leaf',
                                          'block', 'photos']
    assert len(rows) == len(cache['y']) == len(cache['half'])
    assert [r[0] for r in rows] == cache['half'].tolist()
    assert [r[2] for r in rows] == cache['y'].tolist()
    assert set(cache['half'].tolist()) == {0, 1}
    halves = record['halves']
    blocks = {name: {leaf['block'] for leaf in halves[name]['leaves']} for name in halves}
    assert not blocks['tune'] & blocks['test']
    names = {name: {leaf['photo'].split('/')[-1] for leaf in halves[name]['leaves']}
             for name in halves}
    leaf_tiles = 0
    for half_index, kind, _target, _variant, leaf, block, photos in rows:
        half = ('tune', 'test')[half_index]
        if leaf:
            leaf_tiles += 1
            assert leaf in names[half] and block in blocks[half]
        for photo in filter(None, photos.split(';')):
            assert photo in halves[half]['field_photos'] and photo_role(photo) == half
        assert KINDS[kind] != 'pv_plain'
    assert leaf_tiles > 0
    assert halves['test']['field_photos'] == []  # no healthy field photo is test-only
    if os.path.isdir(FIELD_PHOTOS):
        assert halves['tune']['field_photos'] and any(r[6] for r in rows if r[0] == 0)
    assert len(record['manifest']) == 14
    assert not any(os.path.isabs(str(v)) for v in (record['plantvillage'],
                                                   record['field_photos']))


def test_validation_is_reproducible(pair: Dict[str, Any]) -> None:
    """The same data and seed give the same tiles, targets and record."""
    first = np.load(os.path.join(pair['out'], 'val_32.npz'))
    second = np.load(os.path.join(pair['again'], 'val_32.npz'))
    for key in ('x', 'y', 'kind', 'half', 'source', 'photo', 'variant'):
        assert np.array_equal(first[key], second[key]), key
    with open(os.path.join(pair['out'], 'val_32.json'), encoding='utf-8') as a, \
            open(os.path.join(pair['again'], 'val_32.json'), encoding='utf-8') as b:
        assert json.load(a) == json.load(b)


def test_evaluate_reports_the_test_half(pair: Dict[str, Any]) -> None:
    """``evaluate`` measures the test half, names the material and flags tuning photos."""
    from leaf_disease_ros.training.field_eval import load_composites
    with open(pair['results'], encoding='utf-8') as stream:
        text = stream.read()
    assert 'NaN' not in text
    entry = json.loads(text)['tiny_field.json']
    comp = load_composites(os.path.join(pair['out'], 'val_32.npz'))
    test = entry['composites_test_half']
    assert test['tiles'] == int((comp.half == 1).sum())
    assert test['healthy_tiles'] == int(((comp.half == 1) & (comp.y == 2)).sum())
    assert entry['plantvillage_test_half']['images'] == 8  # 4 classes x 1 block x 2 photos
    assert entry['plantvillage_test_half']['leaf_blocks'] == 4
    words = entry['material']['composites_test_half']
    assert 'test half' in words and 'no real field photo' in words
    assert 'tuning_half_field_crops_not_a_test' in entry
    assert entry['finding_threshold'] == 0.4  # the card's own, not re-tuned
    assert any('before the validation halves' in note for note in entry['caveats'])
    if os.path.isdir(FIELD_PHOTOS):
        photos = entry['field_photos']
        assert photos['per_role']['test']['photos'] == 5
        assert photos['per_photo']['esca/matheli_vineleaf__esca.jpg']['role'] == 'tune'
    with open(pair['markdown'], encoding='utf-8') as stream:
        md = stream.read()
    assert '## tiny_field.json' in md and 'Material: synthetic composites' in md


def test_update_cards_replaces_the_old_figures(pair: Dict[str, Any]) -> None:
    """``--update-cards`` writes metrics.field_test, drops field_validation, keeps the rest."""
    card = load_card(pair['card'])
    assert 'field_validation' not in card.metrics and card.metrics['kept'] == 1
    figures = card.metrics['field_test']
    assert figures['operating_point']['finding_threshold'] == 0.4
    assert card.finding_threshold == 0.4 and card.unknown_threshold == 0.25
    assert figures['composites_test_half']['material'].startswith('synthetic composites')
    assert 'leaf-disease-train-field evaluate' in figures['written_by']
    assert figures['caveats'] and figures['tuning_half_field_crops_not_a_test']['why']


def test_old_cache_is_refused(tmp_path: Any) -> None:
    """A validation cache without halves (made before issue 17) must be rebuilt."""
    from leaf_disease_ros.training.field_eval import load_composites
    path = str(tmp_path / 'old.npz')
    np.savez(path, x=np.zeros((1, 4, 4, 3), np.uint8), y=np.array([2]), kind=np.array([3]),
             source=np.array(['']), variant=np.array([0]))
    with pytest.raises(DatasetError, match='leaf-disease-train-field validation'):
        load_composites(path)


# ---------------------------------------------------------------- known answers
def _meta() -> str:
    from leaf_disease_ros.training.field_sim import VALIDATION_FORMAT
    return json.dumps({'format': VALIDATION_FORMAT, 'seed': 3,
                       'split': {'block_size': 40, 'split_seed': 0, 'val_fraction': 0.2}})


def test_load_composites_known_answer(tmp_path: Any) -> None:
    """Arrays come back as written; half comes from the cache, not from a hash."""
    from leaf_disease_ros.training.field_eval import load_composites
    path = str(tmp_path / 'val.npz')
    x = np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3)
    np.savez(path, x=x, y=np.array([2, 4, 1]), kind=np.array([3, 4, 0]),
             half=np.array([0, 1, 1]), source=np.array(['', '', 'a.JPG']),
             variant=np.array([0, 0, 1]), photo=np.array(['healthy/p.jpg', '', '']),
             meta=np.array(_meta()))
    comp = load_composites(path)
    assert np.array_equal(comp.x, x)
    assert comp.y.tolist() == [2, 4, 1] and comp.kind.tolist() == [3, 4, 0]
    assert comp.half.tolist() == [0, 1, 1]
    assert comp.variant is not None and comp.variant.tolist() == [0, 0, 1]
    assert comp.source is not None and comp.source.tolist() == ['', '', 'a.JPG']
    assert comp.photo is not None and comp.photo.tolist() == ['healthy/p.jpg', '', '']
    assert comp.meta['seed'] == 3
    # without the optional arrays
    np.savez(path, x=x, y=np.array([2, 4, 1]), kind=np.array([3, 4, 0]),
             half=np.array([1, 1, 0]), meta=np.array(_meta()))
    comp = load_composites(path)
    assert comp.variant is None and comp.photo is None and comp.half.tolist() == [1, 1, 0]
    # empty cache
    np.savez(path, x=np.zeros((0, 4, 4, 3), np.uint8), y=np.zeros(0, np.int64),
             kind=np.zeros(0, np.int64), half=np.zeros(0, np.int64), meta=np.array(_meta()))
    assert len(load_composites(path).y) == 0


@pytest.mark.parametrize('change, message', [
    ({'half': np.array([0, 2, 1])}, 'half outside'),
    ({'half': np.array([0, 1])}, 'half has 2 entries'),
    ({'y': np.array([2, 5, 1])}, 'y outside'),
    ({'kind': np.array([3, -1, 0])}, 'kind outside'),
    ({'meta': np.array('{"format": "other"}')}, 'unknown validation format'),
])
def test_load_composites_refuses_bad_caches(tmp_path: Any, change: Dict[str, np.ndarray],
                                            message: str) -> None:
    """Out-of-range halves, targets or kinds, lengths that disagree, unknown formats."""
    from leaf_disease_ros.training.field_eval import load_composites
    arrays = {'x': np.zeros((3, 4, 4, 3), np.uint8), 'y': np.array([2, 4, 1]),
              'kind': np.array([3, 4, 0]), 'half': np.array([0, 1, 1]),
              'meta': np.array(_meta())}
    arrays.update(change)
    path = str(tmp_path / 'bad.npz')
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=message):
        load_composites(path)


def _card(finding_score: str = 'top_label', unknown: float = 0.5) -> ModelCard:
    return card_from_dict({
        'schema_version': 1, 'name': 'k', 'labels': FIELD_LABELS,
        'healthy_labels': ['healthy'], 'background_labels': ['background'],
        'input': {'name': 'input', 'height_px': 8, 'width_px': 8, 'layout': 'NCHW',
                  'color_order': 'RGB'},
        'preprocessing': {'resize': 'stretch', 'interpolation': 'area', 'scale': 1 / 255,
                          'mean': [0, 0, 0], 'std': [1, 1, 1]},
        'output': {'name': 'logits'},
        'calibration': {'temperature': 1.0, 'unknown_threshold': unknown,
                        'finding_threshold': 0.8, 'finding_score': finding_score}},
        path='<known answer>')


def _composites() -> Any:
    """Six tiles; kinds leaf_fill 0, leaf_edge 2, canopy 3, background 4."""
    from leaf_disease_ros.training.field_eval import Composites
    y = np.array([2, 2, 4, 0, 1, 1])  # healthy, healthy, background, black rot, esca, esca
    probs = np.array([[0.05, 0.05, 0.80, 0.05, 0.05],   # healthy on top: no finding
                      [0.10, 0.85, 0.03, 0.01, 0.01],   # healthy (autumn) called esca: found
                      [0.62, 0.10, 0.10, 0.10, 0.08],   # background, black rot 0.62 < 0.8
                      [0.90, 0.05, 0.02, 0.02, 0.01],   # black rot found, right label
                      [0.83, 0.10, 0.03, 0.02, 0.02],   # painted esca found as black rot
                      [0.02, 0.95, 0.01, 0.01, 0.01]])  # esca found, right label
    comp = Composites(np.zeros((6, 2, 2, 3), np.uint8), y, np.array([3, 0, 4, 0, 2, 0]),
                      np.ones(6, np.int64), np.array([0, 2, 0, 0, 1, 0]))
    return comp, probs


def test_composite_measures_known_answer() -> None:
    """Rates, recall, AUROC, per kind and per variant of six hand-scored tiles."""
    from leaf_disease_ros.training.field_eval import composite_measures
    comp, probs = _composites()
    m = composite_measures(probs, comp, np.ones(6, bool), _card(), 0.5, 0.8)
    assert (m['tiles'], m['healthy_tiles'], m['background_tiles'], m['disease_tiles']) == \
        (6, 2, 1, 3)
    assert m['healthy_tile_finding_rate'] == 0.5
    assert m['background_tile_finding_rate'] == 0.0
    assert m['disease_tile_recall'] == pytest.approx(2 / 3)
    assert m['disease_tile_any_finding_rate'] == 1.0
    # P(esca): esca tiles 0.10, 0.95 against healthy 0.05, 0.85: 3 of 4 pairs
    assert m['esca_vs_healthy_auroc'] == pytest.approx(0.75)
    assert m['per_kind'] == {
        'background': {'tiles': 1, 'disease_recall': None, 'negative_finding_rate': 0.0},
        'canopy': {'tiles': 1, 'disease_recall': None, 'negative_finding_rate': 0.0},
        'leaf_edge': {'tiles': 1, 'disease_recall': 0.0, 'negative_finding_rate': None},
        'leaf_fill': {'tiles': 3, 'disease_recall': 1.0, 'negative_finding_rate': 1.0}}
    assert m['per_variant'] == {
        'esca_field_symptoms': {'tiles': 1, 'disease_recall': 0.0,
                                'negative_finding_rate': None},
        'autumn_colouring': {'tiles': 1, 'disease_recall': None, 'negative_finding_rate': 1.0}}
    # the disease-mass score: the background tile's diseases add up to 0.82, a finding
    mass = composite_measures(probs, comp, np.ones(6, bool), _card('disease_mass'), 0.5, 0.8)
    assert mass['background_tile_finding_rate'] == 1.0
    assert mass['healthy_tile_finding_rate'] == 0.5
    # a mask: tiles 0, 2 and 5 only
    mask = np.array([True, False, True, False, False, True])
    part = composite_measures(probs, comp, mask, _card(), 0.5, 0.8)
    assert part['healthy_tile_finding_rate'] == 0.0 and part['disease_tile_recall'] == 1.0
    assert part['esca_vs_healthy_auroc'] == 1.0
    # a group with no tile is None, the AUROC without a side is NaN (null in JSON)
    only_background = composite_measures(probs, comp, np.arange(6) == 2, _card(), 0.5, 0.8)
    assert only_background['healthy_tile_finding_rate'] is None
    assert only_background['disease_tile_recall'] is None
    assert np.isnan(only_background['esca_vs_healthy_auroc'])
    # an unknown threshold above a top score turns that finding off
    strict = composite_measures(probs, comp, np.ones(6, bool), _card(), 0.92, 0.8)
    assert strict['disease_tile_recall'] == pytest.approx(1 / 3)  # only 0.95 esca is found


def _op_material() -> Any:
    y = np.array([2, 2, 4, 0, 1])  # healthy h1, h2, background b1, black rot, esca
    probs = np.array([[0.7004, 0.1, 0.1, 0.0499, 0.0497],   # h1: black rot 0.7004
                      [0.1, 0.1, 0.7, 0.05, 0.05],          # h2: healthy
                      [0.05, 0.6004, 0.05, 0.05, 0.2496],   # b1: esca 0.6004
                      [0.9, 0.04, 0.02, 0.02, 0.02],        # black rot 0.9
                      [0.1, 0.65, 0.1, 0.1, 0.05]])         # esca 0.65
    return np.log(probs), y


def test_choose_operating_point_known_answer() -> None:
    """The smallest grid score meeting the negative limits, and the choosing-half rates."""
    from leaf_disease_ros.training.field_eval import choose_operating_point
    logits, y = _op_material()
    op = choose_operating_point(logits, y, None, None, _card(), fit_t=False,
                                max_negative_rate=0.0)
    assert op['temperature'] == 1.0 and op['unknown_threshold'] == 0.5
    assert op['finding_threshold'] == 0.701  # above h1's 0.7004
    assert op['choosing_half'] == {'tiles': 5, 'healthy_tile_finding_rate': 0.0,
                                   'background_tile_finding_rate': 0.0,
                                   'disease_tile_recall': 0.5}
    # half of the healthy tiles may have a finding, no background tile: above b1 only
    op = choose_operating_point(logits, y, None, None, _card(), fit_t=False,
                                max_negative_rate=0.5)
    assert op['finding_threshold'] == 0.601
    assert op['choosing_half']['healthy_tile_finding_rate'] == 0.5
    assert op['choosing_half']['disease_tile_recall'] == 1.0
    # disease mass: h1 0.8503, b1 0.7504
    op = choose_operating_point(logits, y, None, None, _card('disease_mass'), fit_t=False,
                                max_negative_rate=0.0, finding_score='disease_mass')
    assert op['finding_threshold'] == 0.851 and op['finding_score'] == 'disease_mass'
    # top_label: never below the unknown threshold
    op = choose_operating_point(logits[[1, 3]], y[[1, 3]], None, None, _card(unknown=0.6),
                                fit_t=False, max_negative_rate=0.0)
    assert op['finding_threshold'] == 0.6


def test_choose_operating_point_edge_cases() -> None:
    """No healthy tile sets no healthy limit; an unreachable limit gives 0.999."""
    from leaf_disease_ros.training.field_eval import choose_operating_point
    logits, y = _op_material()
    no_healthy = y != 2
    op = choose_operating_point(logits[no_healthy], y[no_healthy], None, None, _card(),
                                fit_t=False, max_negative_rate=0.0)
    assert op['finding_threshold'] == 0.601
    assert op['choosing_half']['healthy_tile_finding_rate'] is None
    sure = np.log(np.array([[0.9996, 0.0001, 0.0001, 0.0001, 0.0001]]))
    op = choose_operating_point(np.concatenate([logits, sure]), np.append(y, 2), None, None,
                                _card(), fit_t=False, max_negative_rate=0.0)
    assert op['finding_threshold'] == 0.999
    assert op['choosing_half']['healthy_tile_finding_rate'] == pytest.approx(1 / 3)


def test_shipped_cards_name_their_material() -> None:
    """The shipped cards carry regenerated figures on the test half, naming the material."""
    for name in ('leaf_lite0_field', 'leaf_resnet18_field'):
        card = load_card(os.path.join(REPO_DIR, 'engines', f'{name}.json'))
        assert 'field_validation' not in card.metrics
        figures = card.metrics['field_test']
        assert figures['composites_test_half']['material'].startswith('synthetic composites')
        assert figures['operating_point']['finding_threshold'] == card.finding_threshold
        assert 'field-trained' not in json.dumps(card.training)
