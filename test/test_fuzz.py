"""
Fuzzing the entry points with random and hostile input (hypothesis, tier 1).

Random bags (frames in every encoding, corrupt, grey, padded, unstamped; fixes with
glitches, NaN, infinities, impossible latitudes, late logs; ground truth; cut or
damaged storage), params files, model cards, image folders and option values go
through ``leaf-disease-replay`` and ``leaf-disease-classify`` as a user would run
them (their ``main``). The properties:

- the exit status is one of the documented ones (replay 0, 1, 2, 3; classify 0, 1, 2)
  and no exception escapes (argparse's own exit 2 aside), no traceback is printed;
- the replay's report folder is complete and consistent (every file there, the counts
  add up, every coordinate a valid WGS84 position), or absent (exit 2) with no
  staging debris left beside it;
- the fix buffer never raises and never returns an invalid position, and one
  glitched fix never moves a position by more than the plausibility limit allows;
- outputs (``--json``, ``--explain``, ``--out``, ``--harvest-tiles``) aimed at inputs,
  their hard and symbolic links, folders holding them, FIFOs and folders of other
  commands never change anything that was there (issue 18).
- and the other classes of issue 18: inputs another user may not read (run as
  ``nobody``, :mod:`unprivileged`), a write that fails (an injected ``ENOSPC``/``EFBIG``/
  ``EDQUOT`` at the k-th file :mod:`~leaf_disease_ros.perception.atomic_io` writes, and
  a real ``RLIMIT_FSIZE``), one topic with two types and several GPS topics, stamps that
  repeat or go backwards, a model whose outputs are NaN, infinite or ~1e38, and hostile
  YAML params files (billion laughs, deep nesting, recursion, Python tags, 1-3 MiB,
  binary): each is a named refusal or a correct run, and no input changes;
- the season's row layout parser (``--rows``) takes any bytes, hostile or nearly valid
  GeoJSON, and returns rows that are all valid (finite, in bounds, unique ids) or a
  bounded :class:`RowLayoutError` naming the file, never another exception.

The seed is fixed (:data:`SEED`) and the example counts bounded, so CI sees the
same cases every run in about a minute on 2 cores; ``LEAF_DISEASE_FUZZ_SCALE=10``
runs ten times as many (locally, to search further).
"""

import errno
import json
import math
import os
import shutil
import stat
import tempfile

import cv2
from hypothesis import event, given, HealthCheck, Phase, seed, settings, strategies as st
import numpy as np
import pytest
import yaml

from bag_builder import fix_message, Frame, GpsFix, message_types, NS, Truth, write_bag
from leaf_disease_ros.cli import classify as classify_cli
from leaf_disease_ros.cli import replay as replay_cli
from leaf_disease_ros.geo.geodesy import distance_m, offset_latlon
from leaf_disease_ros.geo.geotag import (ADD_ACCEPTED, ADD_DUPLICATE, FixBuffer,
                                         REJECTIONS)
from leaf_disease_ros.perception.config import PARAMETERS
from leaf_disease_ros.perception.output_paths import write_manifest
from leaf_disease_ros.perception.positions import Fix, NO_POSITION_REASONS
from leaf_disease_ros.replay.report_folder import leftovers
from leaf_disease_ros.replay.season_rows import parse_row_layout, RowLayoutError
from tiny_model import make_tiny_model
from unprivileged import give_away, open_folder, run_module

SEED = 20251130
SCALE = float(os.environ.get('LEAF_DISEASE_FUZZ_SCALE', '1'))
REPLAY_EXITS = {0, 1, 2, 3}
CLASSIFY_EXITS = {0, 1, 2}
LAT0, LON0 = 46.0, 7.0


# Shrinking a failure can take minutes: CI reports the failing case as found (and the
# blob to reproduce it); LEAF_DISEASE_FUZZ_SHRINK=1 shrinks it to a minimal one.
PHASES = tuple(p for p in Phase if p != Phase.shrink or os.environ.get(
    'LEAF_DISEASE_FUZZ_SHRINK') == '1')


def fuzz_settings(examples: int) -> settings:
    """Return bounded, reproducible settings for ``examples`` cases (times the scale)."""
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None,
                    database=None, print_blob=True, phases=PHASES,
                    suppress_health_check=list(HealthCheck))


HOSTILE_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 90.0, -90.0, 91.0, 95.0, 84.5, -80.5, 180.0, -180.0, 200.0,
                     -540.0, 1e308, -1e308, math.nan, math.inf, -math.inf]))


# --- the fix buffer ------------------------------------------------------------------------

FIXES = st.builds(
    Fix,
    stamp_ns=st.one_of(st.integers(-10 ** 12, 10 ** 12), st.integers(0, 5 * NS),
                       st.just(0)),
    latitude_deg=st.one_of(HOSTILE_FLOATS, st.floats(45.99, 46.01)),
    longitude_deg=st.one_of(HOSTILE_FLOATS, st.floats(6.99, 7.01)),
    altitude_m=HOSTILE_FLOATS,
    status=st.integers(-3, 3),
    service=st.integers(0, 15),
    covariance_m2=st.lists(HOSTILE_FLOATS, min_size=0, max_size=12).map(tuple),
    covariance_type=st.integers(0, 3))
LOOKUPS = st.tuples(st.one_of(st.integers(-NS, 6 * NS), st.just(0)),
                    st.floats(0.0, 60.0), st.floats(0.0, 60.0),
                    st.tuples(*[st.floats(-100.0, 100.0)] * 3),
                    st.floats(0.0, 50.0), st.floats(0.05, 60.0))


@seed(SEED)
@fuzz_settings(400)
@given(fixes=st.lists(FIXES, max_size=25), lookups=st.lists(LOOKUPS, max_size=8),
       max_speed=st.sampled_from([0.0, 1.0, 10.0, 1e9]), capacity=st.integers(2, 10))
def test_fix_buffer_never_raises_or_returns_an_invalid_position(fixes, lookups, max_speed,
                                                                capacity):
    buffer = FixBuffer(capacity, max_speed)
    for fix in fixes:
        admission = buffer.admit(fix)
        assert admission.outcome in (ADD_ACCEPTED, ADD_DUPLICATE) + REJECTIONS
        if admission.fix is not None:
            assert -90.0 <= admission.fix.latitude_deg <= 90.0
            assert -180.0 <= admission.fix.longitude_deg <= 180.0
    assert len(buffer) <= capacity
    for stamp_ns, gap, age, lever_arm, min_speed, window in lookups:
        result = buffer.lookup(stamp_ns, gap, age, lever_arm, min_speed, window)
        assert result.reason in ('interpolated', 'nearest') + NO_POSITION_REASONS
        tag = result.geotag
        if tag is not None:
            assert math.isfinite(tag.latitude_deg) and -90.0 <= tag.latitude_deg <= 90.0
            assert math.isfinite(tag.longitude_deg) and -180.0 <= tag.longitude_deg < 180.0
            assert len(tag.covariance_m2) == 9 and all(map(math.isfinite, tag.covariance_m2))


def _true_position(t_s):
    """Return where the robot is at ``t_s``: it drives east at 1 m/s from (LAT0, LON0)."""
    return offset_latlon(LAT0, LON0, t_s, 0.0)


