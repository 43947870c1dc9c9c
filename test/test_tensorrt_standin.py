"""
The real TensorRTBackend and engine build code, run on a CPU STAND-IN for TensorRT/pycuda.

test/trt_standin.py is not TensorRT: its "engine" runs the ONNX model with ONNX
Runtime. What these tests check is our code around it, which the GPU tier cannot see
on a machine without a GPU: the CUDA context discipline (pushed where used, popped
after, never left current, memory freed where pycuda allows it, TensorRT objects
dropped with their context current, on error paths too), padding to the profile
minimum, inference from a worker thread and close from a third, the build tool's
calibration, timing cache, DLA and machine-record rules, and the factory's fallback.
The real check of TensorRT itself stays test/test_tensorrt_gpu.py (marked gpu).
"""

import json
import logging
import os
import shutil
import threading
from typing import Any, Dict, List

import cv2
import numpy as np
import pytest

from engine_helpers import make_engine_files
from leaf_disease_ros.cli import build_engine as cli
from leaf_disease_ros.inference import tensorrt_backend
from leaf_disease_ros.inference.engine.build import dla_placement
from leaf_disease_ros.inference.engine.machine import MachineInfo
from leaf_disease_ros.inference.engine.naming import (calibration_cache_path, engine_file_name,
                                                      sidecar_path_for_engine,
                                                      timing_cache_path)
from leaf_disease_ros.inference.engine.policy import BatchProfile
from leaf_disease_ros.inference.engine.sidecar import read_sidecar
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.inference.onnxruntime_backend import OnnxRuntimeBackend
from leaf_disease_ros.perception.errors import EngineMismatchError, InferenceError
from leaf_disease_ros.perception.model_card import ModelCard, sha256_file
from leaf_disease_ros.perception.preprocess import preprocess
import trt_standin

LEAVES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'leaves')
BATCHES = (1, 2, 3, 6, 7, 15, 16)
STANDIN = MachineInfo('10.3.0', 'Orin', (8, 7))


@pytest.fixture()
def standin(monkeypatch):
    """Install the stand-in; afterwards check that nothing was done wrong."""
    installed = trt_standin.install(monkeypatch)
    monkeypatch.setattr(tensorrt_backend, '_PRIMARY_CONTEXTS', {})
    monkeypatch.setattr(tensorrt_backend, '_LOGGER', None)
    monkeypatch.setattr(tensorrt_backend, 'L4T_RELEASE_FILE', '/nonexistent/nv_tegra_release')
    monkeypatch.setattr(tensorrt_backend, 'POWER_MODE_FILE', '/nonexistent/nvpmodel')
    yield installed
    assert trt_standin.current_context() is None, 'a CUDA context was left current'
    assert installed.violations == []


@pytest.fixture(scope='module')
def leaf_batch(tiny_card: ModelCard) -> np.ndarray:
    """Return 16 real leaf photos preprocessed with the tiny card: (16, 3, 32, 32)."""
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(LEAVES)
                   for name in names)[:16]
    return preprocess([cv2.imread(path) for path in paths], tiny_card)


def standin_engine(onnx_path: str, card: ModelCard, profile=(4, 8, 16), **overrides: Any) -> str:
    """Write a stand-in engine of ``onnx_path`` and its sidecar beside it; return the engine."""
    with open(onnx_path, 'rb') as stream:
        data = trt_standin.engine_bytes(stream.read(), profile,
                                        layers=overrides.pop('layers', None),
                                        dla_core=overrides.get('dla_core'))
    return make_engine_files(onnx_path, card, STANDIN, engine_bytes=data,
                             batch_profile=BatchProfile(*profile), **overrides)


def outstanding(standin: Any) -> int:
    """Return the device allocations not freed."""
    return len(standin.memory)


# --- the backend --------------------------------------------------------------------------

