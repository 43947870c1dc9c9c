"""
TensorRT engine bookkeeping that needs no GPU: names, sidecars, match rules, discovery.

An engine is only valid for the model it was built from, the TensorRT version that
built it and the GPU it was built on. This module owns the rules that decide
whether an engine on disk may be used, so that the build tool, the TensorRT
backend and the backend factory apply the same ones:

- file naming: ``<model>.<precision>.<smXY>.trt<version>.engine`` beside the ONNX
  model (:func:`engine_file_name`), the JSON sidecar ``<engine>.json`` beside it
  (:func:`sidecar_path_for_engine`), the per-machine timing cache and the
  per-model calibration cache names;
- the sidecar document (:class:`EngineSidecar`): ONNX sha256, TensorRT version, GPU
  name and compute capability, precision, batch profile, tensor names and shapes,
  workspace, build time and builder options; written atomically after the engine
  (:func:`write_sidecar`) and validated when read (:func:`read_sidecar`);
- match rules (:func:`sidecar_mismatches`, :func:`engine_io_mismatches`): every
  mismatch is reported as one human-readable string, never just the first;
- batch profile validation (:func:`validate_batch_profile`);
- engine discovery for a card on this machine (:func:`search_engines`);
- the text of the command that builds a missing engine (:func:`build_command`);
- the TensorRT version policy for precision flags, strong typing and the INT8
  calibrator (:func:`precision_plan`).

What this machine is (:class:`MachineInfo`) is probed by
:func:`leaf_disease_ros.inference.tensorrt_backend.probe_machine`; everything here
takes it as a plain value, so it is tested without TensorRT.
"""

from dataclasses import dataclass, field
import glob
import json
import math
import os
import re
import shlex
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from leaf_disease_ros.perception.atomic_io import atomic_write_json
from leaf_disease_ros.perception.errors import ConfigError, EngineMismatchError, ModelLoadError
from leaf_disease_ros.perception.model_card import load_card, ModelCard, sha256_file

SIDECAR_SCHEMA_VERSION = 1
ENGINE_EXTENSION = '.engine'
SIDECAR_SUFFIX = '.json'
PRECISIONS = ('fp32', 'fp16', 'int8')
DEFAULT_PRECISION = 'fp16'
TYPING_MODES = ('auto', 'weak', 'strong')
DEFAULT_BATCH_PROFILE = (1, 6, 16)
MAX_PROFILE_BATCH = 1024  # the max_batch parameter's own upper bound
BUILD_TOOL = 'leaf-disease-build-engine'
# First TensorRT versions where the weakly typed precision flags and the INT8 calibrator
# are deprecated (warnings) and removed (AttributeError). NVIDIA's deprecation list puts
# the calibrator classes at 10.1 and weak typing (BuilderFlag.FP16/INT8) at 10.12.
CALIBRATOR_DEPRECATED_IN = (10, 1)
WEAK_TYPING_DEPRECATED_IN = (10, 12)
WEAK_TYPING_REMOVED_IN = (11, 0)
SUPPORTED_TENSORRT_MAJOR = 10

_SHA256_RE = re.compile(r'^[0-9a-f]{64}$')
_VERSION_RE = re.compile(r'^(\d+)(?:\.(\d+))?(?:\.(\d+))?')
_ENGINE_NAME_RE = re.compile(r'^(?P<model>.+)\.(?P<precision>fp32|fp16|int8)\.(?P<sm>sm\d+)'
                             r'\.trt(?P<version>\d[^/]*)\.engine$')


