"""
Message conversions against the real ROS 2 definitions (rosbags type store, CDR).

The type store is ROS 2 Humble's with vision_msgs 4.x registered from its .msg
text; every published message type is serialised to CDR and read back.
"""

import math

import cv2
import numpy as np
import pytest

from leaf_disease_ros.geo.geodesy import latlon_to_utm
from leaf_disease_ros.geo.geotag import FixBuffer
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.config import DetectorConfig
from leaf_disease_ros.perception.pipeline import Detector
from leaf_disease_ros.perception.positions import Fix, STATUS_GBAS_FIX, STATUS_NO_FIX
from leaf_disease_ros.replay.typestore import make_typestore
from leaf_disease_ros.ros import conversions as conv
from leaf_disease_ros.ros.diagnostics import DiagnosticReport, ERROR, OK, WARN

NS = 1_000_000_000


@pytest.fixture(scope='module')
def store():
    """Return the Humble type store with vision_msgs."""
    return make_typestore()


@pytest.fixture(scope='module')
def types(store):
    """Return the rosbags message classes."""
    return conv.MessageTypes.from_typestore(store)


@pytest.fixture(scope='module')
def frame(leaf_images):
    """Return a 768x512 mosaic of six real leaves (3 x 2 tiles of 256 px)."""
    images = [cv2.imread(leaf_images[label][0]) for label in sorted(leaf_images)]
    images += [cv2.imread(leaf_images['esca'][1]), cv2.imread(leaf_images['healthy'][1])]
    return np.vstack([np.hstack(images[:3]), np.hstack(images[3:6])])


