"""
A STAND-IN for the part of rclpy (and cv_bridge) that ``ros/node.py`` uses, for tier 1.

It is not ROS: nothing is sent anywhere, no executor spins, timers fire when a test
says so. It exists so ``ros/node.py`` itself (not a copy) runs without ROS: its
parameter declaration, callbacks, worker thread, publishers and shutdown. The real
check stays ``test/test_detector_launch.py`` under ``colcon test`` on a ROS machine.

What is modelled on the real sources (rclpy humble, ``rclpy/node.py``,
``rclpy/parameter.py``, ``rclpy/publisher.py``, ``rclpy/exceptions.py``):

- parameters: overrides (``parameter_overrides=`` or ``-p name:=value`` in
  ``rclpy.init(args)``) win over defaults; static typing from the default unless the
  descriptor has ``dynamic_typing``; ``read_only``; integer and floating point ranges;
  ``InvalidParameterTypeException`` / ``InvalidParameterValueException`` at declaration;
  ``set_parameters`` runs the ``add_on_set_parameters_callback`` callbacks and returns
  their ``SetParametersResult`` (type and read-only checks first, as
  ``_apply_descriptor`` does);
- ``Publisher.publish`` raises ``TypeError`` for a message of another type, as rclpy;
- message classes are generated from the real Humble (or Jazzy) definitions
  (``test/ros_messages.py``), so a field name or type the node gets wrong fails here;
- ``rclpy.time.Time`` / ``rclpy.duration.Duration``: keyword-only, non-negative,
  ``ClockType`` checked (``rclpy/time.py``, ``rclpy/duration.py``);
- ``tf2_ros`` (ros2/geometry2 ``tf2_ros_py``: ``buffer.py``, ``transform_listener.py``,
  and tf2_py's exceptions): ``Buffer(cache_time=None, node=None)`` (a node gets the
  ``tf2_frames`` service), ``TransformListener(buffer, node, *, spin_thread, qos,
  static_qos)`` subscribing to ``/tf`` and ``/tf_static``, ``lookup_transform(target,
  source, time, timeout=Duration())`` composing the chain from ``source`` up to
  ``target`` (``LookupException`` for an unknown frame, ``ConnectivityException`` for
  frames in different trees; no interpolation in time: the newest transform is used).

Install with :func:`install` (monkeypatches ``sys.modules``); the returned
:class:`RosWorld` is what a test drives: publish into subscriptions, call services,
fire timers, read what was published.
"""

import array
import enum
import sys
import threading
import time
import types
from typing import Any, Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
import yaml

from ros_messages import make_store, message_module, MessageFactory

S_TO_NS = 1_000_000_000


# --- rclpy.parameter / exceptions ---------------------------------------------------------

def _parameter_module(parameter_type: Any) -> Any:
    class Parameter:
        """rclpy.parameter.Parameter (value types and checks as in rclpy humble)."""

        class Type(enum.Enum):
            NOT_SET = parameter_type.PARAMETER_NOT_SET
            BOOL = parameter_type.PARAMETER_BOOL
            INTEGER = parameter_type.PARAMETER_INTEGER
            DOUBLE = parameter_type.PARAMETER_DOUBLE
            STRING = parameter_type.PARAMETER_STRING
            BYTE_ARRAY = parameter_type.PARAMETER_BYTE_ARRAY
            BOOL_ARRAY = parameter_type.PARAMETER_BOOL_ARRAY
            INTEGER_ARRAY = parameter_type.PARAMETER_INTEGER_ARRAY
            DOUBLE_ARRAY = parameter_type.PARAMETER_DOUBLE_ARRAY
            STRING_ARRAY = parameter_type.PARAMETER_STRING_ARRAY

            @classmethod
            def from_parameter_value(cls, value: Any) -> Any:
                if value is None:
                    return cls.NOT_SET
                if isinstance(value, bool):
                    return cls.BOOL
                if isinstance(value, int):
                    return cls.INTEGER
                if isinstance(value, float):
                    return cls.DOUBLE
                if isinstance(value, str):
                    return cls.STRING
                if isinstance(value, (list, tuple, array.array)):
                    if all(isinstance(v, bytes) for v in value):
                        return cls.BYTE_ARRAY
                    if all(isinstance(v, bool) for v in value):
                        return cls.BOOL_ARRAY
                    if all(isinstance(v, int) for v in value):
                        return cls.INTEGER_ARRAY
                    if all(isinstance(v, float) for v in value):
                        return cls.DOUBLE_ARRAY
                    if all(isinstance(v, str) for v in value):
                        return cls.STRING_ARRAY
                    raise TypeError('The given value is not a list of one of the allowed '
                                    f"types '{value}'.")
                raise TypeError(f"The given value is not one of the allowed types '{value}'.")

        def __init__(self, name: str, type_: Any = None, value: Any = None) -> None:
            if type_ is None:
                type_ = Parameter.Type.from_parameter_value(value)
            self._type_ = type_
            self._name = name
            self._value = value

        @property
        def name(self) -> str:
            return self._name

        @property
        def type_(self) -> Any:
            return self._type_

        @property
        def value(self) -> Any:
            return self._value

    return Parameter