@seed(SEED)
@fuzz_settings(200)
@given(glitches=st.lists(st.tuples(st.floats(2.0, 9.0),
                                   st.one_of(HOSTILE_FLOATS, st.floats(-90.0, 90.0),
                                             st.floats(45.9999, 46.0001)),
                                   st.one_of(HOSTILE_FLOATS, st.floats(-180.0, 180.0),
                                             st.floats(6.9999, 7.0001))),
                         min_size=1, max_size=3),
       frame_times=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=10))
def test_a_glitched_fix_never_moves_a_position_beyond_the_limit(glitches, frame_times):
    max_speed_mps, period_s = 10.0, 0.2
    buffer = FixBuffer(512, max_speed_mps)
    events = []
    for k in range(51):  # 10 s at 5 Hz, 2 cm sigma
        lat, lon = _true_position(k * period_s)
        events.append(Fix(int(round(k * period_s * NS)), lat, lon, 30.0, 2, 1,
                          (0.0004, 0, 0, 0, 0.0004, 0, 0, 0, 0.0016), 2))
    for t_s, lat, lon in glitches:
        events.append(Fix(int(t_s * NS), lat, lon, 30.0, 2))
    for fix in sorted(events, key=lambda f: f.stamp_ns):
        buffer.add(fix)
    # an accepted glitch is within max_speed x fix period (+ 3 sigma) of its neighbours
    bound_m = max_speed_mps * period_s + 3.0 * math.sqrt(2 * 25.0) + 1.0 * period_s
    for t_s in frame_times:
        tag = buffer.lookup(int(t_s * NS), 1.0, 0.5).geotag
        if tag is not None:
            assert distance_m(tag.latitude_deg, tag.longitude_deg,
                              *_true_position(t_s)) <= bound_m


# --- the replay ----------------------------------------------------------------------------

IMAGE_SIZES = st.sampled_from([(48, 64), (64, 64), (16, 96), (1, 1), (40, 33)])
RAW_KINDS = ('bgr8', 'rgb8', 'mono8', 'padded', 'short', 'mono16', 'black', 'cdr')
COMPRESSED_KINDS = ('png', 'jpeg', 'garbage', 'grey_png', 'empty', 'black', 'cdr')
PARAM_CHOICES = {
    'tile_size_px': [16, 32, 64, 8, 'big'], 'tile_stride_px': [16, 32, 100000],
    'min_vegetation_fraction': [0.0, 0.5, 1.0, -0.1], 'tiling': ['grid', 'none', 'hex'],
    'max_fix_gap_s': [0.0, 1.0, 5.0, -1.0], 'max_fix_age_s': [0.0, 0.5, 60.0],
    'max_fix_speed_mps': [0.0, 10.0, 0.5], 'disease_score_threshold': [0.0, 0.5, 2.0],
    'unknown_threshold': [-1.0, 0.0, 0.99], 'lever_arm_m': [[1.0, 0.0, 0.5], [0.0], 'x'],
    'merge_radius_m': [0.0, 1.5, 1000.0], 'top_k': [1, 3, 0], 'tile_sise_px': [128],
}


@st.composite
def bag_specs(draw):
    """Draw a recording: frames, fixes, ground truth, storage, and damage."""
    raw = draw(st.booleans())
    frames = draw(st.lists(st.fixed_dictionaries({
        'kind': st.sampled_from(RAW_KINDS if raw else COMPRESSED_KINDS),
        'stamp_s': st.one_of(st.just(0.0), st.floats(0.0, 8.0)),
        'delay_s': st.floats(0.0, 2.0), 'size': IMAGE_SIZES,
        'pixels': st.integers(0, 2 ** 32 - 1)}), min_size=draw(st.sampled_from([0, 1, 1])),
        max_size=6))
    track = draw(st.booleans())
    fixes = draw(st.lists(st.fixed_dictionaries({
        't': st.floats(0.0, 9.0), 'lat': st.one_of(HOSTILE_FLOATS, st.floats(45.99, 46.01)),
        'lon': st.one_of(HOSTILE_FLOATS, st.floats(6.99, 7.01)),
        'status': st.integers(-1, 2), 'delay': st.floats(0.0, 2.0),
        'alt': st.one_of(st.none(), HOSTILE_FLOATS),
        'cov': st.one_of(st.none(), st.lists(HOSTILE_FLOATS, min_size=9, max_size=9)),
        'cdr': st.booleans()}), max_size=8))
    truth = draw(st.lists(st.tuples(
        st.one_of(st.sampled_from([f['stamp_s'] for f in frames] or [1.0]),
                  st.floats(0.0, 8.0)),
        st.lists(st.tuples(st.tuples(*[st.floats(-10.0, 100.0)] * 4),
                           st.sampled_from(['black_rot', 'esca', 'healthy', 'leaf_blight',
                                            'powdery_mildew', ''])), max_size=3)),
        max_size=4))
    return {'raw': raw, 'frames': frames, 'track': track, 'fixes': fixes, 'truth': truth,
            'storage': draw(st.sampled_from(['mcap', 'sqlite3'])),
            'cut': draw(st.one_of(st.none(), st.none(), st.none(), st.floats(0.05, 0.95)))}


def _image(spec):
    height, width = spec['size']
    rng = np.random.default_rng(spec['pixels'])
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[..., 1] = np.maximum(image[..., 1], 128)  # greenish: some tiles pass the gate
    if spec['kind'] == 'black':
        image[:] = 0
    return image


def _frame(spec, raw):
    kind = spec['kind']
    frame = Frame(stamp_ns=int(spec['stamp_s'] * NS), image_bgr=_image(spec),
                  log_time_ns=int((spec['stamp_s'] + spec['delay_s']) * NS))
    if kind == 'cdr':
        frame.cdr = bytes(np.random.default_rng(spec['pixels']).integers(0, 256, 40,
                                                                         dtype=np.uint8))
    if raw:
        frame.kind = 'raw'
        frame.encoding = {'padded': 'bgr8', 'short': 'bgr8', 'black': 'bgr8',
                          'cdr': 'bgr8'}.get(kind, kind)
        height, width = spec['size']
        if kind == 'padded':
            padded = np.zeros((height, width * 3 + 8), np.uint8)
            padded[:, :width * 3] = frame.image_bgr.reshape(height, width * 3)
            frame.data, frame.raw_shape = padded.tobytes(), (height, width, width * 3 + 8)
        elif kind == 'short':
            frame.data = frame.image_bgr.tobytes()[:-7]
        return frame
    frame.kind = 'jpeg' if kind == 'jpeg' else 'png'
    if kind == 'garbage':
        frame.data = b'\x89PNG\r\n\x1a\n garbage' * 3
    elif kind == 'empty':
        frame.data = b''
    elif kind == 'grey_png':
        ok, buffer = cv2.imencode('.png', cv2.cvtColor(frame.image_bgr, cv2.COLOR_BGR2GRAY))
        frame.data = buffer.tobytes()
    return frame


