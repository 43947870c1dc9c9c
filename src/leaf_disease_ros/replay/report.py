"""
The replay's report folder: metrics.json, report.md, figures, maps.

:func:`build_metrics` turns a :class:`~leaf_disease_ros.replay.runner.ReplayState` into
the JSON document of ``metrics.json`` (the figures of record), :func:`format_markdown`
renders the same figures for people, and :func:`write_report` writes every file
atomically (temp file + rename):

=========================  ======================================================
``metrics.json``           every figure below, machine-readable
``report.md``              the same for people
``confusion_matrix.png``   tiles against ground truth (only with ground truth)
``map.png``                findings on a local metric grid, with the GPS track
``findings.geojson``       merged disease findings, RFC 7946 (QGIS, geojson.io)
``findings.kml``           the same in KML 2.2 (Google Earth), plus the track
``report.html``            one self-contained page: summary, confusion matrix, map,
                           gallery with saliency (:mod:`.report_html`)
``detections/``            the output bag, written by the runner (:mod:`.output_bag`)
=========================  ======================================================
"""

from dataclasses import dataclass
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from leaf_disease_ros.geo.mapping import (features_per_label, write_geojson, write_kml,
                                          write_map_png)
from leaf_disease_ros.perception.atomic_io import atomic_write_json, atomic_write_text
from leaf_disease_ros.perception.metrics import format_figure, macro_average_note
from leaf_disease_ros.perception.plots import write_confusion_matrix_png
from leaf_disease_ros.perception.positions import (NO_POSITION_REASONS, REASON_INTERPOLATED,
                                                   REASON_NEAREST)
from leaf_disease_ros.replay.evaluation import accuracy_text
from leaf_disease_ros.replay.output_bag import mcap_file
from leaf_disease_ros.replay.runner import ReplayState
from leaf_disease_ros.ros.diagnostics import NOT_ADAPTED

METRICS_FILE = 'metrics.json'
REPORT_FILE = 'report.md'
CONFUSION_FILE = 'confusion_matrix.png'
MAP_FILE = 'map.png'
GEOJSON_FILE = 'findings.geojson'
KML_FILE = 'findings.kml'
REPORTED_PARAMETERS = (
    'model_path', 'backend', 'tiling', 'tile_size_px', 'tile_stride_px',
    'min_vegetation_fraction', 'min_leaf_area_fraction', 'vegetation_exg_threshold', 'top_k',
    'unknown_threshold',
    'disease_score_threshold', 'max_fix_gap_s', 'max_fix_age_s', 'max_fix_speed_mps',
    'lever_arm_m', 'merge_radius_m', 'max_batch', 'evidence_min_sightings',
    'evidence_window_frames', 'evidence_radius_m', 'domain_window_tiles',
    'domain_unknown_warn_fraction', 'domain_far_warn_fraction', 'domain_min_tiles',
    'hold_findings_out_of_domain')


