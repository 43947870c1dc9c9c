"""
The bad inputs of issue 11, one test per case: never a traceback, never a wrong result.

1. GPS glitches (latitude beyond the pole or beyond UTM, a far jump next to a frame,
   longitude 200) never stop the replay and never move a map feature.
2. Typos in a params file or a topic option are errors that name the fix.
3. Grey (mono) cameras are refused with the reason, not evaluated as nothing.
4. The replay never writes over or next to its input.
5. An interrupted or failed run leaves the report folder as it was, without debris.
6. classify says which images it did not classify and why; checks --json first.
7. The smaller lies: no sha256, bad node names, --max-frames -1, zero stamps, late
   fixes, silent GPS, padded rows, unwritable --out, .old leftovers, exit codes.

Case 8 (checkpoints that run code) is in ``test_training.py``.
"""

import json
import math
import os
import xml.etree.ElementTree as ElementTree

import cv2
import pytest

from bag_builder import Frame, GpsFix, mosaic, NS, write_bag
from leaf_disease_ros.cli import replay as cli
from leaf_disease_ros.geo.geodesy import distance_m, offset_latlon
from leaf_disease_ros.perception.output_paths import MANIFEST_FILE, write_manifest
from leaf_disease_ros.replay.typestore import make_typestore
from tiny_model import make_tiny_model

LAT0, LON0 = 46.0, 7.0
FINDINGS = ['--disease-threshold', '0', '--unknown-threshold', '0',
            '--min-vegetation-fraction', '0']


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """Return a tiny model that calls these leaves diseased (seed 1)."""
    folder = str(tmp_path_factory.mktemp('tiny_seed1'))
    make_tiny_model(folder, seed=1)
    return os.path.join(folder, 'tiny.onnx')


@pytest.fixture(scope='module')
def frame_image(leaf_images):
    """Return a 768x256 mosaic of three real leaves."""
    return mosaic([cv2.imread(leaf_images[label][0])
                   for label in ('black_rot', 'esca', 'leaf_blight')], 3)


def frames_at(image, times_s, **kwargs):
    """Return frames stamped at ``times_s`` (log time 15 ms later)."""
    return [Frame(stamp_ns=int(t * NS), image_bgr=image, log_time_ns=int(t * NS) + 15_000_000,
                  **kwargs) for t in times_s]


def track_fixes(duration_s, lat0=LAT0, lon0=LON0, speed_mps=1.0, period_s=0.2,
                delay_s=0.025):
    """Return fixes along a straight track east at ``speed_mps`` (stamp, lat, lon)."""
    fixes = []
    for k in range(int(duration_s / period_s) + 1):
        t = k * period_s
        lat, lon = offset_latlon(lat0, lon0, speed_mps * t, 0.0)
        log_ns = int(round((t + delay_s) * NS))
        fixes.append(GpsFix(int(round(t * NS)), lat, lon, log_time_ns=log_ns))
    return fixes


def run(args, capsys, model):
    """
    Run the replay CLI; return (exit code, stdout, stderr); never a traceback.

    The domain check judges from the first tile (these bags are a few frames long).
    """
    code = cli.main(list(args) + ['--model', model, '--no-progress',
                                  '--param', 'domain_min_tiles=1'])
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err
    return code, captured.out, captured.err


def metrics_of(out):
    with open(os.path.join(out, 'metrics.json'), encoding='utf-8') as stream:
        return json.load(stream)


def geojson_points(out):
    with open(os.path.join(out, 'findings.geojson'), encoding='utf-8') as stream:
        return [f['geometry']['coordinates'] for f in json.load(stream)['features']]


def kml_coordinates(out):
    tree = ElementTree.parse(os.path.join(out, 'findings.kml'))
    points = []
    for element in tree.iter('{http://www.opengis.net/kml/2.2}coordinates'):
        for item in element.text.split():
            lon, lat, _ = (float(v) for v in item.split(','))
            points.append((lon, lat))
    return points


