"""
Bad input to leaf-disease-replay: a clear message and an exit status, or a counted skip.

Every case goes through the CLI's ``main`` as a user would run it, and checks the
exit status, the message on stderr (never a traceback) and what was written.
"""

import json
import math
import os
import shutil

import cv2
import numpy as np
import pytest

from bag_builder import Frame, GpsFix, mosaic, NS, Truth, write_bag
from leaf_disease_ros.cli import replay as cli
from leaf_disease_ros.perception.errors import BagError
from leaf_disease_ros.perception.output_paths import write_manifest
from leaf_disease_ros.replay.bag import BagReader

# the replay decodes images with rosbags-image, which has no rosdep key: on a robot
# without it (colcon test after rosdep install) these tests are skipped, not failed
pytest.importorskip('rosbags.image', reason='needs rosbags-image (pip install rosbags-image)')


@pytest.fixture(scope='module')
def frame_image(leaf_images):
    """Return a 768x256 mosaic of three real leaves."""
    return mosaic([cv2.imread(leaf_images[label][0])
                   for label in ('black_rot', 'esca', 'healthy')], 3)


def _frames(image, count=4, **kwargs):
    return [Frame(stamp_ns=(i + 1) * NS, image_bgr=image, **kwargs) for i in range(count)]


def _fixes(count=30):
    return [GpsFix(int(k * 0.2 * NS), 46.0 + 1e-6 * k, 7.0) for k in range(count)]


def _run(args, capsys, tiny_model_path):
    code = cli.main(list(args) + ['--model', tiny_model_path, '--no-progress'])
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err
    return code, captured.out, captured.err


def _metrics(out):
    with open(os.path.join(out, 'metrics.json'), encoding='utf-8') as stream:
        return json.load(stream)


@pytest.mark.parametrize('make', ['missing', 'file', 'empty_folder', 'folder_of_junk'])
def test_not_a_bag(tmp_path, capsys, tiny_model_path, make):
    path = tmp_path / 'input'
    if make == 'file':
        path.write_text('not a bag')
    elif make == 'empty_folder':
        path.mkdir()
    elif make == 'folder_of_junk':
        path.mkdir()
        (path / 'notes.txt').write_text('x')
    code, _, err = _run([str(path), '--out', str(tmp_path / 'out')], capsys, tiny_model_path)
    assert code == cli.EXIT_ERROR
    assert 'not a rosbag2 recording' in err or 'does not exist' in err
    assert not (tmp_path / 'out' / 'metrics.json').exists()


def test_garbage_mcap_file_is_an_error(tmp_path, capsys, tiny_model_path):
    path = tmp_path / 'broken.mcap'
    path.write_bytes(b'this is not mcap at all' * 10)
    code, _, err = _run([str(path), '--out', str(tmp_path / 'out')], capsys, tiny_model_path)
    assert code == cli.EXIT_ERROR
    assert 'cannot read the recording' in err


def test_missing_image_topic_lists_the_topics(tmp_path, capsys, tiny_model_path):
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', fixes=_fixes())
    code, _, err = _run([bag, '--out', str(tmp_path / 'out')], capsys, tiny_model_path)
    assert code == cli.EXIT_ERROR
    assert 'no image topic /camera/image_raw/compressed' in err
    assert '/gps/fix (sensor_msgs/msg/NavSatFix, 30 msgs)' in err


def test_wrong_type_on_the_image_topic(tmp_path, capsys, tiny_model_path):
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', fixes=_fixes())
    code, _, err = _run([bag, '--image-topic', '/gps/fix', '--out', str(tmp_path / 'o')],
                        capsys, tiny_model_path)
    assert code == cli.EXIT_ERROR
    assert 'has type sensor_msgs/msg/NavSatFix' in err


def test_image_topic_found_by_type(tmp_path, capsys, tiny_model_path, frame_image):
    bag = write_bag(str(tmp_path / 'bag'), 'sqlite3', _frames(frame_image, 2),
                    image_topic='/front/image/compressed')
    code, _, err = _run([bag, '--out', str(tmp_path / 'out')], capsys, tiny_model_path)
    assert code == cli.EXIT_OK
    assert 'using /front/image/compressed' in err


def test_corrupt_jpeg_frame_is_skipped_and_counted(tmp_path, capsys, tiny_model_path,
                                                   frame_image):
    frames = _frames(frame_image, 4, kind='jpeg')
    frames[1].data = b'\xff\xd8\xff\xe0 not really a jpeg'
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames, _fixes())
    out = str(tmp_path / 'out')
    code, _, err = _run([bag, '--out', out], capsys, tiny_model_path)
    assert code == cli.EXIT_OK
    metrics = _metrics(out)
    assert metrics['frames']['processed'] == 3
    assert metrics['frames']['skipped'] == {'corrupt_image': 1}
    assert 'does not decode' in err


