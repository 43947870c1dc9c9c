"""
How the node presents the parameter table to ROS and reviews live changes.

The table itself is :data:`leaf_disease_ros.perception.config.PARAMETERS`; this module adds
what the node needs on top of it, testable without ROS:

- :func:`ros_default` and :func:`ros_type_of`: rclpy types a parameter by its default
  unless its descriptor allows dynamic typing;
- :func:`descriptor_fields`: the content of each parameter's ``ParameterDescriptor``
  (description, range, constraints text, read-only, dynamic typing) that ``ros2 param
  describe`` shows. Doubles and double arrays are declared with ``dynamic_typing``, so
  ``ros2 param set /detector_node debug_image_rate_hz 5`` (an integer) and ``5`` in a
  params file are accepted: rclpy's static typing would reject them ("Wrong parameter
  type", ``rclpy/node.py`` ``_apply_descriptor``), while :func:`review_changes` and
  ``validate_parameters`` still reject anything that is not a number. Other types stay
  static; :func:`type_hint` completes rclpy's type error at start with how to write it;
- :func:`from_ros_value`: rclpy hands double arrays over as ``array.array``;
- :func:`review_changes`: a ``set_parameters`` request is accepted with the coerced
  values, or rejected as a whole with the reason; parameters that are not in the
  table (``use_sim_time``, QoS overrides) are accepted untouched;
- :func:`live_effects`: which parts of the running node an accepted change touches;
- :func:`check_overrides`: overrides (params file, ``-p``) that name no parameter of
  the table are an error at start, with the closest name (ROS would ignore them
  silently and leave the default in force); the rule is the parameter table's own
  strict reader, :func:`leaf_disease_ros.perception.config.strict_parameters`.
"""

from dataclasses import dataclass, fields
from typing import Any, Dict, FrozenSet, Iterable, Mapping, Optional, Sequence, Tuple

from leaf_disease_ros.perception.config import (BOOL, check_parameter_names, DetectorConfig,
                                                DOUBLE, DOUBLE_ARRAY, INT, PARAMETERS_BY_NAME,
                                                ParamSpec, STRING, validate_parameters,
                                                validate_value)
from leaf_disease_ros.perception.errors import ConfigError

#: live-change effects
EFFECT_DETECTOR = 'detector'        # DetectorConfig swapped into the pipeline
EFFECT_LABEL_INFO = 'label_info'    # ~/label_info re-published (threshold changed)
EFFECT_DEBUG_RATE = 'debug_rate'    # ~/debug_image rate limiter
EFFECT_REPLAY_ONLY = 'replay_only'  # accepted, used by the replay only
#: live parameters with no effect to apply: the node reads them from the values in force
#: at every diagnostics report
READ_AT_EACH_REPORT = frozenset(('latency_budget_ms', 'no_fix_warn_s',
                                 'domain_unknown_warn_fraction', 'domain_far_warn_fraction'))

_DETECTOR_FIELDS = frozenset(f.name for f in fields(DetectorConfig))
_REPLAY_PARAMETERS = frozenset(('merge_radius_m',))

_INTEGER_ARRAY = 'integer_array'
_BOOL_ARRAY = 'bool_array'
_STRING_ARRAY = 'string_array'


@dataclass(frozen=True)
class DescriptorFields:
    """What goes into one ``rcl_interfaces/ParameterDescriptor``."""

    name: str
    type: str  # noqa: A003 (a table type: bool, int, double, string, double_array)
    description: str
    additional_constraints: str
    read_only: bool
    integer_range: Optional[Tuple[int, int]] = None
    floating_point_range: Optional[Tuple[float, float]] = None
    dynamic_typing: bool = False  # doubles: whole numbers accepted, the node checks types


def ros_default(spec: ParamSpec) -> Any:
    """Return the default of ``spec`` with the Python type ROS infers the declared type from."""
    if spec.type == DOUBLE:
        return float(spec.default)
    if spec.type == INT:
        return int(spec.default)
    if spec.type == DOUBLE_ARRAY:
        return [float(v) for v in spec.default]
    return spec.default


def ros_type_of(value: Any) -> Optional[str]:
    """
    Return the ROS parameter type a Python value gets, in table terms.

    ``True`` is a bool (never an int); ``1`` an int; ``1.0`` a double; a list of floats
    a double array, a list of ints ``integer_array``. None when ROS has no type for it
    (an empty or mixed list, a dict).
    """
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return DOUBLE
    if isinstance(value, str):
        return STRING
    if isinstance(value, (list, tuple)) and value:
        if all(isinstance(v, bool) for v in value):
            return _BOOL_ARRAY
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return _INTEGER_ARRAY
        if all(isinstance(v, float) for v in value):
            return DOUBLE_ARRAY
        if all(isinstance(v, str) for v in value):
            return _STRING_ARRAY
    return None


