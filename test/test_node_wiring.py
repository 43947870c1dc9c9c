"""
ros/node.py itself, driven through a stand-in for rclpy (test/rclpy_standin.py).

The stand-in is not ROS: it records what the node declares, subscribes and publishes,
and lets the test deliver messages, call services and fire timers. Message classes are
generated from the real ROS 2 Humble (and Jazzy) definitions, with rosidl's type checks
(test/ros_messages.py), and what the node publishes is serialised to CDR with the real
layout. The real check of the node on ROS stays test/test_detector_launch.py.
"""

import json
import os
import time
from typing import Any, Dict, List

import cv2
import numpy as np
import pytest

from leaf_disease_ros.geo.geodesy import latlon_to_utm
from leaf_disease_ros.geo.mapping import merge_sightings, Sighting
from leaf_disease_ros.perception.positions import STATUS_FIX, STATUS_NO_FIX
from leaf_disease_ros.ros.messages import READY_PREFIX, START_FAILURE_PREFIX
import rclpy_standin
from ros_messages import to_rosbags

pytest.importorskip('rosbags', reason='the message definitions come from rosbags')

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
NODE = '/detector_node'
LAT, LON = 46.2, 7.3


@pytest.fixture()
def world(monkeypatch):
    """Return the installed rclpy stand-in (Humble message definitions), clock at T0."""
    installed = rclpy_standin.install(monkeypatch, 'humble')
    installed.ros_time_ns = T0 + NS // 2  # the node clock of a robot (or of a bag played)
    return installed


@pytest.fixture(scope='module')
def mosaic(leaf_images) -> np.ndarray:
    """Return a 768x512 BGR frame of six real leaves (3 x 2 tiles of 256 px)."""
    return mosaic_of(leaf_images)


def mosaic_of(leaf_images: Dict[str, List[str]]) -> np.ndarray:
    """Return a 768x512 BGR frame of six real leaves (3 x 2 tiles of 256 px)."""
    images = [cv2.imread(leaf_images[label][0]) for label in sorted(leaf_images)]
    images += [cv2.imread(leaf_images['esca'][1]), cv2.imread(leaf_images['healthy'][1])]
    return np.vstack([np.hstack(images[:3]), np.hstack(images[3:6])])


def overrides(world: Any, tiny_model_path: str, **values: Any) -> List[Any]:
    """Return rclpy Parameters for the tiny model, every diseased tile a finding.

    Findings go to ~/geo_detections at once (``evidence_min_sightings`` 1, the domain
    check judging from the first tile on) unless a test asks for the evidence rule or
    the domain hold.
    """
    parameter = world.modules['rclpy.parameter'].Parameter
    base: Dict[str, Any] = {'model_path': tiny_model_path, 'backend': 'onnxruntime',
                            'disease_score_threshold': 0.0, 'unknown_threshold': 0.0,
                            'evidence_min_sightings': 1, 'domain_min_tiles': 1}
    base.update(values)
    return [parameter(name, value=value) for name, value in base.items()]


def start(world: Any, tiny_model_path: str, **values: Any) -> Any:
    """Import ros/node.py against the stand-in and start a DetectorNode."""
    from leaf_disease_ros.ros import node as node_module

    node = node_module.DetectorNode(parameter_overrides=overrides(world, tiny_model_path,
                                                                  **values))
    return node


def header(world: Any, stamp_ns: int, frame_id: str = 'camera') -> Any:
    """Return a std_msgs/Header."""
    sec, nanosec = divmod(stamp_ns, NS)
    return world.msg('std_msgs/msg/Header')(
        stamp=world.msg('builtin_interfaces/msg/Time')(sec=sec, nanosec=nanosec),
        frame_id=frame_id)


def image_msg(world: Any, frame: np.ndarray, stamp_ns: int) -> Any:
    """Return a bgr8 sensor_msgs/Image of ``frame``."""
    msg = world.modules['cv_bridge'].CvBridge().cv2_to_imgmsg(frame, encoding='bgr8')
    msg.header = header(world, stamp_ns)
    return msg


def fix_msg(world: Any, stamp_ns: int, lat: float = LAT, lon: float = LON,
            status: int = STATUS_FIX, **fields: Any) -> Any:
    """Return a sensor_msgs/NavSatFix."""
    status_msg = world.msg('sensor_msgs/msg/NavSatStatus')(status=status, service=1)
    return world.msg('sensor_msgs/msg/NavSatFix')(
        header=header(world, stamp_ns, 'gps'), status=status_msg, latitude=lat,
        longitude=lon, altitude=400.0,
        position_covariance=[0.04, 0.0, 0.0, 0.0, 0.04, 0.0, 0.0, 0.0, 0.09],
        position_covariance_type=2, **fields)


