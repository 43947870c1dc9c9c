"""
``leaf-disease-replay``: replay a rosbag2 recording through the detector; write a report.

Usage::

    leaf-disease-replay [BAG] [--out DIR] [--params-file config/detector.yaml]
                        [--model M.onnx] [--image-topic T] [--fix-topic T] ...
                        [--harvest-tiles DIR [--harvest-max N]] [--compare-model B.onnx]

Without BAG it replays the demo recording shipped with the package with the shipped
model into ``./replay_report``. Parameters come from the defaults of the parameter
table, then ``--params-file`` (the node's ROS params YAML), then the flags. The
logic lives in :mod:`leaf_disease_ros.replay`; this module parses, shows progress on
stderr and prints a summary. ``--harvest-tiles`` also writes the most uncertain tiles
by predicted label for labelling (:mod:`leaf_disease_ros.replay.harvest`, the first
step of docs/adaptation.md); ``--compare-model`` classifies the same tiles with a second
model and adds a comparison to the report (:mod:`leaf_disease_ros.replay.compare`, its
last step).

Exit status: 0 report written; 1 report written but no frame could be processed;
2 usage, bag, model, parameter or output error, or interrupted (Ctrl-C, SIGTERM):
nothing written, ``--out`` is as it was; 3 report written from a bag that ended
early (truncated: the figures cover what was read). The report is built in a staging
folder beside ``--out`` and swapped in complete (:mod:`leaf_disease_ros.replay.report_folder`).
``--out`` replaces only an earlier replay report (marked by its manifest); it and
``--harvest-tiles`` never are, hold or lie inside an input (bag, model, card, params
file) or each other.
"""

import argparse
import os
import re
import signal
import sys
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, TextIO

from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.config import (load_params_file, strict_parameters,
                                                validate_parameters)
from leaf_disease_ros.perception.errors import ConfigError, LeafDiseaseError
from leaf_disease_ros.perception.metrics import macro_average_note
from leaf_disease_ros.perception.model_card import card_path_for_model
from leaf_disease_ros.perception.output_paths import check_outputs_apart, is_write_error
from leaf_disease_ros.replay.compare import ModelComparison
from leaf_disease_ros.replay.demo import demo_bag_path
from leaf_disease_ros.replay.evaluation import accuracy_text
from leaf_disease_ros.replay.gallery import DEFAULT_SIZE as GALLERY_SIZE
from leaf_disease_ros.replay.harvest import DEFAULT_HARVEST_MAX, harvest_lines, TileHarvester
from leaf_disease_ros.replay.report import REPORT_FILE, ReportSection, write_report
from leaf_disease_ros.replay.report_folder import ReportFolder
from leaf_disease_ros.replay.report_html import REPORT_HTML_FILE
from leaf_disease_ros.replay.runner import (DEFAULT_FIX_TOPIC, DEFAULT_GROUND_TRUTH_TOPIC,
                                            DEFAULT_IMAGE_TOPIC, default_inference_workers,
                                            DEFAULT_NODE_NAME, DEFAULT_OUT_DIR, FrameObserver,
                                            Progress, ReplayOptions, run_replay)

#: a ROS 2 node name: the output bag's topics are /<name>/detections...
ROS_NAME = re.compile(r'[A-Za-z][A-Za-z0-9_]*')
EXIT_OK = 0
EXIT_NOTHING_PROCESSED = 1
EXIT_ERROR = 2
EXIT_TRUNCATED = 3

