"""
Backend selection with TensorRT engines: present, absent, mismatched; tensorrt or not.

Importability of tensorrt/pycuda is simulated (engine_helpers) for the choice only:
a chosen engine is handed to a recorder instead of the real TensorRTBackend, so no
test here fakes an inference result. ONNX Runtime fallbacks are real sessions.
"""

import os
import subprocess
import sys
from typing import Any, List

import pytest

from engine_helpers import hide_tensorrt, install_fake_runtime, make_engine_files
from leaf_disease_ros.inference import tensorrt_backend
from leaf_disease_ros.inference.engine.machine import MachineInfo
from leaf_disease_ros.inference.engine.policy import BatchProfile
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.inference.onnxruntime_backend import OnnxRuntimeBackend
from leaf_disease_ros.perception.errors import (BackendUnavailableError, ConfigError,
                                                EngineMismatchError, ModelLoadError)
from leaf_disease_ros.perception.model_card import ModelCard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EngineLoadRecord:
    """Stands in for TensorRTBackend: records which engine the factory chose."""

    loads: List['EngineLoadRecord'] = []

    def __init__(self, engine_path: str, card: ModelCard, sidecar: Any, max_batch: int = 16,
                 device_index: int = 0, tool: str = '') -> None:
        self.engine_path = engine_path
        self.card = card
        self.sidecar = sidecar
        self.max_batch = max_batch
        self.tool = tool
        EngineLoadRecord.loads.append(self)


@pytest.fixture()
def record(monkeypatch) -> List[EngineLoadRecord]:
    """Replace the TensorRT backend class by the recorder; return the list of loads."""
    EngineLoadRecord.loads = []
    monkeypatch.setattr(tensorrt_backend, 'TensorRTBackend', EngineLoadRecord)
    return EngineLoadRecord.loads


def _auto(path: str, **kwargs: Any) -> tuple:
    warnings: List[str] = []
    backend = load_backend(path, 'auto', warn=warnings.append, **kwargs)
    return backend, warnings


# --- backend: auto --------------------------------------------------------------------

def test_auto_without_tensorrt_uses_onnxruntime_silently(monkeypatch, record, tiny_model_copy,
                                                         tiny_card: ModelCard) -> None:
    hide_tensorrt(monkeypatch)
    make_engine_files(tiny_model_copy, tiny_card)  # present, but unusable without TensorRT
    backend, warnings = _auto(tiny_model_copy)
    assert isinstance(backend, OnnxRuntimeBackend)
    assert warnings == [] and record == []
    backend.close()


def test_auto_uses_the_matching_engine(monkeypatch, record, tiny_model_copy,
                                       tiny_card: ModelCard) -> None:
    install_fake_runtime(monkeypatch)
    engine = make_engine_files(tiny_model_copy, tiny_card)
    backend, warnings = _auto(tiny_model_copy, max_batch=8)
    assert backend is record[0] and len(record) == 1
    assert backend.engine_path == engine and backend.max_batch == 8
    assert backend.card.path == os.path.join(os.path.dirname(tiny_model_copy), 'tiny.json')
    assert backend.tool == 'leaf-disease-build-engine'
    assert warnings == []


def test_auto_without_engine_warns_once_with_the_build_command(monkeypatch, record,
                                                               tiny_model_copy) -> None:
    install_fake_runtime(monkeypatch)
    backend, warnings = _auto(tiny_model_copy)
    assert isinstance(backend, OnnxRuntimeBackend) and record == []
    assert len(warnings) == 1
    assert 'leaf-disease-build-engine' in warnings[0] and tiny_model_copy in warnings[0]
    assert 'Orin (sm87), TensorRT 10.3.0' in warnings[0] and '--force' not in warnings[0]
    backend.close()


def test_auto_with_mismatched_engine_warns_with_the_reason(monkeypatch, record,
                                                           tiny_model_copy,
                                                           tiny_card: ModelCard) -> None:
    install_fake_runtime(monkeypatch, version='10.3.0')
    make_engine_files(tiny_model_copy, tiny_card, machine=MachineInfo('8.6.2', 'Orin', (8, 7)))
    backend, warnings = _auto(tiny_model_copy)
    assert isinstance(backend, OnnxRuntimeBackend) and record == []
    assert len(warnings) == 1
    assert 'tiny.fp16.sm87.trt8.6.2.engine: built with TensorRT 8.6.2' in warnings[0]
    assert 'leaf-disease-build-engine' in warnings[0]
    backend.close()


