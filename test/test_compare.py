"""
Two models side by side (replay/compare.py): same tiles, agreement matrix, per-model figures.

Both models are scripted (the tile's colour decides its label); the second one calls
green tiles black rot, so every count of the comparison is known.
"""

import json
import os

import numpy as np

from bag_builder import Frame, GpsFix, NS, Truth, write_bag
from leaf_disease_ros.geo.geodesy import offset_latlon
from leaf_disease_ros.perception.config import validate_parameters
from leaf_disease_ros.replay.compare import ModelComparison
from leaf_disease_ros.replay.report import write_report
from leaf_disease_ros.replay.runner import ReplayOptions, run_replay
from scripted_backend import colour_card, ColourBackend, tiles


class GreenIsBlackRot(ColourBackend):
    """A worse model: green tiles (esca) come out as black rot."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Return the colour logits with the esca column moved to black rot."""
        logits = super().infer(batch)
        logits[:, 0] = np.maximum(logits[:, 0], logits[:, 1])
        logits[:, 1] = 0.0
        return logits


def test_the_report_compares_two_models_on_the_same_tiles(tmp_path):
    names = [['healthy', 'esca'], ['esca', 'healthy'], ['esca', 'grey'], ['healthy'] * 2,
             ['black_rot', 'healthy'], ['healthy'] * 2]
    frames = [Frame(int((1 + 0.25 * i) * NS), tiles(n)) for i, n in enumerate(names)]
    truth_of = {'healthy': 'healthy', 'esca': 'esca', 'grey': 'leaf_blight',
                'black_rot': 'black_rot'}
    truth = [Truth(f.stamp_ns, [((256.0 * c, 0.0, 256.0 * (c + 1), 256.0), truth_of[n])
                                for c, n in enumerate(ns)]) for f, ns in zip(frames, names)]
    fixes = [GpsFix(int(0.2 * k * NS), *offset_latlon(46.0, 7.0, 0.2 * k, 0.0))
             for k in range(15)]
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames, fixes, truth)
    params = {'min_vegetation_fraction': 0.0}
    main = ColourBackend(colour_card(str(tmp_path)), 'main@111111111111')
    other = GreenIsBlackRot(colour_card(str(tmp_path)), 'other@222222222222')
    comparison = ModelComparison(other, main.card.labels, validate_parameters(params), True)
    out = str(tmp_path / 'report')
    state = run_replay(ReplayOptions(bag_path=bag, out_dir=out, parameters=params,
                                     write_bag=False, observers=[comparison]), backend=main)
    single = write_report(state, str(tmp_path / 'single'))
    assert 'comparison' not in single
    with open(tmp_path / 'single' / 'report.md', encoding='utf-8') as stream:
        assert '## Comparison' not in stream.read()
    metrics = write_report(state, out, [comparison.section(state.model)])
    compared = metrics['comparison']
    assert compared['frames'] == 6 and compared['tiles_compared'] == 12
    assert compared['models']['main']['model_id'] == 'main@111111111111'
    assert compared['models']['compared']['model_id'] == 'other@222222222222'
    agreement = compared['agreement']
    assert agreement['rows_main'] == ['black_rot', 'esca', 'healthy', 'leaf_blight', 'unknown']
    matrix = {(r, c): v for r, row in zip(agreement['rows_main'], agreement['matrix'])
              for c, v in zip(agreement['columns_compared'], row)}
    assert matrix[('esca', 'black_rot')] == 3 and matrix[('black_rot', 'black_rot')] == 1
    assert matrix[('healthy', 'healthy')] == 7 and matrix[('unknown', 'unknown')] == 1
    assert sum(matrix.values()) == 12
    assert compared['same_label'] == 9
    assert compared['same_finding_decision_rate'] == 1.0  # esca and black rot: both findings
    per = compared['per_model']
    assert per['main']['findings_by_label'] == {'black_rot': 1, 'esca': 3}
    assert per['compared']['findings_by_label'] == {'black_rot': 4}
    # esca on three frames in a row: confirmed from the second; one black rot: never
    assert per['main']['findings_confirmed_by_label'] == {'esca': 2}
    assert per['compared']['findings_confirmed_by_label'] == {'black_rot': 3}
    assert per['main']['accuracy']['accuracy'] == 11 / 12  # the grey tile is unknown
    assert per['compared']['accuracy']['accuracy'] == 8 / 12
    assert per['compared']['accuracy']['recall']['esca'] == 0.0
    with open(os.path.join(out, 'report.md'), encoding='utf-8') as stream:
        text = stream.read()
    assert '## Comparison: colour (`main@111111111111`) (main) and colour' in text
    assert '| esca | 3 | 0 | 0 | 0 | 0 |' in text
    assert '| finding score | top_label | top_label |' in text  # cards without one
    assert compared['models']['compared']['finding_score'] == 'top_label'
    with open(os.path.join(out, 'metrics.json'), encoding='utf-8') as stream:
        assert json.load(stream)['comparison']['same_label'] == 9