@dataclass(frozen=True)
class MachineInfo:
    """What an engine depends on: TensorRT version, GPU name and compute capability."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: Tuple[int, int]

    def describe(self) -> str:
        """Return e.g. ``Orin (sm87), TensorRT 10.3.0``."""
        return (f'{self.gpu_name} ({sm_tag(self.compute_capability)}), '
                f'TensorRT {self.tensorrt_version}')


@dataclass(frozen=True)
class BatchProfile:
    """The dynamic batch range an engine is built for (inclusive)."""

    min_batch: int
    opt_batch: int
    max_batch: int

    def as_tuple(self) -> Tuple[int, int, int]:
        """Return ``(min, opt, max)``."""
        return (self.min_batch, self.opt_batch, self.max_batch)


@dataclass(frozen=True)
class TensorInfo:
    """
    One input or output tensor of a deserialised engine, as plain values.

    ``shape`` keeps ``-1`` for dynamic axes. ``profile`` is ``(min, opt, max)`` shapes
    of optimisation profile 0 for inputs, None for outputs. ``dtype`` is a numpy
    dtype name (``float32``, ``float16``...).
    """

    name: str
    is_input: bool
    shape: Tuple[int, ...]
    dtype: str
    profile: Optional[Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]] = None


@dataclass(frozen=True)
class EngineSidecar:
    """
    The JSON sidecar of an engine: what it was built from, for, and how.

    ``compute_capability`` is ``(major, minor)``; ``input_shape_chw`` is the input
    without its batch axis. ``builder_options`` is a free-form record of the build
    flags (timing cache, calibration, typing, DLA...); the match rules ignore it.
    """

    engine_file: str
    engine_sha256: str
    onnx_file: str
    onnx_sha256: str
    card_file: str
    model_name: str
    num_classes: int
    input_name: str
    input_shape_chw: Tuple[int, int, int]
    output_name: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: Tuple[int, int]
    precision: str
    batch_profile: BatchProfile
    workspace_mib: int
    build_seconds: float
    built_at_utc: str
    dla_core: Optional[int] = None
    builder_options: Mapping[str, Any] = field(default_factory=dict)
    path: Optional[str] = None  # where it was read from; not serialised

    @property
    def machine(self) -> MachineInfo:
        """Return the machine the engine was built on."""
        return MachineInfo(self.tensorrt_version, self.gpu_name, self.compute_capability)


@dataclass
class EngineSearch:
    """Outcome of :func:`search_engines`: the chosen engine and why others were not."""

    folder: str
    chosen: Optional[str] = None
    chosen_sidecar: Optional[EngineSidecar] = None
    rejected: List[Tuple[str, List[str]]] = field(default_factory=list)

    def rejection_lines(self) -> List[str]:
        """Return one line per rejected engine: ``<file>: <mismatch>; <mismatch>``."""
        return [f'{os.path.basename(path)}: {"; ".join(reasons)}'
                for path, reasons in self.rejected]


# --- names ------------------------------------------------------------------------

def sm_tag(compute_capability: Sequence[int]) -> str:
    """Return the compute capability tag of a GPU: ``(8, 7)`` -> ``sm87``."""
    major, minor = (int(v) for v in compute_capability)
    return f'sm{major}{minor}'


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


def model_stem(onnx_path: str) -> str:
    """Return the model name used in engine file names: the ONNX file name without .onnx."""
    return os.path.splitext(os.path.basename(onnx_path))[0]


def engine_file_name(model: str, precision: str, compute_capability: Sequence[int],
                     tensorrt_version: str) -> str:
    """
    Return ``<model>.<precision>.<smXY>.trt<version>.engine``.

    :raises ValueError: unknown precision, or a model name with a path separator.
    """
    if precision not in PRECISIONS:
        raise ValueError(f'precision {precision!r} is not one of {", ".join(PRECISIONS)}')
    if not model or os.sep in model or '/' in model:
        raise ValueError(f'model name {model!r} must be a plain file name stem')
    version = str(tensorrt_version).strip()
    return f'{model}.{precision}.{sm_tag(compute_capability)}.trt{version}{ENGINE_EXTENSION}'


def parse_engine_file_name(name: str) -> Optional[Tuple[str, str, str, str]]:
    """
    Return ``(model, precision, sm_tag, tensorrt_version)`` of an engine file name.

    The inverse of :func:`engine_file_name`; None when ``name`` does not follow it.
    """
    match = _ENGINE_NAME_RE.match(os.path.basename(name))
    if not match:
        return None
    return (match.group('model'), match.group('precision'), match.group('sm'),
            match.group('version'))


def sidecar_path_for_engine(engine_path: str) -> str:
    """Return the sidecar of an engine: the engine path plus ``.json``."""
    return engine_path + SIDECAR_SUFFIX


def timing_cache_path(folder: str, machine: MachineInfo) -> str:
    """
    Return the timing cache shared by every build on this GPU + TensorRT version.

    Timing caches only apply to the GPU and TensorRT version that measured them, so
    the name carries both: ``<folder>/<smXY>.trt<version>.timing_cache``.
    """
    name = f'{sm_tag(machine.compute_capability)}.trt{machine.tensorrt_version}.timing_cache'
    return os.path.join(folder, name)


def calibration_cache_path(folder: str, model: str, machine: MachineInfo) -> str:
    """Return ``<folder>/<model>.int8.<smXY>.trt<version>.calib_cache``."""
    name = (f'{model}.int8.{sm_tag(machine.compute_capability)}.'
            f'trt{machine.tensorrt_version}.calib_cache')
    return os.path.join(folder, name)


def engine_candidates(folder: str, model: str) -> List[str]:
    """Return the ``<model>.*.engine`` files in ``folder``, sorted by name."""
    pattern = os.path.join(glob.escape(folder), glob.escape(model) + '.*' + ENGINE_EXTENSION)
    return sorted(path for path in glob.glob(pattern) if os.path.isfile(path))


# --- batch profile ------------------------------------------------------------------

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


# --- sidecar document -----------------------------------------------------------------

def sidecar_to_dict(sidecar: EngineSidecar) -> Dict[str, Any]:
    """Return the JSON document of ``sidecar`` (the inverse of :func:`sidecar_from_dict`)."""
    return {
        'schema_version': SIDECAR_SCHEMA_VERSION,
        'engine_file': sidecar.engine_file,
        'engine_sha256': sidecar.engine_sha256,
        'onnx_file': sidecar.onnx_file,
        'onnx_sha256': sidecar.onnx_sha256,
        'card_file': sidecar.card_file,
        'model_name': sidecar.model_name,
        'num_classes': sidecar.num_classes,
        'input_name': sidecar.input_name,
        'input_shape_chw': list(sidecar.input_shape_chw),
        'output_name': sidecar.output_name,
        'tensorrt_version': sidecar.tensorrt_version,
        'gpu_name': sidecar.gpu_name,
        'compute_capability': list(sidecar.compute_capability),
        'precision': sidecar.precision,
        'batch_profile': {'min': sidecar.batch_profile.min_batch,
                          'opt': sidecar.batch_profile.opt_batch,
                          'max': sidecar.batch_profile.max_batch},
        'workspace_mib': sidecar.workspace_mib,
        'dla_core': sidecar.dla_core,
        'build_seconds': sidecar.build_seconds,
        'built_at_utc': sidecar.built_at_utc,
        'builder_options': dict(sidecar.builder_options),
    }


def _field(doc: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in doc:
        raise ModelLoadError(f'engine sidecar {path}: field {key!r} is missing; rebuild the '
                             f'engine with {BUILD_TOOL} (it writes the sidecar)')
    return doc[key]


def _bad(path: str, key: str, reason: str) -> ModelLoadError:
    return ModelLoadError(f'engine sidecar {path}: field {key!r}: {reason}; rebuild the '
                          f'engine with {BUILD_TOOL}')


def _text(doc: Mapping[str, Any], key: str, path: str, allow_empty: bool = False) -> str:
    value = _field(doc, key, path)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise _bad(path, key, f'expected a non-empty string, got {value!r}')
    return value


def _int(doc: Mapping[str, Any], key: str, path: str, minimum: int = 0) -> int:
    value = _field(doc, key, path)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(path, key, f'expected an integer >= {minimum}, got {value!r}')
    return value


def _ints(value: Any, count: int, path: str, key: str) -> Tuple[int, ...]:
    if (not isinstance(value, (list, tuple)) or len(value) != count
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value)):
        raise _bad(path, key, f'expected {count} non-negative integers, got {value!r}')
    return tuple(value)


def _sha(doc: Mapping[str, Any], key: str, path: str) -> str:
    value = _field(doc, key, path)
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise _bad(path, key, 'expected 64 lowercase hex digits')
    return value


def sidecar_from_dict(doc: Any, path: str = '<sidecar>') -> EngineSidecar:
    """
    Validate a sidecar document and return it.

    :raises ModelLoadError: naming ``path`` and the first malformed field.
    """
    if not isinstance(doc, dict):
        raise _bad(path, '<root>', 'expected a JSON object')
    version = _field(doc, 'schema_version', path)
    if version != SIDECAR_SCHEMA_VERSION:
        raise _bad(path, 'schema_version',
                   f'this package reads version {SIDECAR_SCHEMA_VERSION}, got {version!r}')
    profile_doc = _field(doc, 'batch_profile', path)
    if not isinstance(profile_doc, dict):
        raise _bad(path, 'batch_profile', 'expected {"min": .., "opt": .., "max": ..}')
    try:
        profile = validate_batch_profile(profile_doc.get('min'), profile_doc.get('opt'),
                                         profile_doc.get('max'))
    except ConfigError as exc:
        raise _bad(path, 'batch_profile', exc.reason) from exc
    precision = _text(doc, 'precision', path)
    if precision not in PRECISIONS:
        raise _bad(path, 'precision', f'{precision!r} is not one of {", ".join(PRECISIONS)}')
    seconds = _field(doc, 'build_seconds', path)
    if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds) or seconds < 0):
        raise _bad(path, 'build_seconds', f'expected a number >= 0, got {seconds!r}')
    dla_core = doc.get('dla_core')
    if dla_core is not None and (isinstance(dla_core, bool) or not isinstance(dla_core, int)
                                 or dla_core < 0):
        raise _bad(path, 'dla_core', f'expected null or an integer >= 0, got {dla_core!r}')
    options = doc.get('builder_options', {})
    if not isinstance(options, dict):
        raise _bad(path, 'builder_options', 'expected an object')
    chw = _ints(_field(doc, 'input_shape_chw', path), 3, path, 'input_shape_chw')
    major, minor = _ints(_field(doc, 'compute_capability', path), 2, path,
                         'compute_capability')
    return EngineSidecar(
        engine_file=_text(doc, 'engine_file', path),
        engine_sha256=_sha(doc, 'engine_sha256', path),
        onnx_file=_text(doc, 'onnx_file', path),
        onnx_sha256=_sha(doc, 'onnx_sha256', path),
        card_file=_text(doc, 'card_file', path),
        model_name=_text(doc, 'model_name', path),
        num_classes=_int(doc, 'num_classes', path, minimum=1),
        input_name=_text(doc, 'input_name', path),
        input_shape_chw=(chw[0], chw[1], chw[2]),
        output_name=_text(doc, 'output_name', path),
        tensorrt_version=_text(doc, 'tensorrt_version', path),
        gpu_name=_text(doc, 'gpu_name', path),
        compute_capability=(major, minor),
        precision=precision,
        batch_profile=profile,
        workspace_mib=_int(doc, 'workspace_mib', path, minimum=1),
        build_seconds=float(seconds),
        built_at_utc=_text(doc, 'built_at_utc', path, allow_empty=True),
        dla_core=dla_core,
        builder_options=dict(options),
        path=path,
    )


def write_sidecar(path: str, sidecar: EngineSidecar) -> None:
    """Write ``sidecar`` to ``path`` atomically (after the engine itself is in place)."""
    atomic_write_json(path, sidecar_to_dict(sidecar))


def read_sidecar(path: str) -> EngineSidecar:
    """
    Read and validate the sidecar at ``path``.

    :raises ModelLoadError: missing, unreadable, not JSON or malformed; the message names
        the file and the build tool that writes it.
    """
    try:
        with open(path, 'r', encoding='utf-8') as stream:
            doc = json.load(stream)
    except FileNotFoundError as exc:
        raise ModelLoadError(
            f'engine sidecar {path} does not exist; an engine without its sidecar cannot be '
            f'checked against the model card: rebuild it with {BUILD_TOOL}') from exc
    except OSError as exc:
        raise ModelLoadError(f'engine sidecar {path} cannot be read: {exc.strerror}') from exc
    except ValueError as exc:
        raise ModelLoadError(f'engine sidecar {path} is not valid JSON ({exc}); rebuild the '
                             f'engine with {BUILD_TOOL}') from exc
    return sidecar_from_dict(doc, path)


def card_path_for_engine(engine_path: str, sidecar: EngineSidecar) -> str:
    """Return the model card an engine belongs to: the sidecar's ``card_file`` beside it."""
    return os.path.join(os.path.dirname(os.path.abspath(engine_path)), sidecar.card_file)