@pytest.fixture(scope='module')
def result(tiny_model_path, frame):
    """Return a FrameResult with a geotag and at least one finding."""
    backend = load_backend(tiny_model_path, 'onnxruntime')
    # threshold 0 and disease score 0: every diseased tile is a finding
    config = DetectorConfig(disease_score_threshold=0.0, unknown_threshold=0.0)
    fixes = FixBuffer()
    cov = (0.04, 0.0, 0.0, 0.0, 0.04, 0.0, 0.0, 0.0, 0.09)
    fixes.add(Fix(10 * NS, 46.0, 7.0, 410.0, STATUS_GBAS_FIX, 1, cov, 2))
    fixes.add(Fix(10 * NS + NS // 5, 46.00001, 7.0, 410.0, STATUS_GBAS_FIX, 1, cov, 2))
    res = Detector(backend, backend.card, config).process(frame, 10 * NS + NS // 10, fixes)
    backend.close()
    return res


def roundtrip(store, msg):
    """Serialise ``msg`` to CDR and deserialise it."""
    data = store.serialize_cdr(msg, msg.__msgtype__)
    return store.deserialize_cdr(data, msg.__msgtype__)


def test_stamp_conversions(types):
    assert conv.stamp_to_ns(types.Time(sec=3, nanosec=5)) == 3 * NS + 5
    time = conv.ns_to_time(7 * NS + 123, types)
    assert (time.sec, time.nanosec) == (7, 123)


def test_navsatfix_to_fix_reads_every_field(store, types):
    msg = types.NavSatFix(
        header=conv.make_header(12 * NS + 34, 'gps', types),
        status=types.NavSatStatus(status=STATUS_GBAS_FIX, service=1),
        latitude=46.5, longitude=7.25, altitude=401.5,
        position_covariance=np.arange(9, dtype=np.float64),
        position_covariance_type=3)
    fix = conv.navsatfix_to_fix(roundtrip(store, msg))
    assert fix == Fix(12 * NS + 34, 46.5, 7.25, 401.5, STATUS_GBAS_FIX, 1,
                      tuple(float(v) for v in range(9)), 3)


def test_detection2d_array_roundtrip(store, types, result):
    header = conv.make_header(result.stamp_ns, 'camera_optical', types)
    msg = roundtrip(store, conv.to_detection2d_array(result, header, types))
    assert conv.stamp_to_ns(msg.header.stamp) == result.stamp_ns
    assert msg.header.frame_id == 'camera_optical'
    assert len(msg.detections) == len(result.detections) == 6
    ids = [d.id for d in msg.detections]
    assert len(set(ids)) == 6
    for det, ours in zip(msg.detections, result.detections):
        assert det.header.frame_id == 'camera_optical'
        x0, y0, x1, y1 = ours.box_xyxy_px
        assert det.bbox.center.position.x == pytest.approx((x0 + x1) / 2)
        assert det.bbox.center.position.y == pytest.approx((y0 + y1) / 2)
        assert (det.bbox.size_x, det.bbox.size_y) == (x1 - x0, y1 - y0)
        assert det.results[0].hypothesis.class_id == ours.label
        assert det.results[0].hypothesis.score == pytest.approx(ours.score, abs=1e-6)
        scores = [h.hypothesis.score for h in det.results]
        assert scores == sorted(scores, reverse=True)


def test_unknown_tile_puts_unknown_first(store, types, tiny_model_path, frame):
    backend = load_backend(tiny_model_path, 'onnxruntime')
    # A threshold above any possible score rejects every tile.
    res = Detector(backend, backend.card, DetectorConfig(unknown_threshold=1.0)).process(
        frame, 5 * NS)
    backend.close()
    msg = roundtrip(store, conv.to_detection2d_array(res, conv.make_header(5 * NS, 'c', types),
                                                     types))
    for det in msg.detections:
        assert det.results[0].hypothesis.class_id == 'unknown'
        assert det.results[1].hypothesis.class_id != 'unknown'
        assert det.results[0].hypothesis.score == pytest.approx(
            det.results[1].hypothesis.score, abs=1e-6)


def test_ground_truth_reads_back_boxes(store, types, result):
    header = conv.make_header(result.stamp_ns, 'camera', types)
    msg = roundtrip(store, conv.to_detection2d_array(result, header, types))
    boxes = conv.ground_truth_from_detection2d_array(msg)
    assert [b.box_xyxy_px for b in boxes] == [tuple(float(v) for v in d.box_xyxy_px)
                                              for d in result.detections]
    assert [b.label for b in boxes] == [d.label for d in result.detections]


def test_geotag_fix_with_position(store, types, result):
    header = conv.make_header(result.stamp_ns, 'camera', types)
    msg = roundtrip(store, conv.to_geotag_fix(result, header, types))
    tag = result.geotag.geotag
    assert conv.stamp_to_ns(msg.header.stamp) == result.stamp_ns
    assert msg.header.frame_id == 'camera'
    assert msg.status.status == STATUS_GBAS_FIX
    assert msg.latitude == pytest.approx(46.000005)
    assert msg.latitude == tag.latitude_deg
    assert list(msg.position_covariance) == list(tag.covariance_m2)
    assert msg.position_covariance_type == 2


def test_geotag_fix_without_position_is_no_fix(store, types, tiny_model_path, frame):
    backend = load_backend(tiny_model_path, 'onnxruntime')
    res = Detector(backend, backend.card).process(frame, 5 * NS, FixBuffer())
    backend.close()
    msg = roundtrip(store, conv.to_geotag_fix(res, conv.make_header(5 * NS, 'c', types), types))
    assert msg.status.status == STATUS_NO_FIX
    assert math.isnan(msg.latitude) and math.isnan(msg.longitude)


def test_detection3d_array_in_utm(store, types, result):
    header = conv.make_header(result.stamp_ns, 'camera', types)
    msg = roundtrip(store, conv.to_detection3d_array(result, header, 'utm', types))
    assert msg.header.frame_id == 'utm'
    assert conv.stamp_to_ns(msg.header.stamp) == result.stamp_ns
    findings = [d for d in result.detections if d.is_finding]
    assert findings, 'fixture should produce findings'
    assert len(msg.detections) == len(findings)
    utm = latlon_to_utm(46.000005, 7.0)
    det = msg.detections[0]
    position = det.results[0].pose.pose.position
    assert position.x == pytest.approx(utm.easting_m, abs=1e-3)
    assert position.y == pytest.approx(utm.northing_m, abs=1e-3)
    assert position.z == pytest.approx(410.0)
    cov = np.asarray(det.results[0].pose.covariance).reshape(6, 6)
    assert cov[0, 0] == pytest.approx(0.04) and cov[2, 2] == pytest.approx(0.09)
    assert cov[3, 3] == conv.UNKNOWN_ROTATION_VARIANCE_RAD2
    # the 3D id joins the 2D detection of the same tile
    ids_2d = [d.id for d in conv.to_detection2d_array(result, header, types).detections]
    assert det.id in ids_2d


def test_detection3d_array_empty_without_position(store, types, tiny_model_path, frame):
    backend = load_backend(tiny_model_path, 'onnxruntime')
    config = DetectorConfig(disease_score_threshold=0.0, unknown_threshold=0.0)
    res = Detector(backend, backend.card, config).process(frame, 5 * NS, None)
    backend.close()
    assert res.findings
    msg = roundtrip(store, conv.to_detection3d_array(res, conv.make_header(5 * NS, 'c', types),
                                                     'utm', types))
    assert msg.detections == [] and msg.header.frame_id == 'utm'


def test_unknown_fix_covariance_is_not_exact():
    cov = conv.position_covariance_6x6((0.0,) * 9, 0).reshape(6, 6)
    assert cov[0, 0] == cov[1, 1] == cov[2, 2] == conv.UNKNOWN_POSITION_VARIANCE_M2


def test_label_info_roundtrip(store, types, tiny_card):
    msg = roundtrip(store, conv.to_label_info(tiny_card, conv.make_header(0, 'c', types),
                                              types, 0.3))
    names = [(c.class_id, c.class_name) for c in msg.class_map]
    assert names == [(0, 'black_rot'), (1, 'esca'), (2, 'healthy'), (3, 'leaf_blight'),
                     (65535, 'unknown')]
    assert msg.threshold == pytest.approx(0.3)


def test_diagnostic_array_roundtrip(store, types):
    reports = [DiagnosticReport('leaf_disease: inference', WARN, 'latency over budget',
                                'onnxruntime', (('fps', '3.9'), ('latency_p99_ms', '612'))),
               DiagnosticReport('leaf_disease: gps', ERROR, 'no fix', '', ()),
               DiagnosticReport('leaf_disease: model', OK, 'ok')]
    msg = roundtrip(store, conv.to_diagnostic_array(reports, conv.make_header(0, '', types),
                                                    types))
    assert [s.level for s in msg.status] == [WARN, ERROR, OK]
    assert msg.status[0].values[1].key == 'latency_p99_ms'
    assert msg.status[0].values[1].value == '612'


def test_diagnostic_level_is_bytes_for_rclpy_style_classes(types):
    class BytesStatus:
        """Stand-in for rclpy's DiagnosticStatus, whose byte constants are bytes."""

        OK = b'\x00'

        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    from dataclasses import replace
    rclpy_like = replace(types, DiagnosticStatus=BytesStatus)
    msg = conv.to_diagnostic_array([DiagnosticReport('x', WARN, 'm')], None, rclpy_like)
    assert msg.status[0].level == b'\x01'


def test_typestore_without_vision_msgs_is_reported():
    from rosbags.typesys import get_typestore, Stores
    with pytest.raises(KeyError, match='vision_msgs/msg/Detection2D'):
        conv.MessageTypes.from_typestore(get_typestore(Stores.ROS2_HUMBLE))


@pytest.mark.parametrize('latitude', [88.0, 84.5, -80.5, 90.0, -90.0])
def test_detection3d_array_beyond_utm_is_empty_not_an_exception(store, types, result,
                                                                latitude):
    # Case 1 of issue 11: a position UTM does not cover (a valid 88 N fix) raised
    # ValueError here, outside the node's per-frame try: the node died (FATAL).
    from dataclasses import replace

    tag = replace(result.geotag.geotag, latitude_deg=latitude)
    polar = replace(result, geotag=replace(result.geotag, geotag=tag))
    header = conv.make_header(result.stamp_ns, 'camera', types)
    msg = roundtrip(store, conv.to_detection3d_array(polar, header, 'utm', types))
    assert msg.detections == [] and msg.header.frame_id == 'utm'
    fix = roundtrip(store, conv.to_geotag_fix(polar, header, types))
    assert fix.latitude == latitude  # the position itself is still published