def parameters_in_force(parameters: Dict[str, Any], model: Dict[str, Any]
                        ) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """
    Return the reported parameters' values in force and, for those not as given, why.

    A parameter that defers (``unknown_threshold`` and ``disease_score_threshold``
    negative, ``model_path`` empty, ``backend: auto``, ``max_batch`` above an engine's
    profile) is shown with what the run used, never the placeholder: the model
    card's or site's threshold, the shipped model's file name, the backend chosen.

    :param parameters: the validated parameters of the run.
    :param model: the run's model facts (backend ``describe()`` plus the thresholds in
        force, as :func:`~leaf_disease_ros.replay.runner.run_replay` records them).
    :returns: ``(values, sources)``: name -> value for every reported parameter, and
        name -> where the value came from for those that differ from the given one.
    """
    values = {name: parameters[name] for name in REPORTED_PARAMETERS}
    sources: Dict[str, str] = {}
    model_file = model.get('engine_path') or model.get('model_path') or ''
    if not parameters['model_path'] and model_file:
        values['model_path'] = os.path.basename(model_file)
        sources['model_path'] = 'empty: the shipped model'
    if parameters['backend'] == 'auto' and model.get('backend'):
        values['backend'] = model['backend']
        sources['backend'] = 'auto'
    if parameters['unknown_threshold'] < 0 and 'unknown_threshold' in model:
        values['unknown_threshold'] = model['unknown_threshold']
        sources['unknown_threshold'] = "negative: the model card's"
    if parameters['disease_score_threshold'] < 0 and 'finding_threshold' in model:
        values['disease_score_threshold'] = model['finding_threshold']
        sources['disease_score_threshold'] = (
            f"negative: the {model.get('finding_threshold_from', 'model card')}'s")
    if model.get('max_batch') and model['max_batch'] != parameters['max_batch']:
        values['max_batch'] = model['max_batch']
        sources['max_batch'] = f"{parameters['max_batch']} given, capped by the backend"
    return values, sources


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def build_metrics(state: ReplayState) -> Dict[str, Any]:
    """Return the JSON document of ``metrics.json``."""
    processed = state.frames_processed
    with_position = sum(state.geotag_reasons.get(r, 0)
                        for r in (REASON_INTERPOLATED, REASON_NEAREST))
    duration_s = 0.0
    if state.first_log_time_ns is not None and state.last_log_time_ns is not None:
        duration_s = (state.last_log_time_ns - state.first_log_time_ns) / 1e9
    features = state.merger.features()
    features_by_label, confirmed_by_label = features_per_label(features)
    stage_means = {stage: (total / processed if processed else 0.0)
                   for stage, total in state.stage_totals_ms.items()}
    accuracy = state.evaluator.report() if state.evaluator is not None else None
    in_force, sources = parameters_in_force(state.parameters, state.model)
    if accuracy is not None:
        accuracy['frames_without_ground_truth'] = state.frames_without_ground_truth
        accuracy['frames_unstamped_not_scored'] = state.frames_unstamped_without_ground_truth
        accuracy['ground_truth_messages'] = state.ground_truth_messages
    return {
        'bag': {
            'path': state.bag_path,
            'storage': state.bag_storage,
            'complete': not state.truncated_reason,
            'truncated_reason': state.truncated_reason,
            'duration_read_s': duration_s,
            'image_topic': state.topics.image,
            'image_type': state.topics.image_type,
            'gps_topic': state.topics.fix,
            'ground_truth_topic': state.topics.ground_truth,
        },
        'notes': list(state.notes),
        'model': state.model,
        'labels': list(state.labels),
        # the values in force; parameters_given holds what was set, the sources why
        'parameters': in_force,
        'parameters_given': {name: state.parameters[name] for name in REPORTED_PARAMETERS},
        'parameter_sources': sources,
        'frames': {
            'in_bag': state.frames_in_bag,
            'read': state.frames_read,
            'processed': processed,
            'skipped': dict(sorted(state.skipped.items())),
            'skipped_total': sum(state.skipped.values()),
            'examples': list(state.skipped_examples),
            'processed_before_fix_window': state.frames_queued_early,
            'unstamped': state.frames_unstamped,
        },
        'tiles': {
            'total': state.tiles_total,
            'classified': state.tiles_classified,
            'gated_out': state.tiles_gated,
            'unknown': state.tiles_unknown,
            'unknown_rate': _share(state.tiles_unknown, state.tiles_classified),
            'background': state.tiles_background,
            'background_rate': _share(state.tiles_background, state.tiles_classified),
            'gated_out_rate': _share(state.tiles_gated, state.tiles_total),
            'by_label': dict(sorted(state.tiles_by_label.items())),
        },
        'domain': _domain_metrics(state),
        'accuracy': accuracy,
        'geotag': {
            'gps_topic': state.topics.fix,
            'fixes_read': state.fixes_read,
            'fixes_by_status': dict(sorted(state.fixes_by_status.items())),
            'fixes_undecodable': state.fixes_undecodable,
            'fix_buffer': state.fix_buffer_stats,
            'frames_with_position': with_position,
            'coverage': _share(with_position, processed),
            'by_reason': {reason: state.geotag_reasons.get(reason, 0)
                          for reason in (REASON_INTERPOLATED, REASON_NEAREST)
                          + NO_POSITION_REASONS},
            'positions_by_fix_status': dict(sorted(state.positions_by_status.items())),
            'fixes_rejected': {k: v for k, v in state.fix_buffer_stats.items()
                               if k.startswith('rejected_') and v},
            'frames_outside_utm': state.frames_outside_utm,
            'utm_zone': _utm_zone_metrics(state),
            'fixes_late': state.fixes_late,
            'max_fix_delay_s': state.max_fix_delay_ns / 1e9,
        },
        'placement': _placement_metrics(state),
        'findings': {
            'sightings': state.findings,
            'with_position': state.findings - state.findings_without_position,
            'without_position': state.findings_without_position,
            'outside_utm': state.findings_outside_utm,
            'by_label': dict(sorted(state.findings_by_label.items())),
            'merge_radius_m': state.merger.merge_radius_m,
            'features': len(features),
            'features_by_label': dict(sorted(features_by_label.items())),
            'confirmed': state.findings_confirmed,
            'unconfirmed': state.findings - state.findings_confirmed,
            'confirmed_by_label': dict(sorted(state.findings_confirmed_by_label.items())),
            'features_confirmed': sum(confirmed_by_label.values()),
            'features_unconfirmed': len(features) - sum(confirmed_by_label.values()),
            'features_confirmed_by_label': dict(sorted(confirmed_by_label.items())),
            'held': _held_metrics(state),
            'evidence': {'min_sightings': state.parameters['evidence_min_sightings'],
                         'window_frames': state.parameters['evidence_window_frames'],
                         'radius_m': state.parameters['evidence_radius_m']},
        },
        'latency_ms': {
            'pipeline': state.latency_pipeline.summary(),
            'decode': state.latency_decode.summary(),
            'frame': state.latency_frame.summary(),
            'stage_means': stage_means,
            'note': 'pipeline: Detector.process (tiling, preprocess, inference, '
                    'postprocess, geotag); frame: image decode + pipeline. Percentiles '
                    'from a log histogram (within 0.6 %).',
        },
        'throughput': {
            'wall_s': state.wall_s,
            'frames_per_s': _share(processed, state.wall_s),
            'tiles_per_s': _share(state.tiles_classified, state.wall_s),
            'inference_workers': state.inference_workers,
        },
        'outputs': {
            'detections_bag': os.path.basename(state.output_bag) if state.output_bag else None,
            'detections_mcap': (os.path.relpath(mcap_file(state.output_bag),
                                                os.path.dirname(state.output_bag))
                                if state.output_bag else None),
            'detections_bag_messages': state.output_bag_messages,
        },
    }


