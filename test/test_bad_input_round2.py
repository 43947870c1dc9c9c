"""
The bad inputs of issue 18 beyond lost data (cases 7 to 15), one test per case.

7. A model whose outputs are NaN, infinite or ~1e38 is an inference error: the image
   or frame is dropped and counted (classify, replay, the node), ``--json`` stays JSON.
8. A negative variance in a fix's covariance is an unknown covariance.
9. Two GPS topics and none of the default name are refused with the list.
10. Hostile YAML params files (billion laughs, self-reference, depth, size) are
    refused briefly; values shown in errors are bounded.
11. Stamp disorder with ground truth is said; nothing scored is never accuracy 0.
14. NavSatStatus 7 is no fix; nanosec >= 1e9 is no stamp.
15. A topic with two types is refused; a train-field cache that is none is an error;
    files and models the user may not read (run as ``nobody``) are said, one locked
    file skipped; a write that fails (RLIMIT_FSIZE: EFBIG) leaves no partial folder
    (explain, embed, split); a symbolic link loop in embed's and split's data is no
    folder; never a traceback.

Cases 1 to 6 and 13 (outputs that destroy data) are in ``test_output_safety.py``.
"""

import json
import os
import shutil

import cv2
import numpy as np
import pytest

from bag_builder import Frame, GpsFix, mosaic, NS, write_bag
from leaf_disease_ros.cli import classify as classify_cli
from leaf_disease_ros.cli import replay as replay_cli
from leaf_disease_ros.geo.geodesy import offset_latlon
from leaf_disease_ros.perception.errors import InferenceError
from leaf_disease_ros.perception.postprocess import (broken_rows, check_model_outputs,
                                                     MAX_ABS_OUTPUT)
from tiny_model import make_tiny_model
from unprivileged import give_away, open_folder, run_module

LAT0, LON0 = 46.0, 7.0


def _no_constants(name):
    raise ValueError(f'{name} is not JSON')


def strict_json(text):
    """Parse ``text`` as strict JSON (Python's json accepts NaN and Infinity)."""
    return json.loads(text, parse_constant=_no_constants)


@pytest.fixture(scope='module')
def frame_image(leaf_images):
    """Return a 768x256 mosaic of three real leaves."""
    return mosaic([cv2.imread(leaf_images[label][0])
                   for label in ('black_rot', 'esca', 'leaf_blight')], 3)


def fixes(count=20):
    """Return fixes along a track east, every 0.2 s from stamp 0."""
    out = []
    for k in range(count):
        lat, lon = offset_latlon(LAT0, LON0, 0.2 * k, 0.0)
        out.append(GpsFix(int(0.2 * k * NS), lat, lon, 2, int((0.2 * k + 0.025) * NS)))
    return out


def frames(image, count=2):
    """Return ``count`` frames stamped 1 s apart from 1 s."""
    return [Frame(stamp_ns=(k + 1) * NS, image_bgr=image, log_time_ns=(k + 1) * NS + 15_000_000)
            for k in range(count)]


def run_cli(main, args, capsys):
    """Run a command's main; return (exit code, stdout, stderr); never a traceback."""
    code = main(list(args))
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err + captured.out
    return code, captured.out, captured.err


# --- case 7: non-finite model outputs ----------------------------------------------------


@pytest.fixture(scope='module', params=['nan', 'inf', '1e38'])
def broken_model(request, tmp_path_factory):
    """Return a tiny model whose logits are NaN, infinite or about 1e38."""
    folder = str(tmp_path_factory.mktemp(f'broken_{request.param}'))
    make_tiny_model(folder, logit_bias=float(request.param))
    return os.path.join(folder, 'tiny.onnx')


def test_case7_broken_rows_are_non_finite_or_overflowing():
    logits = np.array([[1.0, -3.0], [np.nan, 0.0], [np.inf, 0.0], [1e38, 1e38],
                       [MAX_ABS_OUTPUT, -MAX_ABS_OUTPUT], [2e6, 0.0]], dtype=np.float32)
    embeddings = np.zeros((6, 3), dtype=np.float32)
    assert broken_rows(logits).tolist() == [False, True, True, True, False, True]
    embeddings[0, 1] = np.nan
    assert broken_rows(logits, embeddings).tolist() == [True, True, True, True, False, True]
    check_model_outputs(logits[[0, 4]])
    with pytest.raises(InferenceError, match='NaN, infinite or overflowing outputs .* 4 of 6'):
        check_model_outputs(logits)


