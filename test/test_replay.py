"""
Replay metrics on hand-made bags with known answers (both storages, raw and compressed).

The tiny model's label for every leaf photo is learned first by classifying the photo
alone (one tile); the bag's frames are mosaics of those photos, stored losslessly
(PNG or raw), so the replay must see the same tiles and predict the same labels. The
ground truth is then written to be right or wrong on purpose, and the expected
confusion matrix, accuracy, macro-F1, geotag reasons and findings follow.
"""

import json
import math
import os

import cv2
import pytest

from bag_builder import Frame, GpsFix, mosaic, NS, Truth, write_bag
from leaf_disease_ros.cli import replay as cli
from leaf_disease_ros.geo.geodesy import offset_latlon
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.metrics import classification_report
from leaf_disease_ros.perception.pipeline import Detector
from leaf_disease_ros.perception.positions import STATUS_GBAS_FIX, STATUS_NO_FIX
from leaf_disease_ros.replay.report import write_report
from leaf_disease_ros.replay.runner import ReplayOptions, run_replay
from leaf_disease_ros.replay.typestore import make_typestore
from tiny_model import make_tiny_model

# a few frames of a tiny model: the domain check judges from the first tile on (the
# hold while it collects has its own tests in test_domain.py)
PARAMS = {'unknown_threshold': 0.0, 'disease_score_threshold': 0.0,
          'min_vegetation_fraction': 0.0, 'domain_min_tiles': 1}
LAT0, LON0 = 46.0, 7.0
FRAME_TIMES_S = (1.1, 2.0, 2.6, 4.5)


@pytest.fixture(scope='module')
def leaves(leaf_images):
    """Return 12 leaf photos (3 per class) as BGR arrays."""
    paths = [p for label in sorted(leaf_images) for p in leaf_images[label][:3]]
    return [cv2.imread(p) for p in paths]


@pytest.fixture(scope='module')
def model_path(tmp_path_factory):
    """Return a tiny model (seed 1: it predicts several labels on these leaves)."""
    folder = str(tmp_path_factory.mktemp('tiny_seed1'))
    make_tiny_model(folder, seed=1)
    return os.path.join(folder, 'tiny.onnx')


@pytest.fixture(scope='module')
def predicted(model_path, leaves):
    """Return the tiny model's label for each leaf photo, classified alone."""
    backend = load_backend(model_path, 'onnxruntime')
    detector = Detector(backend, backend.card, DetectorConfig.from_parameters(PARAMS))
    labels = [detector.process(leaf, 0).detections[0].label for leaf in leaves]
    backend.close()
    # The scenario needs right and wrong answers, diseased tiles with and without
    # position: a model that said one label everywhere would make it vacuous.
    assert len(set(labels)) >= 3
    assert any(label != 'healthy' for label in labels[:6])
    assert any(label != 'healthy' for label in labels[6:])
    return labels


def _wrong(label, labels):
    return next(x for x in labels if x != label)


def _box(column):
    return (256.0 * column, 0.0, 256.0 * (column + 1), 256.0)


def scenario(leaves, predicted, labels):
    """Return (frames, fixes, truth, expected) of the known-answer recording."""
    frames = [Frame(stamp_ns=int(t * NS), image_bgr=mosaic(leaves[3 * i:3 * i + 3], 3),
                    log_time_ns=int(t * NS) + 20_000_000)
              for i, t in enumerate(FRAME_TIMES_S)]
    p = predicted
    truth = [
        # frame A: two right, one wrong
        Truth(frames[0].stamp_ns, [(_box(0), p[0]), (_box(1), p[1]),
                                   (_box(2), _wrong(p[2], labels))]),
        # frame B: right, a label the model lacks, wrong, and a box across two tiles
        Truth(frames[1].stamp_ns, [(_box(0), p[3]), (_box(1), 'powdery_mildew'),
                                   (_box(2), _wrong(p[5], labels)),
                                   ((128.0, 0.0, 384.0, 256.0), 'healthy')]),
        # frame C: no ground truth message; frame D: two right, third tile has no box
        Truth(frames[3].stamp_ns, [(_box(0), p[9]), (_box(1), p[10])]),
    ]
    true = [p[0], p[1], _wrong(p[2], labels), p[3], _wrong(p[5], labels), p[9], p[10]]
    pred = [p[0], p[1], p[2], p[3], p[5], p[9], p[10]]
    index = {label: i for i, label in enumerate(labels)}
    expected = classification_report([index[x] for x in true], [index[x] for x in pred],
                                     labels)
    fixes = []
    for k in range(11):  # 0.0 .. 2.0 s, 1 m/s east, RTK
        t = 0.2 * k
        lat, lon = offset_latlon(LAT0, LON0, t * 1.0, 0.0)
        fixes.append(GpsFix(int(round(t * NS)), lat, lon, STATUS_GBAS_FIX,
                            int(round(t * NS)) + 50_000_000))
    for k in range(11, 17):  # 2.2 .. 3.2 s: outage
        t = 0.2 * k
        fixes.append(GpsFix(int(round(t * NS)), math.nan, math.nan, STATUS_NO_FIX,
                            int(round(t * NS)) + 50_000_000))
    return frames, fixes, truth, expected


