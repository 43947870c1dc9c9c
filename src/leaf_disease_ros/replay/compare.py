"""
Two models side by side on one recording: ``leaf-disease-replay BAG --model A --compare-model B``.

:class:`ModelComparison` is a frame observer of :mod:`.runner`: for every frame the
replay processes with the main model (A), it classifies **the same tiles** with the
second model (B): the tiling and the vegetation gate come from the parameters, not
the model, so both see identical boxes. Each model keeps its own card's thresholds
(``unknown_threshold`` / ``disease_score_threshold`` at -1), or both take the values
the parameters set. Positions come from A's frame (the same stamp and fixes).

It accumulates, in bounded memory, per model: tiles per label, unknown, findings per
label and how many pass the evidence rule (:mod:`leaf_disease_ros.geo.evidence`), the
map features they merge into, and the tile accuracy when the bag has ground truth
(:class:`~leaf_disease_ros.replay.evaluation.TileEvaluator`); and for the pair the tile
**agreement matrix** (rows: A's label, columns: B's, ``unknown`` included) with the
share of tiles given the same label and the same finding decision.
:meth:`ModelComparison.section` turns it into the report's ``comparison`` member of
``metrics.json`` and a section of ``report.md``; without ``--compare-model`` the report
is the single-model one.
"""

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from leaf_disease_ros.geo.evidence import EvidenceTracker
from leaf_disease_ros.geo.mapping import features_per_label, FindingMerger, Sighting
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.metrics import format_figure
from leaf_disease_ros.perception.model_card import UNKNOWN_LABEL
from leaf_disease_ros.perception.pipeline import Detector, FrameResult
from leaf_disease_ros.replay.evaluation import TileEvaluator
from leaf_disease_ros.replay.report import ReportSection
from leaf_disease_ros.ros.conversions import GroundTruthBox

SECTION_KEY = 'comparison'
ROLES = ('main', 'compared')


class _ModelTally:
    """What one model said about the compared tiles."""

    def __init__(self, labels: Sequence[str], params: Mapping[str, Any],
                 with_truth: bool) -> None:
        self.labels = tuple(labels)
        self.tiles_by_label: Dict[str, int] = {}
        self.tiles = 0
        self.unknown = 0
        self.findings_by_label: Dict[str, int] = {}
        self.confirmed_by_label: Dict[str, int] = {}
        self.evidence = EvidenceTracker(params['evidence_min_sightings'],
                                        params['evidence_window_frames'],
                                        params['evidence_radius_m'])
        self.merger = FindingMerger(params['merge_radius_m'])
        self.evaluator = TileEvaluator(labels) if with_truth else None

    def add(self, result: FrameResult, truth: Optional[List[GroundTruthBox]]) -> None:
        confirmed = self.evidence.update(result)
        tag = result.geotag.geotag
        for index, detection in enumerate(result.detections):
            self.tiles += 1
            self.tiles_by_label[detection.label] = self.tiles_by_label.get(detection.label,
                                                                           0) + 1
            self.unknown += int(detection.is_unknown)
            if not detection.is_finding:
                continue
            label = detection.label
            self.findings_by_label[label] = self.findings_by_label.get(label, 0) + 1
            if index in confirmed:
                self.confirmed_by_label[label] = self.confirmed_by_label.get(label, 0) + 1
            if tag is not None:
                self.merger.add(Sighting(label, detection.score, tag.latitude_deg,
                                         tag.longitude_deg, result.stamp_ns, index in confirmed))
        if self.evaluator is not None and truth is not None:
            self.evaluator.add_frame(result.detections, truth)

    def summary(self) -> Dict[str, Any]:
        features = self.merger.features()
        by_label, confirmed = features_per_label(features)
        accuracy = None
        if self.evaluator is not None and self.evaluator.pair_counts.sum():
            report = self.evaluator.report()
            accuracy = {key: report[key] for key in ('accuracy', 'macro_f1', 'count',
                                                     'unknown_count')}
            accuracy['recall'] = {label: report['per_class'][label]['recall']
                                  for label in report['labels']}
            accuracy['ground_truth_labels_not_in_model'] = \
                report['ground_truth_labels_not_in_model']
        return {
            'labels': list(self.labels),
            'tiles': self.tiles,
            'tiles_by_label': dict(sorted(self.tiles_by_label.items())),
            'unknown': self.unknown,
            'unknown_rate': self.unknown / self.tiles if self.tiles else 0.0,
            'findings': sum(self.findings_by_label.values()),
            'findings_by_label': dict(sorted(self.findings_by_label.items())),
            'findings_confirmed': sum(self.confirmed_by_label.values()),
            'findings_confirmed_by_label': dict(sorted(self.confirmed_by_label.items())),
            'features': len(features),
            'features_by_label': dict(sorted(by_label.items())),
            'features_confirmed_by_label': dict(sorted(confirmed.items())),
            'accuracy': accuracy,
        }