def test_case7_classify_skips_what_the_broken_model_returns(broken_model, leaf_images,
                                                            capsys, tiny_model_path):
    photo = leaf_images['esca'][0]
    code, out, err = run_cli(classify_cli.main, [photo, '--model', broken_model], capsys)
    assert code == 1
    assert 'the model returned NaN, infinite or overflowing outputs' in err
    assert 'nan' not in out.lower()
    code, out, err = run_cli(classify_cli.main,
                             [photo, '--model', broken_model, '--json'], capsys)
    assert code == 1
    assert strict_json(out) == {'files': [], 'evaluations': [], 'not_classified': [photo]}
    # the same photo through a working model is classified (the photo is fine)
    code, out, _ = run_cli(classify_cli.main, [photo, '--model', tiny_model_path], capsys)
    assert code == 0 and photo in out


def test_case7_a_class_folder_evaluation_counts_the_broken_images(broken_model, leaf_images,
                                                                  tmp_path, capsys):
    import shutil

    for label in ('esca', 'healthy'):
        (tmp_path / label).mkdir()
        shutil.copy(leaf_images[label][0], tmp_path / label / 'a.jpg')
    code, out, err = run_cli(classify_cli.main,
                             [str(tmp_path), '--model', broken_model, '--json'], capsys)
    document = strict_json(out)
    assert code == 1
    assert document['evaluations'][0]['count'] == 0
    assert len(document['evaluations'][0]['skipped']) == 2


def test_case7_replay_drops_and_counts_the_frames(broken_model, frame_image, tmp_path, capsys):
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames(frame_image), fixes())
    code, out, err = run_cli(replay_cli.main, [bag, '--out', str(tmp_path / 'out'),
                                               '--model', broken_model, '--no-progress'],
                             capsys)
    assert code == 1
    assert "no frame could be processed ({'inference_error': 2})" in out + err
    assert 'NaN, infinite or overflowing outputs' in out + err


def test_case7_the_node_refuses_to_start_on_a_broken_model(monkeypatch, broken_model):
    import test_node_wiring as wiring

    world = wiring.world.__wrapped__(monkeypatch)
    with pytest.raises(InferenceError, match='NaN, infinite or overflowing outputs'):
        wiring.start(world, broken_model)  # the warm-up frame finds it


def test_case7_the_node_drops_and_counts_a_broken_frame(monkeypatch, tiny_model_path,
                                                        frame_image):
    import test_node_wiring as wiring

    world = wiring.world.__wrapped__(monkeypatch)
    node = wiring.start(world, tiny_model_path)
    try:
        backend = node._backend
        healthy_run = backend._run
        monkeypatch.setattr(backend, '_run', lambda batch: healthy_run(batch) * np.nan)
        wiring.send_frame(world, frame_image, wiring.T0)
        wiring.wait_until(
            lambda: wiring.diagnostics(world)[f'{wiring.NODE}: detector']['frames_failed']
            == '1')
        assert any('frame dropped: the model returned NaN, infinite or overflowing' in text
                   for text in world.log_texts('warning'))
        assert not world.published.get(f'{wiring.NODE}/detections')
        monkeypatch.setattr(backend, '_run', healthy_run)
        wiring.send_frame(world, frame_image, wiring.T0 + NS)
        world.wait_for(f'{wiring.NODE}/detections', 1)
        assert node.context.ok() and node.fatal_error == ''
    finally:
        wiring.stop(node)


# --- case 8 and case 14's GPS and stamps: values a message type allows but means nothing --


def test_case8_a_negative_variance_is_an_unknown_covariance():
    from leaf_disease_ros.geo.geotag import ADD_ACCEPTED, FixBuffer
    from leaf_disease_ros.perception.positions import COVARIANCE_TYPE_UNKNOWN, Fix
    from leaf_disease_ros.ros.conversions import (position_covariance_6x6,
                                                  UNKNOWN_POSITION_VARIANCE_M2)

    buffer = FixBuffer(10)
    for k, diagonal in enumerate([(-0.04, 0.04, 0.09), (0.04, 0.04, -1.0)]):
        covariance = [0.0] * 9
        covariance[0], covariance[4], covariance[8] = diagonal
        assert buffer.add(Fix(stamp_ns=(k + 1) * NS, latitude_deg=LAT0, longitude_deg=LON0,
                              status=0, covariance_m2=tuple(covariance),
                              covariance_type=2)) == ADD_ACCEPTED
    tag = buffer.lookup(int(1.5 * NS), 2.0, 1.0).geotag
    assert tag.covariance_type == COVARIANCE_TYPE_UNKNOWN
    assert tag.covariance_m2 == (0.0,) * 9
    pose = position_covariance_6x6(tag.covariance_m2, tag.covariance_type).reshape(6, 6)
    assert pose[0, 0] == pose[1, 1] == UNKNOWN_POSITION_VARIANCE_M2
    # a known covariance is carried as it is
    buffer.add(Fix(stamp_ns=3 * NS, latitude_deg=LAT0, longitude_deg=LON0, status=0,
                   covariance_m2=(0.04, 0, 0, 0, 0.04, 0, 0, 0, 0.09), covariance_type=2))
    assert buffer.lookup(3 * NS, 2.0, 1.0).geotag.covariance_m2[0] == pytest.approx(0.04)