class ParameterException(Exception):
    """rclpy.exceptions.ParameterException."""


class InvalidParameterTypeException(ParameterException):
    """rclpy.exceptions.InvalidParameterTypeException (same message)."""

    def __init__(self, desired_parameter: Any, expected_type: Any, *args: Any) -> None:
        Exception.__init__(
            self, f"Trying to set parameter '{desired_parameter.name}' to "
                  f"'{desired_parameter.value}' of type "
                  f"'{type(desired_parameter).Type.from_parameter_value(desired_parameter.value).name}'"  # noqa: E501
                  f", expecting type '{expected_type}'", *args)


class InvalidParameterValueException(ParameterException):
    """rclpy.exceptions.InvalidParameterValueException (same message)."""

    def __init__(self, parameter: Any, value: Any, reason: str, *args: Any) -> None:
        Exception.__init__(self, f'Invalid parameter value ({value}) for parameter. '
                                 f'Reason: {reason}', parameter, *args)


class ExternalShutdownException(Exception):
    """rclpy.executors.ExternalShutdownException."""


# --- clocks, QoS, logging ---------------------------------------------------------------

class ClockType(enum.IntEnum):
    """rclpy.clock.ClockType."""

    UNINITIALIZED = 0
    ROS_TIME = 1
    SYSTEM_TIME = 2
    STEADY_TIME = 3


class Duration:
    """rclpy.duration.Duration (keyword-only, as rclpy/duration.py)."""

    def __init__(self, *, seconds: float = 0, nanoseconds: int = 0) -> None:
        self.nanoseconds = int(seconds * S_TO_NS) + int(nanoseconds)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Duration):
            return self.nanoseconds == other.nanoseconds
        return NotImplemented


class Time:
    """rclpy.time.Time (keyword-only, non-negative, a ClockType; to_msg)."""

    world: Optional['RosWorld'] = None  # set by RosWorld: to_msg builds its classes

    def __init__(self, *, seconds: float = 0, nanoseconds: int = 0,
                 clock_type: 'ClockType' = None) -> None:  # type: ignore[assignment]
        clock_type = ClockType.SYSTEM_TIME if clock_type is None else clock_type
        if not isinstance(clock_type, ClockType):
            raise TypeError('Clock type must be a ClockType enum')
        if seconds < 0:
            raise ValueError('Seconds value must not be negative')
        if nanoseconds < 0:
            raise ValueError('Nanoseconds value must not be negative')
        self.nanoseconds = int(seconds * S_TO_NS) + int(nanoseconds)
        self.clock_type = clock_type

    def to_msg(self) -> Any:
        assert self.world is not None
        sec, nanosec = divmod(self.nanoseconds, S_TO_NS)
        return self.world.msg('builtin_interfaces/msg/Time')(sec=sec, nanosec=nanosec)


class Clock:
    """rclpy.clock.Clock; ROS time is the world's settable clock."""

    def __init__(self, *, clock_type: ClockType = ClockType.SYSTEM_TIME,
                 world: Optional['RosWorld'] = None) -> None:
        self.clock_type = clock_type
        self._world = world

    def now(self) -> Time:
        assert self._world is not None
        if self.clock_type == ClockType.ROS_TIME and self._world.ros_time_ns is not None:
            return Time(nanoseconds=self._world.ros_time_ns, clock_type=self.clock_type)
        return Time(nanoseconds=time.time_ns(), clock_type=self.clock_type)


class ReliabilityPolicy(enum.IntEnum):
    """rclpy.qos.ReliabilityPolicy."""

    SYSTEM_DEFAULT = 0
    RELIABLE = 1
    BEST_EFFORT = 2


class DurabilityPolicy(enum.IntEnum):
    """rclpy.qos.DurabilityPolicy."""

    SYSTEM_DEFAULT = 0
    TRANSIENT_LOCAL = 1
    VOLATILE = 2