def send_frame(world: Any, frame: np.ndarray, stamp_ns: int, fixes: bool = True,
               lat: float = LAT) -> None:
    """Deliver two fixes bracketing ``stamp_ns`` (0.2 s either side), then the image."""
    if fixes:
        world.deliver('/fix', fix_msg(world, stamp_ns - NS // 5, lat=lat))
        world.deliver('/fix', fix_msg(world, stamp_ns + NS // 5, lat=lat + 1e-5))
    world.deliver('/image', image_msg(world, frame, stamp_ns))


def roundtrip(world: Any, msg: Any) -> Any:
    """Serialise a published message to CDR with the real definition and read it back."""
    data = world.store.serialize_cdr(to_rosbags(msg, world.store), type(msg).__msgtype__)
    return world.store.deserialize_cdr(data, type(msg).__msgtype__)


def wait_until(condition: Any, timeout_s: float = 30.0) -> None:
    """Poll ``condition()`` until it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.01)


def diagnostics(world: Any) -> Dict[str, Dict[str, str]]:
    """Fire the timers; return status name -> key/values of the newest DiagnosticArray."""
    world.fire_timers()
    array = world.published['/diagnostics'][-1]
    return {status.name: dict({'level': str(status.level[0]), 'message': status.message},
                              **{v.key: v.value for v in status.values})
            for status in array.status}


def stop(node: Any) -> None:
    """Close and destroy the node."""
    node.close()
    node.destroy_node()


# --- the image path -----------------------------------------------------------------------

def test_start_declares_subscribes_and_logs_ready(world, tiny_model_path):
    node = start(world, tiny_model_path)
    try:
        # camera_info: beside the image, as image_transport pairs them
        assert set(world.subscriptions) == {'/image', '/fix', '/camera_info'}
        assert set(world.publishers) >= {f'{NODE}/detections', f'{NODE}/detections/fix',
                                         f'{NODE}/geo_detections', f'{NODE}/label_info',
                                         f'{NODE}/debug_image', '/diagnostics'}
        assert f'{NODE}/enable' in world.services
        (ready,) = [t for t in world.log_texts('info') if t.startswith(READY_PREFIX)]
        assert 'on onnxruntime' in ready and 'detections on /detector_node/detections' in ready
        (labels,) = world.published[f'{NODE}/label_info']
        assert [c.class_name for c in labels.class_map] == ['black_rot', 'esca', 'healthy',
                                                            'leaf_blight', 'unknown']
        assert labels.threshold == pytest.approx(0.0)
        descriptor = node.describe_parameter('debug_image_rate_hz')
        assert descriptor.dynamic_typing and not node.describe_parameter('top_k').dynamic_typing
    finally:
        stop(node)


def test_image_and_fixes_give_detections_a_positioned_fix_and_geo_detections(
        world, tiny_model_path, mosaic):
    node = start(world, tiny_model_path, ground_positions=False)  # findings at the camera
    try:
        stamp = T0 + 123_456_789
        send_frame(world, mosaic, stamp)
        (detections,) = world.wait_for(f'{NODE}/detections', 1)
        (fix,) = world.wait_for(f'{NODE}/detections/fix', 1)
        (geo,) = world.wait_for(f'{NODE}/geo_detections', 1)
        for msg in (detections, fix, geo):
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == divmod(stamp, NS)
            roundtrip(world, msg)  # serialises with the real Humble layout
        assert detections.header.frame_id == 'camera' and len(detections.detections) == 6
        # ~/detections/fix: the position interpolated at the image stamp, image header
        assert fix.header.frame_id == 'camera' and fix.status.status == STATUS_FIX
        assert fix.latitude == pytest.approx(LAT + 0.5e-5, abs=1e-9)
        assert fix.longitude == pytest.approx(LON)
        assert list(fix.position_covariance)[::4] == pytest.approx([0.04, 0.04, 0.09])
        # ~/geo_detections: the findings in UTM metres, frame utm, ids shared with 2D
        assert 'ground positions' not in ' '.join(world.log_texts('info'))
        assert geo.header.frame_id == 'utm' and len(geo.detections) >= 1
        utm = latlon_to_utm(fix.latitude, fix.longitude)
        ids_2d = {d.id for d in detections.detections}
        for det in geo.detections:
            assert det.id in ids_2d and det.results[0].hypothesis.class_id != 'healthy'
            position = det.bbox.center.position
            assert (position.x, position.y) == pytest.approx((utm.easting_m, utm.northing_m),
                                                             abs=1e-3)
            assert det.results[0].pose.covariance[0] == pytest.approx(0.04)
        values = diagnostics(world)[f'{NODE}: detector']
        assert values['frames_processed'] == '1' and values['level'] == '0'
    finally:
        stop(node)


def test_without_a_fix_the_fix_output_is_no_fix_and_geo_detections_empty(
        world, tiny_model_path, mosaic):
    node = start(world, tiny_model_path)
    try:
        send_frame(world, mosaic, T0, fixes=False)
        (fix,) = world.wait_for(f'{NODE}/detections/fix', 1)
        (geo,) = world.wait_for(f'{NODE}/geo_detections', 1)
        assert fix.status.status == STATUS_NO_FIX and np.isnan(fix.latitude)
        assert geo.detections == []
    finally:
        stop(node)


def test_a_mono_jpeg_compressed_frame_is_detected(world, tiny_model_path, mosaic):
    # Humble's cv_bridge decodes with IMREAD_ANYCOLOR and returns a mono JPEG 2-D
    # (the stand-in does the same): the node decodes compressed frames itself
    gray = cv2.cvtColor(mosaic, cv2.COLOR_BGR2GRAY)
    ok, jpeg = cv2.imencode('.jpg', gray)
    assert ok
    msg = world.msg('sensor_msgs/msg/CompressedImage')(
        header=header(world, T0), format='jpeg', data=jpeg.tobytes())
    assert world.modules['cv_bridge'].CvBridge().compressed_imgmsg_to_cv2(msg).ndim == 2
    node = start(world, tiny_model_path, image_transport='compressed',
                 min_vegetation_fraction=0.0)
    try:
        # image_transport's base topic of image/compressed is image: its pair /camera_info
        assert set(world.subscriptions) == {'/image/compressed', '/fix', '/camera_info'}
        world.deliver('/image/compressed', msg)
        (detections,) = world.wait_for(f'{NODE}/detections', 1)
        assert len(detections.detections) == 6
        ok, png16 = cv2.imencode('.png', (mosaic.astype(np.uint16) * 257))
        world.deliver('/image/compressed', world.msg('sensor_msgs/msg/CompressedImage')(
            header=header(world, T0 + NS), format='png', data=png16.tobytes()))
        world.wait_for(f'{NODE}/detections', 2)
        world.deliver('/image/compressed', world.msg('sensor_msgs/msg/CompressedImage')(
            header=header(world, T0 + 2 * NS), format='jpeg', data=b'not a jpeg'))
        wait_until(lambda: diagnostics(world)[f'{NODE}: detector']['frames_failed'] == '1')
    finally:
        stop(node)


@pytest.mark.parametrize('reduced', [True, False])
def test_a_colour_jpeg_decoded_at_reduced_size_reports_full_size_boxes(world, tiny_model_path,
                                                                       mosaic, reduced):
    """
    Decode a JPEG at reduced size and still report boxes and the debug image at full size.

    reduced_jpeg_decode: the tiny card (32 px) shrinks 256 px tiles 8x; the node decodes
    the 768x512 JPEG at 1/4 (the gate's sampling grid caps the scale at 4).
    """
    ok, jpeg = cv2.imencode('.jpg', mosaic, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    node = start(world, tiny_model_path, image_transport='compressed',
                 min_vegetation_fraction=0.0, reduced_jpeg_decode=reduced,
                 debug_image_rate_hz=100.0)
    try:
        decoded = []
        real = node._decode
        node._decode = lambda msg: decoded.append(real(msg)) or decoded[-1]
        world.publishers[f'{NODE}/debug_image'].subscription_count = 1
        world.deliver('/image/compressed', world.msg('sensor_msgs/msg/CompressedImage')(
            header=header(world, T0), format='jpeg', data=jpeg.tobytes()))
        (detections,) = world.wait_for(f'{NODE}/detections', 1)
        (debug,) = world.wait_for(f'{NODE}/debug_image', 1)
        assert decoded[0].pixel_scale == (4 if reduced else 1)
        assert decoded[0].image.shape[:2] == ((128, 192) if reduced else (512, 768))
        assert (debug.height, debug.width) == (512, 768)
        centres = sorted((d.bbox.center.position.x, d.bbox.center.position.y)
                         for d in detections.detections)
        assert centres == sorted((128.0 + 256 * c, 128.0 + 256 * r)
                                 for r in range(2) for c in range(3))
        assert all(d.bbox.size_x == 256 for d in detections.detections)
    finally:
        stop(node)


def test_an_unconvertible_raw_encoding_is_counted_not_fatal(world, tiny_model_path, mosaic):
    node = start(world, tiny_model_path)
    try:
        depth = world.msg('sensor_msgs/msg/Image')(
            header=header(world, T0), height=4, width=4, encoding='16UC1', is_bigendian=0,
            step=8, data=bytes(32))
        world.deliver('/image', depth)
        wait_until(lambda: any('16UC1' in t for t in world.log_texts('warning')))
        send_frame(world, mosaic, T0 + NS)
        world.wait_for(f'{NODE}/detections', 1)
        assert node.context.ok()
    finally:
        stop(node)


def test_a_raw_image_whose_step_counts_pixels_is_a_failed_frame(world, tiny_model_path, mosaic):
    # cv_bridge would return a 256 px wide image of a 768 px frame (step 768 read as bytes)
    node = start(world, tiny_model_path)
    try:
        msg = image_msg(world, mosaic, T0)
        msg.step = msg.width
        assert world.modules['cv_bridge'].CvBridge().imgmsg_to_cv2(msg, 'bgr8').shape == (
            512, 256, 3)
        world.deliver('/image', msg)
        wait_until(lambda: diagnostics(world)[f'{NODE}: detector']['frames_failed'] == '1')
        assert any('step 768 bytes is shorter than a row of 768 pixels' in t
                   for t in world.log_texts('warning'))
        assert f'{NODE}/detections' not in world.published or \
            world.published[f'{NODE}/detections'] == []
    finally:
        stop(node)


def test_qos_of_every_output_and_input(world, tiny_model_path):
    # README's ROS interface table; ~/debug_image is best effort (images for people over
    # Wi-Fi; rqt_image_view subscribes with rmw_qos_profile_sensor_data, best effort)
    qos = world.modules['rclpy.qos']
    node = start(world, tiny_model_path)
    try:
        def profile(endpoint: Any) -> tuple:
            return (endpoint.qos.reliability, endpoint.qos.durability, endpoint.qos.depth)

        reliable = (qos.ReliabilityPolicy.RELIABLE, qos.DurabilityPolicy.VOLATILE, 10)
        assert {topic: profile(p) for topic, p in world.publishers.items()} == {
            f'{NODE}/detections': reliable, f'{NODE}/detections/fix': reliable,
            f'{NODE}/geo_detections': reliable, '/diagnostics': reliable,
            f'{NODE}/label_info': (qos.ReliabilityPolicy.RELIABLE,
                                   qos.DurabilityPolicy.TRANSIENT_LOCAL, 1),
            f'{NODE}/utm_zone': (qos.ReliabilityPolicy.RELIABLE,
                                 qos.DurabilityPolicy.TRANSIENT_LOCAL, 1),
            f'{NODE}/debug_image': (qos.ReliabilityPolicy.BEST_EFFORT,
                                    qos.DurabilityPolicy.VOLATILE, 1)}
        assert profile(world.subscriptions['/image']) == (
            qos.ReliabilityPolicy.BEST_EFFORT, qos.DurabilityPolicy.VOLATILE, 1)
    finally:
        stop(node)


# --- the publishing path never ends the worker (issue item 2) ------------------------------

def test_a_failing_publisher_drops_the_frame_counts_it_and_the_worker_goes_on(
        world, tiny_model_path, mosaic):
    node = start(world, tiny_model_path)
    try:
        world.publishers[f'{NODE}/geo_detections'].fail_with = RuntimeError('rcl publish failed')
        send_frame(world, mosaic, T0)
        wait_until(lambda: diagnostics(world)[f'{NODE}: detector']['frames_failed'] == '1')
        assert any('publishing failed: RuntimeError: rcl publish failed' in t
                   for t in world.log_texts('warning'))
        world.publishers[f'{NODE}/geo_detections'].fail_with = None
        send_frame(world, mosaic, T0 + NS)
        world.wait_for(f'{NODE}/geo_detections', 1)
        assert node.context.ok() and node.fatal_error == ''
    finally:
        stop(node)


def test_a_fix_outside_utm_does_not_stop_the_node(world, tiny_model_path, mosaic):
    node = start(world, tiny_model_path)
    try:
        send_frame(world, mosaic, T0, lat=85.0)  # UTM stops at 84 degrees north
        wait_until(lambda: diagnostics(world)[f'{NODE}: detector']['frames_failed'] == '1'
                   or len(world.published.get(f'{NODE}/detections', [])) == 1)
        if world.published.get(f'{NODE}/detections'):
            # the fix was refused where it came in: the frame went out without a position
            assert world.published[f'{NODE}/geo_detections'][0].detections == []
        else:
            # the fix was stored: building ~/geo_detections fails, nothing is published
            assert any('outside UTM' in t for t in world.log_texts('warning'))
        # the next frame is processed and published: the worker lives on (its fixes, 4,000 km
        # from the last one, are refused by the jump gate until the buffer re-anchors)
        before = len(world.published.get(f'{NODE}/detections', []))
        send_frame(world, mosaic, T0 + 10 * NS)
        wait_until(lambda: len(world.published.get(f'{NODE}/detections', [])) == before + 1)
        assert node.context.ok() and node.fatal_error == ''
    finally:
        stop(node)


def test_a_bug_in_the_worker_stops_the_node_with_the_traceback(world, tiny_model_path,
                                                               mosaic, monkeypatch):
    node = start(world, tiny_model_path)
    try:
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise KeyError('a bug')

        monkeypatch.setattr(node._detector, 'process_prepared', broken)
        send_frame(world, mosaic, T0)
        wait_until(lambda: not node.context.ok())
        assert "KeyError: 'a bug'" in node.fatal_error
        (fatal,) = world.log_texts('fatal')
        assert 'the detector worker thread failed' in fatal and 'Traceback' in fatal
    finally:
        stop(node)


# --- GPS, time jumps, pause -------------------------------------------------------------

def test_stamps_jumping_back_forget_the_fixes(world, tiny_model_path, mosaic):
    node = start(world, tiny_model_path)
    try:
        send_frame(world, mosaic, T0)
        world.wait_for(f'{NODE}/detections/fix', 1)
        world.deliver('/image', image_msg(world, mosaic, T0 - 120 * NS))  # the bag looped
        fixes = world.wait_for(f'{NODE}/detections/fix', 2)
        assert fixes[1].status.status == STATUS_NO_FIX
        assert any(t.startswith('image stamps jumped back by 120.0 s')
                   for t in world.log_texts('warning'))
        gps = diagnostics(world)[f'{NODE}: gps']
        assert gps['buffer_clears'] == '1' and gps['buffer_fixes'] == '0'
    finally:
        stop(node)


def test_enable_pauses_and_resumes(world, tiny_model_path, mosaic):
    node = start(world, tiny_model_path)
    try:
        set_bool = world.modules['std_srvs.srv'].SetBool
        reply = world.call(f'{NODE}/enable', set_bool.Request(data=False))
        assert reply.success and reply.message.startswith('detection paused')
        send_frame(world, mosaic, T0)
        wait_until(lambda: diagnostics(world)[f'{NODE}: detector']['frames_ignored_paused']
                   == '1')
        assert f'{NODE}/detections' not in world.published
        assert 'paused' in diagnostics(world)[f'{NODE}: detector']['message']
        assert world.call(f'{NODE}/enable', set_bool.Request(data=True)).success
        send_frame(world, mosaic, T0 + NS)
        world.wait_for(f'{NODE}/detections', 1)
    finally:
        stop(node)


def test_start_disabled_waits_for_enable(world, tiny_model_path, mosaic):
    node = start(world, tiny_model_path, start_enabled=False)
    try:
        assert any('detection is paused' in t for t in world.log_texts('info'))
        send_frame(world, mosaic, T0)
        wait_until(lambda: diagnostics(world)[f'{NODE}: detector']['frames_ignored_paused']
                   == '1')
    finally:
        stop(node)


def test_jazzy_status_unknown_is_not_reported_as_no_fix(monkeypatch, tiny_model_path):
    world = rclpy_standin.install(monkeypatch, 'jazzy')
    status = world.msg('sensor_msgs/msg/NavSatStatus')()
    assert status.status == -2 == world.msg('sensor_msgs/msg/NavSatStatus').STATUS_UNKNOWN
    node = start(world, tiny_model_path)
    try:
        unset = world.msg('sensor_msgs/msg/NavSatFix')(header=header(world, T0),
                                                       latitude=LAT, longitude=LON)
        world.deliver('/fix', unset)  # a driver that never set the status
        gps = diagnostics(world)[f'{NODE}: gps']
        assert gps['level'] == '1' and 'STATUS_UNKNOWN' in gps['message']
        assert 'NO_FIX' not in gps['message']
    finally:
        stop(node)


# --- parameters ----------------------------------------------------------------------------

def test_live_parameter_changes_are_applied_or_rejected_with_the_reason(world,
                                                                        tiny_model_path,
                                                                        mosaic):
    parameter = world.modules['rclpy.parameter'].Parameter
    node = start(world, tiny_model_path)
    try:
        (result,) = node.set_parameters([parameter('disease_score_threshold', value=1.0)])
        assert result.successful
        send_frame(world, mosaic, T0)
        (geo,) = world.wait_for(f'{NODE}/geo_detections', 1)
        assert geo.detections == []  # no tile reaches a score of 1.0
        (result,) = node.set_parameters([parameter('unknown_threshold', value=0.25)])
        assert result.successful
        labels = world.wait_for(f'{NODE}/label_info', 2)
        assert labels[-1].threshold == pytest.approx(0.25)
        (result,) = node.set_parameters([parameter('tile_stride_px', value=512)])
        assert not result.successful and 'larger than tile_size_px' in result.reason
        (result,) = node.set_parameters([parameter('max_batch', value=4)])
        assert not result.successful and 'read-only' in result.reason
        # an integer for a double: accepted (dynamic typing), used as a float
        (result,) = node.set_parameters([parameter('debug_image_rate_hz', value=5)])
        assert result.successful and node._debug_limiter.rate_hz == pytest.approx(5.0)
        (result,) = node.set_parameters([parameter('debug_image_rate_hz', value='fast')])
        assert not result.successful and 'expected a number' in result.reason
        # a float for an integer: rclpy's static typing rejects it
        (result,) = node.set_parameters([parameter('top_k', value=2.0)])
        assert not result.successful and result.reason.startswith('Wrong parameter type')
    finally:
        stop(node)


def test_integers_for_doubles_are_accepted_at_start_and_bad_types_fail(world,
                                                                       tiny_model_path):
    from leaf_disease_ros.perception.errors import ConfigError

    node = start(world, tiny_model_path, debug_image_rate_hz=5, lever_arm_m=[0, 0, 1])
    try:
        assert node._values['debug_image_rate_hz'] == 5.0
        assert node._values['lever_arm_m'] == [0.0, 0.0, 1.0]
    finally:
        stop(node)
    with pytest.raises(ConfigError, match="'top_k'.*whole number"):
        start(world, tiny_model_path, top_k=2.5)
    with pytest.raises(ConfigError, match="'max_fix_age_s'.*expected a number"):
        start(world, tiny_model_path, max_fix_age_s='soon')


def test_unknown_overrides_are_a_start_error(world, tiny_model_path):
    from leaf_disease_ros.perception.errors import ConfigError

    # a typo in the params file would leave the default in force: the node refuses to start
    with pytest.raises(ConfigError, match=r'tile_sise_px.*did you mean tile_size_px\?'):
        start(world, tiny_model_path, tile_sise_px=128)


def test_debug_image_only_while_subscribed(world, tiny_model_path, mosaic):
    node = start(world, tiny_model_path)
    try:
        send_frame(world, mosaic, T0)
        world.wait_for(f'{NODE}/detections', 1)
        assert f'{NODE}/debug_image' not in world.published
        world.publishers[f'{NODE}/debug_image'].subscription_count = 1
        send_frame(world, mosaic, T0 + NS)
        (debug,) = world.wait_for(f'{NODE}/debug_image', 1)
        assert debug.encoding == 'bgr8' and (debug.height, debug.width) == (512, 768)
        assert (debug.header.stamp.sec, debug.header.stamp.nanosec) == divmod(T0 + NS, NS)
    finally:
        stop(node)


def test_no_image_warning_names_the_likely_cause(world, tiny_model_path):
    node = start(world, tiny_model_path)
    try:
        world.fire_timers()
        assert any(t.startswith('no image received on /image') and 'nobody publishes' in t
                   for t in world.log_texts('warning'))
    finally:
        stop(node)


# --- live map ------------------------------------------------------------------------------

def test_geo_detections_wait_for_repeated_evidence(world, tiny_model_path, mosaic):
    node = start(world, tiny_model_path, evidence_min_sightings=2, evidence_window_frames=3)
    try:
        send_frame(world, mosaic, T0)
        (first,) = world.wait_for(f'{NODE}/geo_detections', 1)
        assert first.detections == []  # one frame is no evidence
        send_frame(world, mosaic, T0 + NS // 4)
        second = world.wait_for(f'{NODE}/geo_detections', 2)[1]
        (detections_2d,) = world.wait_for(f'{NODE}/detections', 2)[1:]
        assert len(second.detections) >= 1  # the same diseases on 2 of the last 3 frames
        assert {d.id for d in second.detections} <= {d.id for d in detections_2d.detections}
    finally:
        stop(node)


def test_the_live_map_is_written_periodically_and_at_shutdown(world, tiny_model_path,
                                                              mosaic, tmp_path):
    folder = tmp_path / 'map'
    node = start(world, tiny_model_path, live_map_dir=str(folder), live_map_period_s=5.0,
                 merge_radius_m=1.5)
    path = folder / 'findings.geojson'
    try:
        assert json.loads(path.read_text())['features'] == []  # written at start
        send_frame(world, mosaic, T0)
        geo = world.wait_for(f'{NODE}/geo_detections', 1)
        world.fire_timers()
        first = json.loads(path.read_text())
        assert len(first['features']) >= 1
        assert first['leaf_disease_ros']['node'] == NODE
        send_frame(world, mosaic, T0 + NS)
        geo = world.wait_for(f'{NODE}/geo_detections', 2)
    finally:
        stop(node)
    final = json.loads(path.read_text())  # written at shutdown, without a timer
    # the replay's rule: every finding of a positioned frame, merged within the radius
    fixes = world.published[f'{NODE}/detections/fix']
    sightings = [Sighting(d.results[0].hypothesis.class_id, d.results[0].hypothesis.score,
                          fix.latitude, fix.longitude,
                          fix.header.stamp.sec * NS + fix.header.stamp.nanosec)
                 for array, fix in zip(geo, fixes) for d in array.detections]
    expected = merge_sightings(sightings, 1.5)
    assert [(f['properties']['label'], f['properties']['count']) for f in final['features']] \
        == [(f.label, f.count) for f in expected]
    assert final['leaf_disease_ros']['sightings'] == len(sightings)
    assert any('live map:' in t for t in world.log_texts('info'))


def test_an_unwritable_live_map_folder_fails_at_start(world, tiny_model_path, tmp_path):
    from leaf_disease_ros.perception.errors import ConfigError

    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    with pytest.raises(ConfigError, match='live_map_dir'):
        start(world, tiny_model_path, live_map_dir=str(blocker / 'map'))


# --- main() -----------------------------------------------------------------------------

def test_main_runs_until_ctrl_c_and_exits_0(world, tiny_model_path):
    from leaf_disease_ros.ros import node as node_module

    def interrupt() -> None:
        raise KeyboardInterrupt

    world.spin_hook = interrupt
    code = node_module.main(['--ros-args', '-p', f'model_path:={tiny_model_path}',
                             '-p', 'backend:=onnxruntime'])
    assert code == 0 and world.nodes[-1].destroyed
    assert any(t.startswith(READY_PREFIX) for t in world.log_texts('info'))


def test_main_exits_1_with_the_reason_when_the_node_cannot_start(world, tmp_path):
    from leaf_disease_ros.ros import node as node_module

    code = node_module.main(['--ros-args', '-p', f'model_path:={tmp_path}/none.onnx'])
    assert code == 1
    (fatal,) = world.log_texts('fatal')
    assert fatal.startswith(START_FAILURE_PREFIX) and 'none.onnx does not exist' in fatal


def test_main_exits_1_after_a_worker_failure(world, tiny_model_path, mosaic, monkeypatch):
    from leaf_disease_ros.ros import node as node_module

    def feed() -> None:
        node = world.nodes[-1]
        if not getattr(node, '_fed', False):
            node._fed = True
            monkeypatch.setattr(node._detector, 'process_prepared', _raise_bug)
            send_frame(world, mosaic, T0)

    world.spin_hook = feed
    code = node_module.main(['--ros-args', '-p', f'model_path:={tiny_model_path}',
                             '-p', 'backend:=onnxruntime'])
    assert code == 1 and world.nodes[-1].fatal_error


def _raise_bug(*args: Any, **kwargs: Any) -> Any:
    raise ZeroDivisionError('a bug')


def test_the_entry_point_stops_before_importing_cv2_on_humble_with_numpy_2(tmp_path):
    import subprocess
    import sys

    import numpy

    from conftest import REPO_DIR

    if int(numpy.__version__.split('.')[0]) < 2:
        pytest.skip('needs NumPy 2 to show the Humble mismatch')
    script = ('import sys\n'
              'from leaf_disease_ros.ros.entry_point import main\n'
              'code = main()\n'
              'print(code, "cv2" in sys.modules, "rclpy" in sys.modules)\n')
    env = dict(os.environ, ROS_DISTRO='humble',
               PYTHONPATH=os.path.join(REPO_DIR, 'src'))
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.stdout.split() == ['1', 'False', 'False'], result.stderr
    assert result.stderr.startswith(f'[FATAL] [detector_node]: {START_FAILURE_PREFIX} NumPy ')
    assert "pip3 install --user 'numpy<2'" in result.stderr
    assert 'Traceback' not in result.stderr


def test_findings_are_held_back_while_the_domain_check_collects(world, tiny_model_path, mosaic,
                                                                tmp_path):
    node = start(world, tiny_model_path, domain_min_tiles=30, live_map_dir=str(tmp_path))
    try:
        send_frame(world, mosaic, T0 + 123_456_789)
        (detections,) = world.wait_for(f'{NODE}/detections', 1)
        (geo,) = world.wait_for(f'{NODE}/geo_detections', 1)
        assert len(detections.detections) == 6   # ~/detections still carries every tile
        assert geo.detections == []               # 6 tiles of 30: nothing vouches yet
        assert node.held_findings >= 1
        node._write_live_map()
        with open(tmp_path / 'findings.geojson', encoding='utf-8') as stream:
            assert json.load(stream)['features'] == []
    finally:
        node.close()
        node.destroy_node()


# --- a site file ----------------------------------------------------------------------------

def _site_doc(card: Any, index: int) -> Dict[str, Any]:
    """Return a site document for ``card`` whose head always says label ``index``."""
    from leaf_disease_ros.perception.site_model import SiteModel

    bias = np.full(len(card.labels), -20.0, np.float32)
    bias[index] = 20.0
    return SiteModel(name='row7', model_sha256=card.onnx_sha256, model_name=card.name,
                     created_utc='2026-06-18T09:00:00Z',
                     weights=np.zeros((len(card.labels), card.embedding_size), np.float32),
                     bias=bias).to_dict()


def test_the_node_classifies_with_the_site_it_is_given(world, tmp_path, mosaic):
    from tiny_model import make_tiny_model

    card = make_tiny_model(str(tmp_path), embedding_name='embedding')
    model = str(tmp_path / 'tiny.onnx')
    (tmp_path / 'site').mkdir()
    (tmp_path / 'site' / 'site.json').write_text(json.dumps(_site_doc(card, 1)))
    node = start(world, model, site_path=str(tmp_path / 'site'))
    try:
        send_frame(world, mosaic, T0 + NS)
        (detections,) = world.wait_for(f'{NODE}/detections', 1)
        labels = {d.results[0].hypothesis.class_id for d in detections.detections}
        assert labels == {'esca'}  # the site head, not the model's own output layer
    finally:
        stop(node)


# --- ground positions: each finding at its leaf (geo/leaf_position.py) --------------------

FX_PX = 576.0  # the mosaic's camera: 768x512, principal point at the image centre
CANOPY_M = 0.75


def camera_info_msg(world: Any, stamp_ns: int) -> Any:
    """Return the calibrated sensor_msgs/CameraInfo of the 768x512 mosaic's camera."""
    return world.msg('sensor_msgs/msg/CameraInfo')(
        header=header(world, stamp_ns), width=768, height=512, distortion_model='plumb_bob',
        d=[0.0] * 5, k=[FX_PX, 0.0, 383.5, 0.0, FX_PX, 255.5, 0.0, 0.0, 1.0],
        r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p=[FX_PX, 0.0, 383.5, 0.0, 0.0, FX_PX, 255.5, 0.0, 0.0, 0.0, 1.0, 0.0])


@pytest.fixture(scope='module')
def edges(mosaic) -> np.ndarray:
    """Return the mosaic with its bottom-right tile (a finding) copied to the bottom left."""
    frame = mosaic.copy()
    frame[256:, :256] = mosaic[256:, 512:]
    return frame


def placed_findings(detections: Any, geo: Any) -> Dict[str, Any]:
    """Return finding id -> (tile centre pixel x, easting m, northing m) of a frame."""
    # vision_msgs box centres are continuous (x0 + x1) / 2; a pixel centre is 0.5 less
    centre_x = {d.id: d.bbox.center.position.x - 0.5 for d in detections.detections}
    return {d.id: (centre_x[d.id], d.bbox.center.position.x, d.bbox.center.position.y)
            for d in geo.detections}


def expected_utm(centre_x_px: float) -> Any:
    """
    Return where a tile's leaf is, worked by hand for the mosaic's frames.

    The robot drives north (the fixes of :func:`send_frame`), the camera looks left
    (west) at a canopy 0.75 m away; facing west, the image's right is north: a tile
    ``u`` px right of the principal point is ``u * 0.75 / 576`` m north of the camera.
    """
    from leaf_disease_ros.geo.geodesy import offset_latlon

    lat, lon = offset_latlon(LAT + 0.5e-5, LON, -CANOPY_M,
                             (centre_x_px - 383.5) * CANOPY_M / FX_PX)
    return latlon_to_utm(lat, lon)


def check_leaf_positions(found: Dict[str, Any]) -> None:
    """Each finding at its hand-worked leaf within 2 cm; left and right edge apart."""
    assert len(found) >= 2, found
    for centre_x, easting, northing in found.values():
        utm = expected_utm(centre_x)
        assert (easting, northing) == pytest.approx((utm.easting_m, utm.northing_m), abs=0.02)
    columns = {centre_x: (easting, northing) for centre_x, easting, northing in found.values()}
    if 127.5 in columns and 639.5 in columns:  # the image's left and right edge tiles
        (e0, n0), (e2, n2) = columns[127.5], columns[639.5]
        assert np.hypot(e2 - e0, n2 - n0) == pytest.approx(512 * CANOPY_M / FX_PX, abs=0.02)


def test_camera_info_and_the_mount_place_each_finding_at_its_leaf(world, tiny_model_path,
                                                                  edges):
    node = start(world, tiny_model_path, mount_yaw_deg=90.0, canopy_distance_m=CANOPY_M)
    try:
        assert f'{NODE}/odom' not in world.subscriptions  # heading_source course
        world.deliver('/camera_info', camera_info_msg(world, T0))  # image_transport's pair
        assert any('camera model camera_info' in t for t in world.log_texts('info'))
        send_frame(world, edges, T0)
        (detections,) = world.wait_for(f'{NODE}/detections', 1)
        (geo,) = world.wait_for(f'{NODE}/geo_detections', 1)
        roundtrip(world, geo)
        found = placed_findings(detections, geo)
        check_leaf_positions(found)
        # the tiles of the image's three columns are three places along the row
        assert len({round(northing, 2) for _, _, northing in found.values()}) == \
            len({centre_x for centre_x, _, _ in found.values()})
        # the covariance: RTK (0.04 m2) plus heading, canopy distance and tile footprint
        covariance = geo.detections[0].results[0].pose.covariance
        assert covariance[0] > 0.04 and covariance[7] > 0.04
    finally:
        stop(node)


def test_a_site_of_another_model_fails_at_start(world, tmp_path, tiny_model_path):
    from leaf_disease_ros.perception.site_model import SiteError
    from tiny_model import make_tiny_model

    card = make_tiny_model(str(tmp_path), name='other', embedding_name='embedding', seed=3)
    (tmp_path / 'site.json').write_text(json.dumps(_site_doc(card, 1)))
    with pytest.raises(SiteError, match=r'was made for model tiny@[0-9a-f]{12}, not tiny@'):
        start(world, tiny_model_path, site_path=str(tmp_path / 'site.json'))


def test_without_camera_info_the_hfov_fallback_places_findings(world, tiny_model_path,
                                                               edges):
    # camera_hfov_deg 67.4: 768 px wide with f = 384 / tan(33.7 deg) = 576 px
    node = start(world, tiny_model_path, camera_hfov_deg=2 * np.degrees(np.arctan(384 / FX_PX)),
                 canopy_distance_m=CANOPY_M)
    try:
        send_frame(world, edges, T0)
        (detections,) = world.wait_for(f'{NODE}/detections', 1)
        (geo,) = world.wait_for(f'{NODE}/geo_detections', 1)
        check_leaf_positions(placed_findings(detections, geo))
    finally:
        stop(node)


def transform_msg(world: Any, parent: str, child: str, xyz: Any, xyzw: Any) -> Any:
    """Return a geometry_msgs/TransformStamped parent <- child."""
    transform = world.msg('geometry_msgs/msg/TransformStamped')(
        header=header(world, T0, parent), child_frame_id=child)
    translation, rotation = transform.transform.translation, transform.transform.rotation
    translation.x, translation.y, translation.z = (float(v) for v in xyz)
    rotation.x, rotation.y, rotation.z, rotation.w = (float(v) for v in xyzw)
    return transform


def test_mount_from_tf_takes_the_camera_rotation_from_the_tf_chain(world, tiny_model_path,
                                                                   edges):
    # the parameters say "looks right": TF (looks left) must win
    node = start(world, tiny_model_path, mount_from_tf=True, mount_yaw_deg=-90.0,
                 canopy_distance_m=CANOPY_M)
    try:
        world.deliver('/camera_info', camera_info_msg(world, T0))
        send_frame(world, edges, T0)  # before TF: at the camera, flagged, a warning
        (geo,) = world.wait_for(f'{NODE}/geo_detections', 1)
        utm = latlon_to_utm(LAT + 0.5e-5, LON)
        for det in geo.detections:
            position = det.bbox.center.position
            assert (position.x, position.y) == pytest.approx((utm.easting_m, utm.northing_m),
                                                             abs=1e-3)
        assert any("no transform base_link -> 'camera'" in t
                   for t in world.log_texts('warning'))
        # base_link -> camera_link (turned 90 deg left, 1 m up) -> camera (optical frame:
        # z forward, x right, y down; REP 103 / REP 105)
        half = float(np.sqrt(0.5))
        tf_static = world.msg('tf2_msgs/msg/TFMessage')(transforms=[
            transform_msg(world, 'base_link', 'camera_link', (0.2, 0.3, 1.0),
                          (0.0, 0.0, half, half)),
            transform_msg(world, 'camera_link', 'camera', (0.0, 0.0, 0.0),
                          (-0.5, 0.5, -0.5, 0.5))])
        world.deliver('/tf_static', tf_static)
        send_frame(world, edges, T0 + 10 * NS)  # fixes of its own (no interpolation across)
        (detections,) = world.wait_for(f'{NODE}/detections', 2)[1:]
        (geo,) = world.wait_for(f'{NODE}/geo_detections', 2)[1:]
        check_leaf_positions(placed_findings(detections, geo))
        assert any('camera mount from TF base_link -> camera' in t
                   for t in world.log_texts('info'))
    finally:
        stop(node)


# --- one UTM zone per run (geo/utm_zone.py) ------------------------------------------

ZONE_LAT, ZONE_WEST, ZONE_EAST = 45.0, 5.9999, 6.0001  # the 31/32 boundary is 6 E


def test_a_run_across_a_zone_boundary_stays_in_the_first_fixs_zone(
        world, tiny_model_path, mosaic):
    node = start(world, tiny_model_path)
    zone_topic = f'{NODE}/utm_zone'
    try:
        qos = world.publishers[zone_topic].qos  # latched: a late subscriber gets it
        durability = world.modules['rclpy.qos'].DurabilityPolicy
        assert qos.durability == durability.TRANSIENT_LOCAL and qos.depth == 1
        assert zone_topic not in world.published  # no fix yet, no zone
        assert diagnostics(world)[f'{NODE}: gps']['utm_epsg'] == 'n/a'
        positions = []
        for k, lon in enumerate((ZONE_WEST, ZONE_EAST)):
            stamp = T0 + 3 * k * NS  # 15.8 m in 3 s: a plausible speed
            for offset in (-NS // 5, NS // 5):
                world.deliver('/fix', fix_msg(world, stamp + offset, lat=ZONE_LAT, lon=lon))
            world.deliver('/image', image_msg(world, mosaic, stamp))
            geo = world.wait_for(f'{NODE}/geo_detections', k + 1)[-1]
            assert geo.header.frame_id == 'utm' and geo.detections
            positions.append(geo.detections[0].bbox.center.position)
        (zone,) = world.published[zone_topic]  # once, from the first valid fix
        assert zone.data == '31T'
        roundtrip(world, zone)
        west = latlon_to_utm(ZONE_LAT, ZONE_WEST, 31)
        east = latlon_to_utm(ZONE_LAT, ZONE_EAST, 31)  # zone 31, not its own 32
        assert (positions[0].x, positions[1].x) == pytest.approx(
            (west.easting_m, east.easting_m), abs=1e-3)
        assert positions[1].x - positions[0].x == pytest.approx(15.76, abs=0.01)
        gps = diagnostics(world)[f'{NODE}: gps']
        assert (gps['utm_zone'], gps['utm_epsg']) == ('31T', '32631')
        assert any('UTM zone 31T (EPSG:32631, north)' in t for t in world.log_texts('info'))
    finally:
        stop(node)


def test_odometry_gives_the_heading_and_depth_images_are_taken(world, tiny_model_path,
                                                               edges):
    node = start(world, tiny_model_path, heading_source='odometry', depth_enabled=True,
                 canopy_distance_m=CANOPY_M)
    try:
        world.deliver('/camera_info', camera_info_msg(world, T0))
        odometry = world.msg('nav_msgs/msg/Odometry')(header=header(world, T0, 'odom'))
        half = float(np.sqrt(0.5))
        odometry.pose.pose.orientation.z, odometry.pose.pose.orientation.w = half, half
        world.deliver('/odom', odometry)  # yaw 90 deg in ENU: north, as the fixes
        # the depth image says the canopy is 0.75 m away everywhere (16UC1 millimetres)
        depth = np.full((512, 768), 750, dtype=np.uint16)
        world.deliver('/depth', world.msg('sensor_msgs/msg/Image')(
            header=header(world, T0), height=512, width=768, encoding='16UC1',
            is_bigendian=0, step=768 * 2, data=depth.tobytes()))
        send_frame(world, edges, T0)
        (detections,) = world.wait_for(f'{NODE}/detections', 1)
        (geo,) = world.wait_for(f'{NODE}/geo_detections', 1)
        check_leaf_positions(placed_findings(detections, geo))
        report = node._locator.report()
        assert report['heading_sources'] == {'odometry': 1}
        assert set(report['placed']) == {'depth'}
    finally:
        stop(node)


def test_the_utm_zone_parameter_is_published_at_start_and_used(
        world, tiny_model_path, mosaic):
    node = start(world, tiny_model_path, utm_zone='32T', ground_positions=False)
    try:
        (zone,) = world.published[f'{NODE}/utm_zone']  # before any fix
        assert zone.data == '32T'
        send_frame(world, mosaic, T0)
        (geo,) = world.wait_for(f'{NODE}/geo_detections', 1)
        utm = latlon_to_utm(LAT + 0.5e-5, LON, 32)  # 7.3 E is zone 32 anyway: same point
        assert geo.detections[0].bbox.center.position.x == pytest.approx(utm.easting_m,
                                                                         abs=1e-3)
        assert len(world.published[f'{NODE}/utm_zone']) == 1
    finally:
        stop(node)


def test_a_malformed_utm_zone_stops_the_start(world, tiny_model_path):
    from leaf_disease_ros.perception.errors import ConfigError

    with pytest.raises(ConfigError, match="'utm_zone'.*'33S' is band S"):
        start(world, tiny_model_path, utm_zone='33s')