def geo_detection_positions(out):
    from rosbags.rosbag2 import Reader

    store = make_typestore()
    positions = []
    with Reader(os.path.join(out, 'detections')) as reader:
        for connection, _, data in reader.messages():
            if connection.topic.endswith('/geo_detections'):
                msg = store.deserialize_cdr(data, connection.msgtype)
                positions += [(d.bbox.center.position.x, d.bbox.center.position.y)
                              for d in msg.detections]
    return positions


# --- 1. GPS glitches -------------------------------------------------------------------


def glitched_bag(path, image, storage='mcap'):
    """Frames at 1.0, 2.0 ... 5.0 s on a 1 m/s track, with five kinds of bad fix."""
    fixes = track_fixes(6.0)
    glitches = [
        GpsFix(1 * NS, 95.0, LON0),  # on a frame's stamp, beyond the pole
        GpsFix(int(1.95 * NS), 95.0, LON0),  # 0.05 s before a frame (was interpolated)
        GpsFix(int(3.05 * NS), 88.0, LON0),  # a valid latitude, 4,700 km away
        GpsFix(int(4.1 * NS), LAT0 + 0.5, LON0),  # a 55 km jump
        GpsFix(int(4.9 * NS), 91.0, 200.0),
    ]
    good = [f for f in fixes if f.stamp_ns not in {g.stamp_ns for g in glitches}]
    for glitch in glitches:
        glitch.log_time_ns = glitch.stamp_ns + 25_000_000
    return write_bag(path, storage, frames_at(image, [1.0, 2.0, 3.0, 4.0, 5.0]),
                     good + glitches)


@pytest.mark.parametrize('extra', [[], ['--no-output-bag']], ids=['with_bag', 'no_bag'])
def test_case1_a_glitched_fix_never_stops_the_replay_or_moves_the_map(
        tmp_path, capsys, model, frame_image, extra):
    bag = glitched_bag(str(tmp_path / 'bag'), frame_image)
    out = str(tmp_path / 'out')
    # findings at the camera position (not at the leaf, 0.75 m beside the track): the
    # check is that no glitched fix moves them off the track
    code, stdout, _ = run([bag, '--out', out, '--param', 'ground_positions=false']
                          + FINDINGS + extra, capsys, model)
    assert code == cli.EXIT_OK
    metrics = metrics_of(out)
    assert metrics['geotag']['fixes_rejected'] == {'rejected_latitude': 3, 'rejected_jump': 2}
    assert metrics['geotag']['coverage'] == 1.0
    assert 'fixes rejected: latitude 3, jump 2' in stdout
    # The plausibility limit bounds how far a glitch could drag a position: every
    # feature lies on the true track (1 m/s east from LAT0, LON0 for 6 s).
    points = geojson_points(out)
    assert points and metrics['findings']['features'] == len(points)
    for lon, lat in points:
        along = distance_m(LAT0, LON0, LAT0, lon)
        assert distance_m(lat, lon, LAT0, LON0 + (lon - LON0)) < 0.05
        assert 0.5 < along < 5.5
    for lon, lat in kml_coordinates(out):
        assert abs(lat - LAT0) < 1e-4 and abs(lon - LON0) < 1e-3
    if not extra:
        positions = geo_detection_positions(out)
        assert positions and all(math.isfinite(x) and math.isfinite(y) for x, y in positions)


def test_case1_longitude_200_is_normalised_for_findings_and_track(tmp_path, capsys,
                                                                  model,
                                                                  frame_image):
    fixes = track_fixes(4.0, lon0=200.0 - 360.0)
    for item in fixes:
        item.longitude_deg += 360.0  # the receiver writes 200 for -160
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames_at(frame_image, [1.0, 2.0, 3.0]),
                    fixes)
    out = str(tmp_path / 'out')
    code, _, _ = run([bag, '--out', out] + FINDINGS, capsys, model)
    assert code == cli.EXIT_OK
    assert metrics_of(out)['geotag']['fix_buffer']['longitude_wrapped'] == len(fixes)
    points = geojson_points(out)
    track = kml_coordinates(out)
    assert points and track
    for lon, _ in points + track:
        assert -160.01 < lon < -159.99