class ModelComparison:
    """Classifies the replay's tiles with a second model and compares (module docstring)."""

    def __init__(self, backend: Any, main_card_labels: Sequence[str],
                 params: Mapping[str, Any], with_truth: bool, model_path: str = '') -> None:
        """
        Compare the replay's main model (labels ``main_card_labels``) with ``backend``.

        :param with_truth: the bag has ground truth (score both models).
        """
        self._backend = backend
        self.detector = Detector(backend, backend.card, DetectorConfig.from_parameters(params))
        facts = backend.describe()
        self.model = {'model': facts.get('model', backend.card.name),
                      'model_id': facts.get('model_id', ''),
                      'model_path': os.path.abspath(model_path) if model_path else '',
                      'unknown_threshold': self.detector.unknown_threshold(),
                      'finding_threshold': self.detector.finding_threshold(),
                      'finding_score': backend.card.finding_score}
        self._main = _ModelTally(main_card_labels, params, with_truth)
        self._other = _ModelTally(backend.card.labels, params, with_truth)
        self._rows = tuple(main_card_labels) + (UNKNOWN_LABEL,)
        self._columns = tuple(backend.card.labels) + (UNKNOWN_LABEL,)
        self._row_index = {label: i for i, label in enumerate(self._rows)}
        self._column_index = {label: i for i, label in enumerate(self._columns)}
        self.agreement = np.zeros((len(self._rows), len(self._columns)), dtype=np.int64)
        self.same_finding = 0
        self.tiles_not_compared = 0
        self.frames = 0

    @classmethod
    def load(cls, model_path: str, params: Mapping[str, Any], main_labels: Sequence[str],
             with_truth: bool) -> 'ModelComparison':
        """
        Load the second model with the replay's backend parameters.

        :raises ModelLoadError: the model cannot be loaded (a ModelCardError for its card).
        """
        backend = load_backend(model_path, params['backend'],
                               onnx_provider=params['onnx_provider'],
                               intra_op_threads=params['onnx_intra_op_threads'],
                               max_batch=params['max_batch'])
        try:
            return cls(backend, main_labels, params, with_truth, model_path)
        except BaseException:
            backend.close()
            raise

    def close(self) -> None:
        """Release the second model's backend."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def observe(self, image_bgr: np.ndarray, result: FrameResult,
                truth: Optional[List[GroundTruthBox]]) -> None:
        """Classify the frame's tiles with the second model and tally both (runner observer)."""
        other = self.detector.process(image_bgr, result.stamp_ns, None)
        other = dataclasses.replace(other, geotag=result.geotag)
        self.frames += 1
        self._main.add(result, truth)
        self._other.add(other, truth)
        boxes = {d.box_xyxy_px: d for d in other.detections}
        for mine in result.detections:
            theirs = boxes.get(mine.box_xyxy_px)
            if theirs is None:  # only if the parameters changed between the two (never here)
                self.tiles_not_compared += 1
                continue
            self.agreement[self._row_index[mine.label], self._column_index[theirs.label]] += 1
            self.same_finding += int(mine.is_finding == theirs.is_finding)

    def metrics(self, main_model: Mapping[str, Any]) -> Dict[str, Any]:
        """Return the ``comparison`` member of ``metrics.json`` (``main_model``: the state's)."""
        compared = int(self.agreement.sum())
        same = sum(int(self.agreement[self._row_index[label], self._column_index[label]])
                   for label in set(self._rows) & set(self._columns))
        return {
            'models': {'main': {key: main_model.get(key) for key in
                                ('model', 'model_id', 'model_path', 'unknown_threshold',
                                 'finding_threshold', 'finding_score')},
                       'compared': dict(self.model)},
            'frames': self.frames,
            'tiles_compared': compared,
            'tiles_not_compared': self.tiles_not_compared,
            'same_label': same,
            'same_label_rate': same / compared if compared else 0.0,
            'same_finding_decision_rate': self.same_finding / compared if compared else 0.0,
            'agreement': {'rows_main': list(self._rows), 'columns_compared': list(self._columns),
                          'matrix': self.agreement.tolist()},
            'per_model': {'main': self._main.summary(), 'compared': self._other.summary()},
        }

    def section(self, main_model: Mapping[str, Any]) -> ReportSection:
        """Return the comparison as a report section: metrics and report.md lines."""
        metrics = self.metrics(main_model)
        return ReportSection(SECTION_KEY, metrics, tuple(comparison_lines(metrics)))


