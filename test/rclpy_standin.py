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
- ``QoSProfile`` takes only rclpy's nine keywords and needs a history or a depth
  (KEEP_LAST needs a depth); ``Node``, ``create_publisher``, ``create_subscription``
  and ``create_service`` take exactly rclpy's keywords (humble = jazzy, plus jazzy's
  ``enable_logger_service``), keyword-only where rclpy's are;
- ``-p name:=value`` counts only between ``--ros-args`` and ``--`` and is typed as
  rcl's YAML parser types it (:func:`rcl_parameter_value`), not as PyYAML would;
- ``rclpy.lifecycle`` (rclpy/lifecycle/node.py, publisher.py, managed_entity.py:
  identical on humble and jazzy) over rcl_lifecycle's default state machine
  (rcl_lifecycle/src/default_state_machine.c): ``<node>/change_state`` and
  ``get_state``, a transition the state does not offer refused, the return code
  deciding the next state, a raising callback an ERROR handled by ``on_error``, a
  callback returning no code breaking the transition, lifecycle publishers that drop
  what is published while deactivated (counted in ``world.dropped_inactive``); and
  ``destroy_publisher/subscription/timer``, ``remove_on_set_parameters_callback``;
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
import re
import sys
import threading
import time
import types
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

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


class InvalidQoSProfileException(Exception):
    """rclpy.qos.InvalidQoSProfileException."""


class QoSProfile:
    """
    rclpy.qos.QoSProfile, as strict as rclpy's (humble and jazzy ``rclpy/qos.py``).

    Only its nine keywords (an unknown one fails rclpy's ``assert`` on ``__slots__``);
    neither history nor depth, or KEEP_LAST without a depth, is an
    :class:`InvalidQoSProfileException`.
    """

    KEYWORDS = ('history', 'depth', 'reliability', 'durability', 'lifespan', 'deadline',
                'liveliness', 'liveliness_lease_duration', 'avoid_ros_namespace_conventions')

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(self.KEYWORDS))
        if unknown:
            raise AssertionError(f'Invalid arguments passed to constructor: {unknown!r}')
        if 'history' not in kwargs:
            if 'depth' not in kwargs:
                raise InvalidQoSProfileException('History and/or depth settings are required.')
            kwargs['history'] = HistoryPolicy.KEEP_LAST
        if kwargs['history'] == HistoryPolicy.KEEP_LAST and 'depth' not in kwargs:
            raise InvalidQoSProfileException('History set to KEEP_LAST without a depth setting.')
        self.history = kwargs['history']
        self.depth = kwargs.get('depth', 0)
        self.reliability = kwargs.get('reliability', ReliabilityPolicy.RELIABLE)
        self.durability = kwargs.get('durability', DurabilityPolicy.VOLATILE)