def test_case1_a_polar_robot_maps_its_findings_without_utm(tmp_path, capsys, model,
                                                           frame_image):
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames_at(frame_image, [1.0, 2.0]),
                    track_fixes(3.0, lat0=88.0))
    out = str(tmp_path / 'out')
    code, stdout, _ = run([bag, '--out', out] + FINDINGS, capsys, model)
    assert code == cli.EXIT_OK
    metrics = metrics_of(out)
    assert metrics['geotag']['coverage'] == 1.0
    assert metrics['geotag']['frames_outside_utm'] == 2
    assert metrics['findings']['outside_utm'] == metrics['findings']['sightings'] > 0
    assert 'beyond UTM or its zone (not in geo_detections)' in stdout
    assert geo_detection_positions(out) == []
    assert all(abs(lat - 88.0) < 1e-3 for _, lat in geojson_points(out))
    with open(os.path.join(out, 'report.md'), encoding='utf-8') as stream:
        report = stream.read()
    assert '2 frames have a position beyond UTM' in report
    assert 'UTM zone of `geo_detections`: none (no valid fix within UTM' in report
    assert metrics['geotag']['utm_zone'] is None


# --- 2. typos ----------------------------------------------------------------------------


@pytest.mark.parametrize('layout,key', [
    ('/**:\n  ros__parameters:\n    {}\n', 'tile_sise_px'),
    ('detector_node:\n  ros__parameters:\n    {}\n', 'tile_sise_px'),
    ('robot1:\n  detector_node:\n    ros__parameters:\n      {}\n', 'tile_sise_px'),
    ('{}\n', 'tile_sise_px'),
    ('detector_node:\n  ros__parameters:\n    tile:\n      size_px: 128\n', 'tile.size_px'),
], ids=['wildcard', 'node', 'namespaced', 'flat', 'nested'])
def test_case2_a_typo_in_the_params_file_is_an_error(tmp_path, capsys, model, frame_image,
                                                     layout, key):
    params = tmp_path / 'p.yaml'
    params.write_text(layout.format('tile_sise_px: 128'))
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames_at(frame_image, [1.0]))
    out = tmp_path / 'out'
    code, _, err = run([bag, '--params-file', str(params), '--out', str(out)], capsys, model)
    assert code == cli.EXIT_ERROR
    assert f"parameter '{key}': unknown parameter in params file" in err
    assert 'did you mean tile_size_px?' in err
    assert not out.exists()


def test_case2_other_nodes_and_ros_parameters_are_not_typos(tmp_path, capsys, model,
                                                            frame_image):
    params = tmp_path / 'p.yaml'
    params.write_text('/**:\n  ros__parameters:\n    use_sim_time: true\n'
                      'camera_driver:\n  ros__parameters:\n    fps: 30\n'
                      'detector_node:\n  ros__parameters:\n    top_k: 2\n')
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames_at(frame_image, [1.0]))
    out = str(tmp_path / 'out')
    code, _, _ = run([bag, '--params-file', str(params), '--out', out], capsys, model)
    assert code == cli.EXIT_OK
    assert metrics_of(out)['parameters']['top_k'] == 2


def test_case2_a_typo_in_param_names_the_closest(tmp_path, capsys, model, frame_image):
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames_at(frame_image, [1.0]))
    code, _, err = run([bag, '--param', 'max_fix_gap=2.0', '--out', str(tmp_path / 'o')],
                       capsys, model)
    assert code == cli.EXIT_ERROR
    assert "'max_fix_gap': unknown parameter in --param (did you mean max_fix_gap_s?)" in err


