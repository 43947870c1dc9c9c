"""
Test helpers for engine selection: placeholder engine files and importability shims.

Nothing here runs or imitates inference. :func:`make_engine_files` writes a
placeholder ``.engine`` (arbitrary bytes, so its sha256 can be recorded) and a real
sidecar, which is all the GPU-free match rules read. :func:`install_fake_runtime`
makes ``import tensorrt`` / ``import pycuda.driver`` succeed with just enough
surface for :func:`leaf_disease_ros.inference.tensorrt_backend.probe_machine`
(version, GPU name, compute capability, SMs, memory, and the DLA cores of a
``tensorrt.Runtime`` asked with the primary context pushed), and :func:`hide_tensorrt` makes the
import fail, so the backend factory's choice can be tested on any machine.
"""

import hashlib
import os
import sys
import types
from typing import Any, Dict, Optional, Tuple

from leaf_disease_ros.inference.engine.machine import MachineInfo
from leaf_disease_ros.inference.engine.naming import (engine_file_name, model_stem,
                                                      sidecar_path_for_engine)
from leaf_disease_ros.inference.engine.policy import BatchProfile
from leaf_disease_ros.inference.engine.sidecar import EngineSidecar, write_sidecar
from leaf_disease_ros.perception.model_card import ModelCard, sha256_file

ORIN = MachineInfo('10.3.0', 'Orin', (8, 7))


def make_sidecar(onnx_path: str, card: ModelCard, machine: MachineInfo = ORIN,
                 precision: str = 'fp16', engine_bytes: bytes = b'placeholder engine',
                 **overrides: Any) -> EngineSidecar:
    """Return the sidecar that the build tool would write for these inputs."""
    name = engine_file_name(model_stem(onnx_path), precision, machine.compute_capability,
                            machine.tensorrt_version)
    fields: Dict[str, Any] = {
        'engine_file': name,
        'engine_sha256': hashlib.sha256(engine_bytes).hexdigest(),
        'onnx_file': os.path.basename(onnx_path),
        'onnx_sha256': sha256_file(onnx_path),
        'card_file': os.path.basename(card.path or model_stem(onnx_path) + '.json'),
        'model_name': card.name,
        'num_classes': card.num_classes,
        'input_name': card.input_name,
        'input_shape_chw': (3, card.input_height_px, card.input_width_px),
        'output_name': card.output_name,
        'tensorrt_version': machine.tensorrt_version,
        'gpu_name': machine.gpu_name,
        'compute_capability': machine.compute_capability,
        'precision': precision,
        'batch_profile': BatchProfile(1, 6, 16),
        'workspace_mib': 1024,
        'build_seconds': 12.5,
        'built_at_utc': '2025-06-01T10:00:00.000000Z',
        'dla_core': None,
        'builder_options': {'typing': 'weak', 'flags': ['FP16']},
    }
    fields.update(overrides)
    return EngineSidecar(**fields)


def make_engine_files(onnx_path: str, card: ModelCard, machine: MachineInfo = ORIN,
                      precision: str = 'fp16', engine_bytes: Optional[bytes] = None,
                      **overrides: Any) -> str:
    """Write a placeholder engine and its sidecar beside ``onnx_path``; return the engine."""
    data = engine_bytes if engine_bytes is not None else f'engine {precision}'.encode()
    sidecar = make_sidecar(onnx_path, card, machine, precision, data, **overrides)
    engine_path = os.path.join(os.path.dirname(onnx_path), sidecar.engine_file)
    with open(engine_path, 'wb') as stream:
        stream.write(data)
    write_sidecar(sidecar_path_for_engine(engine_path), sidecar)
    return engine_path


class FakeCudaError(Exception):
    """Stands in for pycuda.driver.Error."""


def install_fake_runtime(monkeypatch: Any, version: str = '10.3.0', gpu_name: str = 'Orin',
                         compute_capability: Tuple[int, int] = (8, 7), device_count: int = 1,
                         pycuda: bool = True, sm_count: int = 16,
                         memory_bytes: int = 30 << 30, dla_cores: int = 2) -> None:
    """Make ``import tensorrt`` and ``import pycuda.driver`` succeed (probe surface only)."""
    from leaf_disease_ros.inference import tensorrt_backend

    monkeypatch.setattr(tensorrt_backend, '_PRIMARY_CONTEXTS', {})
    monkeypatch.setattr(tensorrt_backend, '_LOGGER', None)
    pushed: list = []

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class Runtime:

        def __init__(self, logger: Any) -> None:
            assert pushed, 'tensorrt.Runtime created with no CUDA context current'

        @property
        def num_DLA_cores(self) -> int:  # noqa: N802 (TensorRT's name)
            return dla_cores

    trt = types.ModuleType('tensorrt')
    trt.__version__ = version
    trt.Runtime = Runtime
    trt.Logger = Logger
    monkeypatch.setitem(sys.modules, 'tensorrt', trt)
    if not pycuda:
        monkeypatch.setitem(sys.modules, 'pycuda', None)
        monkeypatch.setitem(sys.modules, 'pycuda.driver', None)
        return

    class Device:

        def __init__(self, index: int) -> None:
            self.index = index

        @staticmethod
        def count() -> int:
            return device_count

        def name(self) -> str:
            return gpu_name

        def compute_capability(self) -> Tuple[int, int]:
            return compute_capability

        def get_attribute(self, attribute: Any) -> int:
            assert attribute == 'MULTIPROCESSOR_COUNT'
            return sm_count

        def total_memory(self) -> int:
            return memory_bytes

        def retain_primary_context(self) -> Any:
            return types.SimpleNamespace(push=lambda: pushed.append(self.index))

    def pop() -> None:
        pushed.pop()

    driver = types.ModuleType('pycuda.driver')
    driver.Context = types.SimpleNamespace(pop=pop)
    driver.Error = FakeCudaError
    driver.init = lambda: None
    driver.Device = Device
    driver.device_attribute = types.SimpleNamespace(MULTIPROCESSOR_COUNT='MULTIPROCESSOR_COUNT')
    package = types.ModuleType('pycuda')
    package.driver = driver
    monkeypatch.setitem(sys.modules, 'pycuda', package)
    monkeypatch.setitem(sys.modules, 'pycuda.driver', driver)


def hide_tensorrt(monkeypatch: Any) -> None:
    """Make ``import tensorrt`` raise ImportError, even where TensorRT is installed."""
    monkeypatch.setitem(sys.modules, 'tensorrt', None)