def _held_metrics(state: ReplayState) -> Dict[str, Any]:
    """Return the findings the domain check held back (never on the map)."""
    collecting = state.findings_held_collecting
    out = state.findings_held - collecting
    parts = []
    if out:
        parts.append(f'{out} while the stream was out of the domain: {NOT_ADAPTED}')
    if collecting:
        parts.append(f'{collecting} while the domain check was collecting its first '
                     f"{state.parameters['domain_min_tiles']} tiles")
    return {
        'count': state.findings_held,
        'while_out_of_domain': out,
        'while_collecting': collecting,
        'frames': state.frames_held,
        'by_label': dict(sorted(state.findings_held_by_label.items())),
        'hold_findings_out_of_domain': state.parameters['hold_findings_out_of_domain'],
        'reason': '; '.join(parts),
    }


def _utm_zone_metrics(state: ReplayState) -> Optional[Dict[str, Any]]:
    zone = state.utm.zone
    if zone is None:
        return None
    return {'zone': zone.name, 'number': zone.number, 'hemisphere': zone.hemisphere,
            'epsg': zone.epsg,
            'from': 'utm_zone parameter' if state.utm.from_parameter else 'first valid fix'}


def utm_zone_sentence(utm_zone: Optional[Mapping[str, Any]]) -> str:
    """Return the report's sentence on the UTM zone of ``geo_detections`` (metrics' form)."""
    if utm_zone is None:
        return ('UTM zone of `geo_detections`: none (no valid fix within UTM, 80 S to 84 N; '
                'the utm_zone parameter sets one in advance).')
    return (f"UTM zone of `geo_detections` (frame `utm`, UTM metres): {utm_zone['zone']} "
            f"(EPSG:{utm_zone['epsg']}, WGS 84 / UTM zone {utm_zone['number']}"
            f"{utm_zone['hemisphere'][0].upper()}), from the {utm_zone['from']}, for the "
            'whole run; the GeoJSON and KML are in latitude/longitude (EPSG:4326).')


