"""The TensorRT version policy: precisions, typing modes, batch profiles, deprecations."""

from dataclasses import dataclass
import re
from typing import Any, List, Tuple

from leaf_disease_ros.perception.errors import ConfigError


PRECISIONS = ('fp32', 'fp16', 'int8')


DEFAULT_PRECISION = 'fp16'


TYPING_MODES = ('auto', 'weak', 'strong')


DEFAULT_BATCH_PROFILE = (1, 6, 16)


MAX_PROFILE_BATCH = 1024  # the max_batch parameter's own upper bound


# First TensorRT versions where the weakly typed precision flags and the INT8 calibrator
# are deprecated (warnings) and removed (AttributeError). NVIDIA's deprecation list puts
# the calibrator classes at 10.1 and weak typing (BuilderFlag.FP16/INT8) at 10.12.
CALIBRATOR_DEPRECATED_IN = (10, 1)


WEAK_TYPING_DEPRECATED_IN = (10, 12)


WEAK_TYPING_REMOVED_IN = (11, 0)


SUPPORTED_TENSORRT_MAJOR = 10


@dataclass(frozen=True)
class BatchProfile:
    """The dynamic batch range an engine is built for (inclusive)."""

    min_batch: int
    opt_batch: int
    max_batch: int

    def as_tuple(self) -> Tuple[int, int, int]:
        """Return ``(min, opt, max)``."""
        return (self.min_batch, self.opt_batch, self.max_batch)


_VERSION_RE = re.compile(r'^(\d+)(?:\.(\d+))?(?:\.(\d+))?')


def parse_tensorrt_version(version: str) -> Tuple[int, int, int]:
    """
    Return ``(major, minor, patch)`` of a TensorRT version string such as ``10.3.0.30``.

    :raises ValueError: the string does not start with a number.
    """
    match = _VERSION_RE.match(str(version).strip())
    if not match:
        raise ValueError(f'{version!r} is not a TensorRT version (e.g. 10.3.0)')
    major, minor, patch = (int(g) if g else 0 for g in match.groups())
    return (major, minor, patch)


def validate_batch_profile(min_batch: Any, opt_batch: Any, max_batch: Any,
                           limit: int = MAX_PROFILE_BATCH) -> BatchProfile:
    """
    Return the profile if ``1 <= min <= opt <= max <= limit`` (all integers).

    :raises ConfigError: naming the offending flag (``min_batch``, ``opt_batch``,
        ``max_batch``) and the rule it breaks.
    """
    values = {'min_batch': min_batch, 'opt_batch': opt_batch, 'max_batch': max_batch}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f'expected an integer, got {value!r}')
        if not 1 <= value <= limit:
            raise ConfigError(name, f'{value} is outside 1..{limit}')
    if min_batch > opt_batch:
        raise ConfigError('opt_batch', f'{opt_batch} is below min_batch {min_batch}; '
                          'need min <= opt <= max')
    if opt_batch > max_batch:
        raise ConfigError('max_batch', f'{max_batch} is below opt_batch {opt_batch}; '
                          'need min <= opt <= max')
    return BatchProfile(min_batch, opt_batch, max_batch)


@dataclass(frozen=True)
class PrecisionPlan:
    """
    How to build a precision with the installed TensorRT.

    ``strongly_typed``: create the network with ``NetworkDefinitionCreationFlag.
    STRONGLY_TYPED`` (precision comes from the ONNX tensor types: an FP16 ONNX for
    ``fp16``); otherwise set the weakly typed ``BuilderFlag`` s in ``flags``.
    ``fp16_onnx``: the ONNX must be converted to FP16 (float32 inputs and outputs
    kept) first. ``calibrator``: INT8 needs the entropy calibrator. ``notes`` are
    printed to the operator (deprecations, what is done instead).
    """

    precision: str
    strongly_typed: bool
    flags: Tuple[str, ...]
    fp16_onnx: bool
    calibrator: bool
    notes: Tuple[str, ...]