def test_logits_agree_with_onnxruntime_at_every_batch_padded_to_the_profile_minimum(
        standin, tiny_model_copy, tiny_card, leaf_batch):
    engine = standin_engine(tiny_model_copy, tiny_card, profile=(4, 8, 16))
    reference = OnnxRuntimeBackend(tiny_model_copy, tiny_card, provider='cpu')
    backend = tensorrt_backend.load_engine_backend(engine)
    try:
        assert backend.max_batch == 16 and trt_standin.current_context() is None
        executed: List[int] = backend._engine.executed_batches
        assert executed == [4, 16]  # warm-up at 1 (padded to the minimum 4) and at 16
        for size in BATCHES:
            got = backend.infer(leaf_batch[:size])
            want = reference.infer(leaf_batch[:size])
            assert got.shape == (size, 4) and got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            assert trt_standin.current_context() is None
        assert executed[2:] == [max(size, 4) for size in BATCHES]
        with pytest.raises(InferenceError, match='outside 1..16'):
            backend.infer(np.zeros((17, 3, 32, 32), np.float32))
    finally:
        backend.close()
        reference.close()
    assert outstanding(standin) == 0


def test_inference_on_a_worker_thread_and_close_from_a_third(
        standin, tiny_model_copy, tiny_card, leaf_batch):
    engine = standin_engine(tiny_model_copy, tiny_card, profile=(1, 6, 16))
    backend = tensorrt_backend.load_engine_backend(engine)  # the loading (main) thread
    here = backend.infer(leaf_batch[:7])
    results: Dict[str, Any] = {}

    def work() -> None:
        try:
            results['logits'] = [backend.infer(leaf_batch[:n]) for n in BATCHES]
            results['left_current'] = trt_standin.current_context()
        except Exception as exc:  # reported through the assertion below
            results['error'] = exc

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(60)
    assert 'error' not in results, results.get('error')
    assert results['left_current'] is None
    np.testing.assert_array_equal(results['logits'][4], here)
    closer = threading.Thread(target=backend.close)  # frees from a thread that made nothing
    closer.start()
    closer.join(60)
    backend.close()  # idempotent
    assert outstanding(standin) == 0
    with pytest.raises(InferenceError, match='closed'):
        backend.infer(leaf_batch[:1])


def test_the_primary_context_is_retained_once_and_shared(standin, tiny_model_copy, tiny_card):
    engine = standin_engine(tiny_model_copy, tiny_card)
    backends = [tensorrt_backend.load_engine_backend(engine) for _ in range(3)]
    (state,) = trt_standin._PRIMARY.values()
    assert state.retains == 1  # one retain for the process, shared with the CUDA runtime
    for backend in backends:
        backend.close()
    assert outstanding(standin) == 0 and not state.host_allocated


def test_twenty_load_close_cycles_leave_no_allocation(standin, tiny_model_copy, tiny_card,
                                                      leaf_batch):
    engine = standin_engine(tiny_model_copy, tiny_card)
    for _ in range(20):
        backend = tensorrt_backend.load_engine_backend(engine)
        backend.infer(leaf_batch[:3])
        backend.close()
        assert outstanding(standin) == 0


def test_a_corrupted_engine_is_a_mismatch_and_auto_falls_back_with_one_warning(
        standin, tiny_model_copy, tiny_card):
    engine = standin_engine(tiny_model_copy, tiny_card)
    with open(engine, 'r+b') as stream:
        stream.write(b'garbage!')  # damaged on disk after the sidecar was written...
    sidecar = sidecar_path_for_engine(engine)
    with open(sidecar, encoding='utf-8') as stream:
        doc = json.load(stream)
    doc['engine_sha256'] = sha256_file(engine)  # ...or the sidecar rewritten with it
    with open(sidecar, 'w', encoding='utf-8') as stream:
        json.dump(doc, stream)
    with pytest.raises(EngineMismatchError, match='could not deserialise it'):
        tensorrt_backend.load_engine_backend(engine)
    warnings: List[str] = []
    backend = load_backend(tiny_model_copy, 'auto', warn=warnings.append)
    try:
        assert isinstance(backend, OnnxRuntimeBackend)
        (warning,) = warnings
        assert warning.startswith(f'backend auto: the TensorRT engine {engine} matches but did '
                                  'not load (')
        assert 'could not deserialise it' in warning and '--force' in warning
    finally:
        backend.close()
    with pytest.raises(EngineMismatchError):
        load_backend(tiny_model_copy, 'tensorrt')
    assert outstanding(standin) == 0