def type_hint(spec: ParamSpec) -> str:
    """Return how to write a value of ``spec``'s type in a params file or on ``-p``."""
    default = ros_default(spec)
    if spec.type == DOUBLE:
        return f'write a number with a decimal point (1.0, not 1; default {default!r})'
    if spec.type == DOUBLE_ARRAY:
        return f'write a list of numbers with decimal points (e.g. {default!r})'
    if spec.type == INT:
        return f'write a whole number without a decimal point (e.g. {default!r})'
    if spec.type == BOOL:
        return 'write true or false'
    return f"write a string (quote it in YAML, e.g. '{default}')"


def descriptor_fields(spec: ParamSpec) -> DescriptorFields:
    """Return the descriptor content of one table row."""
    constraints = []
    integer_range = None
    floating_point_range = None
    if spec.choices is not None:
        constraints.append('one of: ' + ', '.join(spec.choices))
    if spec.min_value is not None and spec.max_value is not None:
        if spec.type == INT:
            integer_range = (int(spec.min_value), int(spec.max_value))
            constraints.append(f'within [{integer_range[0]}, {integer_range[1]}]')
        elif spec.type == DOUBLE:
            floating_point_range = (float(spec.min_value), float(spec.max_value))
            constraints.append(f'within [{spec.min_value:g}, {spec.max_value:g}]')
        elif spec.type == DOUBLE_ARRAY:
            constraints.append(f'{spec.array_length} numbers, each within '
                               f'[{spec.min_value:g}, {spec.max_value:g}]')
    if spec.read_only:
        constraints.append('read-only: set it at start (params file or -p), restart to change')
    else:
        constraints.append('can be changed at runtime (ros2 param set)')
    return DescriptorFields(name=spec.name, type=spec.type, description=spec.description,
                            additional_constraints='; '.join(constraints),
                            read_only=spec.read_only, integer_range=integer_range,
                            floating_point_range=floating_point_range,
                            dynamic_typing=spec.type in (DOUBLE, DOUBLE_ARRAY))


def from_ros_value(value: Any) -> Any:
    """Return a parameter value as plain Python (arrays as lists)."""
    if isinstance(value, (str, bytes, bool, int, float)) or value is None:
        return value
    if hasattr(value, 'tolist'):  # array.array, numpy arrays
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True)
class ChangeReview:
    """The answer to a parameter change request."""

    successful: bool
    reason: str
    updates: Mapping[str, Any]  # table parameters -> coerced values (empty if rejected)


def review_changes(changes: Sequence[Tuple[str, Any]],
                   current: Mapping[str, Any]) -> ChangeReview:
    """
    Review a (possibly multi-parameter, atomic) change against the values in force.

    :param changes: ``(name, value)`` pairs as requested; values as rclpy gives them.
    :param current: every table parameter's value in force.
    :returns: accepted with the coerced updates of table parameters (parameters not
        in the table are accepted and left out), or rejected with the reason naming
        the parameter.
    """
    proposed: Dict[str, Any] = dict(current)
    updates: Dict[str, Any] = {}
    try:
        for name, value in changes:
            spec = PARAMETERS_BY_NAME.get(name)
            if spec is None:
                continue  # not ours (use_sim_time, qos_overrides.*): accept
            if spec.read_only:
                raise ConfigError(name, 'is read-only at runtime; restart the node to '
                                        'change it')
            coerced = validate_value(name, from_ros_value(value))
            proposed[name] = coerced
            updates[name] = coerced
        if updates:
            validate_parameters(proposed)  # cross-field rules on the final set
    except ConfigError as exc:
        return ChangeReview(False, str(exc), {})
    return ChangeReview(True, '', updates)


def live_effects(updates: Mapping[str, Any]) -> FrozenSet[str]:
    """Return the ``EFFECT_*`` names an accepted change touches."""
    effects = set()
    for name in updates:
        if name in _DETECTOR_FIELDS:
            effects.add(EFFECT_DETECTOR)
        if name == 'unknown_threshold':
            effects.add(EFFECT_LABEL_INFO)
        if name == 'debug_image_rate_hz':
            effects.add(EFFECT_DEBUG_RATE)
        if name in _REPLAY_PARAMETERS:
            effects.add(EFFECT_REPLAY_ONLY)
    return frozenset(effects)


def check_overrides(names: Iterable[str]) -> None:
    """
    Refuse parameter overrides the node would never read (a typo in a params file).

    ROS ignores an override whose name no parameter is declared with, so a typo would
    silently leave the default in force. Names ROS itself declares (``use_sim_time``,
    ``qos_overrides.*``) are fine.

    :raises ConfigError: naming the first unknown parameter and the closest known one.
    """
    check_parameter_names(names, "the node's parameters (params file or -p)")