@pytest.mark.parametrize('status', [7, 3, -2, -1])
def test_case14_a_status_navsatstatus_does_not_define_is_no_fix(status):
    from leaf_disease_ros.geo.geotag import ADD_REJECTED_NO_FIX, FixBuffer
    from leaf_disease_ros.perception.positions import Fix

    buffer = FixBuffer(10)
    assert buffer.add(Fix(stamp_ns=NS, latitude_deg=LAT0, longitude_deg=LON0,
                          status=status)) == ADD_REJECTED_NO_FIX
    assert len(buffer) == 0


def test_case14_nanosec_beyond_a_second_is_no_stamp():
    from types import SimpleNamespace

    from leaf_disease_ros.ros.conversions import stamp_to_ns
    from leaf_disease_ros.ros.timekeeping import BackwardJumpDetector

    assert stamp_to_ns(SimpleNamespace(sec=5, nanosec=999_999_999)) == 5_999_999_999
    assert stamp_to_ns(SimpleNamespace(sec=5, nanosec=1_000_000_000)) == 0
    assert stamp_to_ns(SimpleNamespace(sec=5, nanosec=4_294_967_295)) == 0
    jumps = BackwardJumpDetector()
    assert jumps.update(100 * NS) is None
    assert jumps.update(0) is None  # an unstamped message is no jump back in time
    assert jumps.update(101 * NS) is None


def test_case14_replay_of_frames_with_nanosec_beyond_a_second(frame_image, tmp_path, capsys,
                                                              tiny_model_path):
    images = frames(frame_image, 3)
    images[1].nanosec = 1_500_000_000
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', images, fixes())
    code, out, err = run_cli(replay_cli.main, [bag, '--out', str(tmp_path / 'out'),
                                               '--model', tiny_model_path, '--no-progress'],
                             capsys)
    assert code == 0
    assert 'no_image_stamp 1' in out
    assert '1 of 3 frames have header stamp 0 (or nanosec >= 1e9' in out + err


# --- case 9 and 15: which topic to read ----------------------------------------------------


def test_case9_two_gps_topics_none_of_the_default_name_are_refused_with_the_list(
        frame_image, tmp_path, capsys, tiny_model_path):
    from bag_builder import fix_message, message_types

    _, types = message_types()
    extra = [('/gps2/fix', 'sensor_msgs/msg/NavSatFix', int(0.2 * k * NS) + 25_000_000,
              fix_message(types, int(0.2 * k * NS), LAT0, LON0)) for k in range(20)]
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames(frame_image), fixes(),
                    fix_topic='/gps1/fix', extra=extra)
    args = [bag, '--out', str(tmp_path / 'out'), '--model', tiny_model_path, '--no-progress']
    code, out, err = run_cli(replay_cli.main, args, capsys)
    assert code == 2
    assert ('the bag has no GPS topic /gps/fix and 2 sensor_msgs/msg/NavSatFix topics: '
            '/gps1/fix, /gps2/fix. Choose one with --fix-topic') in err
    assert not os.path.exists(tmp_path / 'out')
    code, out, err = run_cli(replay_cli.main, args + ['--fix-topic', '/gps2/fix'], capsys)
    assert code == 0 and 'geotag coverage 100.0 %' in out