def test_auto_asks_for_force_when_the_rebuild_has_the_same_name(monkeypatch, record,
                                                                tiny_model_copy,
                                                                tiny_card: ModelCard) -> None:
    install_fake_runtime(monkeypatch)
    make_engine_files(tiny_model_copy, tiny_card, onnx_sha256='c' * 64)  # ONNX re-exported
    backend, warnings = _auto(tiny_model_copy)
    assert 'built from another model' in warnings[0] and warnings[0].endswith('--force')
    backend.close()


@pytest.mark.parametrize('kwargs, expected', [({'pycuda': False}, 'pycuda is not installed'),
                                              ({'device_count': 0}, 'no CUDA GPU')])
def test_auto_with_tensorrt_but_no_gpu_stack_warns(monkeypatch, record, tiny_model_copy,
                                                   tiny_card: ModelCard, kwargs,
                                                   expected: str) -> None:
    install_fake_runtime(monkeypatch, **kwargs)
    make_engine_files(tiny_model_copy, tiny_card)
    backend, warnings = _auto(tiny_model_copy)
    assert isinstance(backend, OnnxRuntimeBackend) and record == []
    assert len(warnings) == 1 and expected in warnings[0]
    backend.close()


def test_auto_prefers_the_newest_of_several_matching_engines(monkeypatch, record,
                                                             tiny_model_copy,
                                                             tiny_card: ModelCard) -> None:
    install_fake_runtime(monkeypatch)
    make_engine_files(tiny_model_copy, tiny_card, precision='int8',
                      built_at_utc='2025-06-03T00:00:00.000000Z')
    make_engine_files(tiny_model_copy, tiny_card, precision='fp16',
                      built_at_utc='2025-06-01T00:00:00.000000Z')
    _auto(tiny_model_copy)
    assert record[0].sidecar.precision == 'int8'


# --- backend: tensorrt ----------------------------------------------------------------

def test_tensorrt_uses_the_matching_engine(monkeypatch, record, tiny_model_copy,
                                           tiny_card: ModelCard) -> None:
    install_fake_runtime(monkeypatch)
    engine = make_engine_files(tiny_model_copy, tiny_card)
    backend = load_backend(tiny_model_copy, 'tensorrt')
    assert backend is record[0] and backend.engine_path == engine


def test_tensorrt_without_engine_fails_with_the_command(monkeypatch, record,
                                                        tiny_model_copy) -> None:
    install_fake_runtime(monkeypatch)
    with pytest.raises(ModelLoadError) as info:
        load_backend(tiny_model_copy, 'tensorrt')
    assert not isinstance(info.value, EngineMismatchError)
    assert f'leaf-disease-build-engine {tiny_model_copy}' in str(info.value)
    assert 'no tiny.*.engine there' in str(info.value)
    assert record == []


def test_tensorrt_with_mismatched_engine_lists_the_mismatch(monkeypatch, record,
                                                            tiny_model_copy,
                                                            tiny_card: ModelCard) -> None:
    install_fake_runtime(monkeypatch, gpu_name='Xavier', compute_capability=(7, 2))
    make_engine_files(tiny_model_copy, tiny_card)
    with pytest.raises(EngineMismatchError) as info:
        load_backend(tiny_model_copy, 'tensorrt')
    message = str(info.value)
    assert 'compute capability sm87, this GPU is sm72' in message
    assert "built on GPU 'Orin', this GPU is 'Xavier'" in message
    assert f'leaf-disease-build-engine {tiny_model_copy}' in message
    assert record == []


def test_tensorrt_refuses_an_engine_for_a_missing_dla_core(monkeypatch, record, tiny_model_copy,
                                                           tiny_card: ModelCard) -> None:
    # built on an AGX Orin for DLA core 1; this Orin NX 8GB has one DLA core (probe_machine
    # asks TensorRT's runtime); same GPU name and sm87 on both
    install_fake_runtime(monkeypatch, dla_cores=1)
    make_engine_files(tiny_model_copy, tiny_card, dla_core=1, dla_cores=2,
                      batch_profile=BatchProfile(8, 8, 8))
    with pytest.raises(EngineMismatchError, match=r'built for DLA core 1, this machine has 1 DLA '
                                                  r'core\(s\)'):
        load_backend(tiny_model_copy, 'tensorrt')
    assert record == []
    install_fake_runtime(monkeypatch, dla_cores=2)
    assert load_backend(tiny_model_copy, 'tensorrt') is record[0]


def test_tensorrt_without_tensorrt_module_fails_at_start(monkeypatch, record,
                                                         tiny_model_copy) -> None:
    hide_tensorrt(monkeypatch)
    with pytest.raises(BackendUnavailableError, match='tensorrt Python module is not installed'):
        load_backend(tiny_model_copy, 'tensorrt')


