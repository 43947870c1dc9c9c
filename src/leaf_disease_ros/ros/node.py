"""
The rclpy nodes ``detector_node`` and ``detector_lifecycle_node``: the only rclpy importer.

A thin adapter around the core: it declares the parameter table, loads and warms up
the backend, subscribes, converts messages, calls the pipeline and publishes. Every
rule that can be tested without ROS lives in core (parameter review, mailbox, rate
limits, time jumps, statistics and status levels, debug drawing, operator messages).

Start, in this order (a failure is logged with its fix and the process exits 1):

0. before this module is imported, ``ros/entry_point.py`` checks NumPy against the
   ROS distribution (Humble's compiled modules need NumPy 1.x);
1. declare every parameter of ``perception/config.py`` with its descriptor; validate;
2. check cv_bridge (one conversion: catches the NumPy 2 / Humble mismatch);
3. load the backend (``inference/factory.py``) and run one warm-up frame;
4. publishers, the ``~/enable`` service, the live map (``live_map_dir``), the worker
   thread, timers;
5. subscribe to ``fix`` and ``image`` (or ``image/compressed``), and, for the camera
   geometry that places each finding at its leaf (``ground_positions``,
   ``geo/leaf_position.py``): ``camera_info`` beside the image (image_transport's
   pairing, or ``camera_info_topic``), ``odom`` or ``imu`` (``heading_source``),
   ``depth`` (``depth_enabled``), and TF (``mount_from_tf``: ``mount_tf_base_frame``
   -> the image's frame_id, looked up in the worker until found); log ``detector ready:``.

Steps 1-4 less the declaration are ``_configure``, step 5 with the label info and the
timers ``_activate``; the plain node runs both at start. The managed node
(:class:`DetectorLifecycleNode`) declares at start and runs them on configure and
activate; ``_deactivate`` and ``_release`` undo them (see docs/robot.md "Lifecycle").

Threads: a MultiThreadedExecutor runs the image callback, the fix callback and the
control callbacks (service, timers) in separate callback groups. The image callback
only puts the message into a one-slot mailbox; a decode thread (``ros/decode_stage.py``)
takes the newest message and converts it (raw images with cv_bridge to bgr8,
compressed ones with ``cv2.imdecode``, see ``ros/image_input.py``) while the worker
thread runs the pipeline on the previous frame and publishes it: one stage deep (the
next message is decoded once the worker has taken the last), so the accelerator does
not wait on the CPU's decode, GPS keeps flowing while a batch runs, and frames
replaced in the mailbox are counted as dropped. A pause or deactivate discards the
waiting message, the decoded frame and the one being decoded. A bad frame is
counted, logged (throttled) and dropped; so is a frame whose messages cannot be built
or published (a position outside UTM, a publisher failing): no exception from the
publishing path ends the worker. A bug anywhere else in the worker (or in the
decoding) stops the node with the traceback and exit code 1 rather than leaving it
silent.

Time: every output copies the input image header; latency is the node clock minus
the image stamp, so ``use_sim_time`` with ``ros2 bag play --clock`` works; stamps
jumping back by more than a few seconds (a bag that loops) clear the fix buffer.
"""

import sys
import threading
import time
import traceback
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType, SetParametersResult)
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
import rclpy.time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, Imu, NavSatFix
from std_msgs.msg import Header, String
from std_srvs.srv import SetBool
from vision_msgs.msg import Detection2DArray, Detection3DArray, LabelInfo

from leaf_disease_ros.geo.camera_geometry import CameraGeometryError
from leaf_disease_ros.geo.evidence import EvidenceTracker
from leaf_disease_ros.geo.geotag import FixBuffer
from leaf_disease_ros.geo.leaf_position import LeafLocator, LocatorSettings
from leaf_disease_ros.geo.utm_zone import parse_utm_zone, RunZone, UtmZone
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.config import (BOOL, DetectorConfig, DOUBLE, DOUBLE_ARRAY, INT,
                                                PARAMETERS, STRING, validate_parameters)
from leaf_disease_ros.perception.errors import (ConfigError, FrameError, InferenceError,
                                                LeafDiseaseError)
from leaf_disease_ros.perception.pipeline import Detector, FrameResult, PreparedFrame
from leaf_disease_ros.perception.reduced_decode import try_reduced_decode
from leaf_disease_ros.perception.site_model import site_for_parameters, stale_site_note
from leaf_disease_ros.ros.camera_inputs import (apply_camera_info, camera_info_topic,
                                                depth_metres, imu_yaw, mount_from_transform,
                                                odometry_yaw)
from leaf_disease_ros.ros.conversions import (MessageTypes, navsatfix_to_fix, stamp_to_ns,
                                              to_detection2d_array, to_detection3d_array,
                                              to_diagnostic_array, to_geotag_fix, to_label_info)
from leaf_disease_ros.ros.debug_image import draw_detections
from leaf_disease_ros.ros.decode_stage import Decoded, DecodeStage
from leaf_disease_ros.ros.diagnostics import (DetectorStats, DetectorThresholds, domain_report,
                                              domain_verdict, DomainRule, DomainWindow, GpsStats,
                                              holds_findings)
from leaf_disease_ros.ros.image_input import check_decoded, check_raw_layout, decode_compressed
from leaf_disease_ros.ros.live_map import LiveMap
from leaf_disease_ros.ros.messages import (COMPRESSED_IMAGE_TYPE, cv_bridge_failure_message,
                                           EndpointQos, IMAGE_TYPE, no_image_message,
                                           NODE_NAME, ready_message, start_failure_message,
                                           time_jump_message, unsupported_encoding_message)
from leaf_disease_ros.ros.params import (check_overrides, descriptor_fields, EFFECT_DEBUG_RATE,
                                         EFFECT_DETECTOR, EFFECT_LABEL_INFO, EFFECT_REPLAY_ONLY,
                                         from_ros_value, live_effects, review_changes,
                                         ros_default, type_hint)