def test_unsupported_encoding(tmp_path, capsys, tiny_model_path, frame_image):
    frames = _frames(frame_image, 3, kind='raw', encoding='bgr8')
    frames[0].encoding = 'mono16'
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames, raw=True)
    out = str(tmp_path / 'out')
    code, _, err = _run([bag, '--out', out], capsys, tiny_model_path)
    assert code == cli.EXIT_OK
    assert _metrics(out)['frames']['skipped'] == {'unsupported_encoding': 1}
    assert "encoding 'mono16' is not supported" in err
    # Only unsupported frames: a report, and the status says nothing was processed.
    frames = _frames(frame_image, 2, kind='raw', encoding='mono16')
    bag = write_bag(str(tmp_path / 'bag16'), 'sqlite3', frames, raw=True)
    code, _, err = _run([bag, '--out', str(tmp_path / 'out16')], capsys, tiny_model_path)
    assert code == cli.EXIT_NOTHING_PROCESSED
    assert 'no frame could be processed' in err


def test_bag_without_gps(tmp_path, capsys, tiny_model_path, frame_image):
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', _frames(frame_image, 3))
    out = str(tmp_path / 'out')
    code, stdout, err = _run([bag, '--out', out, '--disease-threshold', '0',
                              '--unknown-threshold', '0'], capsys, tiny_model_path)
    assert code == cli.EXIT_OK
    metrics = _metrics(out)
    assert metrics['geotag']['gps_topic'] is None
    assert metrics['geotag']['coverage'] == 0.0
    assert metrics['geotag']['by_reason']['no_fix_received'] == 3
    assert metrics['findings']['without_position'] == metrics['findings']['sightings']
    assert metrics['findings']['features'] == 0
    assert 'no GPS' in err and 'the bag has no GPS' in stdout
    with open(os.path.join(out, 'findings.geojson'), encoding='utf-8') as stream:
        assert json.load(stream)['features'] == []
    with open(os.path.join(out, 'report.md'), encoding='utf-8') as stream:
        assert 'no GPS topic' in stream.read()


def test_bag_without_ground_truth(tmp_path, capsys, tiny_model_path, frame_image):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'confusion_matrix.png').write_bytes(b'stale')  # from an earlier run
    write_manifest(str(out), 'leaf-disease-replay')
    bag = write_bag(str(tmp_path / 'bag'), 'sqlite3', _frames(frame_image, 2), _fixes())
    code, stdout, _ = _run([bag, '--out', str(out)], capsys, tiny_model_path)
    assert code == cli.EXIT_OK
    assert _metrics(str(out))['accuracy'] is None
    assert not (out / 'confusion_matrix.png').exists()
    assert 'no ground truth' in stdout
    assert 'no accuracy figures' in (out / 'report.md').read_text()


def _big_bag(tmp_path, frame_image, count=12):
    # Raw frames (590 kB each) so the MCAP file has several chunks to cut between.
    frames = _frames(frame_image, count, kind='raw')
    truth = [Truth(f.stamp_ns, [((0.0, 0.0, 256.0, 256.0), 'black_rot')]) for f in frames]
    return write_bag(str(tmp_path / 'bag'), 'mcap', frames, _fixes(70), truth, raw=True)