def build_bag(spec, folder):
    """Write the drawn recording under ``folder``; return its path."""
    frames = [_frame(f, spec['raw']) for f in spec['frames']]
    fixes = []
    if spec['track']:
        for k in range(46):
            lat, lon = offset_latlon(LAT0, LON0, 0.2 * k, 0.0)
            fixes.append(GpsFix(int(round(0.2 * k * NS)), lat, lon,
                                log_time_ns=int(round((0.2 * k + 0.025) * NS))))
    for f in spec['fixes']:
        fix = GpsFix(int(f['t'] * NS), f['lat'], f['lon'], f['status'],
                     int((f['t'] + f['delay']) * NS), altitude_m=f['alt'],
                     covariance_m2=f['cov'])
        if f['cdr']:
            fix.cdr = b'\x00\x01\x00\x00garbage'
        fixes.append(fix)
    truth = [Truth(int(t * NS), boxes) for t, boxes in spec['truth']]
    path = os.path.join(folder, 'bag')
    write_bag(path, spec['storage'], frames, fixes, truth, raw=spec['raw'])
    if spec['cut'] is not None:
        store = [n for n in os.listdir(path) if n.endswith(('.mcap', '.db3'))][0]
        data_file = os.path.join(path, store)
        with open(data_file, 'r+b') as stream:
            stream.truncate(int(os.path.getsize(data_file) * spec['cut']))
    return path


REPORT_FILES = ('metrics.json', 'report.md', 'map.png', 'findings.geojson', 'findings.kml')


def check_report(out, code, write_bag_flag):
    """Assert the report folder is complete and consistent (exit 0, 1, 3)."""
    for name in REPORT_FILES:
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, 'metrics.json'), encoding='utf-8') as stream:
        metrics = json.load(stream)
    frames = metrics['frames']
    assert frames['processed'] + frames['skipped_total'] == frames['read']
    assert sum(frames['skipped'].values()) == frames['skipped_total']
    assert (code == replay_cli.EXIT_NOTHING_PROCESSED) == (frames['processed'] == 0)
    if code != replay_cli.EXIT_NOTHING_PROCESSED:
        assert (code == replay_cli.EXIT_TRUNCATED) == (not metrics['bag']['complete'])
    geo = metrics['geotag']
    assert sum(geo['by_reason'].values()) == frames['processed']
    assert geo['frames_with_position'] == geo['by_reason']['interpolated'] + \
        geo['by_reason']['nearest']
    findings = metrics['findings']
    assert findings['with_position'] + findings['without_position'] == findings['sightings']
    tiles = metrics['tiles']
    assert tiles['classified'] + tiles['gated_out'] == tiles['total']
    assert sum(tiles['by_label'].values()) == tiles['classified']
    with open(os.path.join(out, 'findings.geojson'), encoding='utf-8') as stream:
        features = json.load(stream)['features']
    assert len(features) == findings['features']
    for feature in features:
        lon, lat = feature['geometry']['coordinates']
        assert math.isfinite(lat) and -90.0 <= lat <= 90.0
        assert math.isfinite(lon) and -180.0 <= lon <= 180.0
    assert os.path.exists(os.path.join(out, 'confusion_matrix.png')) == \
        (metrics['accuracy'] is not None)
    assert os.path.isdir(os.path.join(out, 'detections')) == write_bag_flag
    return metrics


def run_replay_cli(argv, capsys):
    """Run the replay's main; return (exit status, stderr)."""
    try:
        code = replay_cli.main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err
    return code, captured.err


DEFAULT_TOPICS = ('', '', '')
TOPICS = st.one_of(st.just(DEFAULT_TOPICS), st.just(DEFAULT_TOPICS), st.tuples(
    st.sampled_from(['', '/camera/image_raw/compressed', '/camera/image_raw', '/gps/fix',
                     '/nope']),
    st.sampled_from(['', '/gps/fix', '/gps/fixx']),
    st.sampled_from(['', '/ground_truth', '/camera/image_raw'])))
PARAMS = st.one_of(st.just({}), st.just({}), st.dictionaries(
    st.sampled_from(sorted(PARAM_CHOICES)), st.integers(0, 4), max_size=3))


@seed(SEED)
@fuzz_settings(120)
@given(spec=bag_specs(), topics=TOPICS, params=PARAMS, no_bag=st.booleans(),
       max_frames=st.sampled_from([0, 0, 0, 1, 3, -1]),
       node=st.sampled_from(['detector_node'] * 4 + ['left', '', '1bad']))
def test_replay_never_crashes_and_its_report_is_whole_or_absent(capsys, tiny_model_path,
                                                                spec, topics, params, no_bag,
                                                                max_frames, node):
    with tempfile.TemporaryDirectory() as folder:
        bag = build_bag(spec, folder)
        out = os.path.join(folder, 'out')
        argv = [bag, '--out', out, '--model', tiny_model_path, '--no-progress',
                '--max-frames', str(max_frames), '--node-name', node]
        for option, topic in zip(('--image-topic', '--fix-topic', '--ground-truth-topic'),
                                 topics):
            if topic:
                argv += [option, topic]
        for name, index in params.items():
            choices = PARAM_CHOICES[name]
            argv += ['--param', f'{name}={json.dumps(choices[index % len(choices)])}']
        if no_bag:
            argv.append('--no-output-bag')
        code, _ = run_replay_cli(argv, capsys)
        event(f'exit {code}')
        assert code in REPLAY_EXITS
        if code == replay_cli.EXIT_ERROR:
            assert not os.path.exists(out)
        else:
            check_report(out, code, not no_bag)
        assert leftovers(out) == []


# --- params files --------------------------------------------------------------------------

PARAM_KEYS = st.one_of(
    st.sampled_from([p.name for p in PARAMETERS] + [
        'ros__parameters', '/**', 'detector_node', '/robot1/detector_node', 'other_node',
        'robot1', 'use_sim_time', 'qos_overrides./image.subscription.depth', 'tile_sise_px',
        'tile']),
    st.text(max_size=6), st.integers(-2, 2), st.none())
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 6, 10 ** 6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.sampled_from(['grid', 'none', 'auto', 'onnxruntime', 'raw']))
DOCUMENTS = st.recursive(SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(PARAM_KEYS, children, max_size=4)),
    max_leaves=14)


@pytest.fixture(scope='module')
def small_bag(tmp_path_factory, leaf_images):
    """Return a two-frame recording with GPS."""
    folder = str(tmp_path_factory.mktemp('fuzz_bag'))
    image = cv2.resize(cv2.imread(leaf_images['esca'][0]), (64, 64))
    frames = [Frame(stamp_ns=(k + 1) * NS, image_bgr=image) for k in range(2)]
    fixes = [GpsFix(int(0.2 * k * NS), *offset_latlon(LAT0, LON0, 0.2 * k, 0.0))
             for k in range(20)]
    return write_bag(os.path.join(folder, 'bag'), 'mcap', frames, fixes)


VALUES_OF = {p.name: st.one_of(st.just(p.default),
                               st.sampled_from(p.choices or [p.default]), SCALARS)
             for p in PARAMETERS}
TABLE_SECTIONS = st.dictionaries(st.sampled_from(sorted(VALUES_OF)), st.just(None),
                                 max_size=4).flatmap(
    lambda names: st.fixed_dictionaries({name: VALUES_OF[name] for name in names}))