@pytest.mark.parametrize('option,wrong,right,listed', [
    ('--fix-topic', '/gps/fixx', '/gps/fix', '/gps/fix (sensor_msgs/msg/NavSatFix, 21 msgs)'),
    ('--ground-truth-topic', '/ground_truht', '/ground_truth',
     '/ground_truth (vision_msgs/msg/Detection2DArray, 1 msgs)'),
    ('--image-topic', '/camera/image_raw/compresed', '/camera/image_raw/compressed',
     '/camera/image_raw/compressed (sensor_msgs/msg/CompressedImage, 1 msgs)'),
])
def test_case2_every_topic_option_is_checked_against_the_bag(tmp_path, capsys, model,
                                                             frame_image, option, wrong,
                                                             right, listed):
    from bag_builder import Truth

    frames = frames_at(frame_image, [1.0])
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames, track_fixes(4.0),
                    [Truth(frames[0].stamp_ns, [((0.0, 0.0, 256.0, 256.0), 'esca')])])
    out = tmp_path / 'out'
    code, _, err = run([bag, option, wrong, '--out', str(out)], capsys, model)
    assert code == cli.EXIT_ERROR
    assert 'the bag has no' in err and f'{wrong} (did you mean {right}?)' in err
    assert listed in err and option in err
    assert not out.exists()


# --- 3. grey cameras -----------------------------------------------------------------------


@pytest.mark.parametrize('kind,encoding,expected', [
    ('raw', 'mono8', 'carries mono8 images'),
    ('png', '', 'carries grey png images'),
    ('jpeg', '', 'carries grey jpeg images'),
])
def test_case3_a_grey_camera_is_refused_at_start(tmp_path, capsys, model, frame_image, kind,
                                                 encoding, expected):
    grey = cv2.cvtColor(frame_image, cv2.COLOR_BGR2GRAY)
    frames = frames_at(frame_image, [1.0, 2.0], kind=kind)
    raw = kind == 'raw'
    for frame in frames:
        if raw:
            frame.encoding = encoding
        else:
            ok, buffer = cv2.imencode('.png' if kind == 'png' else '.jpg', grey)
            frame.data = buffer.tobytes()
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames, track_fixes(3.0), raw=raw)
    out = tmp_path / 'out'
    code, _, err = run([bag, '--out', str(out)], capsys, model)
    assert code == cli.EXIT_ERROR  # was exit 0 with "tile accuracy 0.000 (0 tiles)"
    assert expected in err and 'the model classifies colour photos of leaves' in err
    assert not out.exists()


def test_case3_grey_frames_in_a_colour_recording_are_skipped_and_counted(tmp_path, capsys,
                                                                         model, frame_image):
    frames = frames_at(frame_image, [1.0, 2.0, 3.0], kind='raw')
    frames[1].image_bgr = cv2.cvtColor(cv2.cvtColor(frame_image, cv2.COLOR_BGR2GRAY),
                                       cv2.COLOR_GRAY2BGR)
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames, track_fixes(4.0), raw=True)
    out = str(tmp_path / 'out')
    code, _, err = run([bag, '--out', out], capsys, model)
    assert code == cli.EXIT_OK
    metrics = metrics_of(out)
    assert metrics['frames']['skipped'] == {'no_colour': 1}
    assert metrics['frames']['processed'] == 2
    assert 'has no colour' in err


# --- 4. the input is never touched ---------------------------------------------------------


