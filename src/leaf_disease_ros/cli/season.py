"""
``leaf-disease-season``: replay a season of recordings on Ray; write one season map.

Usage::

    leaf-disease-season BAG_OR_FOLDER... --out season/ [--workers N] [--threads T]
                        [--address auto|ray://host:10001] [--model M.onnx] [--site S]
                        [--params-file config/detector.yaml] [--robots robots.yaml]
                        [--past-radius M] [--footprint-tolerance M] [--rows rows.geojson]

Each bag is replayed as one Ray task with the single-bag replay's pipeline, parameters
and model (:mod:`leaf_disease_ros.replay.season`); its report lands in
``OUT/bags/<id>/``. A rerun replays only the bags whose content, model, site file,
parameters or package version changed. Then the passes are merged into
``OUT/season.geojson``, ``season.kml``, ``maps/``, ``coverage.json``, ``season.json``
and ``report.html`` (:mod:`leaf_disease_ros.replay.season_map`): a pass "drove past" a
spot it did not see when the camera footprint of a frame it judged held the spot, or,
without camera geometry, when it judged frames within ``--past-radius``. With ``--rows``
(a GeoJSON of the vine rows' centre lines) the coverage of each row by each pass goes
into ``coverage.json``, ``rows.json`` and the page, with the rows no pass ever covered
(:mod:`leaf_disease_ros.replay.season_rows`); rows change the season files only, never
a bag's result. Ray is the optional extra ``season`` (``pip install
'leaf_disease_ros[season]'``); docs/season.md.

Exit status: 0 every bag replayed; 1 the season was written but some bags failed
(listed in season.json and report.html); 2 usage, bag, model, parameter, output or Ray
error, or interrupted (Ctrl-C: the bags finished so far stay, a rerun goes on).
"""

import argparse
import datetime
import importlib.metadata
import math
import os
import shutil
import sys
from typing import Any, Dict, List, Optional, Sequence, TextIO

from leaf_disease_ros.cli.replay import parameters_from
from leaf_disease_ros.perception.atomic_io import atomic_write_json
from leaf_disease_ros.perception.config import validate_parameters
from leaf_disease_ros.perception.errors import LeafDiseaseError
from leaf_disease_ros.perception.model_card import card_path_for_model
from leaf_disease_ros.perception.output_paths import (check_output_folder, read_manifest,
                                                      write_manifest)
from leaf_disease_ros.perception.resources import resolve_model_path
from leaf_disease_ros.replay.runner import DEFAULT_NODE_NAME
from leaf_disease_ros.replay.season import Outcome, plan, run_jobs
from leaf_disease_ros.replay.season_html import SEASON_HTML_FILE, write_season_html
from leaf_disease_ros.replay.season_map import (build_season, DEFAULT_FOOTPRINT_TOLERANCE_M,
                                                DEFAULT_PAST_RADIUS_M, write_season_files)
from leaf_disease_ros.replay.season_rows import (load_row_layout, row_coverage, RowCoverage,
                                                 ROWS_FILE, write_rows_file)
from leaf_disease_ros.replay.season_store import (find_bags, load_robot_map, model_identity,
                                                  ROBOT_FROM, SeasonBag)
from leaf_disease_ros.replay.season_task import BagJob, STATUS_DONE

COMMAND = 'leaf-disease-season'
SEASON_FILE = 'season.json'
BAGS_DIR = 'bags'
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_ERROR = 2
FLAG_PARAMETERS = {'model': 'model_path', 'backend': 'backend', 'site': 'site_path',
                   'merge_radius': 'merge_radius_m'}