def _replay(tmp_path, bag, model_path, **kwargs):
    params = dict(PARAMS, model_path=model_path, backend='onnxruntime')
    params.update(kwargs.pop('params', {}))
    out = str(tmp_path / 'report')
    state = run_replay(ReplayOptions(bag_path=bag, out_dir=out, parameters=params, **kwargs))
    return write_report(state, out), out


@pytest.mark.parametrize('storage,raw,encoding', [
    ('mcap', False, ''), ('sqlite3', False, ''), ('mcap', True, 'rgb8'),
    ('sqlite3', True, 'bgr8')])
def test_known_answers(tmp_path, leaves, predicted, tiny_card, model_path, storage, raw,
                       encoding):
    labels = list(tiny_card.labels)
    frames, fixes, truth, expected = scenario(leaves, predicted, labels)
    if raw:
        for frame in frames:
            frame.kind, frame.encoding = 'raw', encoding
    bag = write_bag(str(tmp_path / 'bag'), storage, frames, fixes, truth, raw=raw)
    # findings at the camera's position (ground positions: test_leaf_position.py)
    metrics, out = _replay(tmp_path, bag, model_path, params={'ground_positions': False})

    assert metrics['bag']['storage'] == storage
    assert metrics['frames']['processed'] == 4
    assert metrics['tiles']['classified'] == 12
    assert metrics['tiles']['gated_out'] == 0
    accuracy = metrics['accuracy']
    assert accuracy['accuracy'] == pytest.approx(expected['accuracy'])
    assert accuracy['macro_f1'] == pytest.approx(expected['macro_f1'])
    assert accuracy['confusion_matrix'] == expected['confusion_matrix']
    assert accuracy['per_class'] == expected['per_class']
    assert accuracy['count'] == 7
    assert accuracy['ground_truth_labels_not_in_model'] == {'powdery_mildew': 1}
    assert accuracy['ground_truth_boxes_unmatched'] == 1  # the box across two tiles
    assert accuracy['tiles_without_ground_truth'] == 1  # frame D, third tile
    assert accuracy['frames_without_ground_truth'] == 1  # frame C

    # The image at 1.1 s is read before the fix at 1.2 s (log times): it must wait for
    # it and be interpolated, not tagged from the fix at 1.0 s alone.
    assert metrics['geotag']['by_reason'] == {
        'interpolated': 1, 'nearest': 1, 'gps_no_fix': 1, 'stale_fix': 1,
        'no_fix_received': 0, 'no_image_stamp': 0}
    assert metrics['geotag']['coverage'] == pytest.approx(0.5)

    diseased = [label != 'healthy' for label in predicted]
    assert metrics['findings']['sightings'] == sum(diseased)
    assert metrics['findings']['without_position'] == sum(diseased[6:])
    # Frames A and B are 0.9 m apart (< 1.5 m): one feature per diseased label.
    assert metrics['findings']['features'] == len({label for label, d in
                                                   zip(predicted[:6], diseased[:6]) if d})
    assert metrics['latency_ms']['pipeline']['count'] == 4
    for name in ('metrics.json', 'report.md', 'confusion_matrix.png', 'map.png',
                 'findings.geojson', 'findings.kml', 'detections'):
        assert os.path.exists(os.path.join(out, name)), name
    assert not [n for n in os.listdir(out) if n.startswith('.')]  # no temp files left
    with open(os.path.join(out, 'metrics.json'), encoding='utf-8') as stream:
        assert json.load(stream)['accuracy']['accuracy'] == pytest.approx(expected['accuracy'])