def test_case4_the_replay_never_writes_over_its_input(tmp_path, capsys, model, frame_image,
                                                      monkeypatch):
    # A first run writes replay_report/ with detections/; replaying that output
    # with the default --out renamed the input to .old and deleted it.
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames_at(frame_image, [1.0]))
    monkeypatch.chdir(tmp_path)
    code, _, _ = run([bag, '--image-topic', '/camera/image_raw/compressed'], capsys, model)
    assert code == cli.EXIT_OK
    output_bag = os.path.join('replay_report', 'detections')
    before = sorted(os.listdir(output_bag))
    sizes = [os.path.getsize(os.path.join(output_bag, n)) for n in before]
    code, _, err = run([output_bag, '--image-topic', '/camera/image_raw/compressed'], capsys,
                       model)
    assert code == cli.EXIT_ERROR
    assert 'holds the input' in err
    assert sorted(os.listdir(output_bag)) == before
    assert [os.path.getsize(os.path.join(output_bag, n)) for n in before] == sizes
    # and the report folder is never put inside the recording either
    code, _, err = run([bag, '--out', os.path.join(bag, 'report')], capsys, model)
    assert code == cli.EXIT_ERROR and 'is inside the input' in err
    assert not os.path.exists(os.path.join(bag, 'report'))


def test_case4_a_folder_that_is_not_a_report_is_not_replaced(tmp_path, capsys, model,
                                                             frame_image):
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames_at(frame_image, [1.0]))
    home = tmp_path / 'home'
    home.mkdir()
    (home / 'thesis.tex').write_text('precious')
    code, _, err = run([bag, '--out', str(home)], capsys, model)
    assert code == cli.EXIT_ERROR and 'was not made by leaf-disease-replay' in err
    assert (home / 'thesis.tex').read_text() == 'precious'


# --- 5. interrupted and failed runs --------------------------------------------------------


def _snapshot(folder):
    """Return {relative path: bytes} of every file under ``folder``."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, 'rb') as stream:
                found[os.path.relpath(path, folder)] = stream.read()
    return found


def _hidden_entries(folder):
    return [n for n in os.listdir(folder) if n.startswith('.')]


@pytest.fixture()
def earlier_report(tmp_path, capsys, model, frame_image):
    """Return (bag, out) where out holds the report of an earlier, complete run."""
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames_at(frame_image, [1.0, 2.0, 3.0]),
                    track_fixes(4.0))
    out = str(tmp_path / 'out')
    code, _, _ = run([bag, '--out', out, '--max-frames', '1'], capsys, model)
    assert code == cli.EXIT_OK
    return bag, out


_INTERRUPTED_RUN = """
import os, signal, sys
from leaf_disease_ros.cli import replay as cli

class Interrupting:
    # a progress bar that signals this process at the second frame
    def __init__(self, stream):
        self.frames = 0
    def __call__(self, progress):
        self.frames += 1
        if self.frames == 2:
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    def close(self):
        pass

cli.ProgressBar = Interrupting
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize('signum', ['SIGTERM', 'SIGINT'])
def test_case5_an_interrupted_run_leaves_no_debris_and_the_old_report(tmp_path, model,
                                                                      earlier_report, signum):
    import subprocess
    import sys

    bag, out = earlier_report
    before = _snapshot(out)
    done = subprocess.run([sys.executable, '-c', _INTERRUPTED_RUN, signum, bag, '--out', out,
                           '--model', model], capture_output=True, text=True, timeout=120)
    assert done.returncode == cli.EXIT_ERROR, done.stderr  # SIGTERM killed it: -15
    assert 'Traceback' not in done.stderr
    assert ('terminated (SIGTERM)' if signum == 'SIGTERM' else 'interrupted') in done.stderr
    assert _snapshot(out) == before  # all of the earlier run, untouched
    assert _hidden_entries(str(tmp_path)) == []  # no .out.partial-*, no .detections.*


def test_case5_a_full_disk_leaves_the_old_report_whole(tmp_path, capsys, model,
                                                       earlier_report, monkeypatch):
    import errno

    from leaf_disease_ros.replay import report

    bag, out = earlier_report
    before = _snapshot(out)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')

    # the confusion matrix would already be written when the map fails
    monkeypatch.setattr(report, 'write_map_png', disk_full)
    code, _, err = run([bag, '--out', out], capsys, model)
    assert code == cli.EXIT_ERROR
    assert 'No space left on device' in err and 'nothing was written' in err
    assert _snapshot(out) == before
    assert _hidden_entries(str(tmp_path)) == []