def precision_plan(tensorrt_version: str, precision: str, typing: str = 'auto') -> PrecisionPlan:
    """
    Decide how to build ``precision`` with TensorRT ``tensorrt_version``.

    ``typing``: ``auto`` (strong typing from TensorRT 10.12 on, where the precision
    flags are deprecated; weak before), ``weak`` or ``strong``.

    :raises ConfigError: the combination cannot be built with this TensorRT (e.g. INT8
        calibration on TensorRT 11, which removed it; weak typing on TensorRT 11;
        TensorRT older than 10); the message says what to do instead.
    """
    if precision not in PRECISIONS:
        raise ConfigError('precision', f'{precision!r} is not one of {", ".join(PRECISIONS)}')
    if typing not in TYPING_MODES:
        raise ConfigError('typing', f'{typing!r} is not one of {", ".join(TYPING_MODES)}')
    try:
        version = parse_tensorrt_version(tensorrt_version)
    except ValueError as exc:
        raise ConfigError('tensorrt', str(exc)) from exc
    if version[0] < SUPPORTED_TENSORRT_MAJOR:
        raise ConfigError('tensorrt', f'TensorRT {tensorrt_version} is installed; this tool '
                          'uses the TensorRT 10 API: JetPack 6.1 or newer on a Jetson (JetPack '
                          '6.0 ships TensorRT 8.6, JetPack 5 TensorRT 8.5), or a TensorRT 10 '
                          'wheel on a PC; until then run the node with backend: onnxruntime')
    removed = version >= WEAK_TYPING_REMOVED_IN
    deprecated = version >= WEAK_TYPING_DEPRECATED_IN
    notes: List[str] = []
    if precision == 'int8':
        if removed:
            raise ConfigError(
                'precision', f'TensorRT {tensorrt_version} removed implicit INT8 (BuilderFlag.'
                'INT8 and the calibrator). Build --precision fp16 (strongly typed), or quantize '
                'the ONNX with Q/DQ nodes (NVIDIA TensorRT Model Optimizer) and build that '
                'with --precision fp32')
        if typing == 'strong':
            raise ConfigError('typing', 'INT8 calibration needs a weakly typed network; use '
                              '--typing auto or weak, or build --precision fp16 strongly typed')
        if version >= CALIBRATOR_DEPRECATED_IN:
            what = ('the INT8 calibrator (since 10.1) and the weakly typed precision flags '
                    '(since 10.12); TensorRT 11 removes them' if deprecated else
                    'the INT8 calibrator (since 10.1); TensorRT 11 removes it')
            notes.append(f'TensorRT {tensorrt_version} deprecates {what}. This INT8 build '
                         'still works here; plan on --precision fp16 or a Q/DQ-quantized ONNX.')
        return PrecisionPlan('int8', False, ('INT8', 'FP16'), False, True, tuple(notes))
    strong = typing == 'strong' or (typing == 'auto' and deprecated)
    if typing == 'weak' and removed:
        raise ConfigError('typing', f'TensorRT {tensorrt_version} has no weakly typed '
                          'networks; use --typing auto or strong')
    if typing == 'weak' and deprecated:
        notes.append(f'TensorRT {tensorrt_version} deprecates weakly typed precision flags; '
                     'building weakly typed because --typing weak was given')
    if precision == 'fp32':
        return PrecisionPlan('fp32', strong, (), False, False, tuple(notes))
    if strong:
        if typing == 'auto':
            notes.append(f'TensorRT {tensorrt_version}: BuilderFlag.FP16 is '
                         + ('removed' if removed else 'deprecated') +
                         '; building a strongly typed network from an FP16 copy of the ONNX '
                         '(float32 input and output kept) instead')
        return PrecisionPlan('fp16', True, (), True, False, tuple(notes))
    return PrecisionPlan('fp16', False, ('FP16',), False, False, tuple(notes))