def onnx_path_for_engine(engine_path: str, sidecar: EngineSidecar) -> str:
    """Return the ONNX model an engine was built from (the sidecar's ``onnx_file`` beside it)."""
    return os.path.join(os.path.dirname(os.path.abspath(engine_path)), sidecar.onnx_file)


# --- match rules ----------------------------------------------------------------------

def sidecar_mismatches(sidecar: EngineSidecar, card: ModelCard, machine: MachineInfo,
                       expected_onnx_sha256: str) -> List[str]:
    """
    Return every reason why the engine of ``sidecar`` may not serve ``card`` here.

    An empty list means the engine was built from the card's model (sha256, tensor
    names, input size, class count) by this TensorRT version on this GPU model.
    ``expected_onnx_sha256`` is the card's ``onnx_sha256`` (or the hash of the ONNX
    file beside it when the card records none); empty means it cannot be verified,
    which is itself a mismatch.
    """
    found: List[str] = []
    if not expected_onnx_sha256:
        found.append('cannot verify which model the engine was built from: the card '
                     'records no onnx_sha256 and its ONNX file is not beside it')
    elif sidecar.onnx_sha256 != expected_onnx_sha256:
        found.append(f'built from another model: ONNX sha256 {sidecar.onnx_sha256[:12]}... '
                     f'but the card is for {expected_onnx_sha256[:12]}...')
    if sidecar.num_classes != card.num_classes:
        found.append(f'class count {sidecar.num_classes}, the card lists {card.num_classes} '
                     'labels')
    if sidecar.input_name != card.input_name:
        found.append(f'input tensor {sidecar.input_name!r}, the card says '
                     f'{card.input_name!r}')
    expected_chw = (3, card.input_height_px, card.input_width_px)
    if tuple(sidecar.input_shape_chw) != expected_chw:
        found.append(f'input shape (C, H, W) {tuple(sidecar.input_shape_chw)}, the card says '
                     f'{expected_chw}')
    if sidecar.output_name != card.output_name:
        found.append(f'output tensor {sidecar.output_name!r}, the card says '
                     f'{card.output_name!r}')
    if sidecar.tensorrt_version != machine.tensorrt_version:
        found.append(f'built with TensorRT {sidecar.tensorrt_version}, this machine has '
                     f'TensorRT {machine.tensorrt_version}')
    if tuple(sidecar.compute_capability) != tuple(machine.compute_capability):
        found.append(f'built for compute capability {sm_tag(sidecar.compute_capability)}, '
                     f'this GPU is {sm_tag(machine.compute_capability)}')
    if sidecar.gpu_name != machine.gpu_name:
        found.append(f'built on GPU {sidecar.gpu_name!r}, this GPU is {machine.gpu_name!r}')
    return found