def test_case5_a_new_report_replaces_the_old_one_as_a_whole(tmp_path, capsys, model,
                                                            earlier_report):
    bag, out = earlier_report
    code, _, _ = run([bag, '--out', out, '--no-output-bag'], capsys, model)
    assert code == cli.EXIT_OK
    assert metrics_of(out)['frames']['processed'] == 3
    assert not os.path.exists(os.path.join(out, 'detections'))  # not the old run's
    assert _hidden_entries(str(tmp_path)) == []


# --- 7. the smaller lies (replay) --------------------------------------------------------


@pytest.mark.parametrize('name', ['', 'a b', '1bad', 'node/x', 'détecteur'])
def test_case7_node_names_are_ros_names(tmp_path, capsys, model, name):
    with pytest.raises(SystemExit) as caught:
        cli.main(['bag', '--node-name', name, '--model', model, '--out', str(tmp_path / 'o')])
    assert caught.value.code == cli.EXIT_ERROR
    assert 'is not a ROS node name' in capsys.readouterr().err


def test_case7_negative_max_frames_is_an_error(tmp_path, capsys, model):
    with pytest.raises(SystemExit) as caught:
        cli.main(['bag', '--max-frames', '-1', '--model', model])
    assert caught.value.code == cli.EXIT_ERROR
    assert '--max-frames must be >= 0' in capsys.readouterr().err


def test_case7_frames_stamped_zero_are_said_and_never_joined(tmp_path, capsys, model,
                                                             frame_image):
    from bag_builder import Truth

    frames = [Frame(stamp_ns=0, image_bgr=frame_image, log_time_ns=int((1 + k) * NS))
              for k in range(4)]
    truth = [Truth(0, [((0.0, 0.0, 256.0, 256.0), 'esca')], log_time_ns=int((1 + k) * NS) + 1)
             for k in range(4)]
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames, track_fixes(6.0), truth)
    out = str(tmp_path / 'out')
    code, _, err = run([bag, '--out', out] + FINDINGS, capsys, model)
    assert code == cli.EXIT_OK
    metrics = metrics_of(out)
    assert metrics['frames']['unstamped'] == 4
    assert metrics['geotag']['by_reason']['no_image_stamp'] == 4
    assert metrics['accuracy']['count'] == 0  # not scored against some other frame's truth
    assert metrics['accuracy']['frames_unstamped_not_scored'] == 4
    assert 'have header stamp 0' in err


def test_case7_fixes_logged_late_still_interpolate(tmp_path, capsys, model, frame_image):
    fixes = track_fixes(6.0, delay_s=1.5)  # the GPS driver publishes 1.5 s late
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames_at(frame_image, [1.1, 2.1, 3.1]),
                    fixes)
    out = str(tmp_path / 'out')
    code, _, err = run([bag, '--out', out], capsys, model)
    assert code == cli.EXIT_OK
    metrics = metrics_of(out)
    assert metrics['geotag']['by_reason']['interpolated'] == 3
    assert metrics['geotag']['fixes_late'] == 0
    assert metrics['geotag']['max_fix_delay_s'] == pytest.approx(1.5)
    assert 'frames waited' in err


def test_case7_a_gps_silence_splits_the_track(tmp_path, capsys, model, frame_image):
    fixes = [f for f in track_fixes(80.0) if not 10 * NS < f.stamp_ns < 70 * NS]
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames_at(frame_image, [5.0, 75.0]), fixes)
    out = str(tmp_path / 'out')
    code, _, _ = run([bag, '--out', out], capsys, model)
    assert code == cli.EXIT_OK
    tree = ElementTree.parse(os.path.join(out, 'findings.kml'))
    lines = list(tree.iter('{http://www.opengis.net/kml/2.2}LineString'))
    assert len(lines) == 2  # one line before the 60 s silence, one after