def _name(model: Mapping[str, Any]) -> str:
    return f"{model.get('model') or '?'} (`{model.get('model_id') or ''}`)"


def _counts(counts: Mapping[str, int]) -> str:
    return ', '.join(f'{label} {count}' for label, count in counts.items()) or 'none'


def comparison_lines(metrics: Mapping[str, Any]) -> List[str]:
    """Return the report.md section of a comparison."""
    main, other = metrics['models']['main'], metrics['models']['compared']
    per = metrics['per_model']
    lines = [f'## Comparison: {_name(main)} (main) and {_name(other)}', '',
             f"Both models classified the same {metrics['tiles_compared']} tiles of "
             f"{metrics['frames']} frames (tiling and vegetation gate from the parameters). "
             f"Same label on {100 * metrics['same_label_rate']:.1f} % of the tiles, same "
             f"finding decision on {100 * metrics['same_finding_decision_rate']:.1f} %.", '',
             '| | main | compared |', '|---|---|---|',
             f"| thresholds (unknown / finding) | {main['unknown_threshold']:.3g} / "
             f"{main['finding_threshold']:.3g} | {other['unknown_threshold']:.3g} / "
             f"{other['finding_threshold']:.3g} |",
             f"| finding score | {main.get('finding_score') or 'top_label'} | "
             f"{other.get('finding_score') or 'top_label'} |"]
    rows = (('tiles per label', lambda s: _counts(s['tiles_by_label'])),
            ('unknown', lambda s: f"{s['unknown']} ({100 * s['unknown_rate']:.1f} %)"),
            ('findings (diseased tiles) per label', lambda s: _counts(s['findings_by_label'])),
            ('findings confirmed by evidence',
             lambda s: f"{s['findings_confirmed']} of {s['findings']}"),
            ('map features per label', lambda s: _counts(s['features_by_label'])),
            ('confirmed map features', lambda s: _counts(s['features_confirmed_by_label'])))
    for title, cell in rows:
        lines.append(f"| {title} | {cell(per['main'])} | {cell(per['compared'])} |")
    if per['main']['accuracy'] is not None or per['compared']['accuracy'] is not None:
        def accuracy(summary: Mapping[str, Any]) -> str:
            acc = summary['accuracy']
            if acc is None:
                return '-'
            if acc['accuracy'] is None:
                return 'nothing scored'
            return (f"{acc['accuracy']:.4f} / {acc['macro_f1']:.4f} ({acc['count']} tiles; "
                    'recall ' + ', '.join(f'{k} {format_figure(v, 2)}'
                                          for k, v in acc['recall'].items()) + ')')
        lines.append(f"| tile accuracy / macro-F1 vs ground truth | {accuracy(per['main'])} | "
                     f"{accuracy(per['compared'])} |")
    agreement = metrics['agreement']
    columns = agreement['columns_compared']
    lines += ['', 'Tile agreement (rows: main model, columns: compared model):', '',
              '| main \\ compared | ' + ' | '.join(columns) + ' |',
              '|---' * (len(columns) + 1) + '|']
    for label, row in zip(agreement['rows_main'], agreement['matrix']):
        lines.append(f'| {label} | ' + ' | '.join(str(v) for v in row) + ' |')
    lines.append('')
    return lines