from leaf_disease_ros.ros.timekeeping import BackwardJumpDetector, RateLimiter

WORKER_POLL_S = 0.2
WORKER_JOIN_S = 10.0
LOG_THROTTLE_S = 5.0
FIX_QOS_DEPTH = 10
OUTPUT_QOS_DEPTH = 10
EXECUTOR_THREADS = 4

_ROS_TYPES = {
    BOOL: ParameterType.PARAMETER_BOOL,
    INT: ParameterType.PARAMETER_INTEGER,
    DOUBLE: ParameterType.PARAMETER_DOUBLE,
    STRING: ParameterType.PARAMETER_STRING,
    DOUBLE_ARRAY: ParameterType.PARAMETER_DOUBLE_ARRAY,
}
_RELIABILITY = {
    'best_effort': ReliabilityPolicy.BEST_EFFORT,
    'reliable': ReliabilityPolicy.RELIABLE,
}


def ros_message_types() -> MessageTypes:
    """Return the rclpy message classes (imports the ROS message packages)."""
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from geometry_msgs.msg import Point, Pose, PoseWithCovariance, Quaternion, Vector3
    from sensor_msgs.msg import NavSatFix, NavSatStatus
    from std_msgs.msg import Header
    from vision_msgs.msg import (BoundingBox2D, BoundingBox3D, Detection2D,
                                 Detection2DArray, Detection3D, Detection3DArray,
                                 LabelInfo, ObjectHypothesis, ObjectHypothesisWithPose,
                                 Point2D, VisionClass)
    from vision_msgs.msg import Pose2D as VisionPose2D

    return MessageTypes(
        Time=Time, Header=Header, NavSatFix=NavSatFix, NavSatStatus=NavSatStatus, Point=Point,
        Quaternion=Quaternion, Pose=Pose, PoseWithCovariance=PoseWithCovariance,
        Vector3=Vector3, Point2D=Point2D, VisionPose2D=VisionPose2D,
        BoundingBox2D=BoundingBox2D, BoundingBox3D=BoundingBox3D,
        ObjectHypothesis=ObjectHypothesis, ObjectHypothesisWithPose=ObjectHypothesisWithPose,
        Detection2D=Detection2D, Detection2DArray=Detection2DArray, Detection3D=Detection3D,
        Detection3DArray=Detection3DArray, VisionClass=VisionClass, LabelInfo=LabelInfo,
        KeyValue=KeyValue, DiagnosticStatus=DiagnosticStatus, DiagnosticArray=DiagnosticArray)


class RosEnvironmentError(LeafDiseaseError):
    """The ROS installation cannot serve the node (cv_bridge unusable)."""


class _Pending:
    """An image message waiting in the mailbox, with its stamp in nanoseconds."""

    __slots__ = ('msg', 'stamp_ns')

    def __init__(self, msg: Any, stamp_ns: int) -> None:
        self.msg = msg
        self.stamp_ns = stamp_ns


class _Frame:
    """
    A frame decoded and prepared on the decode thread (:meth:`DetectorNode._decode`).

    ``image`` is at ``1/pixel_scale`` of the camera's size (``reduced_jpeg_decode``);
    :meth:`full` decodes the message again at full size for the debug image.
    """

    __slots__ = ('image', 'pixel_scale', 'prepared', '_msg', '_full')

    def __init__(self, image: np.ndarray, pixel_scale: int, prepared: PreparedFrame,
                 msg: Any) -> None:
        self.image = image
        self.pixel_scale = pixel_scale
        self.prepared = prepared
        self._msg = msg
        self._full: Optional[np.ndarray] = image if pixel_scale == 1 else None

    def full(self) -> np.ndarray:
        """Return the frame at the camera's full size (decoded again when it was reduced)."""
        if self._full is None:
            self._full = decode_compressed(self._msg.format, self._msg.data)
        return self._full


def _policy_name(policy: Any) -> str:
    """Return a QoS policy enum as the lower-case name the parameters use."""
    return str(getattr(policy, 'name', policy)).lower()


def _make_bridge() -> Tuple[Any, Type[BaseException]]:
    """
    Return ``(CvBridge(), CvBridgeError)`` after one real conversion.

    cv_bridge's compiled module is loaded when cv_bridge is imported (Humble) or at
    the first conversion; doing both here makes a broken installation (Humble's
    cv_bridge with NumPy 2) fail at start, not in the first frame.

    :raises RosEnvironmentError: cv_bridge cannot be imported or cannot convert.
    """
    # A compiled module built against NumPy 1.x fails to import under NumPy 2 with
    # "AttributeError: _ARRAY_API not found" or an ImportError (SystemError from some
    # module initialisers); Humble's cv_bridge imports its module on import.
    broken_import = (ImportError, AttributeError, SystemError)
    try:
        import cv_bridge
    except broken_import as exc:
        raise RosEnvironmentError(cv_bridge_failure_message(str(exc), np.__version__)) from exc
    try:
        bridge = cv_bridge.CvBridge()
        probe = Image(height=1, width=1, encoding='rgb8', is_bigendian=0, step=3,
                      data=bytes((10, 20, 30)))
        converted = bridge.imgmsg_to_cv2(probe, desired_encoding='bgr8')
    except broken_import + (cv_bridge.CvBridgeError,) as exc:
        raise RosEnvironmentError(cv_bridge_failure_message(str(exc), np.__version__)) from exc
    if getattr(converted, 'shape', None) != (1, 1, 3) or converted.tolist() != [[[30, 20, 10]]]:
        raise RosEnvironmentError(cv_bridge_failure_message(
            f'converting rgb8 to bgr8 gave {converted!r}', np.__version__))
    return bridge, cv_bridge.CvBridgeError