LIKELY_DOCUMENTS = st.one_of(
    TABLE_SECTIONS,
    st.tuples(st.sampled_from(['/**', 'detector_node', 'other_node', 'robot1']),
              TABLE_SECTIONS).map(lambda pair: {pair[0]: {'ros__parameters': pair[1]}}),
    st.tuples(TABLE_SECTIONS, TABLE_SECTIONS).map(
        lambda pair: {'/**': {'ros__parameters': pair[0]},
                      'detector_node': {'ros__parameters': pair[1]}}))


@seed(SEED)
@fuzz_settings(100)
@given(document=st.one_of(LIKELY_DOCUMENTS, LIKELY_DOCUMENTS, DOCUMENTS),
       text=st.one_of(st.none(), st.none(), st.none(), st.text(max_size=40)),
       section=st.sampled_from(['', 'detector_node', 'other_node']))
def test_any_params_file_is_read_or_refused_cleanly(capsys, tiny_model_path, small_bag,
                                                    document, text, section):
    with tempfile.TemporaryDirectory() as folder:
        params = os.path.join(folder, 'params.yaml')
        with open(params, 'w', encoding='utf-8') as stream:
            stream.write(text if text is not None else yaml.safe_dump(document))
        out = os.path.join(folder, 'out')
        argv = [small_bag, '--params-file', params, '--out', out, '--model', tiny_model_path,
                '--no-progress', '--no-output-bag']
        if section:
            argv += ['--params-node', section]
        code, err = run_replay_cli(argv, capsys)
        event(f'exit {code}')
        assert code in REPLAY_EXITS
        if code == replay_cli.EXIT_ERROR:
            assert not os.path.exists(out) and err.strip()
        else:
            check_report(out, code, False)


# --- model cards ---------------------------------------------------------------------------

CARD_PATHS = ['schema_version', 'name', 'model_file', 'onnx_sha256', 'labels', 'healthy_labels',
              'input', 'input.name', 'input.height_px', 'input.width_px', 'input.layout',
              'input.color_order', 'input.dtype', 'preprocessing', 'preprocessing.resize',
              'preprocessing.interpolation', 'preprocessing.scale', 'preprocessing.mean',
              'preprocessing.std', 'output', 'output.name', 'calibration',
              'calibration.temperature', 'calibration.unknown_threshold', 'training',
              'metrics']
CARD_VALUES = st.one_of(
    SCALARS, st.just('<delete>'), st.lists(SCALARS, max_size=5),
    st.sampled_from([[], ['a'], ['a', 'a'], ['unknown', 'b'], [1, 2], [0.5, 0.5, 0.5],
                     [0.0, 0.0, 0.0], {'x': 1}, 'NHWC', 'BGR', 'letterbox', 'nearest', 64,
                     16, 0, -1, 1e-300, 'input', 'logits', 'other', 'f' * 64]))


PLAUSIBLE_CARD_VALUES = {
    'name': st.text(min_size=1, max_size=8), 'labels': st.just(['a', 'b', 'c', 'd']),
    'healthy_labels': st.sampled_from([[], ['healthy'], ['esca', 'healthy']]),
    'input.height_px': st.sampled_from([16, 32, 64]), 'input.width_px': st.sampled_from(
        [16, 32, 64]), 'input.layout': st.sampled_from(['NCHW', 'NHWC']),
    'input.color_order': st.sampled_from(['RGB', 'BGR']),
    'preprocessing.resize': st.sampled_from(['stretch', 'letterbox', 'center_crop']),
    'preprocessing.interpolation': st.sampled_from(['area', 'linear', 'nearest']),
    'preprocessing.scale': st.floats(1e-6, 10.0),
    'preprocessing.mean': st.lists(st.floats(-10.0, 10.0), min_size=3, max_size=3),
    'preprocessing.std': st.lists(st.floats(1e-3, 10.0), min_size=3, max_size=3),
    'calibration.temperature': st.floats(1e-3, 100.0),
    'calibration.unknown_threshold': st.floats(0.0, 1.0),
    'training': st.dictionaries(st.text(max_size=4), SCALARS, max_size=2),
}
CARD_CHANGES = st.sampled_from(CARD_PATHS).flatmap(lambda path: st.tuples(
    st.just(path), st.one_of(*[PLAUSIBLE_CARD_VALUES.get(path, CARD_VALUES)] * 3,
                             CARD_VALUES)))


BENIGN_CARD_CHANGES = st.sampled_from([
    'input.layout', 'input.color_order', 'preprocessing.resize',
    'preprocessing.interpolation', 'preprocessing.scale', 'preprocessing.mean',
    'preprocessing.std', 'calibration.temperature', 'calibration.unknown_threshold',
    'training', 'name']).flatmap(
        lambda path: st.tuples(st.just(path), PLAUSIBLE_CARD_VALUES[path]))


@seed(SEED)
@fuzz_settings(100)
@given(changes=st.one_of(st.lists(BENIGN_CARD_CHANGES, min_size=1, max_size=3),
                         st.lists(CARD_CHANGES, min_size=1, max_size=3)),
       as_text=st.one_of(st.none(), st.none(), st.none(), st.text(max_size=30)))
def test_any_model_card_loads_or_is_refused_cleanly(capsys, tiny_model_path, leaf_images,
                                                    changes, as_text):
    with tempfile.TemporaryDirectory() as folder:
        model = os.path.join(folder, 'tiny.onnx')
        shutil.copy(tiny_model_path, model)
        with open(tiny_model_path[:-5] + '.json', encoding='utf-8') as stream:
            card = json.load(stream)
        for path, value in changes:
            *parents, key = path.split('.')
            target = card
            for parent in parents:
                target = target.get(parent) if isinstance(target, dict) else None
            if isinstance(target, dict):
                if value == '<delete>':
                    target.pop(key, None)
                else:
                    target[key] = value
        with open(model[:-5] + '.json', 'w', encoding='utf-8') as stream:
            stream.write(as_text if as_text is not None else json.dumps(card))
        try:
            code = classify_cli.main([leaf_images['esca'][0], '--model', model, '--json'])
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        event(f'exit {code}')
        assert code in CLASSIFY_EXITS and 'Traceback' not in captured.err
        if code == 0:
            result = json.loads(captured.out)['files'][0]
            assert 0.0 <= result['score'] <= 1.0


# --- image folders for classify ------------------------------------------------------------

FILE_KINDS = ('png', 'jpeg', 'grey', 'tiny', 'random', 'empty', 'text', 'alpha', 'big')


def _write_file(path, kind, rng):
    if kind in ('random', 'empty', 'text'):
        data = {'random': bytes(rng.integers(0, 256, 64, dtype=np.uint8)), 'empty': b'',
                'text': b'field notes'}[kind]
        with open(path, 'wb') as stream:
            stream.write(data)
        return
    size = {'tiny': (1, 1), 'big': (300, 200)}.get(kind, (40, 50))
    image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
    if kind == 'grey':
        image = image[..., 0]
    elif kind == 'alpha':
        image = np.dstack([image, np.full(size, 128, np.uint8)])
    ok, data = cv2.imencode('.jpg' if kind == 'jpeg' else '.png', image)
    with open(path, 'wb') as stream:  # whatever the file's extension says
        stream.write(data.tobytes())