def package_version() -> str:
    """Return the installed package's version ('' when it is not installed)."""
    try:
        return importlib.metadata.version('leaf_disease_ros')
    except importlib.metadata.PackageNotFoundError:
        return ''


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description='Replay many rosbag2 recordings (a season: several robots, many passes) '
                    'on Ray, each with the single-bag replay, and merge their findings into '
                    "one season map with every spot's history.",
        epilog='Exit status: 0 done; 1 written, but some bags failed; 2 error or '
               'interrupted (finished bags are kept; rerun to go on). docs/season.md')
    parser.add_argument('bags', nargs='+', metavar='BAG_OR_FOLDER',
                        help='rosbag2 folders, .mcap / .db3 files, or folders holding them')
    parser.add_argument('--out', default='season', help='season folder (default: %(default)s)')
    parser.add_argument('--params-file', default='',
                        help="the node's parameter YAML; flags override it")
    parser.add_argument('--param', action='append', default=[], metavar='NAME=VALUE',
                        help='any parameter of config/detector.yaml (YAML value); repeatable')
    parser.add_argument('--model', help='ONNX model with its card beside it (default: shipped)')
    parser.add_argument('--site', help='site file from leaf-disease-site (parameter site_path)')
    parser.add_argument('--backend', choices=('auto', 'onnxruntime', 'tensorrt'))
    parser.add_argument('--merge-radius', type=float,
                        help='m, findings of one label closer than this are one spot')
    ray_group = parser.add_argument_group('Ray')
    ray_group.add_argument('--address', default='',
                           help='existing cluster: auto (ray start --head on this machine) or '
                                'ray://host:10001 (default: start a local cluster)')
    ray_group.add_argument('--workers', type=int, default=0,
                           help='bags replayed at once (default: CPUs / --threads)')
    ray_group.add_argument('--threads', type=int, default=1,
                           help='inference threads per bag (= CPUs a task takes; default 1)')
    ray_group.add_argument('--gpus-per-task', type=float, default=0.0,
                           help='GPUs a task takes (e.g. 0.5: two bags per GPU; default 0)')
    passes = parser.add_argument_group('passes and map')
    passes.add_argument('--robots', default='', metavar='FILE',
                        help='YAML "bag or folder name: robot id" (default: the folder holding '
                             'the bag)')
    passes.add_argument('--robot-from', choices=ROBOT_FROM, default='folder',
                        help="without a --robots entry: the bag's folder, or its image topic's "
                             'namespace (/robot2/camera/...)')
    passes.add_argument('--footprint-tolerance', type=float, metavar='M',
                        default=DEFAULT_FOOTPRINT_TOLERANCE_M,
                        help='m, a pass with camera geometry "drove past" a spot it did not see '
                             'when the spot lay in, or this close to, the camera footprint of '
                             'a frame it judged (default %(default)s)')
    passes.add_argument('--past-radius', type=float, default=DEFAULT_PAST_RADIUS_M, metavar='M',
                        help='m, without camera geometry (ground_positions false, no mount, an '
                             'earlier result): a pass that judged frames this close to a spot '
                             'without seeing it "drove past" it (default %(default)s)')
    passes.add_argument('--rows', default='', metavar='FILE',
                        help='GeoJSON FeatureCollection of LineString features, one per vine '
                             'row (centre line, lon/lat WGS84) with a unique "row" id: '
                             'coverage per row and pass, and the rows never covered')
    passes.add_argument('--no-output-bag', action='store_true',
                        help='do not write the output bag (detections/detections.mcap) per bag')
    passes.add_argument('--gallery', type=int, default=0, metavar='N',
                        help="tiles per section of each bag's report.html gallery (default 0)")
    passes.add_argument('--max-frames', type=int, default=0, help='per bag (0: all)')
    args = parser.parse_args(argv)
    for option in ('workers', 'gallery', 'max_frames'):
        if getattr(args, option) < 0:
            parser.error(f'--{option.replace("_", "-")} must be >= 0')
    if args.threads < 1:
        parser.error('--threads must be >= 1')
    for option in ('past_radius', 'footprint_tolerance'):
        value = getattr(args, option)
        if not (math.isfinite(value) and value >= 0):
            parser.error(f'--{option.replace("_", "-")} must be a finite number >= 0')
    if not args.workers:
        args.workers = max(1, (os.cpu_count() or 1) // args.threads)
    return args


def collect_parameters(args: argparse.Namespace) -> Dict[str, Any]:
    """Return the parameters: params file, then ``--param``, then the flags."""
    return parameters_from(args.params_file, DEFAULT_NODE_NAME, args.param,
                           {name: getattr(args, flag) for flag, name in FLAG_PARAMETERS.items()})


def local_time(iso_utc: str) -> str:
    """Return an ISO UTC time as this machine's local time, for people."""
    moment = datetime.datetime.fromisoformat(iso_utc.replace('Z', '+00:00'))
    return moment.astimezone().strftime('%Y-%m-%d %H:%M %Z')


def prepare_folder(out: str, inputs: Sequence[str]) -> str:
    """
    Refuse a season folder that is not ours; make it and mark it; return its bags folder.

    The season folder is kept across runs (its bags are the resumable part): it must be
    new, empty or an earlier season (its manifest), never an input or inside one.
    """
    check_output_folder(out, inputs, what='--out', command=COMMAND, replaces_folder=False)
    bags_dir = os.path.join(out, BAGS_DIR)
    os.makedirs(bags_dir, exist_ok=True)
    if read_manifest(out) is None:
        write_manifest(out, COMMAND, files=[])
    for name in os.listdir(bags_dir):  # staging folders of killed tasks
        if name.startswith('.') and ('.partial-' in name or '.old-' in name):
            shutil.rmtree(os.path.join(bags_dir, name), ignore_errors=True)
    return bags_dir


def _inputs(args: argparse.Namespace, parameters: Dict[str, Any],
            bags: Sequence[SeasonBag]) -> List[str]:
    model = resolve_model_path(str(parameters.get('model_path') or ''))
    paths = [model, card_path_for_model(model), args.params_file, args.robots, args.rows,
             str(parameters.get('site_path') or '')] + [bag.path for bag in bags]
    return [path for path in paths if path]


def _write_rows(rows: Optional[RowCoverage], out_dir: str, summary: Dict[str, Any]) -> List[str]:
    """Write ``rows.json`` (or remove the one of an earlier run without --rows)."""
    if rows is None:
        earlier = read_manifest(out_dir)
        stale = os.path.join(out_dir, ROWS_FILE)
        if earlier is not None and ROWS_FILE in earlier.files and os.path.isfile(stale):
            os.remove(stale)
        return []
    summary['rows'] = {'file': rows.layout.path, 'sha256': rows.layout.sha256,
                       'rows': len(rows.rows), 'never_covered': rows.never_covered}
    return [write_rows_file(rows, out_dir)]


def _rule_words(rule: Dict[str, Any]) -> str:
    if rule['rule'] == 'footprint':
        return f"the camera footprint (+{rule['tolerance_m']:g} m)"
    return f"a {rule['radius_m']:g} m radius ({rule['why']})" if rule['why'] else \
        f"a {rule['radius_m']:g} m radius"


def season_summary(outcomes: Dict[str, Outcome], run: Any, counts: Dict[str, int],
                   parameters: Dict[str, Any], version: str) -> Dict[str, Any]:
    """Return the document of ``season.json``."""
    done = [o for o in outcomes.values() if o.result.get('status') == STATUS_DONE]
    failed = [o for o in outcomes.values() if o.result.get('status') != STATUS_DONE]
    tasks = [o for o in done if not o.skipped]
    task_s = sum(o.result.get('worker', {}).get('task_s', 0.0) for o in tasks)
    return {
        'command': COMMAND, 'version': version, 'counts': counts,
        'passes': [{'bag_id': o.job.bag.bag_id, 'bag': o.job.bag.path,
                    'robot': o.result['robot'], 'start': o.result['start_utc'],
                    'skipped_current': o.skipped, 'attempts': o.attempts,
                    'wall_s': round(o.wall_s, 3)}
                   for o in sorted(done, key=lambda o: o.job.bag.bag_id)],
        'failed': [{'bag_id': o.job.bag.bag_id, 'bag': o.job.bag.path,
                    'error': o.result.get('error', ''),
                    'error_type': o.result.get('error_type', ''),
                    'attempts': o.attempts} for o in failed],
        'timing': {'ray_init_s': round(run.ray_init_s, 3) if run else 0.0,
                   'ray_wall_s': round(run.wall_s, 3) if run else 0.0,
                   'tasks_s': round(task_s, 3), 'tasks_run': len(tasks)},
        'cluster': run.cluster if run else {},
        'parameters': {k: parameters[k] for k in sorted(parameters)},
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``leaf-disease-season``; returns the exit status."""
    args = parse_args(argv)
    try:
        return _run(args, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        sys.stderr.write(f'{COMMAND}: interrupted; the bags finished so far are kept in '
                         f'{os.path.join(args.out, BAGS_DIR)}: rerun the same command to go on\n')
        return EXIT_ERROR


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        parameters = validate_parameters(collect_parameters(args))
        robots = load_robot_map(args.robots) if args.robots else {}
        layout = load_row_layout(args.rows) if args.rows else None
        bags = find_bags(args.bags, robots, args.robot_from)
        bags_dir = prepare_folder(args.out, _inputs(args, parameters, bags))
        identity = model_identity(parameters)
        version = package_version()
        inputs = tuple(_inputs(args, parameters, bags))

        def make_job(bag: SeasonBag, key: str) -> BagJob:
            return BagJob(bag=bag, bags_dir=os.path.abspath(bags_dir), key=key,
                          parameters=dict(parameters), inputs=inputs, threads=args.threads,
                          robot_from=args.robot_from, write_bag=not args.no_output_bag,
                          gallery_size=args.gallery, max_frames=args.max_frames)
        jobs, outcomes = plan(bags, bags_dir, identity, parameters, version, make_job)
        err.write(f'{COMMAND}: {len(bags)} bags, {len(outcomes)} current (skipped), '
                  f'{len(jobs)} to replay on {args.workers} worker(s)\n')

        def report(outcome: Outcome) -> None:
            status = outcome.result.get('status')
            err.write(f'  {outcome.job.bag.bag_id}: {status}'
                      + (f" ({outcome.result.get('error')})" if status != STATUS_DONE else '')
                      + f' in {outcome.wall_s:.1f} s\n')
        run = None
        if jobs:
            run = run_jobs(jobs, workers=args.workers, threads=args.threads,
                           gpus=args.gpus_per_task, address=args.address, on_done=report)
            outcomes.update(run.outcomes)
        passes = [o.result for o in outcomes.values() if o.result.get('status') == STATUS_DONE]
        season = build_season(passes, parameters['merge_radius_m'], args.past_radius,
                              args.footprint_tolerance)
        counts = {'bags': len(bags), 'replayed': len(jobs),
                  'skipped_current': len(bags) - len(jobs),
                  'passes': len(passes), 'failed': len(bags) - len(passes),
                  'features': len(season.features)}
        summary = season_summary(outcomes, run, counts, parameters, version)
        summary['drove_past'] = {'past_radius_m': args.past_radius,
                                 'footprint_tolerance_m': args.footprint_tolerance}
        for entry in summary['passes']:
            entry['drove_past'] = season.drove_past(entry['bag_id'])
        rows = row_coverage(season, layout) if layout is not None else None
        files = write_season_files(season, args.out, rows.per_pass if rows else None)
        files += _write_rows(rows, args.out, summary)
        write_season_html(os.path.join(args.out, SEASON_HTML_FILE), season, summary, rows)
        atomic_write_json(os.path.join(args.out, SEASON_FILE), summary)
        write_manifest(args.out, COMMAND, files=files + [SEASON_HTML_FILE, SEASON_FILE])
    except LeafDiseaseError as exc:
        err.write(f'{COMMAND}: error: {exc}\n')
        return EXIT_ERROR
    except OSError as exc:
        err.write(f'{COMMAND}: error: cannot write the season in {args.out}: {exc}\n')
        return EXIT_ERROR
    for document in season.passes:
        out.write(f"pass {document['bag_id']}: robot {document['robot']}, "
                  f"{local_time(document['start_utc'])}, "
                  f"{sum(1 for f in season.features if document['bag_id'] in f.seen)} spots "
                  f"seen, {document['coverage']['judged_m']:.0f} of "
                  f"{document['coverage']['driven_m']:.0f} m judged, drove past by "
                  f"{_rule_words(season.drove_past(document['bag_id']))}\n")
    if rows is not None:
        never = rows.never_covered
        out.write(f'rows: {len(never)} of {len(rows.rows)} never covered'
                  + (f": {', '.join(never[:20])}{' ...' if len(never) > 20 else ''}"
                     if never else '') + f' ({os.path.join(args.out, ROWS_FILE)})\n')
    for failure in summary['failed']:
        out.write(f"FAILED {failure['bag']}: {failure['error']}\n")
    out.write(f"season: {counts['passes']} passes, {counts['features']} spots, "
              f"{counts['failed']} bags failed; {os.path.join(args.out, SEASON_HTML_FILE)}\n")
    return EXIT_SOME_FAILED if summary['failed'] else EXIT_OK


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