def test_output_bag_holds_the_node_topics(tmp_path, leaves, predicted, tiny_card,
                                          model_path):
    from rosbags.rosbag2 import Reader

    frames, fixes, truth, _ = scenario(leaves, predicted, list(tiny_card.labels))
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames, fixes, truth)
    _, out = _replay(tmp_path, bag, model_path)
    store = make_typestore()
    counts = {}
    stamps = []
    with Reader(os.path.join(out, 'detections')) as reader:
        for connection, _, data in reader.messages():
            counts[connection.topic] = counts.get(connection.topic, 0) + 1
            if connection.topic == '/detector_node/detections':
                msg = store.deserialize_cdr(data, connection.msgtype)
                stamps.append(msg.header.stamp.sec * NS + msg.header.stamp.nanosec)
                assert len(msg.detections) == 3
                assert msg.header.frame_id == 'camera'
    assert counts == {'/camera/image_raw/compressed': 4, '/gps/fix': 17,
                      '/detector_node/detections': 4,
                      '/detector_node/detections/fix': 4,
                      '/detector_node/geo_detections': 4,
                      '/detector_node/label_info': 1, '/detector_node/utm_zone': 1}
    assert stamps == [f.stamp_ns for f in frames]  # output headers = image headers


def test_max_frames_and_cli_flags_override_params_file(tmp_path, leaves, predicted,
                                                       tiny_card, model_path, capsys):
    frames, fixes, truth, _ = scenario(leaves, predicted, list(tiny_card.labels))
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames, fixes, truth)
    params_file = tmp_path / 'detector.yaml'
    params_file.write_text('detector_node:\n  ros__parameters:\n    tile_size_px: 128\n'
                           '    tile_stride_px: 128\n    min_vegetation_fraction: 0.0\n'
                           '    merge_radius_m: 0.0\n')
    out = tmp_path / 'out'
    code = cli.main([bag, '--out', str(out), '--model', model_path, '--params-file',
                     str(params_file), '--max-frames', '2', '--no-progress'])
    assert code == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['frames']['processed'] == 2
    assert metrics['tiles']['total'] == 2 * 12  # 128 px tiles from the params file
    assert metrics['parameters']['merge_radius_m'] == 0.0
    out2 = tmp_path / 'out2'
    code = cli.main([bag, '--out', str(out2), '--model', model_path, '--params-file',
                     str(params_file), '--tile-size', '256', '--tile-stride', '256',
                     '--param', 'merge_radius_m=2.5', '--no-progress', '--no-output-bag'])
    assert code == 0
    metrics = json.loads((out2 / 'metrics.json').read_text())
    assert metrics['frames']['processed'] == 4
    assert metrics['tiles']['total'] == 4 * 3  # the flags win over the file
    assert metrics['parameters']['merge_radius_m'] == 2.5
    assert not (out2 / 'detections').exists()
    summary = capsys.readouterr().out
    assert 'tile accuracy' in summary and 'geotag coverage' in summary


def test_frame_queue_is_bounded(tmp_path, leaves, predicted, tiny_card, model_path):
    # Every image at the same log time and no fix to move time on: the queue must
    # process frames early instead of growing.
    frames = [Frame(stamp_ns=(i + 1) * NS, image_bgr=mosaic(leaves[:3], 3), log_time_ns=NS)
              for i in range(6)]
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames)
    params = dict(PARAMS, model_path=model_path)
    state = run_replay(ReplayOptions(bag_path=bag, out_dir=str(tmp_path / 'o'),
                                     parameters=params, max_pending_frames=2))
    assert state.frames_processed == 6
    assert state.frames_queued_early == 4


