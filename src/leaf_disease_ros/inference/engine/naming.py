"""File names of engines, sidecars, timing and calibration caches; engine candidates."""

import glob
import os
import re
from typing import List, Optional, Sequence, Tuple

from leaf_disease_ros.inference.engine.machine import MachineInfo, sm_tag
from leaf_disease_ros.inference.engine.policy import PRECISIONS


ENGINE_EXTENSION = '.engine'


SIDECAR_SUFFIX = '.json'


_ENGINE_NAME_RE = re.compile(r'^(?P<model>.+)\.(?P<precision>fp32|fp16|int8)\.(?P<sm>sm\d+)'
                             r'\.trt(?P<version>\d[^/]*)\.engine$')


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


def calibration_cache_path(folder: str, model: str, machine: MachineInfo,
                           onnx_sha256: str) -> str:
    """
    Return ``<folder>/<model>.<sha12>.int8.<smXY>.trt<version>.calib_cache``.

    The name carries the first 12 hex digits of the ONNX file's sha256: a retrained
    model exported under the same name never picks up the ranges of the old one.
    """
    name = (f'{model}.{onnx_sha256[:12]}.int8.{sm_tag(machine.compute_capability)}.'
            f'trt{machine.tensorrt_version}.calib_cache')
    return os.path.join(folder, name)


def engine_candidates(folder: str, model: str) -> List[str]:
    """Return the ``<model>.*.engine`` files in ``folder``, sorted by name."""
    pattern = os.path.join(glob.escape(folder), glob.escape(model) + '.*' + ENGINE_EXTENSION)
    return sorted(path for path in glob.glob(pattern) if os.path.isfile(path))