def test_an_engine_whose_tensors_break_the_card_frees_everything_in_its_context(
        standin, tmp_path, tiny_card):
    from tiny_model import make_tiny_model

    other = tmp_path / 'other'
    other.mkdir()
    make_tiny_model(str(other), num_classes=3)  # an engine of a 3-class model...
    engine = standin_engine(str(other / 'tiny.onnx'), tiny_card)  # ...claiming the 4-class card
    sidecar = read_sidecar(sidecar_path_for_engine(engine))
    # past the file checks: the deserialised engine's output has 3 classes, not 4
    with pytest.raises(EngineMismatchError, match=r'output shape \(-1, 3\), the card lists 4'):
        tensorrt_backend.TensorRTBackend(engine, tiny_card, sidecar)
    assert outstanding(standin) == 0  # and the fixture: no TensorRT object outlived it


def test_inspect_engine_and_describe(standin, tiny_model_copy, tiny_card):
    engine = standin_engine(tiny_model_copy, tiny_card,
                            builder_options={'dla': {'core': 0, 'dla_subgraphs': 1,
                                                     'gpu_layers': 2}},
                            sm_count=16, memory_mib=30000)
    infos = tensorrt_backend.inspect_engine(engine)
    assert [(i.name, i.is_input, i.dtype) for i in infos] == [
        ('input', True, 'float32'), ('logits', False, 'float32')]
    assert infos[0].profile == ((4, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32))
    backend = tensorrt_backend.load_engine_backend(engine)
    try:
        facts = backend.describe()
        assert facts['dla_placement'] == {'core': 0, 'dla_subgraphs': 1, 'gpu_layers': 2}
        assert facts['module'] == '16 SMs, 30000 MiB' and facts['backend'] == 'tensorrt'
    finally:
        backend.close()


def test_probe_machine_reads_the_module_facts(standin, monkeypatch, tmp_path):
    release = tmp_path / 'nv_tegra_release'
    release.write_text('# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, '
                       'EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n')
    status = tmp_path / 'status'
    status.write_text('pmode:0002 fmode:quiet\n')
    monkeypatch.setattr(tensorrt_backend, 'L4T_RELEASE_FILE', str(release))
    monkeypatch.setattr(tensorrt_backend, 'POWER_MODE_FILE', str(status))
    machine = tensorrt_backend.probe_machine()
    assert machine == MachineInfo('10.3.0', 'Orin', (8, 7), sm_count=16, memory_mib=32768,
                                  dla_cores=2, l4t_release='36.4.0', power_mode='2')
    assert trt_standin.current_context() is None  # the runtime was asked inside a push/pop
    monkeypatch.setitem(trt_standin.GPU, 'dla_cores', 0)
    assert tensorrt_backend.probe_machine().dla_cores == 0


# --- the build tool ---------------------------------------------------------------------------

@pytest.fixture()
def tool(standin, capsys):
    """Return run(args) -> (exit status, stdout, stderr) of leaf-disease-build-engine."""
    progress = logging.getLogger('leaf_disease_ros.inference.engine.build')

    def run(*args: str) -> Any:
        before = list(progress.handlers)
        try:
            code = cli.main(list(args))
        finally:
            for handler in progress.handlers[len(before):]:
                progress.removeHandler(handler)
        out, err = capsys.readouterr()
        return code, out, err
    return run


def engine_path(onnx_path: str, precision: str = 'fp16') -> str:
    """Return where the tool writes the engine of ``onnx_path`` on the stand-in GPU."""
    return os.path.join(os.path.dirname(onnx_path),
                        engine_file_name('tiny', precision, (8, 7), '10.3.0'))


def test_fp16_build_check_and_load_through_auto(tool, tiny_model_copy, tiny_card, leaf_batch):
    code, out, err = tool(tiny_model_copy)
    assert code == 0, out + err
    assert 'machine: Orin (sm87), TensorRT 10.3.0 (16 SMs, 32768 MiB, 2 DLA cores)' in out
    engine = engine_path(tiny_model_copy)
    sidecar = read_sidecar(sidecar_path_for_engine(engine))
    assert (sidecar.sm_count, sidecar.memory_mib, sidecar.dla_cores) == (16, 32768, 2)
    assert sidecar.builder_options['timing_cache_reused'] is False
    code, out, err = tool('--check', engine)
    assert code == 0 and 'OK: the engine matches' in out, out + err
    warnings: List[str] = []
    backend = load_backend(tiny_model_copy, 'auto', warn=warnings.append)
    reference = OnnxRuntimeBackend(tiny_model_copy, tiny_card, provider='cpu')
    try:
        assert backend.name == 'tensorrt' and warnings == []
        np.testing.assert_allclose(backend.infer(leaf_batch[:6]), reference.infer(leaf_batch[:6]),
                                   rtol=1e-5, atol=1e-6)
    finally:
        backend.close()
        reference.close()
    code, out, err = tool(tiny_model_copy, '--force')  # the timing cache is reused
    assert code == 0
    assert read_sidecar(sidecar_path_for_engine(engine)).builder_options['timing_cache_reused']