@seed(SEED)
@fuzz_settings(80)
@given(layout=st.lists(st.tuples(
    st.sampled_from(['', '', 'esca', 'healthy', 'esca/2024', 'healthy/a/b', 'leaf_blight',
                     'black_rot', 'mildew', '.hidden']),
    st.sampled_from(['a.png', 'b.jpg', 'c.JPEG', 'd.bmp', 'e.txt', 'f', '.g.png']),
    st.sampled_from(FILE_KINDS), st.integers(0, 2 ** 32 - 1)), max_size=8),
    extra=st.sampled_from(['', '', '', 'json_file', 'json_file', 'missing', 'json_folder']),
    whole=st.booleans())
def test_classify_never_crashes_and_names_what_it_skips(capsys, tiny_model_path, layout,
                                                        extra, whole):
    with tempfile.TemporaryDirectory() as folder:
        root = os.path.join(folder, 'data')
        os.makedirs(root)
        for sub, name, kind, pixels in layout:
            os.makedirs(os.path.join(root, sub), exist_ok=True)
            _write_file(os.path.join(root, sub, name.replace('.', '_' + kind + '.', 1)
                                     if '.' in name[1:] else name + '_' + kind),
                        kind, np.random.default_rng(pixels))
        argv = [root] if whole else [os.path.join(root, n) for n in sorted(os.listdir(root))]
        argv = argv or [root]
        if extra == 'missing':
            argv.append(os.path.join(folder, 'missing.jpg'))
        elif extra == 'json_folder':
            argv += ['--json', folder]
        elif extra == 'json_file':
            argv += ['--json', os.path.join(folder, 'out.json')]
        try:
            code = classify_cli.main(argv + ['--model', tiny_model_path])
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        event(f'exit {code}')
        assert code in CLASSIFY_EXITS and 'Traceback' not in captured.err
        if extra in ('missing', 'json_folder'):
            assert code == 2
        if extra == 'json_file' and code != 2:
            with open(os.path.join(folder, 'out.json'), encoding='utf-8') as stream:
                document = json.load(stream)
            for result in document['files']:
                assert 0.0 <= result['score'] <= 1.0


# --- outputs that alias inputs, special files, foreign folders (issue 18) ------------------

#: where an output may point, in a folder of inputs (see _output_scene)
OUTPUT_TARGETS = ('new.json', 'new', 'empty', '.', 'photos', 'photos/a.png', 'photos/b.json',
                  'photos/sub', 'm', 'm/tiny.onnx', 'm/tiny.json', 'notes', 'notes/x.json',
                  'run', 'report', 'pipe', 'photo_link', 'photo_hardlink', 'bag',
                  'bag/report', 'new/inner')


def _output_scene(folder, tiny_model_path, bag):
    """Fill ``folder`` with inputs, foreign files and special files; return the model."""
    os.makedirs(os.path.join(folder, 'photos'))
    rng = np.random.default_rng(0)
    for name in ('a.png', 'c.png'):
        _write_file(os.path.join(folder, 'photos', name), 'png', rng)
    os.makedirs(os.path.join(folder, 'm'))
    for source in (tiny_model_path, tiny_model_path[:-5] + '.json'):
        shutil.copy(source, os.path.join(folder, 'm', os.path.basename(source)))
    os.makedirs(os.path.join(folder, 'notes'))
    with open(os.path.join(folder, 'notes', 'thesis.tex'), 'w', encoding='utf-8') as stream:
        stream.write('precious')
    os.makedirs(os.path.join(folder, 'run'))
    with open(os.path.join(folder, 'run', 'checkpoint_best.pt'), 'w', encoding='utf-8') as s:
        s.write('weights')
    write_manifest(os.path.join(folder, 'run'), 'leaf-disease-train')
    os.makedirs(os.path.join(folder, 'report'))
    with open(os.path.join(folder, 'report', 'metrics.json'), 'w', encoding='utf-8') as s:
        s.write('{}')
    write_manifest(os.path.join(folder, 'report'), 'leaf-disease-replay')
    os.makedirs(os.path.join(folder, 'empty'))
    os.mkfifo(os.path.join(folder, 'pipe'))
    os.symlink(os.path.join(folder, 'photos', 'a.png'), os.path.join(folder, 'photo_link'))
    os.link(os.path.join(folder, 'photos', 'a.png'), os.path.join(folder, 'photo_hardlink'))
    shutil.copytree(bag, os.path.join(folder, 'bag'))
    return os.path.join(folder, 'm', 'tiny.onnx')