# flag -> parameter of the table (core/config.py)
FLAG_PARAMETERS = {
    'model': 'model_path', 'backend': 'backend', 'onnx_provider': 'onnx_provider',
    'threads': 'onnx_intra_op_threads', 'max_batch': 'max_batch', 'tiling': 'tiling',
    'tile_size': 'tile_size_px', 'tile_stride': 'tile_stride_px',
    'min_vegetation_fraction': 'min_vegetation_fraction', 'top_k': 'top_k',
    'unknown_threshold': 'unknown_threshold',
    'disease_threshold': 'disease_score_threshold', 'max_fix_gap': 'max_fix_gap_s',
    'max_fix_age': 'max_fix_age_s', 'merge_radius': 'merge_radius_m',
    'lever_arm': 'lever_arm_m', 'site': 'site_path',
}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog='leaf-disease-replay',
        description='Replay a rosbag2 recording (sqlite3 or MCAP) through the leaf disease '
                    'detector and write a report: accuracy against ground truth, geotag '
                    'coverage, latency, a disease map (PNG, GeoJSON, KML), an MCAP bag '
                    'of the detections and report.html (map, gallery with saliency).',
        epilog='Exit status: 0 done; 1 no frame could be processed; 2 usage, bag, model, '
               'parameter or output error, or interrupted (nothing written, --out is as it '
               'was); 3 the bag ended early (report covers what was read).')
    parser.add_argument('bag', nargs='?', default='',
                        help='rosbag2 folder or .mcap/.db3 file (default: the shipped demo)')
    parser.add_argument('--out', default=DEFAULT_OUT_DIR,
                        help='report folder (default: ./%(default)s)')
    parser.add_argument('--params-file', default='',
                        help="the node's parameter YAML (e.g. config/detector.yaml); flags "
                             'override it')
    parser.add_argument('--params-node', default='',
                        help='node name whose section of --params-file to read (default: '
                             '--node-name; /** sections always apply)')
    topics = parser.add_argument_group('topics')
    topics.add_argument('--image-topic', default='',
                        help=f'sensor_msgs/Image or CompressedImage (default: '
                             f"{DEFAULT_IMAGE_TOPIC}, else the bag's only image topic)")
    topics.add_argument('--fix-topic', default='',
                        help=f'sensor_msgs/NavSatFix (default: {DEFAULT_FIX_TOPIC}, else the '
                             "bag's only NavSatFix topic)")
    topics.add_argument('--ground-truth-topic', default='',
                        help=f'vision_msgs/Detection2DArray (default: '
                             f'{DEFAULT_GROUND_TRUTH_TOPIC})')
    topics.add_argument('--camera-info-topic', default='',
                        help='sensor_msgs/CameraInfo of the camera (default: camera_info beside '
                             "the image topic, as image_transport pairs them, else the bag's "
                             'only CameraInfo topic; none: the camera_hfov_deg fallback). The '
                             'mount is the mount_* parameters (--param, --params-file)')
    topics.add_argument('--node-name', default=DEFAULT_NODE_NAME,
                        help='name of the node whose output topics the output bag holds '
                             '(/NAME/detections...; default: %(default)s, as the node)')
    model = parser.add_argument_group('model (parameters model_path, backend, ...)')
    model.add_argument('--model', help='ONNX model with its card beside it (default: shipped)')
    model.add_argument('--site', help='site file or folder from leaf-disease-site (parameter '
                       'site_path): the model adapted to this vineyard')
    model.add_argument('--backend', choices=('auto', 'onnxruntime', 'tensorrt'))
    model.add_argument('--onnx-provider', choices=('auto', 'cpu', 'cuda'))
    model.add_argument('--threads', type=int, help='ONNX Runtime intra-op threads (0: auto)')
    model.add_argument('--max-batch', type=int, help='largest batch of tiles per call')
    tiling = parser.add_argument_group('tiling and thresholds')
    tiling.add_argument('--tiling', choices=('grid', 'none'))
    tiling.add_argument('--tile-size', type=int, help='tile side, px')
    tiling.add_argument('--tile-stride', type=int, help='tile step, px')
    tiling.add_argument('--min-vegetation-fraction', type=float)
    tiling.add_argument('--top-k', type=int)
    tiling.add_argument('--unknown-threshold', type=float,
                        help="negative: the model card's threshold")
    tiling.add_argument('--disease-threshold', type=float,
                        help='minimum score of a diseased tile to be a finding')
    gps = parser.add_argument_group('GPS and map')
    gps.add_argument('--max-fix-gap', type=float, help='s, interpolate between fixes this close')
    gps.add_argument('--max-fix-age', type=float, help='s, else nearest fix this close')
    gps.add_argument('--lever-arm', type=float, nargs=3, metavar=('X', 'Y', 'Z'),
                     help='camera offset from the antenna, m (x forward, y left, z up)')
    gps.add_argument('--merge-radius', type=float,
                     help='m, sightings of one label closer than this are one map feature')
    parser.add_argument('--param', action='append', default=[], metavar='NAME=VALUE',
                        help='any parameter of config/detector.yaml (value in YAML syntax); '
                             'repeatable')
    run = parser.add_argument_group('run')
    run.add_argument('--max-frames', type=int, default=0, help='stop after N frames (0: all)')
    run.add_argument('--no-output-bag', action='store_true',
                     help='do not write the output bag detections/')
    run.add_argument('--no-progress', action='store_true', help='no progress bar')
    adapt = parser.add_argument_group('adaptation (docs/adaptation.md)')
    adapt.add_argument('--harvest-tiles', metavar='DIR', default='',
                       help='also write the classified tiles, most uncertain first, into '
                            'DIR/<predicted label>/ with DIR/index.csv, for labelling (DIR '
                            'must be new or empty)')
    adapt.add_argument('--harvest-max', type=int, default=DEFAULT_HARVEST_MAX, metavar='N',
                       help='keep at most the N most uncertain tiles (default: %(default)s)')
    adapt.add_argument('--compare-model', metavar='B.onnx', default='',
                       help='also classify the same tiles with this model (its card beside '
                            'it) and add a side-by-side comparison to the report')
    run.add_argument('--gallery', type=int, default=GALLERY_SIZE, metavar='N',
                     help='report.html: N most confident findings and N most uncertain tiles '
                          'with saliency (0: no gallery; default %(default)s)')
    run.add_argument('--inference-workers', type=int, default=0, metavar='N',
                     help='frames inferred at once, each on its own thread with one ONNX '
                          'Runtime thread (unless --threads says otherwise); 0 (default): '
                          'one per CPU core; 1: one frame at a time, as the node does. '
                          'TensorRT infers one frame at a time whatever this says')
    run.add_argument('--save-tiles', type=int, default=0, metavar='N',
                     help='keep a sample of N tiles per label in OUT/tiles/<label>/ '
                          '(ground-truth label when the bag has one) for leaf-disease-embed')
    args = parser.parse_args(argv)
    if args.max_frames < 0:
        parser.error(f'--max-frames must be >= 0 (0: all frames), got {args.max_frames}')
    if not 0 <= args.inference_workers <= 256:
        parser.error('--inference-workers must be 0 (one per CPU core) to 256, got '
                     f'{args.inference_workers}')
    for option, name in (('--node-name', args.node_name), ('--params-node', args.params_node)):
        if (name or option == '--node-name') and not ROS_NAME.fullmatch(name):
            parser.error(f'{option} {name!r} is not a ROS node name: letters, digits and '
                         'underscores, not starting with a digit (e.g. detector_node)')
    for option, value in (('--harvest-max', args.harvest_max), ('--gallery', args.gallery),
                          ('--save-tiles', args.save_tiles)):
        if value < 0:
            parser.error(f'{option} must be >= 0, got {value}')
    return args


