r"""
rosidl-like Python message classes generated from the real ROS 2 message definitions.

A STAND-IN for the classes ``rosidl_generator_py`` generates, for tests that run the
node without ROS. The field names, types, order, constants and bounds come from a
rosbags type store (``rosbags.typesys``: the ROS 2 Humble or Jazzy definitions it
ships, plus vision_msgs 4.x registered by ``leaf_disease_ros.replay.typestore``), so
they are the real ones; what the generated classes do is modelled on
``rosidl_generator_py/resource/_msg.py.em`` (humble branch):

- keyword-only construction, every field defaulted (numbers 0, strings '', nested
  messages default-constructed, fixed numeric arrays ``numpy.zeros``, numeric
  sequences ``array.array``); an unknown keyword is an error;
- every assignment is type-checked as the generated setters do under ``__debug__``:
  ``float`` for float32/float64 (an ``int`` is rejected), ``int`` within range for
  integer types, ``bytes`` of length 1 for ``byte``, the exact class for nested
  messages, length and element type for arrays and bounded sequences;
- ``byte`` constants are ``bytes`` (``DiagnosticStatus.OK == b'\\x00'``), as in rclpy;
- equality field by field.

Field defaults other than zero (``int8 status -2`` of Jazzy's NavSatStatus) are not in
the rosbags definitions; :data:`FIELD_DEFAULTS` lists the ones the node meets, from the
``.msg`` files. :func:`to_rosbags` converts an instance to the rosbags class so a test
can serialise what the node published to CDR with the real layout.
"""

import array
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

# (typename, field) -> default, from the .msg files (ros2/common_interfaces jazzy:
# sensor_msgs/msg/NavSatStatus.msg "int8 status -2 # STATUS_UNKNOWN")
FIELD_DEFAULTS = {
    'jazzy': {('sensor_msgs/msg/NavSatStatus', 'status'): -2},
    'humble': {},
}
# services are not in the rosbags stores: ros2/common_interfaces std_srvs/srv/SetBool.srv,
# ros2/rcl_interfaces lifecycle_msgs/srv/ChangeState.srv and GetState.srv (humble = jazzy);
# ros2/geometry2 tf2_msgs/srv/FrameGraph.srv (an empty request)
SERVICES = {
    'std_srvs/srv/SetBool': ('bool data\n', 'bool success\nstring message\n'),
    'lifecycle_msgs/srv/ChangeState': ('lifecycle_msgs/Transition transition\n',
                                       'bool success\n'),
    'lifecycle_msgs/srv/GetState': ('', 'lifecycle_msgs/State current_state\n'),
    'tf2_msgs/srv/FrameGraph': ('', 'string frame_yaml\n'),
}

_INT_RANGES = {
    'int8': (-2**7, 2**7 - 1), 'uint8': (0, 2**8 - 1), 'int16': (-2**15, 2**15 - 1),
    'uint16': (0, 2**16 - 1), 'int32': (-2**31, 2**31 - 1), 'uint32': (0, 2**32 - 1),
    'int64': (-2**63, 2**63 - 1), 'uint64': (0, 2**64 - 1), 'char': (0, 255),
}
_FLOATS = ('float32', 'float64')
_NUMPY = {'float32': np.float32, 'float64': np.float64, 'int8': np.int8, 'uint8': np.uint8,
          'int16': np.int16, 'uint16': np.uint16, 'int32': np.int32, 'uint32': np.uint32,
          'int64': np.int64, 'uint64': np.uint64}
_ARRAY_CODES = {'float32': 'f', 'float64': 'd', 'int8': 'b', 'uint8': 'B', 'int16': 'h',
                'uint16': 'H', 'int32': 'i', 'uint32': 'I', 'int64': 'q', 'uint64': 'Q'}
# rosbags node types
_BASE, _NAME, _ARRAY, _SEQUENCE = 1, 2, 3, 4


def make_store(distro: str = 'humble') -> Any:
    """Return the rosbags type store of ``distro`` with vision_msgs 4.x and std_srvs."""
    from rosbags.typesys import get_types_from_msg, get_typestore, Stores

    from leaf_disease_ros.replay.typestore import VISION_MSGS_4

    store = get_typestore({'humble': Stores.ROS2_HUMBLE, 'jazzy': Stores.ROS2_JAZZY}[distro])
    extra: Dict[str, Any] = {}
    for name, text in VISION_MSGS_4.items():
        extra.update(get_types_from_msg(text, name))
    for name, (request, response) in SERVICES.items():
        msg_name = name.replace('/srv/', '/msg/')  # rosbags registers services' parts as msgs
        extra.update(get_types_from_msg(request, msg_name + '_Request'))
        extra.update(get_types_from_msg(response, msg_name + '_Response'))
    store.register(extra)
    return store