def _domain_metrics(state: ReplayState) -> Dict[str, Any]:
    """Return the node's out-of-domain check as the replay saw it."""
    last = state.domain.shares() if state.domain is not None else None
    return {
        'window_tiles': state.parameters['domain_window_tiles'],
        'unknown_warn_fraction': state.parameters['domain_unknown_warn_fraction'],
        'far_warn_fraction': state.parameters['domain_far_warn_fraction'],
        'min_tiles': state.parameters['domain_min_tiles'],
        'far_share_peak': state.domain_far_share_peak,
        'frames_judged': state.domain_frames_judged,
        'frames_warn': state.domain_frames_warn,
        'frames_warn_rate': _share(state.domain_frames_warn, state.domain_frames_judged),
        'unknown_share_peak': state.domain_unknown_share_peak,
        'last_window': None if last is None else {
            'frames': last.frames, 'classified': last.classified,
            'unknown_share': last.unknown_share, 'far_share': last.far_share,
            'background_share': last.background_share,
            'gated_out_share': last.gated_out_share, 'finding_share': last.finding_share},
    }


def _domain_lines(metrics: Dict[str, Any]) -> List[str]:
    domain = metrics['domain']
    tiles = metrics['tiles']
    held = metrics['findings']['held']
    lines = ['## Out-of-domain check', '',
             f"Over the whole bag: {_pct(tiles['unknown_rate'])} of the classified tiles fell "
             f"to unknown, {_pct(tiles['background_rate'])} to background labels, and "
             f"{_pct(tiles['gated_out_rate'])} of all tiles were gated out (vegetation and "
             'leaf area).', '']
    if not domain['frames_judged']:
        lines += [f"The node judges from {domain['min_tiles']} classified tiles on; the bag "
                  'has fewer, so it would not have judged it.', '']
    else:
        lines += [f"The node's diagnostics judge the last {domain['window_tiles']} classified "
                  f"tiles (from {domain['min_tiles']} on): the unknown share peaked at "
                  f"{_pct(domain['unknown_share_peak'])} (WARN from "
                  f"{_pct(domain['unknown_warn_fraction'])}), the share far from the domain "
                  f"reference at {_pct(domain['far_share_peak'])} (WARN from "
                  f"{_pct(domain['far_warn_fraction'])}); the `domain` status would have "
                  f"warned after {domain['frames_warn']} of {domain['frames_judged']} "
                  'frames.', '']
    if domain['frames_warn']:
        lines += [f'**{NOT_ADAPTED}.** To adapt the model: `leaf-disease-site BAG --out SITE` '
                  'on a recorded pass of a row you believe healthy, then replay (or start '
                  'the node) with the site (`--site SITE`, `site_path:=SITE`).', '']
    lines += ['## Findings held back', '']
    if held['count']:
        lines += [f"{held['count']} diseased tiles on {held['frames']} frames were held back "
                  'from the map, the GeoJSON / KML and `geo_detections` (never released '
                  f"later): {held['reason']}. By label: "
                  + ', '.join(f'{k} {v}' for k, v in held['by_label'].items()) + '.', '']
    else:
        lines += ['None: the domain check held no finding back'
                  + ('' if held['hold_findings_out_of_domain'] else
                     ' (hold_findings_out_of_domain is false)') + '.', '']
    return lines


def _macro_words(accuracy: Dict[str, Any]) -> str:
    """Say which classes the macro-F1 averages (``n/a``: a class without samples)."""
    if accuracy.get('accuracy') is None or 'macro_f1_labels' not in accuracy:
        return 'no tile scored'
    return 'macro-F1 ' + (macro_average_note(accuracy) or 'over all classes')


def _param_value(value: Any) -> str:
    """Return a parameter value for a table cell (floats without binary noise)."""
    if isinstance(value, float):
        return f'{value:.6g}'
    return str(value)


def _pct(value: float) -> str:
    return f'{100.0 * value:.1f} %'


def _latency_row(name: str, summary: Dict[str, float]) -> str:
    if not summary.get('count'):
        return f'| {name} | - | - | - | - | - |'
    return (f"| {name} | {summary['p50']:.1f} | {summary['p95']:.1f} | {summary['p99']:.1f} "
            f"| {summary['mean']:.1f} | {summary['max']:.1f} |")