def test_case7_padded_rows_are_valid_images(tmp_path, capsys, model, frame_image):
    import numpy as np

    height, width = frame_image.shape[:2]
    step = width * 3 + 64  # each row padded by 64 bytes, as some drivers align rows
    padded = np.zeros((height, step), dtype=np.uint8)
    padded[:, :width * 3] = frame_image.reshape(height, width * 3)
    frames = frames_at(frame_image, [1.0, 2.0], kind='raw')
    frames[1].data = padded.tobytes()
    frames[1].raw_shape = (height, width, step)
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames, raw=True)
    out = str(tmp_path / 'out')
    code, _, _ = run([bag, '--out', out], capsys, model)
    assert code == cli.EXIT_OK
    metrics = metrics_of(out)
    assert metrics['frames']['processed'] == 2 and metrics['frames']['skipped'] == {}
    assert metrics['tiles']['by_label']  # both frames classified alike
    assert all(count % 2 == 0 for count in metrics['tiles']['by_label'].values())


def test_case7_an_unwritable_out_is_found_before_the_run(tmp_path, capsys, model,
                                                         frame_image, monkeypatch):
    from leaf_disease_ros.replay import runner

    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames_at(frame_image, [1.0]))
    (tmp_path / 'a_file').write_text('x')

    def never(*args, **kwargs):
        raise AssertionError('the replay ran although its output cannot be written')

    monkeypatch.setattr(runner, 'run_replay', never)
    monkeypatch.setattr(cli, 'run_replay', never)
    code, _, err = run([bag, '--out', str(tmp_path / 'a_file' / 'out'), '--no-output-bag'],
                       capsys, model)
    assert code == cli.EXIT_ERROR and 'is not a folder; give a path in a folder' in err


def test_case7_an_old_detections_file_leaves_nothing_behind(tmp_path, capsys, model,
                                                            frame_image):
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames_at(frame_image, [1.0]))
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'detections').write_text('an old file of that name')
    write_manifest(str(out), 'leaf-disease-replay')  # an earlier report, by its manifest
    code, _, _ = run([bag, '--out', str(out)], capsys, model)
    assert code == cli.EXIT_OK
    assert os.path.isdir(out / 'detections')
    assert not [n for n in os.listdir(out)
                if n.endswith('.old') or (n.startswith('.') and n != MANIFEST_FILE)]
    assert _hidden_entries(str(tmp_path)) == []


# --- 6. classify never drops an image silently ---------------------------------------------


def _classify(args, capsys, model):
    from leaf_disease_ros.cli import classify

    code = classify.main(list(args) + ['--model', model])
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err
    return code, captured.out, captured.err


def test_case6_nested_and_loose_images_are_counted(tmp_path, capsys, tiny_model_path,
                                                   leaf_images):
    import shutil

    data = tmp_path / 'data'
    for label, paths in leaf_images.items():
        (data / label).mkdir(parents=True)
        shutil.copy(paths[0], data / label / 'a.jpg')
        nested = data / label / '2024' / 'row3'
        nested.mkdir(parents=True)
        shutil.copy(paths[1], nested / 'b.jpg')  # deeper than one level: was ignored
    shutil.copy(leaf_images['esca'][2], data / 'loose.jpg')  # next to the class folders
    code, out, err = _classify([str(data), '--json'], capsys, tiny_model_path)
    assert code == 0
    report = json.loads(out)['evaluations'][0]
    assert report['count'] == 8  # was 4: the nested images were silently left out
    assert report['files_found'] == 9
    assert [os.path.basename(p) for p in report['skipped']] == ['loose.jpg']
    assert 'loose.jpg: an image next to the class folders has no class' in err
    code, out, _ = _classify([str(data)], capsys, tiny_model_path)
    assert 'images: 8' in out and 'not evaluated: 1 of 9 files' in out