class MessageFactory:
    """Builds (and caches) the rosidl-like class of every type of a rosbags type store."""

    def __init__(self, store: Any, distro: str = 'humble') -> None:
        self.store = store
        self.distro = distro
        self._classes: Dict[str, type] = {}

    def get(self, typename: str) -> type:
        """Return the class of ``typename`` (``sensor_msgs/msg/Image``)."""
        if typename not in self._classes:
            self._classes[typename] = self._build(typename)
        return self._classes[typename]

    # --- building ------------------------------------------------------------------

    def _base_check(self, base: str, field: str) -> Callable[[Any], Any]:
        if base == 'bool':
            def check(value: Any) -> Any:
                _require(isinstance(value, bool), field, "of type 'bool'")
                return value
        elif base == 'byte':
            def check(value: Any) -> Any:
                _require(isinstance(value, bytes) and len(value) == 1, field,
                         "of type 'bytes' or 'ByteString' with length 1")
                return value
        elif base == 'string':
            def check(value: Any) -> Any:
                _require(isinstance(value, str), field, "of type 'str'")
                return value
        elif base in _FLOATS:
            def check(value: Any) -> Any:
                _require(isinstance(value, float), field, "of type 'float'")
                return value
        elif base in _INT_RANGES:
            low, high = _INT_RANGES[base]

            def check(value: Any) -> Any:
                _require(isinstance(value, int) and low <= value <= high, field,
                         f"of type 'int' within [{low}, {high}]")
                return value
        else:
            raise KeyError(f'unknown base type {base!r}')
        return check

    def _default(self, typename: str, field: str, node: Tuple[Any, Any]) -> Any:
        kind, spec = int(node[0]), node[1]
        special = FIELD_DEFAULTS.get(self.distro, {}).get((typename, field))
        if special is not None:
            return special
        if kind == _BASE:
            base = spec[0]
            return {'bool': False, 'byte': b'\x00', 'string': ''}.get(
                base, 0.0 if base in _FLOATS else 0)
        if kind == _NAME:
            return self.get(spec)()
        element, count = spec
        if int(element[0]) == _BASE and element[1][0] in _NUMPY:
            if kind == _ARRAY:
                return np.zeros(count, dtype=_NUMPY[element[1][0]])
            return array.array(_ARRAY_CODES[element[1][0]])
        if kind == _ARRAY:
            return [self._default(typename, field, element) for _ in range(count)]
        return []

    def _checker(self, field: str, node: Tuple[Any, Any]) -> Callable[[Any], Any]:
        kind, spec = int(node[0]), node[1]
        if kind == _BASE:
            return self._base_check(spec[0], field)
        if kind == _NAME:
            def check_nested(value: Any) -> Any:
                _require(isinstance(value, self.get(spec)), field, f'an instance of {spec}')
                return value
            return check_nested
        element, count = spec
        fixed = kind == _ARRAY
        numeric = int(element[0]) == _BASE and element[1][0] in _NUMPY
        item = self._checker(field, element)

        def check_collection(value: Any) -> Any:
            if numeric and fixed and isinstance(value, np.ndarray):
                _require(value.dtype == _NUMPY[element[1][0]] and value.size == count, field,
                         f'a numpy.ndarray of dtype {element[1][0]} and size {count}')
                return value
            if numeric and not fixed and isinstance(value, array.array):
                _require(value.typecode == _ARRAY_CODES[element[1][0]], field,
                         f'an array.array of typecode {_ARRAY_CODES[element[1][0]]!r}')
                return value
            _require(not isinstance(value, str) and hasattr(value, '__len__')
                     and hasattr(value, '__iter__'), field, 'a set or sequence')
            values = list(value)
            if fixed:
                _require(len(values) == count, field, f'a sequence of length {count}')
            elif count:
                _require(len(values) <= count, field, f'a sequence of length <= {count}')
            if numeric and element[1][0] in _FLOATS:
                # rosidl: every value of type 'float' (ints are rejected)
                values = [item(float(v)) if isinstance(v, np.floating) else item(v)
                          for v in values]
            else:
                values = [item(int(v)) if numeric and isinstance(v, np.integer) else item(v)
                          for v in values]
            if numeric and fixed:
                return np.array(values, dtype=_NUMPY[element[1][0]])
            if numeric:
                return array.array(_ARRAY_CODES[element[1][0]], values)
            return values
        return check_collection

    def _build(self, typename: str) -> type:
        constants, fields = self.store.fielddefs[typename]
        names = [name for name, _ in fields]
        defaults = dict(fields)
        checkers = {name: self._checker(name, node) for name, node in fields}
        factory = self

        def __init__(self: Any, **kwargs: Any) -> None:
            unknown = sorted(set(kwargs) - set(names))
            if unknown:
                raise AssertionError('Invalid arguments passed to constructor: '
                                     + ', '.join(unknown))
            for name in names:
                if name in kwargs:
                    setattr(self, name, kwargs[name])
                else:
                    object.__setattr__(self, '_' + name,
                                       factory._default(typename, name, defaults[name]))

        def __eq__(self: Any, other: Any) -> bool:
            if not isinstance(other, type(self)):
                return False
            for name in names:
                mine, theirs = getattr(self, name), getattr(other, name)
                if isinstance(mine, np.ndarray) or isinstance(theirs, np.ndarray):
                    if not np.array_equal(np.asarray(mine), np.asarray(theirs)):
                        return False
                elif mine != theirs:
                    return False
            return True

        def __repr__(self: Any) -> str:
            inner = ', '.join(f'{name}={getattr(self, name)!r}' for name in names)
            return f"{typename.replace('/msg/', '.msg.')}({inner})"

        def get_fields_and_field_types(cls: Any) -> Dict[str, str]:
            return {name: str(defaults[name]) for name in names}

        namespace: Dict[str, Any] = {
            '__slots__': tuple('_' + name for name in names), '__init__': __init__,
            '__eq__': __eq__, '__repr__': __repr__, '__hash__': None,
            '__msgtype__': typename,
            'get_fields_and_field_types': classmethod(get_fields_and_field_types),
            '_fields_and_field_types': {name: str(defaults[name]) for name in names},
        }
        for name in names:
            namespace[name] = _property(name, checkers[name])
        for name, base, value in constants:
            namespace[name] = bytes([value]) if base == 'byte' else value
        return type(typename.split('/')[-1], (), namespace)

    def service(self, typename: str) -> type:
        """Return a service type (``std_srvs/srv/SetBool``) with Request and Response."""
        msg_name = typename.replace('/srv/', '/msg/')
        return type(typename.split('/')[-1], (), {
            'Request': self.get(msg_name + '_Request'),
            'Response': self.get(msg_name + '_Response'),
            '__srvtype__': typename})