class HistoryPolicy(enum.IntEnum):
    """rclpy.qos.HistoryPolicy."""

    SYSTEM_DEFAULT = 0
    KEEP_LAST = 1
    KEEP_ALL = 2


class QoSProfile:
    """rclpy.qos.QoSProfile (keyword arguments kept)."""

    def __init__(self, **kwargs: Any) -> None:
        self.history = kwargs.get('history', HistoryPolicy.KEEP_LAST)
        self.depth = kwargs.get('depth', 10)
        self.reliability = kwargs.get('reliability', ReliabilityPolicy.RELIABLE)
        self.durability = kwargs.get('durability', DurabilityPolicy.VOLATILE)


class Logger:
    """An rcutils logger that records (severity, text); only rclpy's filters are accepted."""

    _FILTERS = {'throttle_duration_sec', 'throttle_time_source_type', 'skip_first', 'once'}

    def __init__(self, name: str, world: 'RosWorld') -> None:
        self.name = name
        self._world = world

    def _log(self, severity: str, message: str, **kwargs: Any) -> bool:
        unknown = set(kwargs) - self._FILTERS
        if unknown:
            raise TypeError(f'unsupported logging filter(s) {sorted(unknown)}')
        self._world.logs.append((severity, str(message)))
        return True

    def debug(self, message: str, **kwargs: Any) -> bool:
        return self._log('debug', message, **kwargs)

    def info(self, message: str, **kwargs: Any) -> bool:
        return self._log('info', message, **kwargs)

    def warning(self, message: str, **kwargs: Any) -> bool:
        return self._log('warning', message, **kwargs)

    warn = warning

    def error(self, message: str, **kwargs: Any) -> bool:
        return self._log('error', message, **kwargs)

    def fatal(self, message: str, **kwargs: Any) -> bool:
        return self._log('fatal', message, **kwargs)


# --- entities -------------------------------------------------------------------------

class Context:
    """rclpy.context.Context: ok() until shut down."""

    def __init__(self) -> None:
        self._ok = True

    def ok(self) -> bool:
        return self._ok

    def try_shutdown(self) -> None:
        self._ok = False


class Publisher:
    """Records what is published; ``publish`` type-checks like rclpy's."""

    def __init__(self, msg_type: type, topic: str, qos: Any, world: 'RosWorld') -> None:
        self.msg_type = msg_type
        self.topic = topic
        self.qos = qos
        self.subscription_count = 0
        self.fail_with: Optional[BaseException] = None
        self._world = world

    def publish(self, msg: Any) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if not isinstance(msg, self.msg_type):
            raise TypeError(f'Expected {self.msg_type}, got {type(msg)}')
        with self._world.lock:
            self._world.published.setdefault(self.topic, []).append(msg)
            self._world.changed.notify_all()

    def get_subscription_count(self) -> int:
        return self.subscription_count


class Subscription:
    """A subscription: a test calls it with :meth:`RosWorld.deliver`."""

    def __init__(self, msg_type: type, topic: str, callback: Callable, qos: Any,
                 group: Any) -> None:
        self.msg_type, self.topic, self.callback, self.qos = msg_type, topic, callback, qos
        self.callback_group = group


class Timer:
    """A timer that fires when :meth:`RosWorld.fire_timers` says so."""

    def __init__(self, period_s: float, callback: Callable, group: Any, clock: Any) -> None:
        self.period_s, self.callback = period_s, callback
        self.callback_group, self.clock = group, clock
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Service:
    """A service a test calls with :meth:`RosWorld.call`."""

    def __init__(self, srv_type: Any, name: str, callback: Callable, group: Any) -> None:
        self.srv_type, self.name, self.callback, self.callback_group = (srv_type, name,
                                                                        callback, group)


class MutuallyExclusiveCallbackGroup:
    """rclpy.callback_groups.MutuallyExclusiveCallbackGroup (a marker here)."""


class TopicEndpointInfo:
    """rclpy.topic_endpoint_info.TopicEndpointInfo (the fields the node reads)."""

    def __init__(self, node_name: str, node_namespace: str, topic_type: str,
                 reliability: Any, durability: Any) -> None:
        self.node_name, self.node_namespace, self.topic_type = (node_name, node_namespace,
                                                                topic_type)
        self.qos_profile = QoSProfile(reliability=reliability, durability=durability)