@pytest.mark.parametrize('which', ['image', 'fix'])
def test_case15_a_topic_recorded_with_two_types_is_refused(which, frame_image, tmp_path,
                                                           capsys, tiny_model_path):
    from bag_builder import fix_message, FIX_TOPIC, IMAGE_TOPIC, message_types

    store, types = message_types()
    if which == 'image':  # a raw Image among the CompressedImage frames
        stray = store.types['sensor_msgs/msg/Image'](
            header=fix_message(types, NS, LAT0, LON0).header, height=1, width=1,
            encoding='bgr8', is_bigendian=0, step=3, data=np.zeros(3, np.uint8))
        extra = [(IMAGE_TOPIC, 'sensor_msgs/msg/Image', NS + 20_000_000, stray)]
        topic, first, second = IMAGE_TOPIC, 'CompressedImage', 'Image'
    else:  # a GPS message of another type on the fix topic
        stray = types.Header(stamp=types.Time(sec=1, nanosec=0), frame_id='gps')
        extra = [(FIX_TOPIC, 'std_msgs/msg/Header', NS, stray)]
        topic, first, second = FIX_TOPIC, 'NavSatFix', 'Header'
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames(frame_image), fixes(), extra=extra)
    code, out, err = run_cli(replay_cli.main, [bag, '--out', str(tmp_path / 'out'), '--model',
                                               tiny_model_path, '--no-progress'], capsys)
    assert code == 2
    assert f'topic {topic} was recorded with 2 message types' in err
    assert first in err and second in err


# --- case 10: hostile YAML -----------------------------------------------------------------

LAUGHS = ['a: &a [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]']
LAUGHS += [f'{chr(98 + k)}: &{chr(98 + k)} [' + ', '.join([f'*{chr(97 + k)}'] * 10) + ']'
           for k in range(8)]  # 10**9 values in 9 lines


@pytest.mark.parametrize('layout', ['flat', 'ros'])
def test_case10_a_billion_laughs_params_file_is_refused_briefly(layout, tmp_path, capsys,
                                                                tiny_model_path, frame_image):
    body = LAUGHS + ['lever_arm_m: *i']
    if layout == 'ros':
        body = ['/**:', '  ros__parameters:'] + [f'    {line}' for line in body]
    (tmp_path / 'p.yaml').write_text('\n'.join(body) + '\n')
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames(frame_image), fixes())
    code, out, err = run_cli(replay_cli.main, [bag, '--out', str(tmp_path / 'out'), '--model',
                                               tiny_model_path, '--no-progress',
                                               '--params-file', str(tmp_path / 'p.yaml')],
                             capsys)
    assert code == 2
    assert 'expands to more than 100000 values (YAML anchors and aliases)' in err
    assert len(out + err) < 2000


def test_case10_hostile_yaml_is_bounded(tmp_path):
    from leaf_disease_ros.perception.config import (load_params_file, MAX_PARAMS_FILE_BYTES,
                                                    validate_parameters)
    from leaf_disease_ros.perception.errors import ConfigError

    cases = {
        'self.yaml': 'a: &a [1, *a]\n',
        'deep.yaml': 'a: ' + '[' * 5000 + ']' * 5000 + '\n',
        'big.yaml': 'tile_size_px: 256\n' + '#' * MAX_PARAMS_FILE_BYTES + '\n',
        'long_key.yaml': '? ' + 'x' * 500_000 + '\n: 1\n',
        'long_value.yaml': 'image_transport: "' + 'y' * 500_000 + '"\n',
        'aliased_value.yaml': ('other_node:\n  ros__parameters:\n'  # 10**4 values: loads
                               + ''.join(f'    {line}\n' for line in LAUGHS[:4])
                               + '/**:\n  ros__parameters:\n    lever_arm_m: *d\n'),
    }
    messages = {}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        try:
            validate_parameters(load_params_file(str(tmp_path / name)))
        except ConfigError as exc:
            messages[name] = str(exc)
    assert sorted(messages) == sorted(cases)
    assert 'refers to itself' in messages['self.yaml']
    assert 'nests too deep' in messages['deep.yaml']
    assert 'is larger than 1024 KiB: not a params file' in messages['big.yaml']
    assert 'unknown parameter' in messages['long_key.yaml']
    assert 'is not one of' in messages['long_value.yaml']
    assert 'expected a list of numbers' in messages['aliased_value.yaml']
    assert all(len(text) < 3000 for text in messages.values()), messages


# --- case 11: stamp disorder and ground truth ----------------------------------------------


def _labelled_bag(path, image, stamps_s):
    """Return a bag of frames at ``stamps_s`` (log times 1 s apart), each with ground truth."""
    from bag_builder import Truth

    images = [Frame(stamp_ns=int(t * NS), image_bgr=image,
                    log_time_ns=(k + 1) * NS + 15_000_000) for k, t in enumerate(stamps_s)]
    truth = [Truth(f.stamp_ns, [((0.0, 0.0, 256.0, 256.0), 'esca')],
                   log_time_ns=f.log_time_ns - 1000) for f in images]
    return write_bag(path, 'mcap', images, fixes(40), truth)