def engine_file_mismatches(engine_path: str, sidecar: EngineSidecar) -> List[str]:
    """Return why ``engine_path`` is not the file ``sidecar`` describes (name, sha256)."""
    found: List[str] = []
    if os.path.basename(engine_path) != sidecar.engine_file:
        found.append(f'the sidecar describes {sidecar.engine_file}, not '
                     f'{os.path.basename(engine_path)}')
    if not os.path.isfile(engine_path):
        found.append(f'engine file {engine_path} does not exist')
        return found
    actual = sha256_file(engine_path)
    if actual != sidecar.engine_sha256:
        found.append(f'engine file changed after its sidecar was written (sha256 '
                     f'{actual[:12]}..., sidecar says {sidecar.engine_sha256[:12]}...)')
    return found


def engine_io_mismatches(tensors: Sequence[TensorInfo], card: ModelCard,
                         sidecar: Optional[EngineSidecar] = None) -> List[str]:
    """
    Return every way the tensors of a deserialised engine break the card (and sidecar).

    Checks: exactly one input, named as in the card, float32, shape ``(N, 3, H, W)``
    with profile 0 covering the sidecar's batch profile; the card's output exists,
    is float32 and has ``C`` classes on its last axis.
    """
    found: List[str] = []
    inputs = [t for t in tensors if t.is_input]
    outputs = [t for t in tensors if not t.is_input]
    chw = (3, card.input_height_px, card.input_width_px)
    if len(inputs) != 1:
        found.append(f'engine has {len(inputs)} inputs '
                     f'({", ".join(t.name for t in inputs) or "none"}); expected one')
    for tensor in inputs:
        if tensor.name != card.input_name:
            found.append(f'engine input {tensor.name!r}, the card says {card.input_name!r}')
            continue
        if tensor.dtype != 'float32':
            found.append(f'engine input {tensor.name!r} is {tensor.dtype}, the backend feeds '
                         'float32 (build from an ONNX that keeps float32 inputs)')
        if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != chw:
            found.append(f'engine input shape {tuple(tensor.shape)}, the card implies '
                         f'(N, {chw[0]}, {chw[1]}, {chw[2]})')
        if tensor.profile is None:
            found.append(f'engine input {tensor.name!r} has no optimisation profile')
        else:
            low, opt, high = (tuple(s) for s in tensor.profile)
            batches = (low[0] if low else -1, opt[0] if opt else -1, high[0] if high else -1)
            for label, shape in (('min', low), ('opt', opt), ('max', high)):
                if tuple(shape[1:]) != chw:
                    found.append(f'profile {label} shape {shape} does not match (N, '
                                 f'{chw[0]}, {chw[1]}, {chw[2]})')
            if sidecar is not None and batches != sidecar.batch_profile.as_tuple():
                found.append(f'engine batch profile min/opt/max {batches}, the sidecar says '
                             f'{sidecar.batch_profile.as_tuple()}')
    named = [t for t in outputs if t.name == card.output_name]
    if not named:
        found.append(f'engine has no output {card.output_name!r} (outputs: '
                     f'{", ".join(t.name for t in outputs) or "none"})')
    for tensor in named:
        if tensor.dtype != 'float32':
            found.append(f'engine output {tensor.name!r} is {tensor.dtype}, expected float32')
        if not tensor.shape or tensor.shape[-1] != card.num_classes:
            found.append(f'engine output shape {tuple(tensor.shape)}, the card lists '
                         f'{card.num_classes} labels')
    return found


