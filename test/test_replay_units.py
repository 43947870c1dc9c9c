"""Units of the replay: counts-based metrics, tile matching, latency percentiles."""

import math

import numpy as np
import pytest

from leaf_disease_ros.perception.metrics import (classification_report,
                                                 classification_report_from_counts)
from leaf_disease_ros.perception.pipeline import Detection
from leaf_disease_ros.replay.evaluation import iou_matrix, match_tiles, TileEvaluator
from leaf_disease_ros.replay.stats import LatencyHistogram
from leaf_disease_ros.ros.conversions import GroundTruthBox

LABELS = ('black_rot', 'esca', 'healthy', 'leaf_blight')


@pytest.mark.parametrize('seed', range(5))
def test_report_from_counts_equals_the_report_of_the_samples(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    true = rng.integers(0, 4, n)
    if seed == 0:
        true[true == 3] = 0  # a class that never occurs
    pred = rng.integers(-1, 4, n)
    counts = np.zeros((4, 5), dtype=np.int64)
    for t, p in zip(true, pred):
        counts[t, p if p >= 0 else 4] += 1
    expected = classification_report(true, pred, LABELS)
    got = classification_report_from_counts(counts, LABELS)
    assert got == expected


def test_report_from_counts_checks_its_shape():
    with pytest.raises(ValueError, match='expected'):
        classification_report_from_counts(np.zeros((4, 4)), LABELS)


def _det(box, label, unknown=False):
    return Detection(box_xyxy_px=box, label='unknown' if unknown else label,
                     label_index=LABELS.index(label), score=0.9, top_k=((label, 0.9),),
                     is_unknown=unknown, is_disease=label != 'healthy',
                     is_finding=False, vegetation_fraction=1.0)


def test_iou_of_known_boxes():
    ious = iou_matrix([(0, 0, 10, 10)], [(0, 0, 10, 10), (5, 0, 15, 10), (20, 20, 30, 30),
                                         (0, 0, 0, 0)])
    assert ious[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0, 0.0])


def test_a_tile_matches_the_box_it_overlaps_most_when_iou_is_at_least_half():
    tiles = [_det((0, 0, 256, 256), 'esca'), _det((256, 0, 512, 256), 'esca'),
             _det((512, 0, 768, 256), 'esca')]
    truth = [GroundTruthBox((20.0, 0.0, 276.0, 256.0), 'esca'),  # IoU 0.85 with tile 0
             GroundTruthBox((300.0, 0.0, 556.0, 256.0), 'healthy'),  # IoU 0.71 with tile 1
             GroundTruthBox((640.0, 0.0, 896.0, 256.0), 'esca')]  # IoU 0.33 with tile 2
    assert list(match_tiles(tiles, truth)) == [0, 1, None]
    evaluator = TileEvaluator(LABELS)
    evaluator.add_frame(tiles, truth)
    report = evaluator.report()
    assert report['count'] == 2 and report['accuracy'] == 0.5
    assert report['tiles_without_ground_truth'] == 1
    assert report['ground_truth_boxes_unmatched'] == 1


def test_unknown_tiles_count_as_wrong():
    evaluator = TileEvaluator(LABELS)
    box = (0, 0, 10, 10)
    evaluator.add_frame([_det(box, 'esca', unknown=True)],
                        [GroundTruthBox((0.0, 0.0, 10.0, 10.0), 'esca')])
    report = evaluator.report()
    assert report['accuracy'] == 0.0 and report['unknown_count'] == 1
    assert report['per_class']['esca']['support'] == 1


def test_latency_percentiles_are_within_a_bin_of_the_exact_ones():
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=2.5, sigma=0.6, size=20000)
    histogram = LatencyHistogram()
    for value in values:
        histogram.add(float(value))
    ordered = np.sort(values)
    for q in (50, 95, 99):
        exact = float(ordered[math.ceil(q / 100 * len(values)) - 1])  # nearest rank
        assert histogram.percentile(q) == pytest.approx(exact, rel=0.006), q
    summary = histogram.summary()
    assert summary['count'] == 20000
    assert summary['mean'] == pytest.approx(values.mean())
    assert summary['max'] == pytest.approx(values.max())
    assert LatencyHistogram().summary() == {'count': 0}
    one = LatencyHistogram()
    one.add(7.0)
    assert one.percentile(50) == 7.0 and one.percentile(99) == 7.0
