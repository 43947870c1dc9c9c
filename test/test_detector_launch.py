"""
launch_testing test of launch/detector.launch.py and the detector node (needs ROS 2).

Starts the installed launch file with test topics, publishes a real leaf photo and two
GPS fixes bracketing its stamp, waits for ``~/detections`` and checks its header (the
image's) and its labels (those of ``~/label_info``); pauses the node through
``~/enable`` and checks that nothing more arrives, resumes it and checks detections
come back. After shutdown: exit code 0 (clean Ctrl-C), the ready line was logged, no
traceback.

Runs under ``colcon test --packages-select leaf_disease_ros`` (launch_testing's pytest
plugin) or ``launch_test test/test_detector_launch.py``; skipped where ROS 2 is absent.
"""

import os
import time
import unittest

import pytest

REASON = ('needs ROS 2 (rclpy, launch_testing, the built package): runs under colcon test '
          'on a ROS 2 Humble/Jazzy machine')
pytest.importorskip('rclpy', reason=REASON)
launch_testing = pytest.importorskip('launch_testing', reason=REASON)
pytestmark = pytest.mark.ros

NAMESPACE = 'leaf_test'
IMAGE_TOPIC = '/leaf_test/camera/image_raw'
FIX_TOPIC = '/leaf_test/gps/fix'
NODE = f'/{NAMESPACE}/detector_node'
CAMERA_FRAME = 'leaf_camera'
LEAVES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'leaves', 'esca')
START_TIMEOUT_S = 120.0
MESSAGE_TIMEOUT_S = 30.0
QUIET_S = 3.0


@pytest.mark.launch_test
def generate_test_description():
    """Return the launch description under test: the installed detector.launch.py."""
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    import launch_testing.actions

    launch_file = os.path.join(get_package_share_directory('leaf_disease_ros'), 'launch',
                               'detector.launch.py')
    detector = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(launch_file),
        launch_arguments={'namespace': NAMESPACE, 'image_topic': IMAGE_TOPIC,
                          'fix_topic': FIX_TOPIC, 'backend': 'onnxruntime'}.items())
    return LaunchDescription([detector, launch_testing.actions.ReadyToTest()])


class TestDetectorNode(unittest.TestCase):
    """Talk to the running node like a robot would."""

    @classmethod
    def setUpClass(cls):
        """Create the probe node."""
        import rclpy

        rclpy.init()
        cls.node = rclpy.create_node('leaf_test_probe')

    @classmethod
    def tearDownClass(cls):
        """Destroy the probe node."""
        import rclpy

        cls.node.destroy_node()
        rclpy.shutdown()

    def spin_for(self, seconds, until=None):
        """Spin the probe for ``seconds`` or until ``until()`` is true; return until()."""
        import rclpy

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rclpy.spin_once(self.node, timeout_sec=0.05)
            if until is not None and until():
                return True
        return bool(until and until())

    def test_detections_follow_images_and_stop_while_paused(self):
        """Publish image + fixes; check ~/detections; pause; check silence; resume."""
        import cv2
        from cv_bridge import CvBridge
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rclpy.time import Time
        from sensor_msgs.msg import Image, NavSatFix, NavSatStatus
        from std_srvs.srv import SetBool
        from vision_msgs.msg import Detection2DArray, LabelInfo

        node = self.node
        ready = self.spin_for(START_TIMEOUT_S, lambda: node.count_subscribers(IMAGE_TOPIC) > 0)
        self.assertTrue(ready, f'the detector did not subscribe to {IMAGE_TOPIC}')

        detections, labels, stamps = [], [], []
        node.create_subscription(Detection2DArray, f'{NODE}/detections', detections.append, 10)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(LabelInfo, f'{NODE}/label_info', labels.append, latched)
        fix_pub = node.create_publisher(NavSatFix, FIX_TOPIC, 10)
        image_pub = node.create_publisher(Image, IMAGE_TOPIC, 10)
        bridge = CvBridge()
        leaf = cv2.imread(os.path.join(LEAVES, sorted(os.listdir(LEAVES))[0]))
        self.assertIsNotNone(leaf)

        def publish_frame():
            now_ns = node.get_clock().now().nanoseconds
            for offset_ns in (-200_000_000, 200_000_000):
                fix = NavSatFix()
                fix.header.stamp = Time(nanoseconds=now_ns + offset_ns).to_msg()
                fix.header.frame_id = 'gps'
                fix.status.status = NavSatStatus.STATUS_FIX
                fix.status.service = NavSatStatus.SERVICE_GPS
                fix.latitude, fix.longitude, fix.altitude = 46.2, 7.3, 500.0
                fix_pub.publish(fix)
            image = bridge.cv2_to_imgmsg(leaf, encoding='bgr8')
            image.header.stamp = Time(nanoseconds=now_ns).to_msg()
            image.header.frame_id = CAMERA_FRAME
            image_pub.publish(image)
            stamps.append((image.header.stamp.sec, image.header.stamp.nanosec))

        def publish_until_detection():
            deadline = time.monotonic() + MESSAGE_TIMEOUT_S
            while time.monotonic() < deadline and not detections:
                publish_frame()
                self.spin_for(0.3, lambda: bool(detections))
            return bool(detections)

        self.assertTrue(publish_until_detection(), 'no ~/detections after publishing images')
        self.assertTrue(self.spin_for(MESSAGE_TIMEOUT_S, lambda: bool(labels)),
                        'no ~/label_info')
        names = {item.class_name for item in labels[-1].class_map}
        array = detections[0]
        self.assertIn((array.header.stamp.sec, array.header.stamp.nanosec), stamps)
        self.assertEqual(array.header.frame_id, CAMERA_FRAME)
        self.assertGreaterEqual(len(array.detections), 1, 'a leaf photo gave no tile')
        for detection in array.detections:
            self.assertEqual(detection.header.frame_id, CAMERA_FRAME)
            self.assertTrue(detection.results)
            for result in detection.results:
                self.assertIn(result.hypothesis.class_id, names)
                self.assertTrue(0.0 <= result.hypothesis.score <= 1.0)

        client = node.create_client(SetBool, f'{NODE}/enable')
        self.assertTrue(client.wait_for_service(timeout_sec=10.0))

        def call_enable(data):
            future = client.call_async(SetBool.Request(data=data))
            self.assertTrue(self.spin_for(10.0, future.done), '~/enable did not answer')
            self.assertTrue(future.result().success)

        call_enable(False)
        self.spin_for(1.0)  # messages published before the reply may still be in flight
        detections.clear()
        for _ in range(10):
            publish_frame()
            self.spin_for(0.2)
        self.spin_for(QUIET_S)
        self.assertEqual(detections, [], 'detections arrived while paused')

        call_enable(True)
        self.assertTrue(publish_until_detection(), 'no ~/detections after resuming')


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    """The node stops cleanly on the launch's SIGINT."""

    def test_exit_code_is_zero(self, proc_info):
        """Ctrl-C (SIGINT) ends the node with exit code 0."""
        import launch_testing.asserts

        launch_testing.asserts.assertExitCodes(proc_info)

    def test_ready_line_logged_and_no_traceback(self, proc_output):
        """The node logged its ready line and never a traceback."""
        text = ''.join(output.text.decode(errors='replace') for output in proc_output)
        self.assertIn('detector ready: model ', text)
        self.assertNotIn('Traceback', text)