def _require(condition: bool, field: str, what: str) -> None:
    if not condition:
        raise AssertionError(f"The '{field}' field must be {what}")


def _property(name: str, check: Callable[[Any], Any]) -> property:
    slot = '_' + name

    def getter(self: Any) -> Any:
        return getattr(self, slot)

    def setter(self: Any, value: Any) -> None:
        object.__setattr__(self, slot, check(value))

    return property(getter, setter)


def to_rosbags(message: Any, store: Any) -> Any:
    """Return ``message`` (a generated instance) as the rosbags class of its type."""
    typename = type(message).__msgtype__
    cls = store.types[typename]
    _, fields = store.fielddefs[typename]
    values: Dict[str, Any] = {}
    for name, node in fields:
        values[name] = _convert(getattr(message, name), node, store)
    return cls(**values)


def _convert(value: Any, node: Tuple[Any, Any], store: Any) -> Any:
    kind, spec = int(node[0]), node[1]
    if kind == _BASE:
        return value[0] if spec[0] == 'byte' else value
    if kind == _NAME:
        return to_rosbags(value, store)
    element = spec[0]
    if int(element[0]) == _BASE and element[1][0] in _NUMPY:
        return np.asarray(value, dtype=_NUMPY[element[1][0]])
    return [_convert(item, element, store) for item in value]


def message_module(factory: MessageFactory, package: str,
                   names: Optional[List[str]] = None) -> Dict[str, type]:
    """Return ``{ClassName: class}`` of the messages of ``package`` in the type store."""
    prefix = f'{package}/msg/'
    found = sorted(t for t in factory.store.fielddefs if t.startswith(prefix))
    wanted = [t for t in found if names is None or t[len(prefix):] in names]
    return {t[len(prefix):]: factory.get(t) for t in wanted}