def _snapshot_scene(folder):
    """Return {path: kind and content} of everything below ``folder`` (links not followed)."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                found[path] = ('link', os.readlink(path))
            elif stat.S_ISREG(mode):
                with open(path, 'rb') as stream:
                    found[path] = ('file', stream.read())
            else:
                found[path] = (stat.S_IFMT(mode), None)
    return found


def _check_scene(folder, before, writable):
    """Every entry that was there is unchanged, except the ones a run may replace."""
    after = _snapshot_scene(folder)
    for path, value in before.items():
        rel = os.path.relpath(path, folder)
        if rel.split(os.sep)[0] in writable:
            continue
        assert after.get(path) == value, f'{rel} changed or vanished'


@seed(SEED)
@fuzz_settings(40)
@given(json_target=st.one_of(st.none(), st.just('-'), st.sampled_from(OUTPUT_TARGETS)),
       explain_target=st.one_of(st.none(), st.sampled_from(OUTPUT_TARGETS)),
       whole=st.booleans())
def test_classify_outputs_never_land_on_inputs_or_special_files(capsys, tiny_model_path,
                                                                small_bag, json_target,
                                                                explain_target, whole):
    with tempfile.TemporaryDirectory() as folder:
        model = _output_scene(folder, tiny_model_path, small_bag)
        before = _snapshot_scene(folder)
        photos = os.path.join(folder, 'photos')
        argv = [photos if whole else os.path.join(photos, 'a.png'), '--model', model]
        if json_target is not None:
            argv += ['--json', json_target if json_target == '-'
                     else os.path.join(folder, json_target)]
        if explain_target is not None:
            argv += ['--explain', os.path.join(folder, explain_target)]
        try:
            code = classify_cli.main(argv)
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        event(f'exit {code}')
        assert code in CLASSIFY_EXITS and 'Traceback' not in captured.err
        _check_scene(folder, before, {'empty', 'new', 'new.json'})


@seed(SEED)
@fuzz_settings(20)
@given(out_target=st.sampled_from(OUTPUT_TARGETS),
       harvest_target=st.one_of(st.none(), st.sampled_from(OUTPUT_TARGETS)))
def test_replay_outputs_never_land_on_inputs_or_foreign_folders(capsys, tiny_model_path,
                                                                small_bag, out_target,
                                                                harvest_target):
    with tempfile.TemporaryDirectory() as folder:
        model = _output_scene(folder, tiny_model_path, small_bag)
        before = _snapshot_scene(folder)
        argv = [os.path.join(folder, 'bag'), '--out', os.path.join(folder, out_target),
                '--model', model, '--no-progress', '--no-output-bag', '--gallery', '0']
        if harvest_target is not None:
            argv += ['--harvest-tiles', os.path.join(folder, harvest_target)]
        code, err = run_replay_cli(argv, capsys)
        event(f'exit {code}')
        assert code in REPLAY_EXITS
        # an earlier report may be replaced by the replay; nothing else that was there
        _check_scene(folder, before, {'empty', 'new', 'new.json', 'report'})
        if code != 2:  # written: a new, empty or report folder, not an input nor beside one
            assert out_target not in ('.', 'photos', 'photos/a.png', 'm', 'm/tiny.onnx',
                                      'm/tiny.json', 'notes', 'run', 'pipe', 'photo_link',
                                      'photo_hardlink', 'bag', 'bag/report')
        assert not [n for n in os.listdir(folder) if '.partial-' in n or '.old-' in n]


# --- permission faults: inputs another user may not read (issue 18) ------------------------

LOCKABLE = ('photos/esca/a.png', 'photos/esca/c.png', 'photos/healthy', 'm/tiny.onnx',
            'm/tiny.json')


def _open_scene(root, tiny_model_path):
    """Fill ``root`` (open to nobody) with photos and a model; return the model."""
    rng = np.random.default_rng(1)
    os.makedirs(os.path.join(root, 'photos', 'esca'))
    os.makedirs(os.path.join(root, 'photos', 'healthy'))
    for name in ('esca/a.png', 'esca/c.png', 'healthy/d.png'):
        _write_file(os.path.join(root, 'photos', name), 'png', rng)
    os.makedirs(os.path.join(root, 'm'))
    for source in (tiny_model_path, tiny_model_path[:-5] + '.json'):
        shutil.copy(source, os.path.join(root, 'm'))
    os.makedirs(os.path.join(root, 'out'))
    give_away(os.path.join(root, 'out'))
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chmod(os.path.join(current, name), 0o755 if name in dirs else 0o644)
    return os.path.join(root, 'm', 'tiny.onnx')


@seed(SEED)
@fuzz_settings(3)
@given(locked=st.sets(st.sampled_from(LOCKABLE), min_size=1, max_size=3),
       with_json=st.booleans())
def test_permission_faults_are_named_and_change_nothing(tiny_model_path, locked, with_json):
    with open_folder() as root:
        model = _open_scene(root, tiny_model_path)
        for rel in locked:
            os.chmod(os.path.join(root, rel), 0)
        before = _snapshot_scene(os.path.join(root, 'photos')) \
            if 'photos/healthy' not in locked else None
        out = os.path.join(root, 'out', 'r.json')
        args = [os.path.join(root, 'photos'), '--model', model] + \
            (['--json', out] if with_json else [])
        run = run_module('leaf_disease_ros.cli.classify', args, root)
        event(f'exit {run.returncode}')
        assert 'Traceback' not in run.stderr + run.stdout, run.stderr
        assert run.returncode in CLASSIFY_EXITS
        assert 'Permission denied' in run.stderr or 'cannot be read' in run.stderr, run.stderr
        if locked & {'m/tiny.onnx', 'm/tiny.json', 'photos/healthy'}:
            assert run.returncode == 2 and not os.path.exists(out)
        if run.returncode == 2:
            assert not os.path.exists(out)
        elif with_json:
            with open(out, encoding='utf-8') as stream:
                json.load(stream)
        if before is not None:
            assert _snapshot_scene(os.path.join(root, 'photos')) == before


# --- write faults: full disk, file size limit (issue 18) -----------------------------------

WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@seed(SEED)
@fuzz_settings(24)
@given(command=st.sampled_from(['classify', 'replay']), fail_at=st.integers(0, 12),
       code_of_fault=st.sampled_from(WRITE_ERRNOS))
def test_a_write_fault_is_named_and_leaves_no_partial_output(capsys, tiny_model_path,
                                                             small_bag, leaf_images, command,
                                                             fail_at, code_of_fault):
    from leaf_disease_ros.perception import atomic_io

    fired = []
    opened = [0]

    def faulty_open(path, mode='r', *args, **kwargs):
        if 'w' in mode:  # the k-th file written finds the disk full
            opened[0] += 1
            if opened[0] > fail_at:
                fired.append(path)
                raise OSError(code_of_fault, os.strerror(code_of_fault))
        return open(path, mode, *args, **kwargs)

    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        photo = os.path.join(folder, 'a.jpg')
        shutil.copy(leaf_images['esca'][0], photo)
        before = _snapshot_scene(folder)
        out = os.path.join(folder, 'out.json' if command == 'classify' else 'out')
        patch.setattr(atomic_io, 'open', faulty_open, raising=False)
        if command == 'classify':
            try:
                code = classify_cli.main([photo, '--model', tiny_model_path, '--json', out])
            except SystemExit as exc:
                code = exc.code
            err = capsys.readouterr().err
            assert 'Traceback' not in err
        else:
            code, err = run_replay_cli([small_bag, '--out', out, '--model', tiny_model_path,
                                        '--no-progress', '--no-output-bag'], capsys)
        patch.undo()
        event(f'{command} fault {"fired" if fired else "not reached"}: exit {code}')
        if fired:
            assert code == 2, err
            assert os.strerror(code_of_fault) in err and 'cannot write' in err
            assert not os.path.exists(out)
        else:
            assert code == 0, err
            assert os.path.exists(out)
        assert leftovers(out) == []
        assert not [n for n in os.listdir(folder) if '.tmp' in n]
        for path, value in before.items():
            assert _snapshot_scene(folder).get(path) == value


@seed(SEED)
@fuzz_settings(3)
@given(command=st.sampled_from(['classify', 'replay']),
       limit_bytes=st.sampled_from([0, 300, 4000]))
def test_a_file_size_limit_is_a_named_write_error(tiny_model_path, small_bag, command,
                                                  limit_bytes):
    with open_folder() as root:
        model = _open_scene(root, tiny_model_path)
        bag = os.path.join(root, 'bag')
        shutil.copytree(small_bag, bag)
        for current, dirs, files in os.walk(bag):
            for name in dirs + files:
                os.chmod(os.path.join(current, name), 0o755 if name in dirs else 0o644)
        out = os.path.join(root, 'out', 'r.json' if command == 'classify' else 'report')
        args = [os.path.join(root, 'photos', 'esca', 'a.png'), '--json', out] \
            if command == 'classify' else [bag, '--out', out, '--no-progress',
                                           '--no-output-bag']
        run = run_module(f'leaf_disease_ros.cli.{command}', args + ['--model', model], root,
                         fsize_bytes=limit_bytes)
        event(f'{command} limit {limit_bytes}: exit {run.returncode}')
        assert 'Traceback' not in run.stderr + run.stdout, run.stderr
        if run.returncode == 0:
            assert os.path.exists(out)
        else:
            assert run.returncode == 2 and 'File too large' in run.stderr, run.stderr
            assert os.listdir(os.path.join(root, 'out')) == []  # nothing partial


# --- one topic with two types, several GPS topics (issue 18) -------------------------------


@seed(SEED)
@fuzz_settings(16)
@given(image_doubled=st.booleans(), fix_doubled=st.booleans(), default_fix=st.booleans(),
       others=st.sampled_from([(), ('/gps1/fix',), ('/gps1/fix', '/gps2/fix')]),
       chosen=st.sampled_from(['', '/gps/fix', '/gps1/fix']))
def test_duplicate_types_and_gps_topics_are_refused_by_name(capsys, tiny_model_path,
                                                            leaf_images, image_doubled,
                                                            fix_doubled, default_fix, others,
                                                            chosen):
    store, types = message_types()
    stray = store.types['sensor_msgs/msg/Image'](
        header=fix_message(types, NS, LAT0, LON0).header, height=1, width=1, encoding='bgr8',
        is_bigendian=0, step=3, data=np.zeros(3, np.uint8))
    image = cv2.resize(cv2.imread(leaf_images['esca'][0]), (64, 64))
    frames = [Frame(stamp_ns=(k + 1) * NS, image_bgr=image) for k in range(2)]
    track = [GpsFix(int(0.2 * k * NS), *offset_latlon(LAT0, LON0, 0.2 * k, 0.0))
             for k in range(20)]
    extra = []
    if image_doubled:
        extra.append(('/camera/image_raw/compressed', 'sensor_msgs/msg/Image', NS + 1, stray))
    if fix_doubled and default_fix:
        extra.append(('/gps/fix', 'sensor_msgs/msg/Image', NS + 2, stray))
    for topic in others:
        extra += [(topic, 'sensor_msgs/msg/NavSatFix', f.stamp_ns + 1,
                   fix_message(types, f.stamp_ns, f.latitude_deg, f.longitude_deg))
                  for f in track]
    with tempfile.TemporaryDirectory() as folder:
        bag = write_bag(os.path.join(folder, 'bag'), 'mcap', frames,
                        track if default_fix else [], extra=extra)
        out = os.path.join(folder, 'out')
        argv = [bag, '--out', out, '--model', tiny_model_path, '--no-progress',
                '--no-output-bag'] + (['--fix-topic', chosen] if chosen else [])
        code, err = run_replay_cli(argv, capsys)
        event(f'exit {code}')
        fix_topic = chosen or '/gps/fix'
        fix_types = 2 if fix_doubled and default_fix and fix_topic == '/gps/fix' else 1
        fix_missing = fix_topic not in (('/gps/fix',) if default_fix else ()) + others
        if image_doubled:
            assert code == 2 and 'was recorded with 2 message types' in err, err
        elif fix_types == 2:
            assert code == 2 and f'topic {fix_topic} was recorded with 2 message types' in err
        elif chosen and fix_missing:
            assert code == 2 and f'the bag has no GPS topic {chosen}' in err, err
        elif not chosen and not default_fix and len(others) == 2:
            assert code == 2 and 'Choose one with --fix-topic' in err, err
        else:
            assert code == 0, err
            check_report(out, code, False)
        if code == 2:
            assert not os.path.exists(out)


# --- stamps that repeat or go backwards (issue 18) -----------------------------------------


@seed(SEED)
@fuzz_settings(12)
@given(stamps_s=st.lists(st.sampled_from([0, 1, 2, 3, 4]), min_size=1, max_size=6))
def test_stamp_disorder_is_counted_and_said(capsys, tiny_model_path, leaf_images, stamps_s):
    image = cv2.resize(cv2.imread(leaf_images['esca'][0]), (64, 64))
    frames = [Frame(stamp_ns=s * NS, image_bgr=image, log_time_ns=(k + 1) * NS)
              for k, s in enumerate(stamps_s)]
    truth = [Truth(s * NS, [((0.0, 0.0, 64.0, 64.0), 'esca')], log_time_ns=(k + 1) * NS - 1000)
             for k, s in enumerate(stamps_s) if s]
    expected, newest = 0, None
    for s in stamps_s:
        if s:
            expected += newest is not None and s <= newest
            newest = max(s, newest or 0)
    with tempfile.TemporaryDirectory() as folder:
        bag = write_bag(os.path.join(folder, 'bag'), 'mcap', frames, truth=truth)
        out = os.path.join(folder, 'out')
        code, err = run_replay_cli([bag, '--out', out, '--model', tiny_model_path,
                                    '--no-progress', '--no-output-bag'], capsys)
        event(f'disorder {expected}')
        assert code == 0, err
        metrics = check_report(out, code, False)
        with open(os.path.join(out, 'report.md'), encoding='utf-8') as stream:
            report = ' '.join(stream.read().split())
        said = f'{expected} of {len(stamps_s)} frames repeat the header stamp'
        assert (said in report) == bool(expected), report
        assert metrics['frames']['read'] == len(stamps_s)


# --- a model whose outputs are not numbers (issue 18) --------------------------------------

LOGIT_BIASES = (math.nan, math.inf, -math.inf, 1e38, -1e38, 0.0, 3.0)


@pytest.fixture(scope='module')
def biased_models(tmp_path_factory):
    """Return {logit bias: tiny model path} for every bias of :data:`LOGIT_BIASES`."""
    models = {}
    for k, bias in enumerate(LOGIT_BIASES):
        folder = str(tmp_path_factory.mktemp(f'bias_{k}'))
        make_tiny_model(folder, logit_bias=bias)
        models[repr(bias)] = os.path.join(folder, 'tiny.onnx')
    return models


def _strict_json(text):
    def refuse(name):
        raise ValueError(f'{name} is not JSON')
    return json.loads(text, parse_constant=refuse)


@seed(SEED)
@fuzz_settings(14)
@given(bias=st.sampled_from(LOGIT_BIASES), command=st.sampled_from(['classify', 'json',
                                                                    'replay']))
def test_non_finite_model_outputs_are_errors_never_findings(capsys, biased_models, small_bag,
                                                            leaf_images, bias, command):
    model = biased_models[repr(bias)]
    broken = not math.isfinite(bias) or abs(bias) >= 1e38
    photo = leaf_images['esca'][0]
    with tempfile.TemporaryDirectory() as folder:
        if command == 'replay':
            out = os.path.join(folder, 'out')
            code, err = run_replay_cli([small_bag, '--out', out, '--model', model,
                                        '--no-progress', '--no-output-bag'], capsys)
            assert code == (replay_cli.EXIT_NOTHING_PROCESSED if broken else 0), err
            with open(os.path.join(out, 'metrics.json'), encoding='utf-8') as stream:
                metrics = _strict_json(stream.read())
            assert (metrics['frames']['processed'] == 0) == broken
        else:
            argv = [photo, '--model', model] + (['--json', '-'] if command == 'json' else [])
            code = classify_cli.main(argv)
            captured = capsys.readouterr()
            assert 'Traceback' not in captured.err
            assert code == (1 if broken else 0), captured.err
            assert 'nan' not in captured.out.lower() and 'inf' not in captured.out.lower()
            if command == 'json':
                document = _strict_json(captured.out)
                assert (document['not_classified'] == [photo]) == broken
            if broken:
                assert 'NaN, infinite or overflowing outputs' in captured.err
        event(f'{command} bias {bias}: exit {code}')


# --- hostile YAML params files (issue 18) --------------------------------------------------


@st.composite
def hostile_yaml(draw):
    """Draw (params text, whether it must be refused, why) of a hostile kind."""
    kind = draw(st.sampled_from(['laughs', 'nesting', 'recursive', 'python_tag', 'huge',
                                 'binary', 'duplicate']))
    key = draw(st.sampled_from(['lever_arm_m', 'tile_size_px', 'model_path', 'unknown_key']))
    if kind == 'laughs':
        fan, depth = draw(st.integers(2, 10)), draw(st.integers(1, 8))
        lines = ['a0: &a0 [' + ', '.join(['1.0'] * fan) + ']']
        lines += [f'a{k + 1}: &a{k + 1} [' + ', '.join([f'*a{k}'] * fan) + ']'
                  for k in range(depth)]
        return '\n'.join(lines + [f'{key}: *a{depth}']) + '\n', fan ** (depth + 1) > 100000
    if kind == 'nesting':
        deep = draw(st.sampled_from([50, 1000, 20000]))
        return f'{key}: ' + '[' * deep + ']' * deep + '\n', deep > 1000
    if kind == 'recursive':
        return f'{key}: &r [1.0, *r]\n', True
    if kind == 'python_tag':
        return (f'{key}: !!python/object/apply:os.mkdir ["{{marker}}"]\n', True)
    if kind == 'huge':
        return f'{key}: "' + 'x' * (draw(st.integers(1, 3)) << 20) + '"\n', True
    if kind == 'binary':
        return draw(st.binary(min_size=1, max_size=64)).decode('latin-1') + '\xff\xfe', False
    return f'{key}: 1\n{key}: 2\n', False


@seed(SEED)
@fuzz_settings(20)
@given(document=hostile_yaml())
def test_hostile_yaml_is_refused_in_a_line_and_never_run(capsys, tiny_model_path, small_bag,
                                                         document):
    text, refused = document
    with tempfile.TemporaryDirectory() as folder:
        marker = os.path.join(folder, 'code_ran')
        params = os.path.join(folder, 'params.yaml')
        with open(params, 'w', encoding='utf-8', errors='surrogateescape') as stream:
            stream.write(text.replace('{marker}', marker))
        with open(params, 'rb') as stream:
            before = stream.read()
        out = os.path.join(folder, 'out')
        code, err = run_replay_cli([small_bag, '--params-file', params, '--out', out,
                                    '--model', tiny_model_path, '--no-progress',
                                    '--no-output-bag'], capsys)
        event(f'exit {code}')
        assert code in REPLAY_EXITS
        assert len(err) < 4000, err[:300]  # what is echoed is bounded
        if refused:
            assert code == 2 and err.strip(), err
        if code == 2:
            assert not os.path.exists(out)
        assert not os.path.exists(marker)
        with open(params, 'rb') as stream:
            assert stream.read() == before


# --- the season's row layout (--rows) ------------------------------------------------------

VALID_POSITIONS = st.lists(st.tuples(st.floats(-0.151, -0.149),
                                     st.floats(44.899, 44.901)).map(list),
                           min_size=2, max_size=5)
ROW_POSITIONS = st.one_of(
    VALID_POSITIONS,
    st.lists(st.lists(HOSTILE_FLOATS, min_size=0, max_size=4), max_size=4),
    st.lists(st.one_of(SCALARS, st.lists(SCALARS, max_size=3)), max_size=3), SCALARS)
ROW_GEOMETRIES = st.one_of(
    st.builds(lambda kind, coordinates: {'type': kind, 'coordinates': coordinates},
              st.sampled_from(['LineString', 'LineString', 'LineString', 'Point',
                               'MultiLineString', 'Polygon', 'linestring']), ROW_POSITIONS),
    SCALARS, st.dictionaries(st.sampled_from(['type', 'coordinates']), SCALARS, max_size=2))
ROW_PROPERTIES = st.one_of(
    st.fixed_dictionaries({'row': st.sampled_from(['A1', 'A2', 'B1'])},
                          optional={'name': st.one_of(st.text(max_size=5), SCALARS)}),
    st.dictionaries(st.sampled_from(['row', 'name', 'x']), SCALARS, max_size=3), SCALARS)
ROW_FEATURES = st.one_of(
    st.fixed_dictionaries({'type': st.just('Feature'), 'properties': ROW_PROPERTIES,
                           'geometry': ROW_GEOMETRIES}),
    st.dictionaries(st.sampled_from(['type', 'properties', 'geometry']), SCALARS,
                    max_size=3), SCALARS)
VALID_ROWS = st.lists(st.fixed_dictionaries({
    'type': st.just('Feature'),
    'properties': st.fixed_dictionaries({'row': st.text('AB12-', min_size=1, max_size=4)},
                                        optional={'name': st.text(max_size=5)}),
    'geometry': st.fixed_dictionaries({'type': st.just('LineString'),
                                       'coordinates': VALID_POSITIONS})}),
    min_size=1, max_size=4, unique_by=lambda f: f['properties']['row'])
ROW_DOCUMENTS = st.one_of(
    VALID_ROWS.map(lambda rows: {'type': 'FeatureCollection', 'features': rows}),
    st.tuples(VALID_ROWS, ROW_FEATURES).map(lambda pair: {  # valid rows and one more
        'type': 'FeatureCollection', 'features': pair[0] + [pair[1]]}),
    st.fixed_dictionaries({'type': st.just('FeatureCollection'),
                           'features': st.lists(ROW_FEATURES, max_size=4)},
                          optional={'crs': st.one_of(SCALARS, st.fixed_dictionaries(
                              {'properties': st.fixed_dictionaries({'name': st.sampled_from(
                                  ['urn:ogc:def:crs:OGC:1.3:CRS84', 'EPSG:32631', ''])})}))}),
    DOCUMENTS)


def _row_text(document, raw):
    if raw is not None:
        return raw
    try:
        return json.dumps(document, allow_nan=True).encode()
    except (TypeError, ValueError):
        return b'{'


@seed(SEED)
@fuzz_settings(300)
@given(document=ROW_DOCUMENTS, raw=st.one_of(st.none(), st.none(), st.none(),
                                             st.binary(max_size=64)))
def test_any_row_layout_is_read_or_refused_by_name(document, raw):
    data = _row_text(document, raw)
    try:
        layout = parse_row_layout(data, 'fuzz/rows.geojson')
    except RowLayoutError as exc:
        event('refused')
        message = str(exc)
        assert message.startswith("parameter '--rows': fuzz/rows.geojson: "), message
        assert len(message) < 1000, message[:300]
        return
    event('read')
    ids = [row.row_id for row in layout.rows]
    assert ids and len(set(ids)) == len(ids) and all(isinstance(i, str) and i for i in ids)
    for row in layout.rows:
        assert len(row.latitudes_deg) == len(row.longitudes_deg) >= 2
        assert all(math.isfinite(v) and -90.0 <= v <= 90.0 for v in row.latitudes_deg)
        assert all(math.isfinite(v) and -180.0 <= v <= 180.0 for v in row.longitudes_deg)