def collect_parameters(args: argparse.Namespace) -> Dict[str, Any]:
    """
    Return the parameter values: params file, then ``--param``, then the flags.

    Both go through the parameter table's one strict reader: an unknown name is an
    error naming the closest known one.

    :raises ConfigError: unreadable params file, a malformed ``--param``, or a name
        that is not a parameter.
    """
    return parameters_from(args.params_file, args.params_node or args.node_name, args.param,
                           {name: getattr(args, flag) for flag, name in FLAG_PARAMETERS.items()})


def parameters_from(params_file: str, node_name: str, param_items: Sequence[str],
                    flags: Mapping[str, Any]) -> Dict[str, Any]:
    """
    Return parameter values: ``params_file``, then ``--param NAME=VALUE`` items, then flags.

    The one reading of a command's parameters (replay, season): ``flags`` maps
    parameter names to flag values, None when the flag was not given.

    :raises ConfigError: unreadable params file, a malformed ``--param``, or a name
        that is not a parameter.
    """
    import yaml

    values: Dict[str, Any] = {}
    if params_file:
        values.update(load_params_file(params_file, node_name))
    given: Dict[str, Any] = {}
    for item in param_items:
        name, sep, text = item.partition('=')
        if not sep or not name.strip():
            raise ConfigError(item, 'expected --param NAME=VALUE')
        try:
            given[name.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(name, f'value {text!r} is not valid YAML: {exc}') from exc
    values.update(strict_parameters(given, '--param'))
    for name, value in flags.items():
        if value is not None:
            values[name] = list(value) if isinstance(value, (list, tuple)) else value
    return values


def replay_inputs(bag: str, args: argparse.Namespace, parameters: Dict[str, Any]) -> List[str]:
    """Return every file the replay reads: bag, params file, models and their cards."""
    inputs = [bag, args.params_file]
    for model in (str(parameters.get('model_path') or ''), args.compare_model):
        if model:
            inputs += [model, card_path_for_model(model)]
    return [path for path in inputs if path]


class ProgressBar:
    """Frames done, frames/s and ETA on stderr, drawn by tqdm (plain lines when not a TTY)."""

    def __init__(self, stream: TextIO) -> None:
        from tqdm import tqdm  # the replay extra; only when a bar is shown
        tty = stream.isatty()
        self._bar = tqdm(file=stream, desc='replay', unit='frame', dynamic_ncols=tty,
                         mininterval=0.25 if tty else 5.0, ascii=not tty)

    def __call__(self, progress: Progress) -> None:
        if progress.frames_expected and self._bar.total != progress.frames_expected:
            self._bar.total = progress.frames_expected
        self._bar.update(progress.frames_done - self._bar.n)

    def close(self) -> None:
        """End the progress line."""
        self._bar.close()


def summary_lines(metrics: Dict[str, Any], out_dir: str) -> List[str]:
    """Return the short summary printed after a replay."""
    frames = metrics['frames']
    tiles = metrics['tiles']
    geo = metrics['geotag']
    findings = metrics['findings']
    latency = metrics['latency_ms']['pipeline']
    lines = [f"replayed {metrics['bag']['path']}: {frames['processed']} frames processed, "
             f"{frames['skipped_total']} skipped; {tiles['classified']} tiles classified, "
             f"{tiles['gated_out']} gated out; {metrics['throughput']['frames_per_s']:.1f} "
             'frames/s']
    accuracy = metrics['accuracy']
    if accuracy is None:
        lines.append('accuracy: no ground truth in the bag')
    else:
        note = macro_average_note(accuracy) if accuracy.get('accuracy') is not None else ''
        lines.append(f"tile {accuracy_text(accuracy)}{' ' + note if note else ''} "
                     f"({accuracy['count']} tiles vs ground truth); unknown "
                     f"{100 * tiles['unknown_rate']:.1f} %")
    missing = {k: v for k, v in geo['by_reason'].items()
               if v and k not in ('interpolated', 'nearest')}
    rejected = geo.get('fixes_rejected', {})
    lines.append(f"geotag coverage {100 * geo['coverage']:.1f} %"
                 + (f" (no position: {', '.join(f'{k} {v}' for k, v in missing.items())})"
                    if missing else '')
                 + ('' if geo['gps_topic'] else ' - the bag has no GPS')
                 + (f"; fixes rejected: {', '.join(f'{k[9:]} {v}' for k, v in rejected.items())}"
                    if rejected else '')
                 + (f"; UTM zone {geo['utm_zone']['zone']} (EPSG:{geo['utm_zone']['epsg']})"
                    if geo.get('utm_zone') else '')
                 + (f"; {geo['frames_outside_utm']} positions beyond UTM (84 N / 80 S) or its zone"
                    if geo.get('frames_outside_utm') else ''))
    lines.append(f"findings: {findings['sightings']} diseased tiles -> {findings['features']} "
                 'map features'
                 + (f" ({', '.join(f'{k} {v}' for k, v in findings['features_by_label'].items())})"
                    if findings['features_by_label'] else '')
                 + (f"; {findings['without_position']} without position"
                    if findings['without_position'] else '')
                 + (f"; {findings['features_confirmed']} confirmed by repeated evidence"
                    if findings['features'] else '')
                 + (f"; {findings['outside_utm']} beyond UTM or its zone (not in geo_detections)"
                    if findings.get('outside_utm') else ''))
    placement = metrics.get('placement', {})
    if placement.get('enabled') and placement.get('placed'):
        placed = placement['placed']
        at_camera = placed.get('camera', 0)
        at_leaf = sum(v for k, v in placed.items() if k != 'camera')
        why = placement.get('not_placed_because', {})
        lines.append(f'placed: {at_leaf} findings at the leaf, {at_camera} at the camera'
                     + (f" ({', '.join(f'{k}: {v}' for k, v in why.items())})" if why else '')
                     + f"; camera model {placement['camera']}"
                     + (f" from {placement['camera_info_topic']}"
                        if placement.get('camera_info_topic') else ''))
    held = findings.get('held', {})
    if held.get('count'):
        lines.append(f"held back: {held['count']} diseased tiles kept off the map and "
                     f"geo_detections ({held['reason']})")
    if latency.get('count'):
        lines.append(f"pipeline latency per frame p50 {latency['p50']:.1f} ms, p95 "
                     f"{latency['p95']:.1f} ms, p99 {latency['p99']:.1f} ms")
    if not metrics['bag']['complete']:
        lines.append(f"WARNING: the bag ended early ({metrics['bag']['truncated_reason']}); "
                     'the report covers what was read')
    lines.append(f'report: {os.path.join(out_dir, REPORT_FILE)}, '
                 f'{os.path.join(out_dir, REPORT_HTML_FILE)} (open it in a browser)')
    return lines


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the run cleans up as after Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``leaf-disease-replay``; returns the exit status."""
    args = parse_args(argv)
    out, err = sys.stdout, sys.stderr
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args, out, err)
    except KeyboardInterrupt as exc:
        what = 'terminated (SIGTERM)' if isinstance(exc, Terminated) else 'interrupted'
        err.write(f'leaf-disease-replay: {what}; no report written, {args.out} is as it '
                  'was\n')
        return EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    folder: Optional[ReportFolder] = None
    harvester: Optional[TileHarvester] = None
    harvest: Optional[Dict[str, Any]] = None
    comparison: Optional[ModelComparison] = None
    main_backend: Any = None
    try:
        bag = args.bag or demo_bag_path()
        if not args.bag:
            err.write(f'no bag given: replaying the demo recording {bag}\n')
        parameters = collect_parameters(args)
        inputs = replay_inputs(bag, args, parameters)
        check_outputs_apart([('--out', args.out), ('--harvest-tiles', args.harvest_tiles)])
        folder = ReportFolder(args.out, inputs=inputs)  # refused or unwritable: now, not later
        observers: List[FrameObserver] = []
        if args.harvest_tiles:
            harvester = TileHarvester(args.harvest_tiles, args.harvest_max,
                                      bag=os.path.abspath(bag), inputs=inputs)
            observers.append(harvester)
        if args.compare_model:
            params = validate_parameters(parameters)
            main_backend = load_backend(params['model_path'], params['backend'],
                                        onnx_provider=params['onnx_provider'],
                                        intra_op_threads=params['onnx_intra_op_threads'],
                                        max_batch=params['max_batch'])
            comparison = ModelComparison.load(args.compare_model, params,
                                              main_backend.card.labels, with_truth=True)
            observers.append(comparison)
        options = ReplayOptions(
            bag_path=bag, out_dir=folder.staging, image_topic=args.image_topic,
            fix_topic=args.fix_topic, ground_truth_topic=args.ground_truth_topic,
            camera_info_topic=args.camera_info_topic, parameters=parameters,
            max_frames=args.max_frames,
            node_name=args.node_name, write_bag=not args.no_output_bag, observers=observers,
            gallery_size=args.gallery, save_tiles=args.save_tiles,
            inference_workers=args.inference_workers or default_inference_workers())
        progress = None if args.no_progress else ProgressBar(err)
        try:
            state = run_replay(options, backend=main_backend, progress=progress)
        finally:
            if progress is not None:
                progress.close()
        sections = []
        if comparison is not None:
            sections.append(comparison.section(state.model))
        if harvester is not None:
            harvester.model_id = str(state.model.get('model_id', ''))
            harvest = harvester.commit()
            harvester = None
            sections.append(ReportSection('harvest', harvest, tuple(harvest_lines(harvest))))
        metrics = write_report(state, folder.staging, sections)
        folder.commit()
    except LeafDiseaseError as exc:
        err.write(f'leaf-disease-replay: error: {exc}\n')
        return EXIT_ERROR
    except OSError as exc:
        written = [args.out, args.harvest_tiles] + ([folder.staging] if folder else [])
        if is_write_error(exc, written):
            err.write(f'leaf-disease-replay: error: cannot write the report in {args.out}: '
                      f'{exc}; nothing was written, {args.out} is as it was\n')
        else:
            what = exc.filename or 'an input'
            err.write(f'leaf-disease-replay: error: cannot read {what}: '
                      f'{exc.strerror or exc}; nothing was written, {args.out} is as it '
                      'was. Check that the bag, the model and the params file can be '
                      'read (ls -l)\n')
        return EXIT_ERROR
    finally:
        if harvester is not None:
            harvester.abort()
        for resource in (comparison, main_backend):
            if resource is not None:
                resource.close()
        if folder is not None:
            folder.discard()
    for note in metrics['notes']:
        err.write(f'note: {note}\n')
    for example in metrics['frames']['examples']:
        err.write(f'skipped: {example}\n')
    out.write('\n'.join(summary_lines(metrics, args.out)) + '\n')
    if harvest is not None:
        out.write(f"harvested {harvest['tiles_harvested']} of {harvest['tiles_classified']} "
                  f'tiles, most uncertain first, into {args.harvest_tiles}/<predicted label>/ '
                  f"(index {os.path.join(args.harvest_tiles, harvest['index'])}): correct "
                  'the labels by moving files, then fine-tune (docs/adaptation.md)\n')
    if comparison is not None:
        compared = metrics['comparison']
        out.write(f"compared with {compared['models']['compared']['model_id']}: same label "
                  f"on {100 * compared['same_label_rate']:.1f} % of "
                  f"{compared['tiles_compared']} tiles, same finding decision on "
                  f"{100 * compared['same_finding_decision_rate']:.1f} % (report: "
                  "section 'Comparison')\n")
    if metrics['frames']['processed'] == 0:
        err.write('leaf-disease-replay: no frame could be processed '
                  f"({metrics['frames']['skipped'] or 'the bag has no image messages'})\n")
        return EXIT_NOTHING_PROCESSED
    if not metrics['bag']['complete']:
        return EXIT_TRUNCATED
    return EXIT_OK


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