def _node_class(world: 'RosWorld') -> type:
    Parameter = world.modules['rclpy.parameter'].Parameter
    rcl = world.modules['rcl_interfaces.msg']

    class Node:
        """rclpy.node.Node: the surface ros/node.py uses, parameters modelled on humble."""

        def __init__(self, node_name: str, *, context: Any = None, namespace: str = '/',
                     parameter_overrides: Optional[List[Any]] = None, **_: Any) -> None:
            self._name = node_name
            self._namespace = namespace
            self.context = context or world.context
            self._parameters: Dict[str, Any] = {}
            self._descriptors: Dict[str, Any] = {}
            self._parameters_callbacks: List[Callable] = []
            self._parameter_overrides = dict(world.global_overrides)
            self._parameter_overrides.update({p.name: p for p in parameter_overrides or []})
            self._logger = Logger(node_name, world)
            self._clock = Clock(clock_type=ClockType.ROS_TIME, world=world)
            self.destroyed = False
            world.nodes.append(self)

        # names
        def get_name(self) -> str:
            return self._name

        def get_namespace(self) -> str:
            return self._namespace

        def get_fully_qualified_name(self) -> str:
            return f"{self._namespace.rstrip('/')}/{self._name}"

        def resolve_topic_name(self, topic: str, *, only_expand: bool = False) -> str:
            if topic.startswith('/'):
                return topic
            if topic.startswith('~'):
                return self.get_fully_qualified_name() + topic[1:]
            return world.remap.get(topic, f"{self._namespace.rstrip('/')}/{topic}")

        def resolve_service_name(self, service: str, *, only_expand: bool = False) -> str:
            return self.resolve_topic_name(service)

        def get_logger(self) -> Logger:
            return self._logger

        def get_clock(self) -> Clock:
            return self._clock

        # parameters (rclpy humble declare_parameters / _apply_descriptor)
        def declare_parameter(self, name: str, value: Any = None, descriptor: Any = None,
                              ignore_override: bool = False) -> Any:
            descriptor = descriptor if descriptor is not None else rcl.ParameterDescriptor()
            if not descriptor.dynamic_typing and value is not None:
                descriptor.type = Parameter.Type.from_parameter_value(value).value
            if not ignore_override and name in self._parameter_overrides:
                value = self._parameter_overrides[name].value
            parameter = Parameter(name, value=value)
            result = self._apply_descriptor(parameter, descriptor, check_read_only=False)
            if not result.successful:
                if result.reason.startswith('Wrong parameter type'):
                    raise InvalidParameterTypeException(
                        parameter, Parameter.Type(descriptor.type).name)
                raise InvalidParameterValueException(name, value, result.reason)
            self._descriptors[name] = descriptor
            self._parameters[name] = parameter
            return parameter

        def _apply_descriptor(self, parameter: Any, descriptor: Any,
                              check_read_only: bool = True) -> Any:
            descriptor.name = parameter.name
            if check_read_only and descriptor.read_only:
                return rcl.SetParametersResult(
                    successful=False,
                    reason=f'Trying to set a read-only parameter: {parameter.name}.')
            if descriptor.dynamic_typing:
                descriptor.type = parameter.type_.value
            elif (parameter.type_ != Parameter.Type.NOT_SET
                  and parameter.type_.value != descriptor.type):
                return rcl.SetParametersResult(
                    successful=False,
                    reason=f"Wrong parameter type, expected '{Parameter.Type(descriptor.type)}'"
                           f" got '{parameter.type_}'")
            value = parameter.value
            if parameter.type_ == Parameter.Type.INTEGER and descriptor.integer_range:
                limit = descriptor.integer_range[0]
                if not limit.from_value <= value <= limit.to_value:
                    return rcl.SetParametersResult(
                        successful=False, reason='Parameter {} out of range. Min: {}, Max: {}'
                        .format(parameter.name, limit.from_value, limit.to_value))
            if parameter.type_ == Parameter.Type.DOUBLE and descriptor.floating_point_range:
                limit = descriptor.floating_point_range[0]
                if not limit.from_value <= value <= limit.to_value:
                    return rcl.SetParametersResult(
                        successful=False, reason='Parameter {} out of range. Min: {}, Max: {}'
                        .format(parameter.name, limit.from_value, limit.to_value))
            return rcl.SetParametersResult(successful=True)

        def add_on_set_parameters_callback(self, callback: Callable) -> None:
            self._parameters_callbacks.insert(0, callback)

        def set_parameters(self, parameter_list: List[Any]) -> List[Any]:
            results = []
            for parameter in parameter_list:
                result = self._apply_descriptor(parameter, self._descriptors[parameter.name])
                if result.successful:
                    for callback in self._parameters_callbacks:
                        result = callback([parameter])
                        if not result.successful:
                            break
                if result.successful:
                    self._parameters[parameter.name] = parameter
                results.append(result)
            return results

        def get_parameter(self, name: str) -> Any:
            return self._parameters[name]

        def describe_parameter(self, name: str) -> Any:
            return self._descriptors[name]

        # entities
        def create_publisher(self, msg_type: type, topic: str, qos: Any, **_: Any) -> Any:
            publisher = Publisher(msg_type, self.resolve_topic_name(topic), qos, world)
            world.publishers[publisher.topic] = publisher
            return publisher

        def create_subscription(self, msg_type: type, topic: str, callback: Callable,
                                qos: Any, *, callback_group: Any = None, **_: Any) -> Any:
            subscription = Subscription(msg_type, self.resolve_topic_name(topic), callback,
                                        qos, callback_group)
            world.subscriptions[subscription.topic] = subscription
            return subscription

        def create_service(self, srv_type: Any, name: str, callback: Callable, *,
                           callback_group: Any = None, **_: Any) -> Any:
            service = Service(srv_type, self.resolve_service_name(name), callback,
                              callback_group)
            world.services[service.name] = service
            return service

        def create_timer(self, timer_period_sec: float, callback: Callable,
                         callback_group: Any = None, clock: Any = None) -> Any:
            timer = Timer(float(timer_period_sec), callback, callback_group, clock)
            world.timers.append(timer)
            return timer

        def get_publishers_info_by_topic(self, topic_name: str) -> List[Any]:
            return list(world.graph_publishers.get(topic_name, []))

        def destroy_node(self) -> None:
            self.destroyed = True
            for publisher in world.publishers.values():
                publisher.fail_with = RuntimeError('publisher destroyed (InvalidHandle)')

    return Node