def test_truncated_mcap_reports_what_was_read(tmp_path, capsys, tiny_model_path,
                                              frame_image):
    pytest.importorskip('mcap')
    bag = _big_bag(tmp_path, frame_image)
    data_file = os.path.join(bag, 'bag.mcap')
    with open(data_file, 'r+b') as stream:
        stream.truncate(os.path.getsize(data_file) * 6 // 10)
    out = str(tmp_path / 'out')
    code, stdout, err = _run([bag, '--out', out], capsys, tiny_model_path)
    assert code == cli.EXIT_TRUNCATED
    metrics = _metrics(out)
    assert metrics['bag']['complete'] is False
    assert 'ends early' in metrics['bag']['truncated_reason']
    assert 0 < metrics['frames']['processed'] < 12
    # the last frame's ground truth may be in the part that was cut off
    assert metrics['frames']['processed'] - 1 <= metrics['accuracy']['count'] \
        <= metrics['frames']['processed']
    assert 'the bag ended early' in stdout
    with open(os.path.join(out, 'report.md'), encoding='utf-8') as stream:
        assert 'The bag ended early' in stream.read()


def test_truncated_mcap_without_the_mcap_library(tmp_path, capsys, tiny_model_path,
                                                 frame_image, monkeypatch):
    import builtins

    bag = _big_bag(tmp_path, frame_image, 4)
    data_file = os.path.join(bag, 'bag.mcap')
    with open(data_file, 'r+b') as stream:
        stream.truncate(os.path.getsize(data_file) // 2)
    real_import = builtins.__import__

    def no_mcap(name, *args, **kwargs):
        if name == 'mcap' or name.startswith('mcap.'):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_mcap)
    code, _, err = _run([bag, '--out', str(tmp_path / 'out')], capsys, tiny_model_path)
    assert code == cli.EXIT_ERROR
    assert 'truncated' in err and 'pip install mcap' in err
    assert 'mcap recover' not in err  # a command the package does not install


def test_read_error_mid_stream_keeps_what_was_read(tmp_path, capsys, tiny_model_path,
                                                   frame_image, monkeypatch):
    from rosbags.rosbag2 import Reader, ReaderError

    bag = write_bag(str(tmp_path / 'bag'), 'sqlite3', _frames(frame_image, 6), _fixes())
    original = Reader.messages

    def failing(self, *args, **kwargs):
        for index, item in enumerate(original(self, *args, **kwargs)):
            if index == 20:
                raise ReaderError('database disk image is malformed')
            yield item

    monkeypatch.setattr(Reader, 'messages', failing)
    out = str(tmp_path / 'out')
    code, _, _ = _run([bag, '--out', out], capsys, tiny_model_path)
    assert code == cli.EXIT_TRUNCATED
    metrics = _metrics(out)
    assert 'malformed' in metrics['bag']['truncated_reason']
    assert 0 < metrics['frames']['processed'] < 6


def test_damaged_sqlite_database(tmp_path, capsys, tiny_model_path, frame_image):
    bag = write_bag(str(tmp_path / 'bag'), 'sqlite3', _frames(frame_image, 3), _fixes())
    data_file = os.path.join(bag, 'bag.db3')
    with open(data_file, 'r+b') as stream:
        stream.truncate(os.path.getsize(data_file) // 2)
    code, _, err = _run([bag, '--out', str(tmp_path / 'out')], capsys, tiny_model_path)
    assert code == cli.EXIT_ERROR
    assert 'damaged or truncated' in err


def test_folder_without_metadata_reads_its_storage_file(tmp_path, frame_image):
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', _frames(frame_image, 2), _fixes())
    os.unlink(os.path.join(bag, 'metadata.yaml'))
    with BagReader(bag) as reader:
        assert reader.storage == 'mcap'
        assert reader.topics['/camera/image_raw/compressed'].count == 2
        assert 'no metadata.yaml' in reader.notes[0]
        assert len(list(reader.messages(['/camera/image_raw/compressed']))) == 2
    shutil.copy(os.path.join(bag, 'bag.mcap'), os.path.join(bag, 'second.mcap'))
    with pytest.raises(BagError, match='ros2 bag reindex'):
        BagReader(bag)


def test_bad_parameter_is_an_error(tmp_path, capsys, tiny_model_path, frame_image):
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', _frames(frame_image, 1))
    code, _, err = _run([bag, '--tile-size', '128', '--tile-stride', '256'], capsys,
                        tiny_model_path)
    assert code == cli.EXIT_ERROR
    assert 'tile_stride_px' in err
    code, _, err = _run([bag, '--param', 'no_such_parameter=3'], capsys, tiny_model_path)
    assert code == cli.EXIT_ERROR
    assert 'unknown parameter' in err


def test_output_folder_that_is_a_file(tmp_path, capsys, tiny_model_path, frame_image):
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', _frames(frame_image, 1))
    (tmp_path / 'out').write_text('a file')
    for extra in ([], ['--no-output-bag']):
        code, _, err = _run([bag, '--out', str(tmp_path / 'out')] + extra, capsys,
                            tiny_model_path)
        assert code == cli.EXIT_ERROR
        assert 'is not a folder' in err


def test_missing_model_is_an_error(tmp_path, capsys, frame_image):
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', _frames(frame_image, 1))
    code = cli.main([bag, '--model', str(tmp_path / 'none.onnx'), '--no-progress',
                     '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR
    assert 'none' in err and 'Traceback' not in err


def test_nan_fixes_and_no_fix_are_outages(tmp_path, capsys, tiny_model_path, frame_image):
    fixes = [GpsFix(int(k * 0.2 * NS), math.nan, math.nan, 0) for k in range(30)]
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', _frames(frame_image, 3), fixes)
    out = str(tmp_path / 'out')
    code, _, _ = _run([bag, '--out', out], capsys, tiny_model_path)
    assert code == cli.EXIT_OK
    metrics = _metrics(out)
    assert metrics['geotag']['by_reason']['gps_no_fix'] == 3
    assert metrics['geotag']['fix_buffer']['rejected_nan'] == 30


def test_no_argument_replays_the_installed_demo(tmp_path, capsys, monkeypatch,
                                                tiny_model_path, frame_image):
    share = tmp_path / 'share'
    (share / 'engines').mkdir(parents=True)
    for ext in ('.onnx', '.json'):
        shutil.copy(tiny_model_path[:-5] + ext, share / 'engines' / ('leaf_lite0_field' + ext))
    card = json.loads((share / 'engines' / 'leaf_lite0_field.json').read_text())
    card['model_file'] = 'leaf_lite0_field.onnx'
    (share / 'engines' / 'leaf_lite0_field.json').write_text(json.dumps(card))
    (share / 'demo').mkdir()
    write_bag(str(share / 'demo' / 'vineyard_demo'), 'mcap', _frames(frame_image, 3),
              _fixes())
    monkeypatch.setenv('LEAF_DISEASE_ROS_SHARE', str(share))
    monkeypatch.chdir(tmp_path)
    code = cli.main(['--no-progress'])
    captured = capsys.readouterr()
    assert code == cli.EXIT_OK, captured.err
    assert 'replaying the demo recording' in captured.err
    metrics = _metrics(str(tmp_path / 'replay_report'))
    assert metrics['frames']['processed'] == 3
    assert metrics['model']['model'] == 'tiny'
    assert 'pipeline latency per frame' in captured.out


def test_raw_encodings_decode_to_the_same_pixels(frame_image):
    from leaf_disease_ros.replay.images import decode_image
    from leaf_disease_ros.replay.typestore import make_typestore

    store = make_typestore()
    image_type = store.types['sensor_msgs/msg/Image']
    header = store.types['std_msgs/msg/Header'](
        stamp=store.types['builtin_interfaces/msg/Time'](sec=0, nanosec=0), frame_id='c')
    conversions = {'bgr8': None, 'rgb8': cv2.COLOR_BGR2RGB, 'bgra8': cv2.COLOR_BGR2BGRA,
                   'rgba8': cv2.COLOR_BGR2RGBA, 'mono8': cv2.COLOR_BGR2GRAY}
    for encoding, code in conversions.items():
        pixels = frame_image if code is None else cv2.cvtColor(frame_image, code)
        msg = image_type(header=header, height=256, width=768, encoding=encoding,
                         is_bigendian=0, step=pixels.strides[0],
                         data=np.frombuffer(np.ascontiguousarray(pixels).tobytes(), np.uint8))
        decoded = decode_image(msg, 'sensor_msgs/msg/Image')
        assert decoded.shape == (256, 768, 3) and decoded.dtype == np.uint8
        if encoding == 'mono8':
            expected = cv2.cvtColor(cv2.cvtColor(frame_image, code), cv2.COLOR_GRAY2BGR)
            assert np.array_equal(decoded, expected)
        else:
            assert np.array_equal(decoded, frame_image), encoding


def test_progress_bar_shows_frames_per_second():
    import io

    stream = io.StringIO()  # not a TTY: tqdm draws plain lines
    bar = cli.ProgressBar(stream)
    bar(cli.Progress(frames_done=50, frames_expected=200, elapsed_s=10.0))
    bar(cli.Progress(frames_done=51, frames_expected=200, elapsed_s=10.1))
    bar.close()
    last = stream.getvalue().replace('\r', '\n').splitlines()[-1]
    # frames done of expected, the rate and the time left ('<' in tqdm's meter)
    assert last.startswith('replay:') and '51/200' in last
    assert 'frame/s' in last and '<' in last


def test_params_file_section_of_the_node_name(tmp_path):
    params_file = tmp_path / 'p.yaml'
    params_file.write_text('/**:\n  ros__parameters:\n    top_k: 2\n'
                           'detector_node:\n  ros__parameters:\n    top_k: 4\n'
                           'other_node:\n  ros__parameters:\n    top_k: 9\n')
    args = cli.parse_args(['bag', '--params-file', str(params_file)])
    assert cli.collect_parameters(args)['top_k'] == 4
    args = cli.parse_args(['bag', '--params-file', str(params_file), '--params-node', 'x'])
    assert cli.collect_parameters(args)['top_k'] == 2


def test_the_node_config_file_is_accepted(tmp_path, capsys, tiny_model_path, frame_image):
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'config', 'detector.yaml')
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', _frames(frame_image, 2), _fixes())
    out = str(tmp_path / 'out')
    code, _, _ = _run([bag, '--params-file', config, '--out', out], capsys, tiny_model_path)
    assert code == cli.EXIT_OK
    assert _metrics(out)['frames']['processed'] == 2