def test_case6_tiny_and_grey_images_get_no_confident_label(tmp_path, capsys, tiny_model_path,
                                                           leaf_images):
    import numpy as np

    folder = tmp_path / 'photos'
    folder.mkdir()
    cv2.imwrite(str(folder / 'dot.png'), np.full((1, 1, 3), (30, 140, 40), np.uint8))
    leaf = cv2.imread(leaf_images['esca'][0])
    cv2.imwrite(str(folder / 'grey.png'), cv2.cvtColor(leaf, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / 'leaf.png'), leaf)
    code, out, err = _classify([str(folder), '--json'], capsys, tiny_model_path)
    assert code == 0
    document = json.loads(out)
    assert [os.path.basename(f['path']) for f in document['files']] == ['leaf.png']
    assert sorted(os.path.basename(p) for p in document['not_classified']) == ['dot.png',
                                                                               'grey.png']
    assert 'dot.png: 1x1 px is too small' in err and 'grey.png: has no colour' in err


@pytest.mark.parametrize('make', ['folder', 'no_parent'])
def test_case6_an_unwritable_json_is_refused_before_the_work(tmp_path, capsys,
                                                             tiny_model_path, leaf_images,
                                                             monkeypatch, make):
    from leaf_disease_ros.cli import classify

    target = tmp_path / 'out'
    if make == 'folder':
        target.mkdir()
    else:
        target = tmp_path / 'missing' / 'metrics.json'

    def never(*args, **kwargs):
        raise AssertionError('classified although the result cannot be written')

    monkeypatch.setattr(classify.Classifier, 'run', never)
    code, _, err = _classify([leaf_images['esca'][0], '--json', str(target)], capsys,
                             tiny_model_path)
    assert code == 2 and '--json' in err


# --- 7. the smaller lies (model card, classify) --------------------------------------------


def test_case7_a_card_without_sha256_is_refused(tmp_path, capsys, tiny_model_copy,
                                                leaf_images):
    card_path = tiny_model_copy[:-5] + '.json'
    with open(card_path, encoding='utf-8') as stream:
        card = json.load(stream)
    del card['onnx_sha256']
    with open(card_path, 'w', encoding='utf-8') as stream:
        json.dump(card, stream)
    code, _, err = _classify([leaf_images['esca'][0]], capsys, tiny_model_copy)
    assert code == 2
    assert 'onnx_sha256' in err and 'leaf-disease-export' in err


def test_case7_a_missing_path_is_exit_2_in_classify_as_in_replay(tmp_path, capsys,
                                                                 tiny_model_path):
    code, _, err = _classify([str(tmp_path / 'nothing.jpg')], capsys, tiny_model_path)
    assert code == 2 and 'no such file or folder' in err
    code, _, _ = run([str(tmp_path / 'nothing.mcap'), '--out', str(tmp_path / 'o')], capsys,
                     tiny_model_path)
    assert code == cli.EXIT_ERROR


def test_case5_the_swap_without_an_atomic_exchange(tmp_path, monkeypatch):
    # Where the kernel has no renameat2 exchange, two renames; the old report goes.
    from leaf_disease_ros.replay import report_folder

    monkeypatch.setattr(report_folder, '_exchange', lambda a, b: False)
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'metrics.json').write_text('{"old": true}')
    write_manifest(str(out), 'leaf-disease-replay')  # an earlier report
    with report_folder.ReportFolder(str(out)) as folder:
        with open(os.path.join(folder.staging, 'metrics.json'), 'w') as stream:
            stream.write('{"new": true}')
        folder.commit()
    assert json.loads((out / 'metrics.json').read_text()) == {'new': True}
    assert _hidden_entries(str(tmp_path)) == []