# --- tf2_ros ----------------------------------------------------------------------------

class TransformException(Exception):
    """tf2_py TransformException (tf2_ros re-exports tf2_py's names)."""


class LookupException(TransformException):
    """tf2_py LookupException: a frame that does not exist."""


class ConnectivityException(TransformException):
    """tf2_py ConnectivityException: frames in two unconnected trees."""


class ExtrapolationException(TransformException):
    """tf2_py ExtrapolationException."""


class InvalidArgumentException(TransformException):
    """tf2_py InvalidArgumentException."""


class TimeoutException(TransformException):
    """tf2_py TimeoutException."""


def _quaternion_multiply(a: Tuple[float, ...], b: Tuple[float, ...]) -> Tuple[float, ...]:
    """Return a * b of (x, y, z, w) quaternions."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return (aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz)


def _rotate(q: Tuple[float, ...], v: Tuple[float, ...]) -> Tuple[float, ...]:
    """Return the vector ``v`` rotated by the unit quaternion ``q``."""
    conjugate = (-q[0], -q[1], -q[2], q[3])
    x, y, z, _ = _quaternion_multiply(_quaternion_multiply(q, (v[0], v[1], v[2], 0.0)),
                                      conjugate)
    return (x, y, z)


def _tf2_modules(world: 'RosWorld') -> Dict[str, Any]:
    transform_stamped = world.msg('geometry_msgs/msg/TransformStamped')
    tf_message = world.msg('tf2_msgs/msg/TFMessage')
    time_msg = world.msg('builtin_interfaces/msg/Time')

    class Buffer:
        """tf2_ros.buffer.Buffer: parent <- child transforms, newest kept per child."""

        def __init__(self, cache_time: Optional[Duration] = None, node: Any = None) -> None:
            if cache_time is not None and not isinstance(cache_time, Duration):
                raise TypeError('cache_time must be an rclpy.duration.Duration')
            self._edges: Dict[str, Any] = {}  # child frame -> TransformStamped
            self._lock = threading.Lock()
            if node is not None:
                self.srv = node.create_service(world.factory.service('tf2_msgs/srv/FrameGraph'),
                                               'tf2_frames', lambda req, res: res)

        def set_transform(self, transform: Any, authority: str) -> None:
            if not isinstance(transform, transform_stamped):
                raise TypeError('transform must be a geometry_msgs/TransformStamped')
            with self._lock:
                self._edges[transform.child_frame_id] = transform

        set_transform_static = set_transform

        def _chain(self, frame: str) -> List[str]:
            chain = [frame]
            while chain[-1] in self._edges and len(chain) < 100:
                chain.append(self._edges[chain[-1]].header.frame_id)
            return chain

        def can_transform(self, target_frame: str, source_frame: str, time: Any,
                          timeout: Duration = Duration(), return_debug_tuple: bool = False
                          ) -> Any:
            try:
                self.lookup_transform(target_frame, source_frame, time)
            except TransformException as exc:
                return (False, str(exc)) if return_debug_tuple else False
            return (True, '') if return_debug_tuple else True

        def lookup_transform(self, target_frame: str, source_frame: str, time: Any,
                             timeout: Duration = Duration()) -> Any:
            if not isinstance(time, (Time, time_msg)):
                raise TypeError('time must be an rclpy.time.Time or builtin_interfaces/Time')
            if not isinstance(timeout, Duration):
                raise TypeError('timeout must be an rclpy.duration.Duration')
            with self._lock:
                known = set(self._edges) | {t.header.frame_id for t in self._edges.values()}
                for name, frame in (('target_frame', target_frame),
                                    ('source_frame', source_frame)):
                    if frame not in known and target_frame != source_frame:
                        raise LookupException(f'"{frame}" passed to lookupTransform argument '
                                              f'{name} does not exist. ')
                chain = self._chain(source_frame)
                if target_frame not in chain:
                    raise ConnectivityException(
                        f"Could not find a connection between '{target_frame}' and "
                        f"'{source_frame}' because they are not part of the same tree.")
                rotation: Tuple[float, ...] = (0.0, 0.0, 0.0, 1.0)
                translation: Tuple[float, ...] = (0.0, 0.0, 0.0)
                for child in chain[:chain.index(target_frame)]:  # source up to target
                    edge = self._edges[child].transform
                    q = (edge.rotation.x, edge.rotation.y, edge.rotation.z, edge.rotation.w)
                    moved = _rotate(q, translation)
                    translation = (moved[0] + edge.translation.x,
                                   moved[1] + edge.translation.y,
                                   moved[2] + edge.translation.z)
                    rotation = _quaternion_multiply(q, rotation)
            out = transform_stamped(child_frame_id=source_frame)
            out.header.frame_id = target_frame
            out.transform.translation.x, out.transform.translation.y, \
                out.transform.translation.z = (float(v) for v in translation)
            out.transform.rotation.x, out.transform.rotation.y, out.transform.rotation.z, \
                out.transform.rotation.w = (float(v) for v in rotation)
            return out

    class TransformListener:
        """tf2_ros.transform_listener.TransformListener: /tf and /tf_static into a buffer."""

        def __init__(self, buffer: Buffer, node: Any, *, spin_thread: bool = False,
                     qos: Any = None, static_qos: Any = None) -> None:
            if node is None:
                raise NotImplementedError('the stand-in needs the node (spin_thread unmodelled)')
            self.buffer = buffer
            self.node = node
            static_qos = static_qos or QoSProfile(depth=100,
                                                  durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                                  history=HistoryPolicy.KEEP_LAST)
            qos = qos or QoSProfile(depth=100, durability=DurabilityPolicy.VOLATILE,
                                    history=HistoryPolicy.KEEP_LAST)
            self.tf_sub = node.create_subscription(tf_message, '/tf', self.callback, qos)
            self.tf_static_sub = node.create_subscription(tf_message, '/tf_static',
                                                          self.static_callback, static_qos)

        def callback(self, data: Any) -> None:
            for transform in data.transforms:
                self.buffer.set_transform(transform, 'default_authority')

        def static_callback(self, data: Any) -> None:
            for transform in data.transforms:
                self.buffer.set_transform_static(transform, 'default_authority')

    exceptions = {cls.__name__: cls for cls in (
        TransformException, LookupException, ConnectivityException, ExtrapolationException,
        InvalidArgumentException, TimeoutException)}
    return {'buffer': Buffer, 'listener': TransformListener, 'exceptions': exceptions}


# --- cv_bridge --------------------------------------------------------------------------

class CvBridgeError(TypeError):
    """cv_bridge.CvBridgeError."""


def _cv_bridge_module(world: 'RosWorld') -> Any:
    channels = {'bgr8': 3, 'rgb8': 3, 'mono8': 1, 'bgra8': 4, 'rgba8': 4}

    class CvBridge:
        """
        cv_bridge.CvBridge for 8-bit images (bgr8, rgb8, mono8, bgra8, rgba8).

        Other encodings fail with cv_bridge's own message for a non-colour format.
        ``compressed_imgmsg_to_cv2`` does what Humble's does: ``IMREAD_ANYCOLOR`` and
        no conversion for bgr8 (a mono JPEG comes back 2-D).
        """

        def imgmsg_to_cv2(self, img_msg: Any, desired_encoding: str = 'passthrough') -> Any:
            encoding = img_msg.encoding
            if encoding not in channels:
                raise CvBridgeError(f'[{encoding}] is not a color format. but '
                                    f'[{desired_encoding}] is. The conversion does not make '
                                    'sense')
            count = channels[encoding]
            data = np.frombuffer(bytes(img_msg.data), dtype=np.uint8)
            rows = data[:img_msg.step * img_msg.height].reshape(img_msg.height, img_msg.step)
            image = rows[:, :img_msg.width * count].reshape(img_msg.height, img_msg.width,
                                                            count)
            codes = {'rgb8': cv2.COLOR_RGB2BGR, 'mono8': cv2.COLOR_GRAY2BGR,
                     'bgra8': cv2.COLOR_BGRA2BGR, 'rgba8': cv2.COLOR_RGBA2BGR}
            if desired_encoding == 'bgr8' and encoding in codes:
                return cv2.cvtColor(image, codes[encoding])
            return image.copy() if count > 1 else image[:, :, 0].copy()

        def compressed_imgmsg_to_cv2(self, msg: Any, desired_encoding: str = 'passthrough'
                                     ) -> Any:
            buffer = np.frombuffer(bytes(msg.data), dtype=np.uint8)
            return cv2.imdecode(buffer, cv2.IMREAD_ANYCOLOR)

        def cv2_to_imgmsg(self, cvim: Any, encoding: str = 'passthrough', header: Any = None
                          ) -> Any:
            depth = cvim.shape[2] if cvim.ndim == 3 else 1
            image = world.msg('sensor_msgs/msg/Image')(
                height=int(cvim.shape[0]), width=int(cvim.shape[1]), encoding=encoding,
                is_bigendian=0, step=int(cvim.shape[1] * depth), data=cvim.tobytes())
            if header is not None:
                image.header = header
            return image

    module = types.ModuleType('cv_bridge')
    module.CvBridge = CvBridge
    module.CvBridgeError = CvBridgeError
    return module


# --- the world --------------------------------------------------------------------------

class RosWorld:
    """What the installed stand-in recorded, and the handles a test drives it with."""

    def __init__(self, distro: str = 'humble') -> None:
        self.distro = distro
        self.store = make_store(distro)
        self.factory = MessageFactory(self.store, distro)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.context = Context()
        self.global_overrides: Dict[str, Any] = {}
        self.remap: Dict[str, str] = {}
        self.logs: List[Tuple[str, str]] = []
        self.published: Dict[str, List[Any]] = {}
        self.publishers: Dict[str, Publisher] = {}
        self.subscriptions: Dict[str, Subscription] = {}
        self.services: Dict[str, Service] = {}
        self.timers: List[Timer] = []
        self.graph_publishers: Dict[str, List[Any]] = {}
        self.nodes: List[Any] = []
        self.ros_time_ns: Optional[int] = None
        self.spin_hook: Optional[Callable[[], None]] = None
        self.modules: Dict[str, Any] = {}
        self._build_modules()

    def msg(self, typename: str) -> type:
        """Return the generated class of ``typename``."""
        return self.factory.get(typename)

    # --- modules ------------------------------------------------------------------

    def _module(self, name: str, **attributes: Any) -> Any:
        module = types.ModuleType(name)
        for key, value in attributes.items():
            setattr(module, key, value)
        self.modules[name] = module
        return module

    def _build_modules(self) -> None:
        for package in ('builtin_interfaces', 'std_msgs', 'sensor_msgs', 'geometry_msgs',
                        'vision_msgs', 'diagnostic_msgs', 'rcl_interfaces', 'nav_msgs',
                        'tf2_msgs'):
            self._module(package)
            self._module(f'{package}.msg', **message_module(self.factory, package))
        self._module('std_srvs')
        self._module('std_srvs.srv', SetBool=self.factory.service('std_srvs/srv/SetBool'))
        parameter_type = self.modules['rcl_interfaces.msg'].ParameterType
        self._module('rclpy.parameter', Parameter=_parameter_module(parameter_type))
        self._module('rclpy.exceptions', ParameterException=ParameterException,
                     InvalidParameterTypeException=InvalidParameterTypeException,
                     InvalidParameterValueException=InvalidParameterValueException)
        self._module('rclpy.callback_groups',
                     MutuallyExclusiveCallbackGroup=MutuallyExclusiveCallbackGroup)
        world = self

        def make_clock(*, clock_type: ClockType = ClockType.SYSTEM_TIME) -> Clock:
            return Clock(clock_type=clock_type, world=world)

        self._module('rclpy.clock', Clock=make_clock, ClockType=ClockType)
        Time.world = self
        self._module('rclpy.time', Time=Time)
        self._module('rclpy.duration', Duration=Duration)
        tf2 = _tf2_modules(self)
        self._module('tf2_ros.buffer', Buffer=tf2['buffer'])
        self._module('tf2_ros.transform_listener', TransformListener=tf2['listener'])
        self._module('tf2_ros', Buffer=tf2['buffer'], TransformListener=tf2['listener'],
                     buffer=self.modules['tf2_ros.buffer'],
                     transform_listener=self.modules['tf2_ros.transform_listener'],
                     **tf2['exceptions'])
        self._module('rclpy.qos', QoSProfile=QoSProfile, ReliabilityPolicy=ReliabilityPolicy,
                     DurabilityPolicy=DurabilityPolicy, HistoryPolicy=HistoryPolicy)

        class MultiThreadedExecutor:
            """Spins until the context shuts down (or the test's spin hook raises)."""

            def __init__(self, num_threads: Optional[int] = None) -> None:
                self.nodes: List[Any] = []
                self.shut_down = False

            def add_node(self, node: Any) -> None:
                self.nodes.append(node)

            def spin(self) -> None:
                while world.context.ok():
                    if world.spin_hook is not None:
                        world.spin_hook()
                    time.sleep(0.01)

            def shutdown(self, timeout_sec: Optional[float] = None) -> bool:
                self.shut_down = True
                return True

        self._module('rclpy.executors', MultiThreadedExecutor=MultiThreadedExecutor,
                     ExternalShutdownException=ExternalShutdownException)
        self._module('rclpy.node', Node=_node_class(self))

        def init(*, args: Optional[List[str]] = None, context: Any = None) -> None:
            world.context = Context()
            parameter = self.modules['rclpy.parameter'].Parameter
            words = list(args or [])
            for index, word in enumerate(words[:-1]):
                if word == '-p' and ':=' in words[index + 1]:
                    name, text = words[index + 1].split(':=', 1)
                    world.global_overrides[name] = parameter(name, value=yaml.safe_load(text))

        def try_shutdown(*, context: Any = None) -> None:
            (context or world.context).try_shutdown()

        logging_module = self._module('rclpy.logging',
                                      get_logger=lambda name: Logger(name, world))
        rclpy = self._module('rclpy', init=init, try_shutdown=try_shutdown,
                             logging=logging_module)
        for sub in ('node', 'parameter', 'exceptions', 'callback_groups', 'clock', 'qos',
                    'executors', 'time', 'duration'):
            setattr(rclpy, sub, self.modules[f'rclpy.{sub}'])
        self.modules['cv_bridge'] = _cv_bridge_module(self)

    # --- driving --------------------------------------------------------------------

    def deliver(self, topic: str, msg: Any) -> None:
        """Call the subscription of ``topic`` with ``msg`` (as the executor would)."""
        subscription = self.subscriptions[topic]
        assert isinstance(msg, subscription.msg_type), (type(msg), subscription.msg_type)
        subscription.callback(msg)

    def call(self, name: str, request: Any) -> Any:
        """Call the service ``name``; return its response."""
        service = self.services[name]
        return service.callback(request, service.srv_type.Response())

    def fire_timers(self) -> None:
        """Run every timer callback that is not cancelled, once."""
        for timer in list(self.timers):
            if not timer.cancelled:
                timer.callback()

    def wait_for(self, topic: str, count: int, timeout_s: float = 30.0) -> List[Any]:
        """Return the messages of ``topic`` once there are ``count`` of them."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while len(self.published.get(topic, [])) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f'{topic}: {len(self.published.get(topic, []))} '
                                         f'messages after {timeout_s} s, expected {count}; '
                                         f'log: {self.logs[-5:]}')
                self.changed.wait(left)
            return list(self.published[topic])

    def log_texts(self, severity: Optional[str] = None) -> List[str]:
        """Return the logged texts (of one severity)."""
        return [text for level, text in self.logs if severity is None or level == severity]


def install(monkeypatch: Any, distro: str = 'humble') -> RosWorld:
    """Put the stand-in modules into ``sys.modules`` (undone by ``monkeypatch``)."""
    world = RosWorld(distro)
    for name, module in world.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    # import ros/node.py afresh against this world's classes (and forget it afterwards)
    import leaf_disease_ros.ros as ros_package

    monkeypatch.delitem(sys.modules, 'leaf_disease_ros.ros.node', raising=False)
    monkeypatch.delattr(ros_package, 'node', raising=False)
    return world