def _qos(qos_profile: Any) -> QoSProfile:
    """Return the profile of ``create_publisher/subscription``'s qos_profile (or depth)."""
    if isinstance(qos_profile, QoSProfile):
        return qos_profile
    if isinstance(qos_profile, int) and not isinstance(qos_profile, bool):
        return QoSProfile(depth=qos_profile)
    raise TypeError('Expected QoSProfile or int, but received '
                    f'{type(qos_profile).__name__}')


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

        def __init__(self, node_name: str, *, context: Any = None,
                     cli_args: Optional[List[str]] = None, namespace: Optional[str] = None,
                     use_global_arguments: bool = True, enable_rosout: bool = True,
                     start_parameter_services: bool = True,
                     parameter_overrides: Optional[List[Any]] = None,
                     allow_undeclared_parameters: bool = False,
                     automatically_declare_parameters_from_overrides: bool = False,
                     **jazzy: Any) -> None:
            # rclpy/node.py Node.__init__: keyword-only, these names (jazzy adds
            # enable_logger_service); anything else is a TypeError
            allowed = {'enable_logger_service'} if world.distro != 'humble' else set()
            if set(jazzy) - allowed:
                raise TypeError(f'Node.__init__() got an unexpected keyword argument '
                                f'{sorted(set(jazzy) - allowed)[0]!r}')
            namespace = namespace or '/'

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

        def remove_on_set_parameters_callback(self, callback: Callable) -> None:
            self._parameters_callbacks.remove(callback)  # ValueError when absent, as rclpy

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

        # entities: rclpy/node.py signatures (humble = jazzy), keyword-only after the qos
        def create_publisher(self, msg_type: type, topic: str, qos_profile: Any, *,
                             callback_group: Any = None, event_callbacks: Any = None,
                             qos_overriding_options: Any = None,
                             publisher_class: Any = None) -> Any:
            publisher = (publisher_class or Publisher)(
                msg_type, self.resolve_topic_name(topic), _qos(qos_profile), world)
            world.publishers[publisher.topic] = publisher
            return publisher

        # destroy_*: rclpy/node.py (humble = jazzy): True when the entity was this node's
        def destroy_publisher(self, publisher: Any) -> bool:
            if world.publishers.get(publisher.topic) is not publisher:
                return False
            del world.publishers[publisher.topic]
            publisher.fail_with = RuntimeError('publisher destroyed (InvalidHandle)')
            return True

        def destroy_subscription(self, subscription: Any) -> bool:
            if world.subscriptions.get(subscription.topic) is not subscription:
                return False
            del world.subscriptions[subscription.topic]
            return True

        def destroy_timer(self, timer: Any) -> bool:
            if timer not in world.timers:
                return False
            world.timers.remove(timer)
            timer.cancelled = True
            return True

        def create_subscription(self, msg_type: type, topic: str, callback: Callable,
                                qos_profile: Any, *, callback_group: Any = None,
                                event_callbacks: Any = None, qos_overriding_options: Any = None,
                                raw: bool = False) -> Any:
            subscription = Subscription(msg_type, self.resolve_topic_name(topic), callback,
                                        _qos(qos_profile), callback_group)
            world.subscriptions[subscription.topic] = subscription
            return subscription

        def create_service(self, srv_type: Any, srv_name: str, callback: Callable, *,
                           qos_profile: Any = None, callback_group: Any = None) -> Any:
            service = Service(srv_type, self.resolve_service_name(srv_name), callback,
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


# --- rclpy.lifecycle --------------------------------------------------------------------

class RCLError(RuntimeError):
    """rclpy._rclpy_pybind11.RCLError (what the lifecycle state machine raises)."""


# rcl_lifecycle default_state_machine.c (ros2/rcl humble = jazzy): (transition label,
# lifecycle_msgs/Transition constant, start state, goal state), states by their label
_TRANSITIONS = [
    ('configure', 'TRANSITION_CONFIGURE', 'unconfigured', 'configuring'),
    ('transition_success', 'TRANSITION_ON_CONFIGURE_SUCCESS', 'configuring', 'inactive'),
    ('transition_failure', 'TRANSITION_ON_CONFIGURE_FAILURE', 'configuring', 'unconfigured'),
    ('transition_error', 'TRANSITION_ON_CONFIGURE_ERROR', 'configuring', 'errorprocessing'),
    ('cleanup', 'TRANSITION_CLEANUP', 'inactive', 'cleaningup'),
    ('transition_success', 'TRANSITION_ON_CLEANUP_SUCCESS', 'cleaningup', 'unconfigured'),
    ('transition_failure', 'TRANSITION_ON_CLEANUP_FAILURE', 'cleaningup', 'inactive'),
    ('transition_error', 'TRANSITION_ON_CLEANUP_ERROR', 'cleaningup', 'errorprocessing'),
    ('activate', 'TRANSITION_ACTIVATE', 'inactive', 'activating'),
    ('transition_success', 'TRANSITION_ON_ACTIVATE_SUCCESS', 'activating', 'active'),
    ('transition_failure', 'TRANSITION_ON_ACTIVATE_FAILURE', 'activating', 'inactive'),
    ('transition_error', 'TRANSITION_ON_ACTIVATE_ERROR', 'activating', 'errorprocessing'),
    ('deactivate', 'TRANSITION_DEACTIVATE', 'active', 'deactivating'),
    ('transition_success', 'TRANSITION_ON_DEACTIVATE_SUCCESS', 'deactivating', 'inactive'),
    ('transition_failure', 'TRANSITION_ON_DEACTIVATE_FAILURE', 'deactivating', 'active'),
    ('transition_error', 'TRANSITION_ON_DEACTIVATE_ERROR', 'deactivating', 'errorprocessing'),
    ('shutdown', 'TRANSITION_UNCONFIGURED_SHUTDOWN', 'unconfigured', 'shuttingdown'),
    ('shutdown', 'TRANSITION_INACTIVE_SHUTDOWN', 'inactive', 'shuttingdown'),
    ('shutdown', 'TRANSITION_ACTIVE_SHUTDOWN', 'active', 'shuttingdown'),
    ('transition_success', 'TRANSITION_ON_SHUTDOWN_SUCCESS', 'shuttingdown', 'finalized'),
    ('transition_failure', 'TRANSITION_ON_SHUTDOWN_FAILURE', 'shuttingdown', 'finalized'),
    ('transition_error', 'TRANSITION_ON_SHUTDOWN_ERROR', 'shuttingdown', 'errorprocessing'),
    ('transition_success', 'TRANSITION_ON_ERROR_SUCCESS', 'errorprocessing', 'unconfigured'),
    ('transition_failure', 'TRANSITION_ON_ERROR_FAILURE', 'errorprocessing', 'finalized'),
    ('transition_error', 'TRANSITION_ON_ERROR_ERROR', 'errorprocessing', 'finalized'),
]
_STATE_CONSTANTS = {
    'unconfigured': 'PRIMARY_STATE_UNCONFIGURED', 'inactive': 'PRIMARY_STATE_INACTIVE',
    'active': 'PRIMARY_STATE_ACTIVE', 'finalized': 'PRIMARY_STATE_FINALIZED',
    'configuring': 'TRANSITION_STATE_CONFIGURING', 'cleaningup': 'TRANSITION_STATE_CLEANINGUP',
    'shuttingdown': 'TRANSITION_STATE_SHUTTINGDOWN',
    'activating': 'TRANSITION_STATE_ACTIVATING', 'deactivating': 'TRANSITION_STATE_DEACTIVATING',
    'errorprocessing': 'TRANSITION_STATE_ERRORPROCESSING',
}
# the transition state whose callback runs, and that callback (LifecycleNodeMixin.__init__)
_STATE_CALLBACKS = {'configuring': 'on_configure', 'cleaningup': 'on_cleanup',
                    'shuttingdown': 'on_shutdown', 'activating': 'on_activate',
                    'deactivating': 'on_deactivate', 'errorprocessing': 'on_error'}


class LifecycleStateMachine:
    """rclpy's ``_rclpy.LifecycleStateMachine`` over rcl_lifecycle's default state machine."""

    def __init__(self, world: 'RosWorld') -> None:
        state = world.msg('lifecycle_msgs/msg/State')
        transition = world.msg('lifecycle_msgs/msg/Transition')
        self.ids = {label: getattr(state, name) for label, name in _STATE_CONSTANTS.items()}
        self.transitions = [(label, getattr(transition, name), start, goal)
                            for label, name, start, goal in _TRANSITIONS]
        self.label = 'unconfigured'
        self.initialized = True
        self.history: List[str] = ['unconfigured']

    @property
    def current_state(self) -> Tuple[int, str]:
        return self.ids[self.label], self.label

    def _go(self, found: List[Tuple[str, int, str, str]]) -> None:
        if not found:
            # lifecycle.cpp: rcl_lifecycle_trigger_transition_by_* != RCL_RET_OK
            raise RCLError('Failed to trigger lifecycle state machine transition')
        self.label = found[0][3]
        self.history.append(self.label)

    def trigger_transition_by_id(self, transition_id: int, publish_update: bool) -> None:
        self._go([t for t in self.transitions if t[1] == transition_id and t[2] == self.label])

    def trigger_transition_by_label(self, label: str, publish_update: bool) -> None:
        self._go([t for t in self.transitions if t[0] == label and t[2] == self.label])

    def get_transition_by_label(self, label: str) -> int:
        found = [t for t in self.transitions if t[0] == label and t[2] == self.label]
        if not found:
            raise RCLError('Failed to get transition from label')
        return found[0][1]


def _lifecycle_module(world: 'RosWorld') -> Any:
    """
    rclpy.lifecycle as in ros2/rclpy humble = jazzy (rclpy/lifecycle/*.py, identical).

    ``TransitionCallbackReturn`` is the C extension's enum (SUCCESS 97, FAILURE 98,
    ERROR 99 with ``to_label``); a callback that raises is an ERROR (rclpy logs
    nothing); a callback that returns anything else breaks the transition with an
    AttributeError, leaving the machine in the transition state, as rclpy does. The
    default ``on_*`` callbacks call every managed entity (the lifecycle publishers) and
    raise TypeError for a return value of another type. ``LifecyclePublisher.publish``
    drops the message silently while deactivated (humble and jazzy: ``when_enabled``
    without ``when_not_enabled``); the stand-in counts such messages in
    ``world.dropped_inactive`` so a test can see the node tried.
    """
    Node = world.modules['rclpy.node'].Node
    transition_msg = world.msg('lifecycle_msgs/msg/Transition')

    class TransitionCallbackReturn(enum.Enum):
        """_rclpy.TransitionCallbackReturnType (lifecycle.cpp)."""

        SUCCESS = transition_msg.TRANSITION_CALLBACK_SUCCESS
        FAILURE = transition_msg.TRANSITION_CALLBACK_FAILURE
        ERROR = transition_msg.TRANSITION_CALLBACK_ERROR

        def to_label(self) -> str:
            return {'SUCCESS': 'transition_success', 'FAILURE': 'transition_failure',
                    'ERROR': 'transition_error'}[self.name]

    class LifecycleState(NamedTuple):
        """rclpy.lifecycle.LifecycleState."""

        label: str
        state_id: int

    class ManagedEntity:
        """rclpy.lifecycle.ManagedEntity: every callback SUCCESS."""

        def on_configure(self, state: Any) -> Any:
            return TransitionCallbackReturn.SUCCESS

        def on_cleanup(self, state: Any) -> Any:
            return TransitionCallbackReturn.SUCCESS

        def on_shutdown(self, state: Any) -> Any:
            return TransitionCallbackReturn.SUCCESS

        def on_activate(self, state: Any) -> Any:
            return TransitionCallbackReturn.SUCCESS

        def on_deactivate(self, state: Any) -> Any:
            return TransitionCallbackReturn.SUCCESS

        def on_error(self, state: Any) -> Any:
            return TransitionCallbackReturn.SUCCESS

    class LifecyclePublisher(ManagedEntity, Publisher):
        """rclpy.lifecycle.LifecyclePublisher: publishes only while activated."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._enabled = False
            Publisher.__init__(self, *args, **kwargs)

        def on_activate(self, state: Any) -> Any:
            self._enabled = True
            return TransitionCallbackReturn.SUCCESS

        def on_deactivate(self, state: Any) -> Any:
            self._enabled = False
            return TransitionCallbackReturn.SUCCESS

        @property
        def is_activated(self) -> bool:
            return self._enabled

        def publish(self, msg: Any) -> None:
            if not self._enabled:
                with world.lock:
                    world.dropped_inactive.setdefault(self.topic, []).append(msg)
                return
            Publisher.publish(self, msg)

    class LifecycleNodeMixin(ManagedEntity):
        """rclpy.lifecycle.LifecycleNodeMixin (use with Node, as LifecycleNode does)."""

        def __init__(self, *, enable_communication_interface: bool = True,
                     callback_group: Any = None) -> None:
            self._managed_entities: set = set()
            self._state_machine = LifecycleStateMachine(world)
            self._lifecycle_callbacks = {state: getattr(self, name)
                                         for state, name in _STATE_CALLBACKS.items()}
            if enable_communication_interface:
                srv = world.factory.service
                name = self.get_fully_qualified_name()
                world.services[f'{name}/change_state'] = Service(
                    srv('lifecycle_msgs/srv/ChangeState'), f'{name}/change_state',
                    self._on_change_state, callback_group)
                world.services[f'{name}/get_state'] = Service(
                    srv('lifecycle_msgs/srv/GetState'), f'{name}/get_state',
                    self._on_get_state, callback_group)

        def trigger_configure(self) -> Any:
            return self._change_state(transition_msg.TRANSITION_CONFIGURE)

        def trigger_cleanup(self) -> Any:
            return self._change_state(transition_msg.TRANSITION_CLEANUP)

        def trigger_activate(self) -> Any:
            return self._change_state(transition_msg.TRANSITION_ACTIVATE)

        def trigger_deactivate(self) -> Any:
            return self._change_state(transition_msg.TRANSITION_DEACTIVATE)

        def trigger_shutdown(self) -> Any:
            current = self._state_machine.current_state[1]
            ids = {'unconfigured': transition_msg.TRANSITION_UNCONFIGURED_SHUTDOWN,
                   'inactive': transition_msg.TRANSITION_INACTIVE_SHUTDOWN,
                   'active': transition_msg.TRANSITION_ACTIVE_SHUTDOWN}
            if current not in ids:
                raise RCLError('Shutdown transtion not possible')
            return self._change_state(ids[current])

        def add_managed_entity(self, entity: Any) -> None:
            if not isinstance(entity, ManagedEntity):
                raise TypeError('Expected a rclpy.lifecycle.ManagedEntity instance.')
            self._managed_entities.add(entity)

        def _entities(self, callback_name: str, state: Any) -> Any:
            for entity in self._managed_entities:
                ret = getattr(entity, callback_name)(state)
                if not isinstance(ret, TransitionCallbackReturn):
                    raise TypeError(f'{callback_name}() return value of class {type(entity)} '
                                    'should be `TransitionCallbackReturn`.')
                if ret != TransitionCallbackReturn.SUCCESS:
                    return ret
            return TransitionCallbackReturn.SUCCESS

        def on_configure(self, state: Any) -> Any:
            return self._entities('on_configure', state)

        def on_cleanup(self, state: Any) -> Any:
            return self._entities('on_cleanup', state)

        def on_shutdown(self, state: Any) -> Any:
            return self._entities('on_shutdown', state)

        def on_activate(self, state: Any) -> Any:
            return self._entities('on_activate', state)

        def on_deactivate(self, state: Any) -> Any:
            return self._entities('on_deactivate', state)

        def on_error(self, state: Any) -> Any:
            return self._entities('on_error', state)

        def create_lifecycle_publisher(self, *args: Any, **kwargs: Any) -> Any:
            if 'publisher_class' in kwargs:
                raise TypeError('create_publisher() got an unexpected keyword argument '
                                "'publisher_class'")
            publisher = Node.create_publisher(self, *args, **kwargs,
                                              publisher_class=LifecyclePublisher)
            self._managed_entities.add(publisher)
            return publisher

        def destroy_lifecycle_publisher(self, publisher: Any) -> bool:
            self._managed_entities.discard(publisher)
            return Node.destroy_publisher(self, publisher)

        def _execute_callback(self, previous: Any) -> Any:
            callback = self._lifecycle_callbacks.get(self._state_machine.label)
            if callback is None:
                return TransitionCallbackReturn.SUCCESS
            try:
                return callback(previous)
            except Exception:
                return TransitionCallbackReturn.ERROR

        def _change_state(self, transition_id: int) -> Any:
            state_id, label = self._state_machine.current_state
            initial = LifecycleState(label=label, state_id=state_id)
            self._state_machine.trigger_transition_by_id(transition_id, True)
            code = self._execute_callback(initial)
            self._state_machine.trigger_transition_by_label(code.to_label(), True)
            if code == TransitionCallbackReturn.ERROR:
                error_code = self._execute_callback(initial)
                self._state_machine.trigger_transition_by_label(error_code.to_label(), True)
            return code

        def _on_change_state(self, request: Any, response: Any) -> Any:
            transition_id = request.transition.id
            if request.transition.label:
                try:
                    transition_id = self._state_machine.get_transition_by_label(
                        request.transition.label)
                except RCLError:
                    response.success = False
                    return response
            code = self._change_state(transition_id)
            response.success = code == TransitionCallbackReturn.SUCCESS
            return response

        def _on_get_state(self, request: Any, response: Any) -> Any:
            response.current_state.id, response.current_state.label = \
                self._state_machine.current_state
            return response

    class LifecycleNode(LifecycleNodeMixin, Node):
        """rclpy.lifecycle.LifecycleNode."""

        def __init__(self, node_name: str, *, enable_communication_interface: bool = True,
                     **kwargs: Any) -> None:
            Node.__init__(self, node_name, **kwargs)
            LifecycleNodeMixin.__init__(
                self, enable_communication_interface=enable_communication_interface)

    module = types.ModuleType('rclpy.lifecycle')
    for name, value in (('LifecycleNode', LifecycleNode), ('Node', LifecycleNode),
                        ('LifecycleNodeMixin', LifecycleNodeMixin),
                        ('NodeMixin', LifecycleNodeMixin),
                        ('LifecycleState', LifecycleState), ('State', LifecycleState),
                        ('LifecyclePublisher', LifecyclePublisher),
                        ('Publisher', LifecyclePublisher), ('ManagedEntity', ManagedEntity),
                        ('TransitionCallbackReturn', TransitionCallbackReturn)):
        setattr(module, name, value)
    return module


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
            # as cv_bridge core.py (humble, rolling): a view of step / channels columns,
            # sliced to the width: a step given in pixels silently gives a narrower image
            image = np.ndarray(shape=(img_msg.height, img_msg.step // count, count),
                               dtype=np.uint8, buffer=bytes(img_msg.data))
            image = np.ascontiguousarray(image[:img_msg.height, :img_msg.width, :])
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


# --- rcl's command line -----------------------------------------------------------------

_RCL_TRUE = {'Y', 'y', 'yes', 'Yes', 'YES', 'true', 'True', 'TRUE', 'on', 'On', 'ON'}
_RCL_FALSE = {'N', 'n', 'no', 'No', 'NO', 'false', 'False', 'FALSE', 'off', 'Off', 'OFF'}
_RCL_SPECIAL_FLOATS = {'.nan', '.NaN', '.NAN', '.inf', '.Inf', '.INF', '+.inf', '+.Inf',
                       '+.INF', '-.inf', '-.Inf', '-.INF'}
# strtoll(value, &end, 0) consuming the whole text: decimal, 0x hex, 0 octal
_STRTOLL = re.compile(r'\s*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)')
# strtod consuming the whole text: decimal (with exponent), hex float, inf/infinity/nan
_STRTOD = re.compile(r'\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|0[xX][0-9a-fA-F.]+'
                     r'([pP][+-]?\d+)?|(?i:inf(inity)?|nan))')


def rcl_scalar(text: str, quoted: bool) -> Any:
    """
    Return the value rcl gives one YAML scalar of a parameter rule.

    rcl_yaml_param_parser ``get_value`` (ros2/rcl humble and jazzy, src/parse.c): a
    quoted scalar is a string; otherwise the words Y/y/yes/true/on... are booleans, what
    ``strtoll(value, &end, 0)`` reads to the end is an integer (``0x10`` 16, ``010``
    8), what ``strtod`` reads to the end a double (``1e3``, ``inf``, ``nan``), and
    anything else a string. Not YAML 1.1 (PyYAML): ``010`` is not 10, ``1_0`` is a
    string, ``.5`` a double.
    """
    if quoted:
        return text
    if text in _RCL_TRUE:
        return True
    if text in _RCL_FALSE:
        return False
    if _STRTOLL.fullmatch(text):
        return int(text.strip(), 0) if not re.fullmatch(r'\s*[+-]?0[0-7]+', text) \
            else int(text.strip(), 8)
    if text in _RCL_SPECIAL_FLOATS:
        return float(text.replace('.', ''))
    if _STRTOD.fullmatch(text):
        body = text.strip()
        return float.fromhex(body) if 'x' in body.lower() else float(body)
    return text


def rcl_parameter_value(text: str) -> Any:
    """Return the value of ``-p name:=TEXT`` as rcl parses it (a scalar or a flat list)."""
    node = yaml.compose(text) if text.strip() else None
    if node is None:
        raise ValueError(f'rcl: empty parameter value in {text!r}')
    if isinstance(node, yaml.SequenceNode):
        items = [rcl_scalar(item.value, item.style in ("'", '"')) for item in node.value]
        if len({type(item) for item in items}) > 1:
            raise ValueError(f'rcl: sequence {text!r} mixes types')
        return items
    if not isinstance(node, yaml.ScalarNode):
        raise ValueError(f'rcl: {text!r} is not a parameter value')
    return rcl_scalar(node.value, node.style in ("'", '"'))


def ros_param_rules(args: List[str]) -> List[Tuple[str, Any]]:
    """
    Return the ``(name, value)`` of each ``-p``/``--param`` rule of a command line.

    As rcl_parse_arguments (ros2/rcl rcl/src/rcl/arguments.c) reads them: only between
    ``--ros-args`` and ``--`` (or the end); elsewhere ``-p`` belongs to the program.
    """
    rules: List[Tuple[str, Any]] = []
    in_ros_args = False
    index = 0
    while index < len(args):
        word = args[index]
        if word == '--ros-args':
            in_ros_args = True
        elif word == '--' and in_ros_args:
            in_ros_args = False
        elif in_ros_args and word in ('-p', '--param') and index + 1 < len(args):
            rule = args[index + 1]
            name, separator, text = rule.partition(':=')
            if not separator or not name:
                raise ValueError(f"rcl: couldn't parse parameter override rule {rule!r}")
            rules.append((name, rcl_parameter_value(text)))
            index += 1
        index += 1
    return rules


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
        self.dropped_inactive: Dict[str, List[Any]] = {}  # LifecyclePublisher, deactivated
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
                        'vision_msgs', 'diagnostic_msgs', 'rcl_interfaces', 'lifecycle_msgs',
                        'nav_msgs', 'tf2_msgs'):
            self._module(package)
            self._module(f'{package}.msg', **message_module(self.factory, package))
        self._module('std_srvs')
        self._module('std_srvs.srv', SetBool=self.factory.service('std_srvs/srv/SetBool'))
        self._module('lifecycle_msgs.srv', **{
            name: self.factory.service(f'lifecycle_msgs/srv/{name}')
            for name in ('ChangeState', 'GetState')})
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
                     InvalidQoSProfileException=InvalidQoSProfileException,
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
        self.modules['rclpy.lifecycle'] = _lifecycle_module(self)

        def init(*, args: Optional[List[str]] = None, context: Any = None) -> None:
            world.context = Context()
            parameter = self.modules['rclpy.parameter'].Parameter
            for name, value in ros_param_rules(list(args or [])):
                world.global_overrides[name] = parameter(name, value=value)

        def try_shutdown(*, context: Any = None) -> None:
            (context or world.context).try_shutdown()

        logging_module = self._module('rclpy.logging',
                                      get_logger=lambda name: Logger(name, world))
        rclpy = self._module('rclpy', init=init, try_shutdown=try_shutdown,
                             logging=logging_module)
        for sub in ('node', 'parameter', 'exceptions', 'callback_groups', 'clock', 'qos',
                    'executors', 'lifecycle', 'time', 'duration'):
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

    def change_state(self, node_name: str, label: str) -> bool:
        """Call ``<node>/change_state`` as ``ros2 lifecycle set`` does; return its success."""
        service = self.services[f'{node_name}/change_state']
        transition = self.msg('lifecycle_msgs/msg/Transition')(label=label)
        return bool(self.call(service.name, service.srv_type.Request(transition=transition))
                    .success)

    def lifecycle_state(self, node_name: str) -> str:
        """Return the label of the node's state (``<node>/get_state``)."""
        service = self.services[f'{node_name}/get_state']
        return str(self.call(service.name, service.srv_type.Request()).current_state.label)

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
