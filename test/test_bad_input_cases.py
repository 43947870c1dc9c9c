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
    """Run the replay CLI; return (exit code, stdout, stderr); never a traceback."""
    code = cli.main(list(args) + ['--model', model, '--no-progress'])
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
    with Reader(os.path.join(out, 'detections.mcap')) as reader:
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
    code, stdout, _ = run([bag, '--out', out] + FINDINGS + extra, capsys, model)
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
    assert 'beyond UTM (not in geo_detections)' in stdout
    assert geo_detection_positions(out) == []
    assert all(abs(lat - 88.0) < 1e-3 for _, lat in geojson_points(out))
    with open(os.path.join(out, 'report.md'), encoding='utf-8') as stream:
        assert 'beyond UTM' in stream.read()


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
