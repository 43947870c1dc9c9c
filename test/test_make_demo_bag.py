"""tools/make_demo_bag.py: the demo recording's content, determinism and leaf provenance."""

import importlib.util
import os

import numpy as np
import pytest

from leaf_disease_ros.replay.bag import BagReader
from leaf_disease_ros.replay.typestore import make_typestore
from leaf_disease_ros.training.dataset import grouped_split, list_class_folders, photo_block_groups

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, 'tools', 'make_demo_bag.py')
DEMO_BAG = os.path.join(REPO, 'demo', 'vineyard_demo')


@pytest.fixture(scope='module')
def tool():
    """Import tools/make_demo_bag.py as a module."""
    spec = importlib.util.spec_from_file_location('make_demo_bag', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(tool, leaves_dir, out, seed=0):
    args = tool.parse_args([leaves_dir, '--out', out, '--seed', str(seed),
                            '--row-length-m', '10'])
    return tool.build(args)


def _messages(path):
    store = make_typestore()
    with BagReader(path) as bag:
        topics = dict(bag.topics)
        messages = [(m.topic, m.log_time_ns, store.deserialize_cdr(m.data, m.msgtype))
                    for m in bag.messages(list(topics))]
    return topics, messages


@pytest.fixture(scope='module')
def built(tool, leaves_dir, tmp_path_factory):
    """Return (figures, path, leaf paths read) of a short demo built from test/data."""
    import cv2

    read = []
    original = cv2.imread

    def recording_imread(path, *args):
        read.append(os.path.abspath(path))
        return original(path, *args)

    tool.cv2.imread = recording_imread
    try:
        out = str(tmp_path_factory.mktemp('demo') / 'bag')
        figures = _build(tool, leaves_dir, out)
    finally:
        tool.cv2.imread = original
    return figures, out, read


def test_topics_rates_and_ground_truth(built):
    figures, path, _ = built
    topics, messages = _messages(path)
    assert {name: info.msgtype for name, info in topics.items()} == {
        '/camera/image_raw/compressed': 'sensor_msgs/msg/CompressedImage',
        '/camera/camera_info': 'sensor_msgs/msg/CameraInfo',
        '/gps/fix': 'sensor_msgs/msg/NavSatFix',
        '/ground_truth': 'vision_msgs/msg/Detection2DArray'}
    images = [m for t, _, m in messages if t == '/camera/image_raw/compressed']
    fixes = [m for t, _, m in messages if t == '/gps/fix']
    truth = [m for t, _, m in messages if t == '/ground_truth']
    assert len(images) == len(truth) == figures['frames'] > 80
    stamp = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in images]
    assert np.median(np.diff(stamp)) == pytest.approx(1.0 / 3.0)  # a leaf (1/3 m) at 1 m/s
    fix_stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in fixes]
    assert np.median(np.diff(fix_stamps)) == pytest.approx(0.2)
    assert images[0].header.frame_id == 'camera_optical_frame'
    assert images[0].format == 'jpeg'
    truth_stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in truth}
    assert truth_stamps == {(m.header.stamp.sec, m.header.stamp.nanosec) for m in images}
    for msg in truth:
        assert len(msg.detections) == 3
        assert {d.results[0].hypothesis.class_id for d in msg.detections} <= {
            'black_rot', 'esca', 'healthy', 'leaf_blight'}
        assert sorted(d.bbox.center.position.x for d in msg.detections) == [128, 384, 640]
    statuses = {int(m.status.status) for m in fixes}
    assert statuses == {-1, 0, 2}  # outage, degraded, RTK
    assert all(np.isnan(m.latitude) for m in fixes if m.status.status == -1)
    assert 44.0 < fixes[0].latitude < 46.0  # a vineyard near Bordeaux


def test_leaves_come_from_the_validation_split_only(built, leaves_dir):
    _, _, read = built
    labels, samples, _ = list_class_folders(leaves_dir)
    train, val = grouped_split(photo_block_groups(samples, 40), 0.2, seed=0)
    train_paths = {os.path.abspath(s.path) for s in train}
    val_paths = {os.path.abspath(s.path) for s in val}
    assert read and set(read) <= val_paths
    assert not set(read) & train_paths


def test_deterministic_from_the_seed(tool, leaves_dir, tmp_path, built):
    _, first, _ = built
    again = str(tmp_path / 'again')
    _build(tool, leaves_dir, again)
    other = str(tmp_path / 'other')
    _build(tool, leaves_dir, other, seed=1)

    def stream(path):
        with BagReader(path) as bag:
            return [(m.topic, m.log_time_ns, m.data) for m in bag.messages(list(bag.topics))]

    assert stream(first) == stream(again)
    assert stream(first) != stream(other)


@pytest.mark.skipif(not os.path.isdir(DEMO_BAG), reason='the demo bag is not built')
def test_the_shipped_demo_bag():
    with BagReader(DEMO_BAG) as bag:
        assert bag.storage == 'mcap'
        assert bag.topics['/camera/image_raw/compressed'].count > 120
        frames = bag.topics['/camera/image_raw/compressed'].count
        assert bag.topics['/ground_truth'].count == bag.topics['/camera/camera_info'].count \
            == frames
        assert bag.topics['/gps/fix'].count > 250
    size = sum(os.path.getsize(os.path.join(DEMO_BAG, f)) for f in os.listdir(DEMO_BAG))
    assert size < 16e6
    assert os.path.isfile(os.path.join(REPO, 'demo', 'README.md'))


def test_camera_info_and_leaves_where_the_geometry_puts_them(tool, built):
    """Each leaf is in its frame where a left-looking pinhole 0.75 m away puts it."""
    figures, path, _ = built
    _, messages = _messages(path)
    infos = [m for t, _, m in messages if t == '/camera/camera_info']
    truth = [m for t, _, m in messages if t == '/ground_truth']
    assert len(infos) == figures['frames']
    info = infos[0]
    assert (info.width, info.height, info.distortion_model) == (768, 256, 'plumb_bob')
    assert list(info.k) == [576.0, 0.0, 383.5, 0.0, 576.0, 127.5, 0.0, 0.0, 1.0]
    assert info.header.frame_id == 'camera_optical_frame' and not any(info.d)
    args = tool.parse_args(['x', '--row-length-m', '10'])
    track = tool.Track(args)
    t0_ns = int(tool.START_UTC.timestamp()) * tool.NS
    spacing_m = args.footprint_m / 3
    for msg in truth:
        _, place = track.at((msg.header.stamp.sec * tool.NS + msg.header.stamp.nanosec
                             - t0_ns) / tool.NS)
        row, along_m = place
        forward = 1.0 if row % 2 == 0 else -1.0  # the image's right is ahead
        for detection in msg.detections:
            column = int(detection.id.split('/leaf')[1].split('.')[0])
            centre_px = detection.bbox.center.position.x - 0.5  # pixel centre
            seen_m = along_m + forward * (centre_px - 383.5) * 0.75 / 576.0
            assert seen_m == pytest.approx((column + 0.5) * spacing_m, abs=1e-3)