def expected_onnx_sha256(card: ModelCard, onnx_path: Optional[str]) -> str:
    """Return the card's ``onnx_sha256``, else the hash of ``onnx_path`` if it exists, else ''."""
    if card.onnx_sha256:
        return card.onnx_sha256
    if onnx_path and os.path.isfile(onnx_path):
        return sha256_file(onnx_path)
    return ''


def search_engines(folder: str, onnx_path: str, card: ModelCard,
                   machine: MachineInfo) -> EngineSearch:
    """
    Find the engine in ``folder`` that serves ``card`` on ``machine``.

    Candidates are ``<model>.*.engine`` files (model = the ONNX file name). An engine
    qualifies when its sidecar reads, matches the card and this machine
    (:func:`sidecar_mismatches`) and the engine file is the one the sidecar
    describes (:func:`engine_file_mismatches`). When several qualify (say FP16 and
    INT8), the most recently built wins: it reflects the operator's last decision.
    Nothing is raised for a bad candidate; the reasons are collected in
    :attr:`EngineSearch.rejected`.
    """
    result = EngineSearch(folder=folder)
    expected = expected_onnx_sha256(card, onnx_path)
    good: List[Tuple[str, str, EngineSidecar]] = []
    for path in engine_candidates(folder, model_stem(onnx_path)):
        try:
            sidecar = read_sidecar(sidecar_path_for_engine(path))
        except ModelLoadError as exc:
            result.rejected.append((path, [str(exc)]))
            continue
        reasons = sidecar_mismatches(sidecar, card, machine, expected)
        if not reasons:
            reasons = engine_file_mismatches(path, sidecar)
        if reasons:
            result.rejected.append((path, reasons))
        else:
            good.append((sidecar.built_at_utc, path, sidecar))
    if good:
        good.sort(key=lambda item: (item[0], item[1]))
        _, result.chosen, result.chosen_sidecar = good[-1]
    return result