def test_reports_show_the_values_in_force(tmp_path, leaves, predicted, tiny_card, model_path):
    # thresholds deferring to the card and backend auto: the reports show what the run
    # used (the card's 0.3 and 0.5, onnxruntime), never -1.0 or 'auto'
    frames, fixes, truth, _ = scenario(leaves, predicted, list(tiny_card.labels))
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames, fixes, truth)
    metrics, out = _replay(tmp_path, bag, model_path, params={
        'unknown_threshold': -1.0, 'disease_score_threshold': -1.0, 'backend': 'auto'})
    assert metrics['parameters']['unknown_threshold'] == pytest.approx(0.3)
    assert metrics['parameters']['disease_score_threshold'] == pytest.approx(0.5)
    assert metrics['parameters']['backend'] == 'onnxruntime'
    assert metrics['parameters_given']['unknown_threshold'] == -1.0
    assert metrics['parameter_sources'] == {
        'backend': 'auto', 'unknown_threshold': "negative: the model card's",
        'disease_score_threshold': "negative: the model card's"}
    text = (tmp_path / 'report' / 'report.md').read_text()
    table = text[text.index('## Parameters'):]
    assert '| -1' not in table
    assert "| unknown_threshold | 0.3 | negative: the model card's |" in table
    assert "| disease_score_threshold | 0.5 | negative: the model card's |" in table
    assert '| backend | onnxruntime | auto |' in table
    page = (tmp_path / 'report' / 'report.html').read_text()
    assert 'a top-label score of at least 0.5,' in page and '-1' not in page.split(
        'id="findings-map"')[1].split('</p>')[0]
    # the output bag is detections/ holding detections.mcap (rosbags names the file
    # after its folder: a folder named detections.mcap held detections.mcap.mcap)
    bag_files = sorted(os.listdir(os.path.join(out, 'detections')))
    assert bag_files == ['detections.mcap', 'metadata.yaml']
    assert metrics['outputs']['detections_mcap'] == 'detections/detections.mcap'
    assert 'open `detections/detections.mcap` in Foxglove' in text


def test_shipped_model_is_named_not_an_empty_path():
    from leaf_disease_ros.perception.config import defaults
    from leaf_disease_ros.replay.report import parameters_in_force

    params = defaults()
    values, sources = parameters_in_force(params, {
        'backend': 'tensorrt', 'engine_path': '/opt/x/engines/leaf.fp16.engine',
        'model_path': '/opt/x/engines/leaf.onnx', 'max_batch': 8, 'unknown_threshold': 0.66,
        'finding_threshold': 0.9, 'finding_threshold_from': 'site'})
    assert values['model_path'] == 'leaf.fp16.engine'
    assert sources['model_path'] == 'empty: the shipped model'
    assert values['max_batch'] == 8 and sources['max_batch'] == (
        f"{params['max_batch']} given, capped by the backend")
    assert (values['disease_score_threshold'], sources['disease_score_threshold']) == (
        0.9, "negative: the site's")
    assert values['tile_size_px'] == params['tile_size_px'] and 'tile_size_px' not in sources