@pytest.mark.parametrize('stamps_s,disordered', [([1, 1, 1, 1, 1, 1], 5),
                                                 ([6, 5, 4, 3, 2, 1], 5)],
                         ids=['repeated', 'backwards'])
def test_case11_stamp_disorder_with_ground_truth_is_said(stamps_s, disordered, frame_image,
                                                         tmp_path, capsys, tiny_model_path):
    bag = _labelled_bag(str(tmp_path / 'bag'), frame_image, stamps_s)
    code, out, err = run_cli(replay_cli.main, [bag, '--out', str(tmp_path / 'out'), '--model',
                                               tiny_model_path, '--no-progress'], capsys)
    assert code == 0
    assert (f'{disordered} of 6 frames repeat the header stamp of an earlier frame or go back '
            'before it') in out + err
    with open(tmp_path / 'out' / 'metrics.json', encoding='utf-8') as stream:
        notes = json.load(stream)['notes']
    assert any('ground truth is joined by stamp' in note for note in notes)


def test_case11_nothing_scored_is_not_accuracy_zero(frame_image, tmp_path, capsys,
                                                    tiny_model_path):
    from bag_builder import Truth

    images = frames(frame_image, 2)
    truth = [Truth(f.stamp_ns + NS // 2, [((0.0, 0.0, 256.0, 256.0), 'esca')])
             for f in images]  # stamped between the frames: joined with none
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', images, fixes(), truth)
    code, out, err = run_cli(replay_cli.main, [bag, '--out', str(tmp_path / 'out'), '--model',
                                               tiny_model_path, '--no-progress'], capsys)
    assert code == 0
    assert 'tile accuracy: nothing scored (ground truth on 0 processed frames' in out
    assert 'accuracy 0.000' not in out
    with open(tmp_path / 'out' / 'metrics.json', encoding='utf-8') as stream:
        accuracy = json.load(stream)['accuracy']
    assert accuracy['accuracy'] is None and accuracy['macro_f1'] is None
    report = (tmp_path / 'out' / 'report.md').read_text(encoding='utf-8')
    html = (tmp_path / 'out' / 'report.html').read_text(encoding='utf-8')
    assert 'nothing scored' in report and 'nothing scored' in html


# --- case 15: train-field --cache that is no cache -----------------------------------------


@pytest.mark.parametrize('content', [b'', b'PK\x03\x04 cut', None], ids=['empty', 'cut', 'other'])
def test_case15_a_cache_that_is_not_one_is_a_dataset_error(content, tmp_path, capsys):
    pytest.importorskip('torch')
    from leaf_disease_ros.cli import train_field

    path = tmp_path / 'zero.npz'
    if content is None:
        np.savez(path, weights=np.zeros(3))
    else:
        path.write_bytes(content)
    arch = train_field.ARCHS[0]
    code, out, err = run_cli(train_field.main, ['train', '--arch', arch, '--cache', str(path),
                                                '--out', str(tmp_path / 'run'), '--epochs', '1'],
                             capsys)
    assert code != 0
    assert f'--cache {path} is not a cache written by leaf-disease-train-field' in err


# --- case 15: files the user may not read (run as nobody) ----------------------------------


@pytest.fixture()
def shared_inputs(tiny_model_path, leaf_images):
    """Yield a folder nobody can enter: model/, data/<class>/ (two images each), out/."""
    with open_folder() as root:
        os.mkdir(os.path.join(root, 'model'))
        for source in (tiny_model_path, tiny_model_path[:-5] + '.json'):
            shutil.copy(source, os.path.join(root, 'model'))
        for label, paths in leaf_images.items():
            os.makedirs(os.path.join(root, 'data', label))
            for path in paths[:2]:
                shutil.copy(path, os.path.join(root, 'data', label))
        os.mkdir(os.path.join(root, 'out'))
        give_away(os.path.join(root, 'out'))
        for current, dirs, files in os.walk(root):
            for name in dirs + files:
                target = os.path.join(current, name)
                os.chmod(target, os.stat(target).st_mode | 0o755 if name in dirs else 0o644)
        yield root


def test_case15_one_locked_file_does_not_abort_the_folder(shared_inputs):
    data = os.path.join(shared_inputs, 'data')
    locked = os.path.join(data, 'esca', sorted(os.listdir(os.path.join(data, 'esca')))[0])
    os.chmod(locked, 0)
    run = run_module('leaf_disease_ros.cli.classify',
                     [data, '--model', os.path.join(shared_inputs, 'model', 'tiny.onnx')],
                     shared_inputs)
    assert 'Traceback' not in run.stderr, run.stderr
    assert run.returncode == 0, run.stderr
    assert f'skipped {locked}: cannot be read (Permission denied)' in run.stderr
    assert 'macro-F1' in run.stdout


def test_case15_a_locked_class_folder_says_so(shared_inputs):
    data = os.path.join(shared_inputs, 'data')
    os.chmod(os.path.join(data, 'esca'), 0)
    run = run_module('leaf_disease_ros.cli.classify',
                     [data, '--model', os.path.join(shared_inputs, 'model', 'tiny.onnx')],
                     shared_inputs)
    assert 'Traceback' not in run.stderr, run.stderr
    assert run.returncode == 2
    assert f"class folder {os.path.join(data, 'esca')} cannot be read" in run.stderr
    assert 'holds no images' not in run.stderr


@pytest.mark.parametrize('module', ['classify', 'replay'])
def test_case15_an_unreadable_model_is_a_model_error(module, shared_inputs, frame_image):
    model = os.path.join(shared_inputs, 'model', 'tiny.onnx')
    os.chmod(model, 0)
    if module == 'classify':
        args = [os.path.join(shared_inputs, 'data')]
    else:
        bag = write_bag(os.path.join(shared_inputs, 'bag'), 'mcap', frames(frame_image),
                        fixes())
        os.chmod(os.path.join(bag, 'bag.mcap'), 0o644)
        args = [bag, '--out', os.path.join(shared_inputs, 'out', 'report'), '--no-progress']
    run = run_module(f'leaf_disease_ros.cli.{module}', args + ['--model', model],
                     shared_inputs)
    assert 'Traceback' not in run.stderr, run.stderr
    assert run.returncode == 2
    assert f'cannot read the model {model}: Permission denied' in run.stderr
    assert 'cannot write the report' not in run.stderr


# --- case 15: a write that fails (file size limit: EFBIG, like a full disk) ----------------


@pytest.mark.parametrize('module', ['explain', 'embed', 'split'])
def test_case15_a_failed_write_leaves_no_partial_folder(module, shared_inputs):
    data = os.path.join(shared_inputs, 'data')
    out = os.path.join(shared_inputs, 'out', module)
    model = ['--model', os.path.join(shared_inputs, 'model', 'tiny.onnx')]
    args = {'explain': [os.path.join(data, 'esca'), '--out', out] + model,
            'embed': [data, '--out', out, '--projection', 'pca'] + model,
            'split': [data, '--out', out, '--copy', '--group', 'file']}[module]
    run = run_module(f'leaf_disease_ros.cli.{module}', args, shared_inputs, fsize_bytes=2000)
    assert 'Traceback' not in run.stderr, run.stderr
    assert run.returncode != 0
    assert 'File too large' in run.stderr and 'nothing was written' in run.stderr
    assert os.listdir(os.path.join(shared_inputs, 'out')) == []  # no partial folder


# --- case 15: a symbolic link loop in the data of embed and split --------------------------


@pytest.mark.parametrize('module', ['embed', 'split'])
def test_case15_a_symlink_loop_in_the_data_is_no_folder(module, tiny_model_path, leaf_images,
                                                        tmp_path, capsys):
    from leaf_disease_ros.cli import embed, split

    data = tmp_path / 'data'
    for label, paths in leaf_images.items():
        (data / label).mkdir(parents=True)
        for path in paths[:2]:
            shutil.copy(path, data / label)
    os.symlink('loop', data / 'loop')  # refers to itself: ELOOP on is_dir()
    os.symlink('inner', data / 'esca' / 'inner')
    main = {'embed': embed.main, 'split': split.main}[module]
    extra = ['--model', tiny_model_path, '--projection', 'pca', '--ood', str(data)] \
        if module == 'embed' else ['--group', 'file']
    code, out, err = run_cli(main, [str(data), '--out', str(tmp_path / 'out')] + extra, capsys)
    assert code == 0, err
    if module == 'split':
        assert sorted(os.listdir(tmp_path / 'out' / 'train')) == sorted(leaf_images)
    else:
        assert f'embedded {2 * len(leaf_images)} images' in out