def onnx_path_guess(engine_path: str) -> str:
    """Return the ONNX model an engine file name points to (``<model>.onnx`` beside it)."""
    parsed = parse_engine_file_name(engine_path)
    stem = parsed[0] if parsed else os.path.basename(engine_path).split('.')[0]
    return os.path.join(os.path.dirname(os.path.abspath(engine_path)), stem + '.onnx')


def verify_engine(engine_path: str, machine: MachineInfo,
                  tool: str = BUILD_TOOL) -> Tuple[EngineSidecar, ModelCard]:
    """
    Check an engine file against its sidecar, its model card and this machine.

    The card is the sidecar's ``card_file`` beside the engine. Reads files only (the
    engine's sha256); deserialising is the backend's job.

    :returns: ``(sidecar, card)`` when the engine may be used.
    :raises ModelLoadError: the engine or its sidecar is missing or malformed.
    :raises ModelCardError: the card is missing or malformed.
    :raises EngineMismatchError: anything does not match; the message lists every
        mismatch and the command that rebuilds the engine.
    """
    if not os.path.isfile(engine_path):
        raise ModelLoadError(
            f'TensorRT engine {engine_path} does not exist; build it on this machine with: '
            f'{build_command(onnx_path_guess(engine_path), tool=tool)}')
    sidecar = read_sidecar(sidecar_path_for_engine(engine_path))
    card = load_card(card_path_for_engine(engine_path, sidecar))
    onnx_path = onnx_path_for_engine(engine_path, sidecar)
    mismatches = sidecar_mismatches(sidecar, card, machine, expected_onnx_sha256(card, onnx_path))
    mismatches += engine_file_mismatches(engine_path, sidecar)
    if mismatches:
        rebuilt = engine_file_name(model_stem(onnx_path), sidecar.precision,
                                   machine.compute_capability, machine.tensorrt_version)
        extra = ['--force'] if rebuilt == os.path.basename(engine_path) else []
        raise EngineMismatchError(mismatch_message(
            engine_path, mismatches, build_command(onnx_path, sidecar.precision, tool=tool,
                                                   extra=extra)))
    return sidecar, card