def test_an_engine_of_another_module_is_a_mismatch(tool, standin, tiny_model_copy,
                                                   monkeypatch):
    assert tool(tiny_model_copy)[0] == 0
    monkeypatch.setitem(trt_standin.GPU, 'sm_count', 8)  # an Orin Nano: also 'Orin', sm87
    code, out, _ = tool('--check', engine_path(tiny_model_copy))
    assert code == 1
    assert 'MISMATCH: built on a GPU with 16 SMs, this one has 8' in out


def test_a_damaged_timing_cache_is_replaced_not_a_traceback(tool, tiny_model_copy):
    cache = timing_cache_path(os.path.dirname(tiny_model_copy), STANDIN)
    with open(cache, 'wb') as stream:
        stream.write(b'\x00 truncated by a power cut')
    code, out, err = tool(tiny_model_copy)
    assert code == 0, out + err
    assert f'note: timing cache {cache} is damaged; starting a fresh one' in out
    with open(cache, 'rb') as stream:
        assert stream.read().startswith(trt_standin.TIMING_MAGIC)


def test_int8_cache_is_keyed_by_the_model_and_ignored_when_images_are_given(tool,
                                                                            tiny_model_copy):
    folder = os.path.dirname(tiny_model_copy)
    cache = calibration_cache_path(folder, 'tiny', STANDIN, sha256_file(tiny_model_copy))
    code, out, err = tool(tiny_model_copy, '--precision', 'int8', '--calib-images', LEAVES,
                          '--calib-batch', '8')
    assert code == 0, out + err
    assert os.path.isfile(cache) and 'calibration batch 3 (24 images)' in out
    code, out, err = tool(tiny_model_copy, '--precision', 'int8', '--calib-images', LEAVES,
                          '--calib-batch', '8', '--force')
    assert code == 0 and f'calibrating from the images; the cache {cache} is rewritten' in out
    assert 'calibration batch 3' in out
    code, out, err = tool(tiny_model_copy, '--precision', 'int8', '--force')
    assert code == 0 and f'using calibration cache {cache}' in out
    # a model re-exported under the same name does not find the old model's cache
    from tiny_model import build_tiny_onnx

    build_tiny_onnx(tiny_model_copy, seed=7)
    card_path = os.path.join(folder, 'tiny.json')
    with open(card_path, encoding='utf-8') as stream:
        card = json.load(stream)
    card['onnx_sha256'] = sha256_file(tiny_model_copy)
    with open(card_path, 'w', encoding='utf-8') as stream:
        json.dump(card, stream)
    code, out, err = tool(tiny_model_copy, '--precision', 'int8', '--force')
    assert code == 2 and 'INT8 needs --calib-images DIR' in err


def test_an_error_while_feeding_calibration_fails_the_build(
        tool, tiny_model_copy, monkeypatch):
    from leaf_disease_ros.inference.engine import calibration_batches

    real = calibration_batches.read_bgr
    calls = []

    def flaky(path: str) -> Any:
        calls.append(path)
        if len(calls) == 12:
            raise MemoryError('out of memory while decoding')  # not a LeafDiseaseError
        return real(path)

    monkeypatch.setattr(calibration_batches, 'read_bgr', flaky)
    monkeypatch.setattr(calibration_batches.CalibrationBatches.__init__, '__defaults__',
                        (flaky,))
    code, out, err = tool(tiny_model_copy, '--precision', 'int8', '--calib-images', LEAVES,
                          '--calib-batch', '8')
    assert code == 1, out + err
    assert ('calibration failed: calibration batch 2 failed: MemoryError: out of memory '
            'while decoding') in err
    assert not os.path.exists(engine_path(tiny_model_copy, 'int8'))