def finding_score_words(model: Dict[str, Any]) -> str:
    """Say what the finding threshold of the run's model card is compared with."""
    if model.get('finding_score') == 'disease_mass':
        return 'a disease probability (all diseases together)'
    return 'a top-label score'


def _evidence_sentence(findings: Dict[str, Any]) -> str:
    evidence = findings['evidence']
    return ('Evidence before navigation: a finding is confirmed (sent on `geo_detections`) '
            f"once its disease was seen on {evidence['min_sightings']} of the last "
            f"{evidence['window_frames']} frames or on {evidence['min_sightings']} frames "
            f"within {evidence['radius_m']:g} m. Confirmed: {findings['confirmed']} of "
            f"{findings['sightings']} diseased tiles; map features confirmed "
            f"{findings['features_confirmed']}, unconfirmed {findings['features_unconfirmed']} "
            '(rings on the map, `confirmed: false` in the GeoJSON).')


def _placement_metrics(state: Any) -> Dict[str, Any]:
    """Return how findings were placed: at the leaf (camera geometry) or the camera."""
    locator = getattr(state, 'locator', None)
    out: Dict[str, Any] = {'camera_info_topic': getattr(state.topics, 'camera_info', None),
                           'camera_info_messages': getattr(state, 'camera_info_messages', 0),
                           'camera_info_rejected': getattr(state, 'camera_info_rejected', 0)}
    if locator is None:
        out.update(enabled=False, camera='', placed={}, not_placed_because={},
                   heading_sources={})
        return out
    report = locator.report()
    out.update(enabled=True, camera=report['camera'],
               placed=dict(sorted(report['placed'].items())),
               not_placed_because=dict(sorted(report['not_placed_because'].items())),
               heading_sources=dict(sorted(report['heading_sources'].items())))
    return out