# --- commands and messages ----------------------------------------------------------

def build_command(onnx_path: str, precision: str = DEFAULT_PRECISION,
                  tool: str = BUILD_TOOL, extra: Sequence[str] = ()) -> str:
    """Return the shell command that builds the engine for ``onnx_path`` on this machine."""
    words = [tool, onnx_path]
    if precision != DEFAULT_PRECISION:
        words += ['--precision', precision]
    words += list(extra)
    return ' '.join(shlex.quote(word) for word in words)


def mismatch_message(engine_path: str, mismatches: Sequence[str], command: str) -> str:
    """Return the error text for an engine that may not be used, with the fixing command."""
    listed = '; '.join(mismatches)
    return (f'TensorRT engine {engine_path} does not match: {listed}. Engines are never '
            f'reused across models, TensorRT versions or GPUs: rebuild it on this machine '
            f'with: {command}')


# --- TensorRT version policy --------------------------------------------------------

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
                          'uses the TensorRT 10 API (JetPack 6.x or newer)')
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


def format_parser_error(index: int, description: str, code: str = '', node_index: int = -1,
                        node_name: str = '', node_operator: str = '') -> str:
    """Return one ONNX parser error as ``error 1: node 12 (conv1, Conv): <desc> [code]``."""
    where = 'graph'
    if node_index is not None and node_index >= 0:
        detail = ', '.join(part for part in (node_name, node_operator) if part)
        where = f'node {node_index}' + (f' ({detail})' if detail else '')
    elif node_name or node_operator:
        where = 'node ' + ', '.join(part for part in (node_name, node_operator) if part)
    suffix = f' [{code}]' if code else ''
    return f'error {index + 1}: {where}: {description}{suffix}'