class DetectorNode(Node):
    """Grapevine leaf disease detector: camera + GPS in, vision_msgs out."""

    def __init__(self, **kwargs: Any) -> None:
        """
        Start the node (parameters, cv_bridge, model, publishers, subscriptions).

        :raises LeafDiseaseError: a subclass naming what is wrong (ConfigError,
            ModelLoadError, ModelCardError, RosEnvironmentError, InferenceError); the
            node has released what it acquired.
        """
        super().__init__(NODE_NAME, **kwargs)
        self._closed = False
        self._closing = threading.Event()
        self._enabled = threading.Event()
        self._active = threading.Event()  # activated: frames are taken and published
        self._publish_lock = threading.Lock()
        # the newest message, decoded one frame ahead of inference (ros/decode_stage.py)
        self._mailbox: DecodeStage[_Pending, _Frame] = self._decode_stage()
        self._backend: Any = None
        self._worker: Optional[threading.Thread] = None
        self._live_map: Optional[LiveMap] = None
        # not _publishers/_subscriptions/_timers: rclpy's Node owns those names
        self._outputs: List[Any] = []
        self._inputs: List[Any] = []
        self._control_timers: List[Any] = []
        self._locator: Optional[LeafLocator] = None
        self._tf_buffer: Any = None
        self._tf_listener: Any = None
        self.fatal_error = ''
        try:
            self._declare_parameters()
            self._types = ros_message_types()
            self._image_group = MutuallyExclusiveCallbackGroup()
            self._fix_group = MutuallyExclusiveCallbackGroup()
            self._control_group = MutuallyExclusiveCallbackGroup()
            self._geometry_group = MutuallyExclusiveCallbackGroup()
            self.create_service(SetBool, '~/enable', self._on_enable,
                                callback_group=self._control_group)
            self._bring_up()
        except BaseException:
            self.close()
            self.destroy_node()
            raise

    # --- start: configure, then activate (a managed node waits to be told) -------

    def _bring_up(self) -> None:
        """Configure and activate at once: the plain node starts detecting."""
        self._configure()
        self._activate()

    def _configure(self) -> None:
        """Read the parameters, load the model and backend, create publishers and worker."""
        self._values = self._read_parameters()
        values = self._values
        self._bridge, self._bridge_error = _make_bridge()
        self._closing.clear()
        self._mailbox = self._decode_stage()

        self._backend = load_backend(
            values['model_path'], values['backend'], onnx_provider=values['onnx_provider'],
            intra_op_threads=values['onnx_intra_op_threads'], max_batch=values['max_batch'],
            warn=self.get_logger().warning)
        site = site_for_parameters(values, self._backend.card)
        if site is not None and stale_site_note(site):
            self.get_logger().warning(stale_site_note(site))
        self._detector = Detector(self._backend, self._backend.card,
                                  DetectorConfig.from_parameters(values), site=site)
        self._warmup_ms = self._warm_up()
        if values['ground_positions']:  # after the warm-up: its frame places nothing
            self._locator = LeafLocator(LocatorSettings.from_parameters(values))
            self._detector.locator = self._locator

        self._fixes = FixBuffer(values['fix_buffer_size'], values['max_fix_speed_mps'])
        self._fix_jump = BackwardJumpDetector()
        self._image_jump = BackwardJumpDetector()
        self._debug_limiter = RateLimiter(values['debug_image_rate_hz'])
        self._geo_frame_id = values['geo_frame_id']
        self._utm = RunZone(parse_utm_zone(values['utm_zone']), self._publish_utm_zone)
        self._evidence = EvidenceTracker(values['evidence_min_sightings'],
                                         values['evidence_window_frames'],
                                         values['evidence_radius_m'],
                                         values['position_gate_sigma'])
        if values['start_enabled']:
            self._enabled.set()
        else:
            self._enabled.clear()

        self._create_publishers()
        if values['live_map_dir']:
            self._live_map = LiveMap(values['live_map_dir'], values['merge_radius_m'], {
                'model': self._backend.card.name, 'model_id': self._backend.model_id,
                'node': self.get_fully_qualified_name()}, values['position_gate_sigma'])

        start_s = time.monotonic()
        self._stats = DetectorStats(start_s)
        self._gps = GpsStats(start_s)
        self._domain = DomainWindow(values['domain_window_tiles'],
                                    self._backend.card.background_labels)
        self._domain_rule = DomainRule.from_parameters(values)
        self.held_findings = 0  # findings held back by the domain check (never released)
        self._worker = threading.Thread(target=self._worker_main, name='leaf_detector_worker',
                                        daemon=True)
        self._worker.start()
        self._mailbox.start()
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _activate(self) -> None:
        """Let the worker publish, publish the label info, subscribe, start the timers."""
        values = self._values
        self._active.set()
        self._publish_label_info()
        if self._utm.zone is not None:  # the utm_zone parameter; else the first valid fix
            self._publish_utm_zone(self._utm.zone)
        self._subscribe(values)
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._diagnostics_timer = self.create_timer(
            values['diagnostics_period_s'], self._on_diagnostics,
            callback_group=self._control_group, clock=steady)
        self._no_image_timer = self.create_timer(
            values['no_image_warn_s'], self._on_no_image_check,
            callback_group=self._control_group, clock=steady)
        self._control_timers = [self._diagnostics_timer, self._no_image_timer]
        if self._live_map is not None:
            self._live_map_timer = self.create_timer(
                values['live_map_period_s'], self._on_live_map,
                callback_group=self._control_group, clock=steady)
            self._control_timers.append(self._live_map_timer)

        facts = self._backend.describe()
        self.get_logger().info(ready_message(
            model_id=self._backend.model_id, backend=str(facts.get('backend', '')),
            providers=list(facts.get('providers', [])), warmup_ms=self._warmup_ms,
            image_topic=self._image_topic, image_type=self._image_type,
            reliability=values['image_qos_reliability'], depth=values['image_qos_depth'],
            fix_topic=self._fix_topic,
            detections_topic=self.resolve_topic_name('~/detections')))
        if not self._enabled.is_set():
            self.get_logger().info(
                'detection is paused (start_enabled false): resume with ros2 service call '
                f"{self.resolve_service_name('~/enable')} std_srvs/srv/SetBool '{{data: true}}'")
        if self._live_map is not None:
            self.get_logger().info(
                f'live map: merged findings (radius {self._live_map.merge_radius_m:g} m) go '
                f"to {self._live_map.path} every {values['live_map_period_s']:g} s and at "
                'shutdown')

    def _declare_parameters(self) -> None:
        """Declare the parameter table with descriptors; refuse unknown overrides."""
        for spec in PARAMETERS:
            fields = descriptor_fields(spec)
            descriptor = ParameterDescriptor(
                name=spec.name, type=_ROS_TYPES[spec.type], description=fields.description,
                additional_constraints=fields.additional_constraints,
                read_only=fields.read_only, dynamic_typing=fields.dynamic_typing)
            if fields.integer_range is not None:
                descriptor.integer_range = [IntegerRange(
                    from_value=fields.integer_range[0], to_value=fields.integer_range[1],
                    step=0)]
            if fields.floating_point_range is not None:
                descriptor.floating_point_range = [FloatingPointRange(
                    from_value=fields.floating_point_range[0],
                    to_value=fields.floating_point_range[1], step=0.0)]
            try:
                self.declare_parameter(spec.name, ros_default(spec), descriptor)
            except InvalidParameterTypeException as exc:
                raise ConfigError(spec.name, f'{exc}; {type_hint(spec)}') from exc
            except InvalidParameterValueException as exc:
                raise ConfigError(spec.name, str(exc)) from exc
        # rclpy keeps the overrides it was given (params file, -p) in this attribute, the
        # one declare_parameters() reads (rclpy/node.py on humble, jazzy and rolling; no
        # public getter exists). ROS ignores overrides that name no declared parameter:
        # a typo is an error here.
        overrides = getattr(self, '_parameter_overrides', None) or {}
        check_overrides(list(overrides))

    def _read_parameters(self) -> Dict[str, Any]:
        """Return the validated values of the parameters now (a managed node: at configure)."""
        return validate_parameters({spec.name: from_ros_value(self.get_parameter(spec.name).value)
                                    for spec in PARAMETERS})

    def _warm_up(self) -> float:
        """Run one frame through the whole pipeline; return its duration in ms."""
        height, width = self._backend.card.input_hw_px
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[:] = (40, 160, 40)  # BGR leaf green: passes the vegetation gate
        start = time.perf_counter()
        self._detector.process(frame, 0, None)
        return (time.perf_counter() - start) * 1e3

    def _create_publishers(self) -> None:
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=OUTPUT_QOS_DEPTH,
                              reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.VOLATILE)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        # images for people, often over Wi-Fi: best effort, as camera drivers publish
        # (rqt_image_view subscribes with the sensor-data profile, best effort)
        debug = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                           reliability=ReliabilityPolicy.BEST_EFFORT,
                           durability=DurabilityPolicy.VOLATILE)
        create = self._create_output
        self._pub_detections = create(Detection2DArray, '~/detections', reliable)
        self._pub_fix = create(NavSatFix, '~/detections/fix', reliable)
        self._pub_geo = create(Detection3DArray, '~/geo_detections', reliable)
        self._pub_labels = create(LabelInfo, '~/label_info', latched)
        self._pub_utm_zone = create(String, '~/utm_zone', latched)
        self._pub_debug = create(Image, '~/debug_image', debug)
        self._pub_diagnostics = create(DiagnosticArray, '/diagnostics', reliable)
        self._outputs = [self._pub_detections, self._pub_fix, self._pub_geo, self._pub_labels,
                         self._pub_utm_zone, self._pub_debug, self._pub_diagnostics]

    def _create_output(self, msg_type: Any, topic: str, qos: QoSProfile) -> Any:
        """Return a publisher of an output (the managed node's are lifecycle publishers)."""
        return self.create_publisher(msg_type, topic, qos)

    def _subscribe(self, values: Dict[str, Any]) -> None:
        fix_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=FIX_QOS_DEPTH,
                             reliability=ReliabilityPolicy.BEST_EFFORT,
                             durability=DurabilityPolicy.VOLATILE)
        fix_subscription = self.create_subscription(NavSatFix, 'fix', self._on_fix, fix_qos,
                                                    callback_group=self._fix_group)
        self._fix_topic = self.resolve_topic_name('fix')
        image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST,
                               depth=values['image_qos_depth'],
                               reliability=_RELIABILITY[values['image_qos_reliability']],
                               durability=DurabilityPolicy.VOLATILE)
        if values['image_transport'] == 'compressed':
            name, msg_type, self._image_type = 'image/compressed', CompressedImage, \
                COMPRESSED_IMAGE_TYPE
        else:
            name, msg_type, self._image_type = 'image', Image, IMAGE_TYPE
        image_subscription = self.create_subscription(msg_type, name, self._on_image, image_qos,
                                                      callback_group=self._image_group)
        self._image_topic = self.resolve_topic_name(name)
        self._inputs = [fix_subscription, image_subscription]
        if self._locator is not None:
            self._inputs += self._subscribe_geometry(values, image_qos)

    def _subscribe_geometry(self, values: Dict[str, Any], image_qos: QoSProfile) -> List[Any]:
        """Subscribe to what places findings: camera_info, odom / imu, depth; TF."""
        group = self._geometry_group
        info_topic = values['camera_info_topic'] or camera_info_topic(self._image_topic)
        inputs = [self.create_subscription(CameraInfo, info_topic, self._on_camera_info,
                                           image_qos, callback_group=group)]
        self._camera_info_topic = self.resolve_topic_name(info_topic)
        sensor_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=FIX_QOS_DEPTH,
                                reliability=ReliabilityPolicy.BEST_EFFORT,
                                durability=DurabilityPolicy.VOLATILE)
        if values['heading_source'] == 'odometry':
            from nav_msgs.msg import Odometry  # only with heading_source odometry
            inputs.append(self.create_subscription(Odometry, 'odom', self._on_odometry,
                                                   sensor_qos, callback_group=group))
        elif values['heading_source'] == 'imu':
            inputs.append(self.create_subscription(Imu, 'imu', self._on_imu, sensor_qos,
                                                   callback_group=group))
        if values['depth_enabled']:
            inputs.append(self.create_subscription(Image, 'depth', self._on_depth, image_qos,
                                                   callback_group=group))
        if values['mount_from_tf'] and self._tf_buffer is None:  # once: it outlives activate
            from tf2_ros.buffer import Buffer  # only with mount_from_tf
            from tf2_ros.transform_listener import TransformListener
            self._tf_buffer = Buffer(node=self)
            self._tf_listener = TransformListener(self._tf_buffer, self)
        self.get_logger().info(
            f'ground positions: camera_info on {self._camera_info_topic} (until it arrives: '
            f"camera_hfov_deg {values['camera_hfov_deg']:g}), heading from "
            f"{values['heading_source']}, mount from "
            + (f"TF {values['mount_tf_base_frame']} -> the image's frame_id"
               if values['mount_from_tf'] else 'the mount_* parameters'))
        return inputs

    # --- callbacks (executor threads) ---------------------------------------------

    def _on_image(self, msg: Any) -> None:
        """Queue the newest image for the worker (no conversion here)."""
        self._stats.image_received(time.monotonic())
        stamp_ns = stamp_to_ns(msg.header.stamp)
        jump_s = self._image_jump.update(stamp_ns)
        if jump_s is not None:
            self._forget_fixes('image', jump_s)
        if not self._detecting():
            self._stats.frame_ignored()
            return
        self._mailbox.put(_Pending(msg, stamp_ns))

    def _detecting(self) -> bool:
        """Return whether frames are detected: activated and not paused by ~/enable."""
        return self._active.is_set() and self._enabled.is_set()

    def _on_fix(self, msg: NavSatFix) -> None:
        """Add a fix to the buffer (it validates: rejected fixes are counted, not stored)."""
        fix = navsatfix_to_fix(msg)
        jump_s = self._fix_jump.update(fix.stamp_ns)
        if jump_s is not None:
            self._forget_fixes('fix', jump_s)
        admission = self._fixes.admit(fix)
        self._utm.observe_fix(admission.fix)  # the run's UTM zone: the first valid fix's
        outcome = admission.outcome
        self._gps.fix_received(time.monotonic(), outcome, fix.status)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        """Give the camera model to the locator; log when the source in use changes."""
        locator = self._locator
        if locator is None:
            return
        before = locator.camera_source
        try:
            source = apply_camera_info(locator, msg)
        except CameraGeometryError as exc:
            self.get_logger().warning(f'camera_info on {self._camera_info_topic} not used: '
                                      f'{exc}', throttle_duration_sec=60.0)
            return
        if source != before:
            self.get_logger().info(f'ground positions: camera model {source}')

    def _on_odometry(self, msg: Any) -> None:
        """Keep the robot's yaw of a nav_msgs/Odometry."""
        if self._locator is not None:
            stamp_ns, yaw_rad, sigma_rad = odometry_yaw(msg)
            self._locator.add_heading(stamp_ns, yaw_rad, sigma_rad, 'odometry')

    def _on_imu(self, msg: Imu) -> None:
        """Keep the robot's yaw of a sensor_msgs/Imu (one without orientation: none)."""
        sample = imu_yaw(msg)
        if self._locator is not None and sample is not None:
            self._locator.add_heading(sample[0], sample[1], sample[2], 'imu')

    def _on_depth(self, msg: Image) -> None:
        """Keep an aligned depth image; a bad one is logged (throttled) and ignored."""
        if self._locator is None:
            return
        try:
            self._locator.add_depth(stamp_to_ns(msg.header.stamp), depth_metres(msg))
        except CameraGeometryError as exc:
            self.get_logger().warning(f'depth image not used: {exc}',
                                      throttle_duration_sec=LOG_THROTTLE_S)

    def _mount_from_tf(self, locator: LeafLocator, frame_id: str) -> None:
        """Look the mount up in TF (worker thread) until it is found; never blocks."""
        from tf2_ros import TransformException

        base = self._values['mount_tf_base_frame']
        try:
            transform = self._tf_buffer.lookup_transform(base, frame_id, rclpy.time.Time())
            mount = mount_from_transform(transform)
        except (TransformException, CameraGeometryError) as exc:
            self.get_logger().warning(
                f'mount_from_tf: no transform {base} -> {frame_id!r} yet ({exc}); findings '
                'stay at the camera position until TF has it (or set mount_from_tf false '
                'and the mount_* parameters)', throttle_duration_sec=LOG_THROTTLE_S)
            return
        locator.set_mount(mount)
        self.get_logger().info(f'mount_from_tf: camera mount from TF {base} -> {frame_id}')

    def _forget_fixes(self, stream: str, jump_s: float) -> None:
        text = time_jump_message(stream, jump_s)
        self._fixes.clear()
        if self._locator is not None:
            self._locator.clear()
        self._gps.buffer_cleared(text)
        self._debug_limiter.reset()
        self.get_logger().warning(text)

    def _on_enable(self, request: SetBool.Request,
                   response: SetBool.Response) -> SetBool.Response:
        """Pause or resume detection; subscriptions stay, paused frames are ignored."""
        with self._publish_lock:  # no publication after the reply to a pause
            if request.data:
                self._enabled.set()
            else:
                self._enabled.clear()
                self._mailbox.clear()
        response.success = True
        response.message = ('detection resumed' if request.data else
                            'detection paused: subscriptions stay, frames are ignored')
        if not self._active.is_set():  # a managed node, not active: applies once activated
            response.message += (' (the node is not active: this applies once it is '
                                 'activated)')
        self.get_logger().info(response.message)
        return response

    def _on_set_parameters(self, parameters: List[Parameter]) -> SetParametersResult:
        """Accept or reject a live change; apply the accepted one."""
        review = review_changes([(p.name, p.value) for p in parameters], self._values)
        if not review.successful:
            self.get_logger().warning(f'parameter change rejected: {review.reason}')
            return SetParametersResult(successful=False, reason=review.reason)
        if review.updates:
            self._apply(review.updates)
        return SetParametersResult(successful=True, reason='')

    def _apply(self, updates: Mapping[str, Any]) -> None:
        values = dict(self._values)
        values.update(updates)
        effects = live_effects(updates)
        if EFFECT_DETECTOR in effects:
            self._detector.update_config(DetectorConfig.from_parameters(values))
        if EFFECT_DEBUG_RATE in effects:
            self._debug_limiter.set_rate(values['debug_image_rate_hz'])
        self._values = values  # diagnostics thresholds are read from here
        self._domain_rule = DomainRule.from_parameters(values)
        if EFFECT_LABEL_INFO in effects:
            self._publish_label_info()
        changed = ', '.join(f'{name}={value!r}' for name, value in sorted(updates.items()))
        note = (' (used by the replay; a live map keeps the radius it started with)'
                if effects == {EFFECT_REPLAY_ONLY} else '')
        self.get_logger().info(f'parameters changed: {changed}{note}')

    def _on_no_image_check(self) -> None:
        """Warn once, with the likely cause, when no image arrived in no_image_warn_s."""
        self._no_image_timer.cancel()
        if self._stats.received:
            return
        publishers = [
            EndpointQos(node=f"{info.node_namespace.rstrip('/')}/{info.node_name}",
                        topic_type=info.topic_type,
                        reliability=_policy_name(info.qos_profile.reliability),
                        durability=_policy_name(info.qos_profile.durability))
            for info in self.get_publishers_info_by_topic(self._image_topic)]
        self.get_logger().warning(no_image_message(
            topic=self._image_topic, image_type=self._image_type,
            reliability=self._values['image_qos_reliability'],
            depth=self._values['image_qos_depth'],
            waited_s=self._values['no_image_warn_s'], publishers=publishers))

    def _on_diagnostics(self) -> None:
        now_s = time.monotonic()
        now = self.get_clock().now()
        values = self._values
        prefix = f"{self.get_namespace().rstrip('/')}/{self.get_name()}"
        facts = self._backend.describe()
        reports = [
            self._stats.report(
                now_s, name=f'{prefix}: detector', hardware_id=self._backend.model_id,
                enabled=self._enabled.is_set(), image_topic=self._image_topic,
                backend=str(facts.get('backend', '')), model_id=self._backend.model_id,
                dropped=self._mailbox.dropped,
                thresholds=DetectorThresholds(values['no_image_warn_s'],
                                              values['latency_budget_ms'])),
            self._gps.report(
                now_s, now.nanoseconds, self._fixes.newest(), name=f'{prefix}: gps',
                hardware_id=self._fix_topic, fix_topic=self._fix_topic,
                no_fix_warn_s=values['no_fix_warn_s'], buffer_len=len(self._fixes),
                utm_zone=self._utm.zone),
            domain_report(self._domain.shares(), name=f'{prefix}: domain',
                          hardware_id=self._backend.model_id, rule=self._domain_rule,
                          held_findings=self.held_findings),
        ]
        header = Header(stamp=now.to_msg(), frame_id='')
        self._pub_diagnostics.publish(to_diagnostic_array(reports, header, self._types))

    def _on_live_map(self) -> None:
        """Rewrite findings.geojson when the merged findings changed (control thread)."""
        self._write_live_map()

    def _write_live_map(self) -> None:
        live_map = self._live_map
        if live_map is None:
            return
        try:
            live_map.write()
        except OSError as exc:
            self.get_logger().warning(f'live map: cannot write {live_map.path}: {exc}; the '
                                      'previous file stays', throttle_duration_sec=60.0)

    def _publish_utm_zone(self, zone: UtmZone) -> None:
        self._pub_utm_zone.publish(String(data=zone.name))
        self.get_logger().info(f'~/geo_detections are in UTM zone {zone.describe()} for this run')

    def _publish_label_info(self) -> None:
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id='')
        self._pub_labels.publish(to_label_info(self._backend.card, header, self._types,
                                               self._detector.unknown_threshold()))

    # --- worker thread -----------------------------------------------------------

    def _decode_stage(self) -> DecodeStage[_Pending, _Frame]:
        """Return a decode stage (not started) that converts with :meth:`_decode`."""
        return DecodeStage(lambda pending: self._decode(pending.msg))

    def _worker_main(self) -> None:
        """Process the newest decoded frame until the stage closes; a bug stops the node."""
        try:
            while True:
                decoded = self._mailbox.take(WORKER_POLL_S)
                if decoded is None:
                    if self._mailbox.closed:
                        return
                    continue
                self._handle_frame(decoded)
        except Exception:  # last resort: a bug must stop the node loudly, not silently
            if self._closing.is_set() or not self.context.ok():
                return  # shutting down: publishers may already be gone
            self.fatal_error = traceback.format_exc()
            self.get_logger().fatal('the detector worker thread failed (a bug: please report '
                                    'it with this traceback); stopping the node\n'
                                    + self.fatal_error)
            rclpy.try_shutdown(context=self.context)

    def _decode(self, msg: Any) -> _Frame:
        """
        Convert an image message to BGR and prepare it for inference (on the decode thread).

        Compressed images are decoded with ``cv2.imdecode`` (any JPEG/PNG to 8-bit BGR;
        cv_bridge would hand a mono JPEG back 2-D), at reduced size when
        ``reduced_jpeg_decode`` allows it (``perception/reduced_decode.py``); raw ones
        with cv_bridge. The frame is then tiled, gated and preprocessed here
        (:meth:`~leaf_disease_ros.perception.pipeline.Detector.prepare`), so the worker
        only runs inference: the accelerator does not wait on the CPU for any of it.

        :raises ImageDecodeError: malformed message or undecodable data.
        :raises CvBridgeError: cv_bridge cannot convert the encoding to bgr8.
        :raises FrameError: the frame cannot be tiled (too small).
        """
        detector = self._detector
        if isinstance(msg, CompressedImage):
            reduced = (try_reduced_decode(msg.data, detector.config, detector.card)
                       if self._values['reduced_jpeg_decode'] else None)
            image, scale = reduced if reduced is not None else (
                decode_compressed(msg.format, msg.data), 1)
        else:
            check_raw_layout(msg.height, msg.width, msg.step, len(msg.data), msg.encoding)
            image = check_decoded(self._bridge.imgmsg_to_cv2(msg, desired_encoding='bgr8'),
                                  f'image (encoding {msg.encoding!r})')
            scale = 1
        return _Frame(image, scale, detector.prepare(image, pixel_scale=scale), msg)

    def _handle_frame(self, decoded: Decoded[_Pending, _Frame]) -> None:
        """Classify and publish one decoded frame; a bad frame is counted and dropped."""
        pending = decoded.message
        msg = pending.msg
        locator = self._locator
        if self._tf_buffer is not None and locator is not None and locator.mount is None:
            self._mount_from_tf(locator, msg.header.frame_id)
        try:
            frame = decoded.result()  # raises what the decoding raised
            result = self._detector.process_prepared(frame.prepared, pending.stamp_ns,
                                                     self._fixes)
        except self._bridge_error as exc:
            encoding = msg.format if isinstance(msg, CompressedImage) else msg.encoding
            text = unsupported_encoding_message(encoding, str(exc))
            self._stats.unsupported_encoding(time.monotonic(), encoding, text)
            self.get_logger().warning(text, throttle_duration_sec=LOG_THROTTLE_S)
            return
        except (FrameError, InferenceError) as exc:
            self._stats.frame_failed(time.monotonic(), str(exc))
            self.get_logger().warning(f'frame dropped: {exc}',
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return
        with self._publish_lock:  # deactivate and ~/enable take it: no frame after them
            if not self._detecting():
                self._stats.frame_ignored()
                return
            # the domain check judges with this frame in its window, before publishing
            self._domain.add_frame(result)
            rule = self._domain_rule
            held = holds_findings(domain_verdict(self._domain.shares(), rule), rule)
            if not self._publish_frame(msg.header, frame, result, held):
                return
            latency_ms = (self.get_clock().now().nanoseconds - pending.stamp_ns) / 1e6
        self._stats.frame_processed(time.monotonic(), latency_ms, result.timings_ms['total'])

    def _publish_frame(self, header: Header, frame: _Frame, result: FrameResult,
                       held: bool = False) -> bool:
        """
        Build every output message of a frame, then publish them; return whether it worked.

        ``held``: the domain check holds this frame's findings back: ``~/geo_detections``
        gets an empty array, the live map and the evidence nothing (never released).

        Nothing from here may end the worker: the messages are built first (a position
        the conversions reject, say a latitude outside UTM, publishes nothing), then
        published; any failure drops the frame and counts it as failed.
        """
        types = self._types
        stage = 'cannot build its messages'
        try:
            outputs = [
                (self._pub_detections, to_detection2d_array(result, header, types)),
                (self._pub_fix, to_geotag_fix(result, header, types)),
                (self._pub_geo, to_detection3d_array(result, header, self._geo_frame_id,
                                                     types, self._evidence.update(result, held),
                                                     zone=self._utm)),
            ]
            if (self._pub_debug.get_subscription_count() > 0
                    and self._debug_limiter.allow(result.stamp_ns)):
                status = (f'{len(result.findings)} finding(s); GPS: {result.geotag.reason}; '
                          f'{result.timings_ms["total"]:.0f} ms')
                debug = self._bridge.cv2_to_imgmsg(draw_detections(frame.full(),
                                                                   result.detections, status),
                                                   encoding='bgr8')
                debug.header = header
                outputs.append((self._pub_debug, debug))
            stage = 'publishing failed'
            for publisher, message in outputs:
                publisher.publish(message)
            if held:
                self.held_findings += len(result.findings)
            elif self._live_map is not None:
                stage = 'the live map failed'
                self._live_map.add(result)
        except Exception as exc:  # the publishing path must never end the worker
            if self._closing.is_set():
                return False  # shutting down: publishers may already be gone
            text = f'frame dropped: {stage}: {type(exc).__name__}: {exc}'
            self._stats.frame_failed(time.monotonic(), text)
            self.get_logger().warning(text, throttle_duration_sec=LOG_THROTTLE_S)
            return False
        return True

    # --- shutdown ----------------------------------------------------------------

    def _deactivate(self) -> None:
        """
        Stop detecting: no frame is published after this returns; unsubscribe, stop timers.

        A frame being published holds the publish lock and is finished first; a frame
        still being classified finds the node inactive and is dropped (counted as
        ignored); one waiting, decoded or being decoded is discarded by the decode stage.
        Safe to call when not active.
        """
        with self._publish_lock:
            self._active.clear()
            self._mailbox.clear()
        for subscription in self._inputs:  # rclpy has no managed subscriptions
            self.destroy_subscription(subscription)
        for timer in self._control_timers:
            self.destroy_timer(timer)
        self._inputs, self._control_timers = [], []
        self._write_live_map()

    def _release(self) -> None:
        """Stop the worker thread, free the backend (engine, buffers), write the live map."""
        self._active.clear()
        self._closing.set()
        self._mailbox.close()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(WORKER_JOIN_S)
            if self._worker.is_alive():
                self.get_logger().warning(f'the worker thread did not stop within '
                                          f'{WORKER_JOIN_S:.0f} s (inference still running)')
        self._worker = None
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        self._write_live_map()  # the last findings, after the worker stopped
        self._live_map = None

    def close(self) -> None:
        """Stop the worker thread and release the backend; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._release()


class DetectorLifecycleNode(LifecycleNodeMixin, DetectorNode):
    """
    The detector as a managed (lifecycle) node: ``detector_lifecycle_node``.

    Built as rclpy builds ``rclpy.lifecycle.LifecycleNode`` (``LifecycleNodeMixin`` +
    a Node; rclpy/lifecycle/node.py, humble and jazzy alike), over the plain node's
    parts. It starts unconfigured with its parameters declared and ``~/enable``
    offered; then:

    - configure: read and validate the parameters, load the model and backend (warmed
      up), create the (lifecycle) publishers and the worker thread. A failure logs the
      reason with its fix, releases what was acquired and returns FAILURE (the node
      stays unconfigured);
    - activate: activate the publishers (``super().on_activate`` activates rclpy's
      managed entities), publish the label info, subscribe, start the timers;
    - deactivate: no frame is published after it (see ``DetectorNode._deactivate``),
      destroy the subscriptions (rclpy has no managed subscriptions) and timers;
    - cleanup: stop the worker, free the backend, destroy the publishers;
    - shutdown (from unconfigured, inactive or active) and error processing: all of it.

    ``~/enable`` is the operator's pause inside the active state: it neither activates
    nor deactivates; deactivate and activate keep its setting; configure resets it to
    ``start_enabled``.
    """

    def __init__(self, **kwargs: Any) -> None:
        """Create the node unconfigured (parameters declared, ``~/enable`` offered)."""
        DetectorNode.__init__(self, **kwargs)
        LifecycleNodeMixin.__init__(self)
        self._watching_parameters = False
        self.get_logger().info(
            f'{self.get_fully_qualified_name()} is unconfigured: waiting for a lifecycle '
            f'manager or ros2 lifecycle set {self.get_fully_qualified_name()} configure')

    def _bring_up(self) -> None:
        """Do nothing: a lifecycle manager configures and activates the node."""

    def _create_output(self, msg_type: Any, topic: str, qos: QoSProfile) -> Any:
        return self.create_lifecycle_publisher(msg_type, topic, qos)

    def _unconfigure(self) -> None:
        """Undo configure: the worker, the backend, the publishers, the parameter callback."""
        self._release()
        for publisher in self._outputs:
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = []
        if self._watching_parameters:
            self.remove_on_set_parameters_callback(self._on_set_parameters)
            self._watching_parameters = False

    def _failed(self, transition: str) -> TransitionCallbackReturn:
        """Log a bug in a transition with its traceback; return ERROR (on_error follows)."""
        self.get_logger().error(f'{transition} failed (a bug: please report it with this '
                                f'traceback)\n{traceback.format_exc()}')
        return TransitionCallbackReturn.ERROR

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model and backend; FAILURE with the reason logged when it cannot."""
        try:
            self._configure()
            self._watching_parameters = True
        except LeafDiseaseError as exc:
            self.get_logger().error(f'configure failed, the node stays unconfigured: '
                                    f'{start_failure_message(exc)}')
            self._unconfigure()
            return TransitionCallbackReturn.FAILURE
        except Exception:
            return self._failed('configure')
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Activate the publishers, then subscribe and detect."""
        result = super().on_activate(state)  # the lifecycle publishers
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        try:
            self._activate()
        except Exception:
            return self._failed('activate')
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop publishing and unsubscribe; the model stays loaded."""
        try:
            self._deactivate()
        except Exception:
            return self._failed('deactivate')
        self.get_logger().info('deactivated: subscriptions destroyed, the model stays loaded')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the backend (engine and buffers), the worker and the publishers."""
        try:
            self._unconfigure()
        except Exception:
            return self._failed('cleanup')
        self.get_logger().info('cleaned up: the model and its buffers are released')
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything, from whichever state (``state``) shutdown started."""
        try:
            self._deactivate()
            self._unconfigure()
        except Exception:
            return self._failed('shutdown')
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything after a failed transition; SUCCESS returns to unconfigured."""
        self.get_logger().error(f'a transition from {state.label} failed: releasing '
                                'everything, the node goes back to unconfigured')
        try:
            self._deactivate()
            self._unconfigure()
        except Exception:
            self.get_logger().fatal(f'releasing failed:\n{traceback.format_exc()}')
            return TransitionCallbackReturn.FAILURE  # finalized
        return super().on_error(state)


def main(args: Optional[List[str]] = None, *, lifecycle: bool = False) -> int:
    """
    Run the detector node until Ctrl-C; return the process exit code.

    :param lifecycle: run :class:`DetectorLifecycleNode` (``detector_lifecycle_node``),
        which waits unconfigured for a lifecycle manager, instead of :class:`DetectorNode`.
    :returns: 0 after a clean shutdown, 1 when the node cannot start (the reason and
        its fix are logged) or stopped on an internal error.
    """
    rclpy.init(args=args)
    logger = rclpy.logging.get_logger(NODE_NAME)
    try:
        node = DetectorLifecycleNode() if lifecycle else DetectorNode()
    except LeafDiseaseError as exc:
        logger.fatal(start_failure_message(exc))
        rclpy.try_shutdown()
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        rclpy.try_shutdown()
        return 0
    executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown(timeout_sec=WORKER_JOIN_S)  # waits for running callbacks
        node.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return 1 if node.fatal_error else 0


if __name__ == '__main__':
    sys.exit(main())
