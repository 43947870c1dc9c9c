"""The site adaptation's figures of record: rerun the recipe, compare with benchmarks/."""

import json
import os
import sys

import pytest

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = os.path.join(REPO_DIR, '..', 'shared', 'datasets')
RECORD = os.path.join(REPO_DIR, 'benchmarks', 'site_adaptation.json')
#: a tile or a leaf may flip between runs (ONNX Runtime threads sum in another order)
RATE_TOLERANCE = 0.012

pytestmark = pytest.mark.skipif(
    not os.path.isdir(os.path.join(DATASETS, 'field_grape_small')),
    reason='needs ../shared/datasets (field photos and PlantVillage)')


@pytest.fixture(scope='module')
def evaluation(tmp_path_factory):
    """Run tools/site_adaptation_eval.py as written in benchmarks/site_adaptation.md."""
    sys.path.insert(0, os.path.join(REPO_DIR, 'tools'))
    try:
        import site_adaptation_eval
    finally:
        sys.path.pop(0)
    with open(RECORD, encoding='utf-8') as stream:
        record = json.load(stream)
    work = str(tmp_path_factory.mktemp('site_eval') / 'work')
    result = site_adaptation_eval.evaluate(DATASETS, work, record['frames_per_pass'],
                                           record['seed'], record['composites'])
    return record, json.loads(json.dumps(result, default=lambda v: v.item()))


@pytest.mark.slow
def test_the_figures_of_record_are_what_the_recipe_gives(evaluation):
    record, result = evaluation
    assert result['material'] == record['material']
    for name in ('test_clean', 'test_pasted'):
        for model in ('unadapted', 'adapted'):
            got, want = result[name][model], record[name][model]
            assert got['tiles'] == want['tiles']
            for key in ('finding_tile_rate', 'pasted_recall', 'other_tile_finding_rate'):
                if want[key] is None:
                    assert got[key] is None
                else:
                    assert got[key] == pytest.approx(want[key], abs=RATE_TOLERANCE), \
                        (name, key)
    for model in ('unadapted', 'adapted'):
        assert result['hidden_plantvillage'][model] == pytest.approx(
            record['hidden_plantvillage'][model], abs=0.003)


@pytest.mark.slow
def test_the_adaptation_removes_false_findings_and_keeps_the_diseases(evaluation):
    _, result = evaluation
    clean, pasted = result['test_clean'], result['test_pasted']
    # unadapted: the domain check holds every finding of the healthy pass off the map
    assert clean['unadapted']['confirmed_features'] == 0
    assert clean['unadapted']['findings_held'] == clean['unadapted']['finding_tiles'] > 0
    # adapted: far fewer false tiles, and the pasted diseased leaves are still found
    assert clean['adapted']['finding_tile_rate'] <= clean['unadapted']['finding_tile_rate'] / 3
    assert pasted['adapted']['pasted_recall'] >= 0.85
    # the site's domain check is OK: disease on the site's canopy is in its domain
    assert clean['adapted']['findings_held'] == 0
    assert pasted['adapted']['findings_held'] <= 0.1 * pasted['adapted']['finding_tiles']
    assert result['hidden_plantvillage']['adapted'] >= 0.98


def test_the_adaptation_docs_quote_the_figures_of_record():
    with open(os.path.join(REPO_DIR, 'benchmarks', 'site_adaptation.md'),
              encoding='utf-8') as stream:
        table = [line for line in stream.read().splitlines() if line.startswith('|')]
    with open(os.path.join(REPO_DIR, 'docs', 'adaptation.md'), encoding='utf-8') as stream:
        docs = stream.read()
    assert len(table) >= 8
    for line in table:
        assert line in docs