def test_tensorrt_without_gpu_fails_at_start(monkeypatch, record, tiny_model_copy) -> None:
    install_fake_runtime(monkeypatch, device_count=0)
    with pytest.raises(BackendUnavailableError, match='backend tensorrt: no CUDA GPU'):
        load_backend(tiny_model_copy, 'tensorrt')


def test_onnxruntime_never_looks_for_engines(monkeypatch, record, tiny_model_copy,
                                             tiny_card: ModelCard) -> None:
    install_fake_runtime(monkeypatch)
    make_engine_files(tiny_model_copy, tiny_card)
    warnings: List[str] = []
    backend = load_backend(tiny_model_copy, 'onnxruntime', warn=warnings.append)
    assert isinstance(backend, OnnxRuntimeBackend) and record == [] and warnings == []
    backend.close()


# --- model_path is an engine ---------------------------------------------------------

@pytest.mark.parametrize('backend_name', ['auto', 'tensorrt'])
def test_engine_path_loads_that_engine_with_the_card_of_its_sidecar(monkeypatch, record,
                                                                    tiny_model_copy,
                                                                    tiny_card: ModelCard,
                                                                    backend_name: str) -> None:
    install_fake_runtime(monkeypatch)
    make_engine_files(tiny_model_copy, tiny_card, precision='fp16')
    engine = make_engine_files(tiny_model_copy, tiny_card, precision='fp32',
                               built_at_utc='2024-01-01T00:00:00.000000Z')  # older, still chosen
    backend = load_backend(engine, backend_name, max_batch=4)
    assert backend is record[0] and backend.engine_path == engine
    assert backend.card.path == os.path.join(os.path.dirname(engine), 'tiny.json')
    assert backend.sidecar.precision == 'fp32' and backend.max_batch == 4


def test_engine_path_with_changed_engine_is_a_mismatch(monkeypatch, record, tiny_model_copy,
                                                       tiny_card: ModelCard) -> None:
    install_fake_runtime(monkeypatch)
    engine = make_engine_files(tiny_model_copy, tiny_card)
    with open(engine, 'ab') as stream:
        stream.write(b'!')
    with pytest.raises(EngineMismatchError, match='changed after its sidecar'):
        load_backend(engine, 'auto')
    assert record == []


def test_engine_path_without_sidecar(monkeypatch, record, tiny_model_copy) -> None:
    install_fake_runtime(monkeypatch)
    engine = os.path.join(os.path.dirname(tiny_model_copy), 'tiny.fp16.sm87.trt10.3.0.engine')
    open(engine, 'wb').close()
    with pytest.raises(ModelLoadError, match='sidecar .* does not exist'):
        load_backend(engine, 'tensorrt')


def test_missing_engine_path_names_the_build_command(monkeypatch, record,
                                                     tiny_model_copy) -> None:
    install_fake_runtime(monkeypatch)
    engine = os.path.join(os.path.dirname(tiny_model_copy), 'tiny.fp16.sm87.trt10.3.0.engine')
    with pytest.raises(ModelLoadError, match=f'leaf-disease-build-engine {tiny_model_copy}'):
        load_backend(engine, 'auto')


def test_engine_path_without_tensorrt(monkeypatch, record, tiny_model_copy,
                                      tiny_card: ModelCard) -> None:
    hide_tensorrt(monkeypatch)
    engine = make_engine_files(tiny_model_copy, tiny_card)
    with pytest.raises(BackendUnavailableError):
        load_backend(engine, 'auto')


def test_engine_path_with_onnxruntime_is_a_config_error(tiny_model_copy,
                                                        tiny_card: ModelCard) -> None:
    engine = make_engine_files(tiny_model_copy, tiny_card)
    with pytest.raises(ConfigError, match='onnxruntime cannot run'):
        load_backend(engine, 'onnxruntime')


def test_inference_modules_import_no_gpu_or_onnx_package() -> None:
    """tensorrt, pycuda and onnx are imported lazily: a laptop imports the package freely."""
    code = ('import sys\n'
            'import leaf_disease_ros.inference.factory\n'
            'import leaf_disease_ros.inference.tensorrt_backend\n'
            'import leaf_disease_ros.inference.engine.calibration_batches\n'
            'import leaf_disease_ros.inference.engine.onnx_fp16\n'
            'print(sorted(m for m in sys.modules if m.split(".")[0] in '
            '("tensorrt", "pycuda", "onnx")))\n')
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, 'src'))
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'
