"""
The engine sidecar: the JSON record written beside an engine, its schema, reading and writing.

An engine is only valid for the model it was built from, the TensorRT version that
built it and the GPU it was built on. The sidecar (:class:`EngineSidecar`) records
these: ONNX sha256, TensorRT version, GPU name and compute capability, precision,
batch profile, tensor names and shapes, workspace, build time and builder options,
and the module facts that tell Jetson modules with the same GPU name apart (SM count,
memory, DLA cores, L4T release, power mode; a ``machine`` object, absent from sidecars
written before it existed).
It is written atomically after the engine (:func:`write_sidecar`) and validated
when read (:func:`read_sidecar`). What this machine is (:class:`MachineInfo`) is
probed by :func:`leaf_disease_ros.inference.tensorrt_backend.probe_machine`; the
engine modules take it as a plain value, so they are tested without TensorRT.
"""

from dataclasses import dataclass, field
import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

from leaf_disease_ros.inference.engine.commands import BUILD_TOOL
from leaf_disease_ros.inference.engine.machine import MachineInfo
from leaf_disease_ros.inference.engine.policy import (BatchProfile, PRECISIONS,
                                                      validate_batch_profile)
from leaf_disease_ros.perception.atomic_io import atomic_write_json
from leaf_disease_ros.perception.errors import ConfigError, ModelLoadError
from leaf_disease_ros.perception.json_fields import FieldReader


SIDECAR_SCHEMA_VERSION = 1


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
    sm_count: Optional[int] = None
    memory_mib: Optional[int] = None
    dla_cores: Optional[int] = None
    l4t_release: str = ''
    power_mode: str = ''

    @property
    def machine(self) -> MachineInfo:
        """Return the machine the engine was built on (module facts where recorded)."""
        return MachineInfo(self.tensorrt_version, self.gpu_name, self.compute_capability,
                           sm_count=self.sm_count, memory_mib=self.memory_mib,
                           dla_cores=self.dla_cores, l4t_release=self.l4t_release,
                           power_mode=self.power_mode)


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
        'machine': {'sm_count': sidecar.sm_count, 'memory_mib': sidecar.memory_mib,
                    'dla_cores': sidecar.dla_cores, 'l4t_release': sidecar.l4t_release,
                    'power_mode': sidecar.power_mode},
    }


def sidecar_from_dict(doc: Any, path: str = '<sidecar>') -> EngineSidecar:
    """
    Validate a sidecar document and return it.

    :raises ModelLoadError: naming ``path`` and the first malformed field.
    """
    def error(key: str, reason: str) -> ModelLoadError:
        return ModelLoadError(f'engine sidecar {path}: field {key!r}: {reason}; rebuild the '
                              f'engine with {BUILD_TOOL}')

    fields = FieldReader(
        doc, error,
        missing=lambda key: ModelLoadError(
            f'engine sidecar {path}: field {key!r} is missing; rebuild the engine with '
            f'{BUILD_TOOL} (it writes the sidecar)'))
    version = fields.raw('schema_version')
    if version != SIDECAR_SCHEMA_VERSION:
        raise fields.fail('schema_version',
                          f'this package reads version {SIDECAR_SCHEMA_VERSION}, got {version!r}')
    profile_doc = fields.raw('batch_profile')
    if not isinstance(profile_doc, dict):
        raise fields.fail('batch_profile', 'expected {"min": .., "opt": .., "max": ..}')
    try:
        profile = validate_batch_profile(profile_doc.get('min'), profile_doc.get('opt'),
                                         profile_doc.get('max'))
    except ConfigError as exc:
        raise fields.fail('batch_profile', exc.reason) from exc
    chw = fields.integers('input_shape_chw', 3)
    major, minor = fields.integers('compute_capability', 2)
    module = FieldReader(fields.mapping('machine'), error, 'machine.')
    return EngineSidecar(
        engine_file=fields.text('engine_file'),
        engine_sha256=fields.sha256('engine_sha256'),
        onnx_file=fields.text('onnx_file'),
        onnx_sha256=fields.sha256('onnx_sha256'),
        card_file=fields.text('card_file'),
        model_name=fields.text('model_name'),
        num_classes=fields.integer('num_classes', minimum=1),
        input_name=fields.text('input_name'),
        input_shape_chw=(chw[0], chw[1], chw[2]),
        output_name=fields.text('output_name'),
        tensorrt_version=fields.text('tensorrt_version'),
        gpu_name=fields.text('gpu_name'),
        compute_capability=(major, minor),
        precision=fields.choice('precision', PRECISIONS),
        batch_profile=profile,
        workspace_mib=fields.integer('workspace_mib', minimum=1),
        build_seconds=fields.number('build_seconds', minimum=0.0),
        built_at_utc=fields.text('built_at_utc', allow_empty=True),
        dla_core=fields.optional_integer('dla_core'),
        builder_options=fields.mapping('builder_options'),
        path=path,
        sm_count=module.optional_integer('sm_count', minimum=1),
        memory_mib=module.optional_integer('memory_mib', minimum=1),
        dla_cores=module.optional_integer('dla_cores'),
        l4t_release=module.text('l4t_release', '', allow_empty=True),
        power_mode=module.text('power_mode', '', allow_empty=True),
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