def test_calibration_that_tensorrt_ends_early_fails_the_build(
        tool, tiny_model_copy, monkeypatch):
    real = trt_standin.Builder._calibrate

    def one_batch_only(self: Any, config: Any, network: Any) -> Any:
        calibrator = config.int8_calibrator
        original = calibrator.get_batch
        calibrator.get_batch = lambda names: (original(names) if calibrator.batches_done == 0
                                              else None)
        return real(self, config, network)

    monkeypatch.setattr(trt_standin.Builder, '_calibrate', one_batch_only)
    code, out, err = tool(tiny_model_copy, '--precision', 'int8', '--calib-images', LEAVES,
                          '--calib-batch', '8')
    assert code == 1 and 'calibration stopped after 1 batch(es)' in err, out + err


def test_a_calibration_cache_that_cannot_be_written_is_not_recorded(tool, tiny_model_copy,
                                                                    monkeypatch):
    # TensorRT's wrapper (pyInt8.cpp) would print the exception and build on; the sidecar
    # named the cache all the same, and the next INT8 build without images found none
    from leaf_disease_ros.inference.engine import build as build_module

    real = build_module.atomic_write_bytes

    def disk_full(path: str, data: bytes) -> None:
        if path.endswith('.calib_cache'):
            raise OSError(28, 'No space left on device')
        real(path, data)

    monkeypatch.setattr(build_module, 'atomic_write_bytes', disk_full)
    code, out, err = tool(tiny_model_copy, '--precision', 'int8', '--calib-images', LEAVES,
                          '--calib-batch', '8')
    assert code == 0, out + err
    cache = calibration_cache_path(os.path.dirname(tiny_model_copy), 'tiny', STANDIN,
                                   sha256_file(tiny_model_copy))
    assert f'the calibration cache {cache} could not be written (OSError: [Errno 28] No ' \
        'space left on device)' in out and 'needs --calib-images again' in out
    assert 'Exception caught' not in err  # nothing reached TensorRT's wrapper
    calibration = read_sidecar(sidecar_path_for_engine(engine_path(tiny_model_copy, 'int8'))
                               ).builder_options['calibration']
    assert calibration['cache'] is None and 'No space left' in calibration['cache_error']
    assert not os.path.exists(cache)
    monkeypatch.setattr(build_module, 'atomic_write_bytes', real)
    code, out, err = tool(tiny_model_copy, '--precision', 'int8', '--calib-images', LEAVES,
                          '--calib-batch', '8', '--force')
    calibration = read_sidecar(sidecar_path_for_engine(engine_path(tiny_model_copy, 'int8'))
                               ).builder_options['calibration']
    assert code == 0 and calibration['cache'] == cache and 'cache_error' not in calibration
    code, out, err = tool(tiny_model_copy, '--precision', 'int8', '--force')  # from the cache
    calibration = read_sidecar(sidecar_path_for_engine(engine_path(tiny_model_copy, 'int8'))
                               ).builder_options['calibration']
    assert code == 0 and calibration == {'cache': cache}


def test_an_unreadable_calibration_cache_fails_the_build_with_the_reason(tool, tiny_model_copy,
                                                                         monkeypatch):
    from leaf_disease_ros.inference.engine import build as build_module

    cache = calibration_cache_path(os.path.dirname(tiny_model_copy), 'tiny', STANDIN,
                                   sha256_file(tiny_model_copy))
    with open(cache, 'wb') as stream:  # a regular file (the output rule accepts it) ...
        stream.write(b'TRT-100300-EntropyCalibration2\n')
    real_open = open

    def unreadable(path, *args, **kwargs):  # ... that cannot be opened (tests run as root)
        if os.fspath(path) == cache:
            raise PermissionError(13, 'Permission denied', cache)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(build_module, 'open', unreadable, raising=False)
    code, out, err = tool(tiny_model_copy, '--precision', 'int8')
    assert code == 1, out + err
    assert f'the calibration cache {cache} cannot be read: Permission denied' in err


def test_dla_needs_one_batch_size_and_the_placement_is_recorded(tool, tiny_model_copy):
    code, _, err = tool(tiny_model_copy, '--dla-core', '0')
    assert code == 2 and '--dla-core: DLA has no dynamic shapes' in err
    assert '--min-batch 8 --opt-batch 8 --max-batch 8' in err
    code, out, err = tool(tiny_model_copy, '--dla-core', '0', '--min-batch', '8',
                          '--opt-batch', '8', '--max-batch', '8')
    assert code == 0, out + err
    assert 'DLA core 0: 1 DLA subgraph(s), 0 layer(s) left on the GPU' in out
    sidecar = read_sidecar(sidecar_path_for_engine(engine_path(tiny_model_copy)))
    assert sidecar.dla_core == 0 and sidecar.builder_options['dla']['dla_subgraphs'] == 1
    code, _, err = tool(tiny_model_copy, '--dla-core', '2', '--min-batch', '8',
                        '--opt-batch', '8', '--max-batch', '8', '--force')
    assert code == 2 and 'this machine has 2 DLA cores' in err