def test_a_run_across_a_utm_zone_boundary_stays_in_one_zone_and_the_report_names_it(
        tmp_path, leaves, predicted, model_path):
    from rosbags.rosbag2 import Reader

    # 5 m/s east across the zone 31/32 boundary (6 E) at 45 N: frame 1 at 5.99994 E
    # (zone 31), frame 2 at 6.00006 E (zone 32 on its own)
    lat, lon0 = 45.0, 6.0 - 0.000127
    fixes = []
    for k in range(21):
        t = 0.2 * k
        fix_lat, fix_lon = offset_latlon(lat, lon0, 5.0 * t, 0.0)
        fixes.append(GpsFix(int(round(t * NS)), fix_lat, fix_lon))
    frames = [Frame(stamp_ns=int(t * NS), image_bgr=mosaic(leaves[:3], 3)) for t in (1.0, 3.0)]
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames, fixes)
    metrics, out = _replay(tmp_path, bag, model_path, params={'evidence_min_sightings': 1})
    assert metrics['geotag']['utm_zone'] == {'zone': '31T', 'number': 31,
                                             'hemisphere': 'north', 'epsg': 32631,
                                             'from': 'first valid fix'}
    assert metrics['geotag']['frames_outside_utm'] == 0
    store = make_typestore()
    eastings, zones = [], []
    with Reader(os.path.join(out, 'detections')) as reader:
        for connection, _, data in reader.messages():
            msg = store.deserialize_cdr(data, connection.msgtype)
            if connection.topic == '/detector_node/geo_detections':
                assert msg.header.frame_id == 'utm' and msg.detections
                eastings.append(msg.detections[0].bbox.center.position.x)
            elif connection.topic == '/detector_node/utm_zone':
                zones.append(msg.data)
    assert zones == ['31T']
    # 10 m apart in zone 31 (each in its own zone: 472 km)
    assert eastings[1] - eastings[0] == pytest.approx(10.0, abs=0.1)
    report_md = open(os.path.join(out, 'report.md'), encoding='utf-8').read()
    assert ('UTM zone of `geo_detections` (frame `utm`, UTM metres): 31T (EPSG:32631, '
            'WGS 84 / UTM zone 31N), from the first valid fix' in report_md)
    report_html = open(os.path.join(out, 'report.html'), encoding='utf-8').read()
    assert '31T (EPSG:32631)' in report_html
    assert '<p id="utm-zone">UTM zone of <code>geo_detections</code>' in report_html
    # the parameter wins, and the report says where the zone came from
    metrics, out = _replay(tmp_path, bag, model_path,
                           params={'evidence_min_sightings': 1, 'utm_zone': '32T'})
    assert metrics['geotag']['utm_zone']['epsg'] == 32632
    assert metrics['geotag']['utm_zone']['from'] == 'utm_zone parameter'


def _without_timings(metrics):
    """Return metrics.json without what depends on the clock or on the workers."""
    drop = {'latency_ms', 'throughput', 'run', 'machine', 'started_utc', 'wall_s'}
    return {k: v for k, v in metrics.items() if k not in drop}


def test_several_inference_workers_count_and_write_every_frame_as_one_worker(tmp_path):
    """Frames inferred at once are counted, mapped and written in frame order."""
    from leaf_disease_ros.replay.demo import demo_bag_path
    from rosbags.highlevel import AnyReader
    import pathlib

    runs = {}
    for workers in (1, 3):
        out = tmp_path / f'workers_{workers}'
        out.mkdir()
        # one intra-op thread in both runs: the same arithmetic, so the same scores
        state = run_replay(ReplayOptions(bag_path=demo_bag_path(), out_dir=str(out),
                                         inference_workers=workers, gallery_size=0,
                                         parameters={'onnx_intra_op_threads': 1}))
        metrics = write_report(state, str(out), [])
        with AnyReader([pathlib.Path(state.output_bag)]) as reader:
            messages = [(c.topic, log_ns, bytes(raw)) for c, log_ns, raw in reader.messages()]
        runs[workers] = (state, metrics, messages)
    (one, one_metrics, one_messages), (three, three_metrics, three_messages) = runs[1], runs[3]
    assert (one.inference_workers, three.inference_workers) == (1, 3)
    assert three.frames_processed == one.frames_processed > 100
    assert _without_timings(three_metrics) == _without_timings(one_metrics)
    assert len(three_messages) == len(one_messages) > 300
    assert three_messages == one_messages  # the same messages, in the same order


def test_a_backend_without_concurrent_calls_infers_one_frame_at_a_time(tmp_path, leaves,
                                                                       predicted, tiny_card,
                                                                       model_path):
    backend = load_backend(model_path, 'onnxruntime')
    backend.concurrent_inference = False  # as the TensorRT backend says
    frames, fixes, truth, _ = scenario(leaves, predicted, tiny_card.labels)
    path = write_bag(str(tmp_path / 'bag'), 'mcap', frames, fixes, truth)
    out = tmp_path / 'out'
    out.mkdir()
    state = run_replay(ReplayOptions(bag_path=path, out_dir=str(out), inference_workers=4,
                                     parameters={'model_path': model_path}), backend=backend)
    assert state.inference_workers == 1 and state.frames_processed > 0


@pytest.mark.parametrize('value', ['-1', '257'])
def test_inference_workers_out_of_range_is_refused(capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['--inference-workers', value])
    assert exit_info.value.code == 2
    assert '--inference-workers must be 0 (one per CPU core) to 256' in capsys.readouterr().err