def format_markdown(metrics: Dict[str, Any]) -> str:
    """Return ``report.md``: the figures of ``metrics.json`` for people."""
    bag = metrics['bag']
    frames = metrics['frames']
    tiles = metrics['tiles']
    geo = metrics['geotag']
    findings = metrics['findings']
    latency = metrics['latency_ms']
    lines: List[str] = [
        '# Replay report', '',
        f"Bag: `{bag['path']}` ({bag['storage']}, {bag['duration_read_s']:.1f} s read)  ",
        f"Model: {metrics['model'].get('model', '?')} "
        f"({metrics['model'].get('backend', '?')}, {metrics['model'].get('model_id', '')})  ",
        f"Topics: image `{bag['image_topic']}` ({bag['image_type']}), GPS "
        f"`{bag['gps_topic'] or 'none'}`, ground truth `{bag['ground_truth_topic'] or 'none'}`",
        '']
    if not bag['complete']:
        lines += [f"**The bag ended early: {bag['truncated_reason']}. The figures cover what "
                  'was read.**', '']
    if metrics['notes']:
        lines += ['Notes:', ''] + [f'- {note}' for note in metrics['notes']] + ['']
    lines += [
        '## Frames and tiles', '',
        '| | count |', '|---|---|',
        f"| frames in the bag | {frames['in_bag']} |",
        f"| frames processed | {frames['processed']} |",
        f"| frames skipped | {frames['skipped_total']} "
        + (f"({', '.join(f'{k}: {v}' for k, v in frames['skipped'].items())})"
           if frames['skipped'] else '') + ' |',
        f"| tiles | {tiles['total']} |",
        f"| tiles classified | {tiles['classified']} |",
        f"| tiles gated out (vegetation) | {tiles['gated_out']} |",
        f"| tiles unknown | {tiles['unknown']} ({_pct(tiles['unknown_rate'])}) |",
        f"| tiles with a background label | {tiles['background']} "
        f"({_pct(tiles['background_rate'])}) |",
        '']
    if frames['examples']:
        lines += ['Examples of skipped input:', ''] + [f'- {e}' for e in frames['examples']]
        lines.append('')
    accuracy = metrics['accuracy']
    lines += ['## Accuracy against ground truth', '']
    if accuracy is None:
        lines += ['The bag has no ground truth: no accuracy figures.', '']
    else:
        lines += [
            'Per tile: a tile is scored against the ground-truth box it overlaps most, when '
            f"IoU >= {accuracy['iou_threshold']}. {accuracy['count']} tiles scored, "
            f"{accuracy['tiles_without_ground_truth']} without a box, "
            f"{accuracy['ground_truth_boxes_unmatched']} boxes without a tile.", '',
            f'**Tile {accuracy_text(accuracy, 4)}** '
            f"({_macro_words(accuracy)}; unknown: {accuracy['unknown_count']}, counted wrong)",
            '',
            '| class | precision | recall | F1 | support |', '|---|---|---|---|---|']
        for label in accuracy['labels']:
            row = accuracy['per_class'][label]
            lines.append(f"| {label} | {format_figure(row['precision'], 3)} | "
                         f"{format_figure(row['recall'], 3)} | {format_figure(row['f1'], 3)} | "
                         f"{row['support']} |")
        labels = accuracy['labels']
        lines += ['', 'Confusion matrix (rows: true, columns: predicted; `unknown` not shown):',
                  '', '| true \\ predicted | ' + ' | '.join(labels) + ' |',
                  '|---' * (len(labels) + 1) + '|']
        for label, row in zip(labels, accuracy['confusion_matrix']):
            lines.append(f'| {label} | ' + ' | '.join(str(v) for v in row) + ' |')
        if accuracy['ground_truth_labels_not_in_model']:
            lines += ['', 'Ground-truth labels the model does not know (not scored): '
                      + ', '.join(f'{k} ({v})' for k, v in
                                  accuracy['ground_truth_labels_not_in_model'].items())]
        lines += ['', f'![confusion matrix]({CONFUSION_FILE})', '']
    lines += _domain_lines(metrics)
    lines += ['## Geotags', '']
    if geo['gps_topic'] is None:
        lines += ['The bag has no GPS topic: no frame has a position, findings are not on '
                  'the map.', '']
    lines += [
        f"Frames with a position: {geo['frames_with_position']} of {frames['processed']} "
        f"({_pct(geo['coverage'])}).", '',
        '| reason | frames |', '|---|---|']
    for reason, count in geo['by_reason'].items():
        lines.append(f'| {reason} | {count} |')
    if geo['fixes_read']:
        lines += ['', 'Fixes read by status: '
                  + ', '.join(f'{k}: {v}' for k, v in geo['fixes_by_status'].items())
                  + '; positions by status: '
                  + (', '.join(f'{k}: {v}' for k, v in geo['positions_by_fix_status'].items())
                     or 'none')]
    if geo['fixes_rejected']:
        lines += ['', 'Fixes rejected where they entered (never used for a position): '
                  + ', '.join(f'{k[len("rejected_"):]}: {v}'
                              for k, v in geo['fixes_rejected'].items())
                  + ' (jump: faster than max_fix_speed_mps '
                  f"{metrics['parameters']['max_fix_speed_mps']:g} m/s)."]
    lines += ['', utm_zone_sentence(geo['utm_zone'])]
    if geo['frames_outside_utm']:
        lines += ['', f"{geo['frames_outside_utm']} frames have a position beyond UTM "
                  "(-80..84 degrees) or about a zone away from the run's UTM zone: their "
                  'findings are on the map and in the GeoJSON/KML, but not in '
                  '`geo_detections` (UTM metres) of the output bag.']
    lines += ['', '## Findings', '',
              f"{findings['sightings']} diseased tiles with "
              f"{finding_score_words(metrics['model'])} >= "
              f"{metrics['model']['finding_threshold']:g} "
              f"({findings['without_position']} without position), merged within "
              f"{findings['merge_radius_m']} m into {findings['features']} map features: "
              + (', '.join(f'{k} {v}' for k, v in findings['features_by_label'].items())
                 or 'none') + '.', '',
              _evidence_sentence(findings), '',
              f'Files: `{GEOJSON_FILE}` (QGIS), `{KML_FILE}` (Google Earth), '
              f'`{MAP_FILE}`:', '', f'![map]({MAP_FILE})', '',
              '## Latency and throughput', '',
              '| ms per frame | p50 | p95 | p99 | mean | max |', '|---|---|---|---|---|---|',
              _latency_row('pipeline', latency['pipeline']),
              _latency_row('image decode', latency['decode']),
              _latency_row('decode + pipeline', latency['frame']), '',
              'Mean per stage (ms): ' + ', '.join(f'{k} {v:.2f}'
                                                  for k, v in latency['stage_means'].items()),
              '',
              f"Throughput: {metrics['throughput']['frames_per_s']:.1f} frames/s, "
              f"{metrics['throughput']['tiles_per_s']:.1f} tiles/s over "
              f"{metrics['throughput']['wall_s']:.1f} s (reading, decoding, inference and "
              'writing the output bag).', '']
    if metrics['outputs']['detections_bag']:
        outputs = metrics['outputs']
        lines += [f"Output bag: `{outputs['detections_bag']}/` "
                  f"({outputs['detections_bag_messages']} messages): "
                  f"`ros2 bag play {outputs['detections_bag']}`, or open "
                  f"`{outputs['detections_mcap']}` in Foxglove.", '']
    sources = metrics['parameter_sources']
    lines += ['## Parameters', '', 'The values in force (a parameter that defers to the model '
              'card, the site or the backend shows what the run used).', '',
              '| name | value in force | from |', '|---|---|---|']
    lines += [f"| {k} | {_param_value(v)} | {sources.get(k, 'given')} |"
              for k, v in metrics['parameters'].items()]
    return '\n'.join(lines) + '\n'