def test_a_dla_build_where_nothing_runs_on_the_dla_fails(tool, tiny_model_copy, monkeypatch):
    monkeypatch.setattr(trt_standin, 'DLA_OPS', set())  # no layer of the model runs on DLA
    code, out, err = tool(tiny_model_copy, '--dla-core', '0', '--min-batch', '4',
                          '--opt-batch', '4', '--max-batch', '4')
    assert code == 1 and 'runs on DLA core 0' in err and 'Build without --dla-core' in err
    assert not os.path.exists(engine_path(tiny_model_copy))


def test_dla_placement_is_read_from_the_build_log():
    log = ['---------- Layers Running on DLA ----------', '[DlaLayer] {ForeignNode[conv...relu]}',
           '---------- Layers Running on GPU ----------', '[GpuLayer] SHUFFLE: reshape',
           '[GpuLayer] SOFTMAX: softmax']
    assert dla_placement(log) == (1, 2)
    assert dla_placement(['[MemUsageChange] Init CUDA']) == (None, None)


def test_readme_first_build_of_the_shipped_model_on_tensorrt_10_12(monkeypatch, tool, tmp_path):
    # TensorRT >= 10.12 with --typing auto builds FP16 strongly typed from the built-in
    # FP16 copy; the shipped default's 33 Clip (ReLU6) nodes stopped it before
    pytest.importorskip('onnx', reason='the FP16 copy needs onnx')
    trt_standin.install(monkeypatch, version='10.12.0')
    shipped = os.path.join(os.path.dirname(LEAVES), '..', '..', 'engines',
                           'leaf_lite0_field.onnx')
    code, out, err = tool(shipped, '--out-dir', str(tmp_path), '--no-timing-cache')
    assert code == 0, out + err
    assert 'building a strongly typed network from an FP16 copy' in out
    assert 'converted ' in out and 'to FP16 (100 initializers' in out
    sidecar = read_sidecar(str(tmp_path / 'leaf_lite0_field.fp16.sm87.trt10.12.0.engine.json'))
    assert sidecar.builder_options['typing'] == 'strong'
    assert sidecar.builder_options['fp16_conversion']['constants'] == 66


def test_fp16_io_in_a_given_fp16_onnx_is_refused_before_building(tool, tiny_model_copy,
                                                                 tmp_path):
    onnx = pytest.importorskip('onnx', reason='building an FP16-I/O model needs onnx')
    from onnx import helper, TensorProto

    model = onnx.load(tiny_model_copy)
    graph = model.graph
    graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    graph.node[0].input[0] = 'input_f32'
    graph.node.insert(0, helper.make_node('Cast', ['input'], ['input_f32'],
                                          to=TensorProto.FLOAT))
    fp16_io = str(tmp_path / 'fp16_io.onnx')
    onnx.save(model, fp16_io)
    code, out, err = tool(tiny_model_copy, '--typing', 'strong', '--fp16-onnx', fp16_io)
    assert code == 2, out + err
    assert '--fp16-onnx: ' in err and "input 'input' is DataType.HALF" in err
    assert 'building fp16 engine' not in out  # refused before the build


def test_build_errors_drop_tensorrt_objects_while_the_context_is_current(
        tool, standin, tiny_model_copy, tmp_path):
    from tiny_model import make_tiny_model

    other = tmp_path / 'three'
    other.mkdir()
    make_tiny_model(str(other), num_classes=3)
    shutil.copy(str(other / 'tiny.json'), str(tmp_path / 'three.json'))
    # the card's class count fails check_network after the builder, network and parser
    # exist: they are referenced by the traceback until the tool has reported it
    code, _, err = tool(tiny_model_copy, '--card', str(tmp_path / 'three.json'))
    assert code == 2 and 'card' in err
    assert standin.violations == []  # (the fixture checks it too)