@dataclass(frozen=True)
class ReportSection:
    """An optional part of the report (a harvest, a comparison): its key and its text."""

    key: str  # the member of metrics.json
    metrics: Dict[str, Any]
    markdown: Tuple[str, ...]  # lines appended to report.md


def write_report(state: ReplayState, out_dir: str,
                 sections: Sequence[ReportSection] = ()) -> Dict[str, Any]:
    """
    Write every report file into ``out_dir`` (atomically); return the metrics.

    ``sections`` add a member to ``metrics.json`` and their lines to the end of
    ``report.md`` each; without them the report is the single-model report.
    """
    from leaf_disease_ros.replay.report_html import write_report_html

    os.makedirs(out_dir, exist_ok=True)
    metrics = build_metrics(state)
    for section in sections:
        metrics[section.key] = section.metrics
    if state.gallery is not None:
        metrics['gallery'] = {'per_section': state.gallery.size,
                              **{name: len(tiles) for name, tiles
                                 in state.gallery.sections.items()},
                              'saliency': dict(state.gallery.saliency)}
    if state.tile_sample is not None:
        metrics['tiles_saved'] = state.tile_sample.counts()
    features = state.merger.features()
    track = state.track.segments()
    model_name = metrics['model'].get('model', '')
    accuracy = metrics['accuracy']
    if accuracy is not None:
        write_confusion_matrix_png(
            accuracy['confusion_matrix'], accuracy['labels'],
            os.path.join(out_dir, CONFUSION_FILE),
            title=('tiles vs ground truth: ' + ('nothing scored' if accuracy['accuracy'] is None
                                                else accuracy_text(accuracy))))
    elif os.path.exists(os.path.join(out_dir, CONFUSION_FILE)):
        os.unlink(os.path.join(out_dir, CONFUSION_FILE))  # from an earlier run: misleading
    names = metrics['model'].get('display_names')
    write_map_png(os.path.join(out_dir, MAP_FILE), features, track, state.labels,
                  title=f'disease findings ({model_name}), merge radius '
                        f'{state.merger.merge_radius_m:g} m', display_names=names)
    write_geojson(os.path.join(out_dir, GEOJSON_FILE), features,
                  {'model': model_name, 'merge_radius_m': state.merger.merge_radius_m,
                   'bag': os.path.basename(state.bag_path.rstrip('/')),
                   'evidence': metrics['findings']['evidence']}, display_names=names)
    write_kml(os.path.join(out_dir, KML_FILE), features, track,
              name=f'leaf disease findings: {os.path.basename(state.bag_path.rstrip("/"))}',
              display_names=names)
    text = format_markdown(metrics)
    for section in sections:
        text += '\n' + '\n'.join(section.markdown) + '\n'
    atomic_write_text(os.path.join(out_dir, REPORT_FILE), text)
    write_report_html(out_dir, metrics, state)
    atomic_write_json(os.path.join(out_dir, METRICS_FILE), metrics)
    return metrics
