"""
GPU tier: real TensorRT engines of the tiny and the shipped model, compared with ONNX Runtime.

Skipped where TensorRT, pycuda or a CUDA GPU is missing. Engines are built by
leaf-disease-build-engine (a subprocess, as an operator runs it) into private copies
of the models, then loaded through the real backend and factory. Besides parity of
the tiny model: the shipped 128-px model's top-1 agreement with ONNX Runtime on real
leaf photos (FP16 and INT8, at least 99 %), its throughput against ONNX Runtime
written as a benchmark file (``$LEAF_BENCHMARK_DIR``), GPU memory over 20 load/close
cycles, a corrupted engine, and a DLA build where the GPU has a DLA core.

Each test asserts what it is named after, with the tolerance stated beside it:
agreement with ONNX Runtime (logits, or the card's softmax probabilities), a refusal,
calibration having run (TensorRT pulled every batch and wrote its calibration table),
layers on the DLA (the engine's own layer list, read with ``IEngineInspector``).
Written against the TensorRT 10 Python API (NVIDIA/TensorRT python/src/infer/pyCore.cpp:
``ICudaEngine.create_engine_inspector``, ``EngineInspector.get_engine_information``,
``LayerInformationFormat.JSON``; include/NvInferRuntime.h: with the default
``ProfilingVerbosity.LAYER_NAMES_ONLY`` the inspector lists the layer names).
"""

import importlib
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from typing import Any, Dict, List

import cv2
import numpy as np
import pytest

from leaf_disease_ros.inference.engine.naming import (engine_file_name, sidecar_path_for_engine,
                                                      timing_cache_path)
from leaf_disease_ros.inference.engine.policy import parse_tensorrt_version
from leaf_disease_ros.inference.engine.sidecar import card_path_for_engine, read_sidecar
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.inference.onnxruntime_backend import OnnxRuntimeBackend
from leaf_disease_ros.perception.errors import EngineMismatchError, InferenceError
from leaf_disease_ros.perception.model_card import (card_path_for_model, load_card, ModelCard,
                                                    sha256_file)
from leaf_disease_ros.perception.postprocess import softmax
from leaf_disease_ros.perception.preprocess import preprocess
from tiny_model import make_tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the installed command leaf-disease-build-engine, run from this source tree
TOOL = ['-c', 'import sys; from leaf_disease_ros.cli.build_engine import main; '
        'sys.exit(main(sys.argv[1:]))']
LEAVES = os.path.join(REPO, 'test', 'data', 'leaves')
#: FP16 engine vs ONNX Runtime (FP32): softmax probabilities, absolute
FP16_PROBABILITY_TOLERANCE = 0.02
#: INT8 (entropy calibration, 24 leaves) vs ONNX Runtime: softmax probabilities, absolute
#: (the tiny model's logits span about 6; 0.05 is a 5-point change of a score)
INT8_PROBABILITY_TOLERANCE = 0.05
#: DLA (FP16 on the DLA, GPU fallback) vs ONNX Runtime: logits, absolute
DLA_LOGIT_TOLERANCE = 0.05


def _gpu_ready() -> bool:
    try:
        importlib.import_module('tensorrt')
        cuda = importlib.import_module('pycuda.driver')
        cuda.init()
        return cuda.Device.count() > 0
    except Exception:  # ImportError, missing driver libraries, pycuda errors: all mean no
        return False


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _gpu_ready(), reason='TensorRT/pycuda/GPU not available')]


def build(*args: str) -> subprocess.CompletedProcess:
    """Run leaf-disease-build-engine; return the finished process (output captured)."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([os.path.join(REPO, 'src'), env.get('PYTHONPATH', '')])
    return subprocess.run([sys.executable] + TOOL + list(args), capture_output=True, text=True,
                          env=env, timeout=900, cwd=REPO)


def machine() -> Any:
    """Return this machine's MachineInfo."""
    from leaf_disease_ros.inference.tensorrt_backend import probe_machine

    return probe_machine()


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Return a private folder with tiny.onnx + tiny.json that engines are built into."""
    folder = str(tmp_path_factory.mktemp('gpu_model'))
    make_tiny_model(folder)
    return folder


@pytest.fixture(scope='module')
def onnx_path(model_dir: str) -> str:
    """Return the tiny ONNX model of this module."""
    return os.path.join(model_dir, 'tiny.onnx')


@pytest.fixture(scope='module')
def card(onnx_path: str) -> ModelCard:
    """Return the tiny model's card."""
    return load_card(card_path_for_model(onnx_path))


@pytest.fixture(scope='module')
def engines(onnx_path: str) -> Dict[str, str]:
    """Build FP32 and FP16 engines once; return precision -> engine path."""
    found = {}
    info = machine()
    for precision in ('fp32', 'fp16'):
        result = build(onnx_path, '--precision', precision)
        assert result.returncode == 0, result.stdout + result.stderr
        assert 'build time:' in result.stdout
        found[precision] = os.path.join(os.path.dirname(onnx_path), engine_file_name(
            'tiny', precision, info.compute_capability, info.tensorrt_version))
    return found


@pytest.fixture(scope='module')
def leaf_batch(card: ModelCard) -> np.ndarray:
    """Return 16 real leaf photos preprocessed with the card: (16, 3, 32, 32) float32."""
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(LEAVES)
                   for name in names)[:16]
    return preprocess([cv2.imread(path) for path in paths], card)


def _compare(engine: str, onnx_path: str, card: ModelCard, batch: np.ndarray,
             tolerance: float) -> None:
    from leaf_disease_ros.inference.tensorrt_backend import load_engine_backend

    reference = OnnxRuntimeBackend(onnx_path, card, provider='cpu')
    backend = load_engine_backend(engine)
    try:
        assert backend.describe()['backend'] == 'tensorrt' and backend.max_batch == 16
        for size in (1, 6, 16):
            got = backend.infer(batch[:size])
            want = reference.infer(batch[:size])
            assert got.dtype == np.float32 and got.shape == (size, card.num_classes)
            assert np.max(np.abs(got - want)) <= tolerance, (size, got, want)
    finally:
        backend.close()
        reference.close()


def max_probability_difference(got_logits: np.ndarray, want_logits: np.ndarray,
                               card: ModelCard) -> float:
    """Return the largest absolute difference of the card's softmax probabilities."""
    return float(np.max(np.abs(softmax(got_logits, card.temperature)
                               - softmax(want_logits, card.temperature))))


def engine_layer_names(engine_path: str, dla_core: Any = None) -> List[str]:
    """
    Return the layer names of a built engine, as TensorRT's engine inspector lists them.

    ``get_engine_information(LayerInformationFormat.JSON)`` is ``{"Layers": [...]}``,
    each layer its name (profiling verbosity LAYER_NAMES_ONLY, the builder's default)
    or an object with ``"Name"`` (DETAILED).
    """
    import tensorrt as trt

    from leaf_disease_ros.inference.tensorrt_backend import CudaContext, deserialize

    context = CudaContext(importlib.import_module('pycuda.driver'))
    holder: Dict[str, Any] = {}
    try:
        with context.active():
            holder['runtime'], holder['engine'] = deserialize(trt, engine_path, dla_core, '')
            holder['inspector'] = holder['engine'].create_engine_inspector()
            info = json.loads(holder['inspector'].get_engine_information(
                trt.LayerInformationFormat.JSON))
            names = [layer if isinstance(layer, str) else str(layer['Name'])
                     for layer in info['Layers']]
            assert len(names) == holder['engine'].num_layers, (len(names), names)
            return names
    finally:
        context.release(holder.clear)


def test_build_writes_engine_sidecar_and_timing_cache(engines: Dict[str, str], onnx_path: str,
                                                      card: ModelCard) -> None:
    info = machine()
    for precision, engine in engines.items():
        assert os.path.isfile(engine)
        sidecar = read_sidecar(sidecar_path_for_engine(engine))
        assert sidecar.precision == precision and sidecar.onnx_sha256 == card.onnx_sha256
        assert sidecar.batch_profile.as_tuple() == (1, 6, 16)
        assert sidecar.tensorrt_version == info.tensorrt_version
        assert sidecar.compute_capability == info.compute_capability
        assert sidecar.build_seconds > 0 and sidecar.card_file == 'tiny.json'
    assert os.path.isfile(timing_cache_path(os.path.dirname(onnx_path), info))


def test_rebuild_needs_force_and_reuses_the_timing_cache(engines: Dict[str, str],
                                                         onnx_path: str) -> None:
    engine = engines['fp32']
    before = open(engine, 'rb').read()
    refused = build(onnx_path, '--precision', 'fp32')
    assert refused.returncode == 2 and 'pass --force' in refused.stderr
    assert open(engine, 'rb').read() == before
    forced = build(onnx_path, '--precision', 'fp32', '--force')
    assert forced.returncode == 0, forced.stderr
    assert read_sidecar(sidecar_path_for_engine(engine)).builder_options['timing_cache_reused']


def test_fp32_logits_match_onnxruntime(engines: Dict[str, str], onnx_path: str,
                                       card: ModelCard, leaf_batch: np.ndarray) -> None:
    _compare(engines['fp32'], onnx_path, card, leaf_batch, 1e-3)


def test_fp16_logits_match_onnxruntime(engines: Dict[str, str], onnx_path: str,
                                       card: ModelCard, leaf_batch: np.ndarray) -> None:
    _compare(engines['fp16'], onnx_path, card, leaf_batch, 1e-2)


def test_strongly_typed_fp16_from_the_fp16_onnx(tmp_path, engines: Dict[str, str],
                                                onnx_path: str, card: ModelCard,
                                                leaf_batch: np.ndarray) -> None:
    out = str(tmp_path / 'strong')
    result = build(onnx_path, '--typing', 'strong', '--out-dir', out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'converted' in result.stdout
    (engine,) = [os.path.join(out, n) for n in os.listdir(out) if n.endswith('.engine')]
    sidecar = read_sidecar(sidecar_path_for_engine(engine))
    assert sidecar.builder_options['typing'] == 'strong'
    assert os.path.normpath(card_path_for_engine(engine, sidecar)) == card.path
    _compare(engine, onnx_path, card, leaf_batch, 1e-2)


def test_int8_with_calibration_images(tmp_path, onnx_path: str, card: ModelCard,
                                      leaf_batch: np.ndarray) -> None:
    if parse_tensorrt_version(machine().tensorrt_version) >= (11, 0, 0):
        pytest.skip('TensorRT 11 removed implicit INT8 calibration')
    out = str(tmp_path / 'int8')
    result = build(onnx_path, '--precision', 'int8', '--calib-images', LEAVES,
                   '--calib-batch', '8', '--out-dir', out)
    assert result.returncode == 0, result.stdout + result.stderr
    (engine,) = [os.path.join(out, n) for n in os.listdir(out) if n.endswith('.engine')]
    options = read_sidecar(sidecar_path_for_engine(engine)).builder_options
    calibration = options['calibration']
    assert calibration['images_used'] == 24 and calibration['images_skipped'] == []
    # calibration ran: TensorRT pulled all 3 batches of 8 through get_batch and handed its
    # table to write_calibration_cache (first line TRT-<version>-EntropyCalibration2, then
    # "<tensor>: <scale as hex float32>", the input tensor among them)
    assert options['calibration_batches'] == 3
    with open(calibration['cache'], 'rb') as stream:
        table = stream.read().decode('ascii').splitlines()
    assert table[0].startswith('TRT-') and table[0].endswith('EntropyCalibration2'), table[0]
    scales = dict(line.rsplit(': ', 1) for line in table[1:] if ': ' in line)
    assert card.input_name in scales and len(scales) >= 3, scales
    assert all(struct.unpack('>f', int(value, 16).to_bytes(4, 'big'))[0] > 0
               for value in scales.values()), scales
    from leaf_disease_ros.inference.tensorrt_backend import load_engine_backend

    reference = OnnxRuntimeBackend(onnx_path, card, provider='cpu')
    backend = load_engine_backend(engine)
    try:
        logits = backend.infer(leaf_batch)
        assert logits.shape == (16, card.num_classes)
        difference = max_probability_difference(logits, reference.infer(leaf_batch), card)
        assert difference <= INT8_PROBABILITY_TOLERANCE, difference
    finally:
        backend.close()
        reference.close()


def test_auto_picks_the_engine_and_runs_it(engines: Dict[str, str], onnx_path: str,
                                           leaf_batch: np.ndarray) -> None:
    warnings: List[str] = []
    backend = load_backend(onnx_path, 'auto', warn=warnings.append, max_batch=32)
    try:
        assert backend.name == 'tensorrt' and warnings == []
        assert backend.max_batch == 16  # capped by the profile
        assert backend.infer(leaf_batch[:3]).shape == (3, 4)
    finally:
        backend.close()


def test_infer_on_another_thread_and_close_twice(engines: Dict[str, str],
                                                 leaf_batch: np.ndarray) -> None:
    from leaf_disease_ros.inference.tensorrt_backend import load_engine_backend

    backend = load_engine_backend(engines['fp32'])
    here = backend.infer(leaf_batch[:6])
    there: Dict[str, Any] = {}

    def work() -> None:
        try:
            there['logits'] = backend.infer(leaf_batch[:6])
        except Exception as exc:  # reported through the assertion below
            there['error'] = exc

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(60)
    assert 'error' not in there, there.get('error')
    assert np.array_equal(here, there['logits'])
    closer = threading.Thread(target=backend.close)
    closer.start()
    closer.join(60)
    backend.close()
    with pytest.raises(InferenceError, match='closed'):
        backend.infer(leaf_batch[:1])
    with pytest.raises(InferenceError):
        backend.infer(np.zeros((17, 3, 32, 32), np.float32))


def test_check_accepts_a_matching_engine(engines: Dict[str, str]) -> None:
    result = build('--check', engines['fp16'])
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'OK: the engine matches' in result.stdout
    assert 'tensor:  input  input (-1, 3, 32, 32)' in result.stdout


def test_check_and_load_reject_a_mismatched_engine(tmp_path, engines: Dict[str, str],
                                                   onnx_path: str) -> None:
    for name in ('tiny.onnx', 'tiny.json'):
        shutil.copy(os.path.join(os.path.dirname(onnx_path), name), tmp_path / name)
    engine = str(tmp_path / os.path.basename(engines['fp16']))
    shutil.copy(engines['fp16'], engine)
    with open(sidecar_path_for_engine(engines['fp16']), encoding='utf-8') as stream:
        doc = json.load(stream)
    doc['num_classes'] = 5
    doc['onnx_sha256'] = 'a' * 64
    with open(sidecar_path_for_engine(engine), 'w', encoding='utf-8') as stream:
        json.dump(doc, stream)
    result = build('--check', engine)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.count('MISMATCH:') == 2 and 'class count 5' in result.stdout
    assert 'rebuild on this machine with' in result.stdout
    other = str(tmp_path / 'other')
    os.makedirs(other)
    make_tiny_model(other, num_classes=3)
    result = build('--check', engines['fp16'], '--card', os.path.join(other, 'tiny.json'))
    assert result.returncode == 1 and 'the card lists 3 labels' in result.stdout
    from leaf_disease_ros.inference.tensorrt_backend import load_engine_backend

    with pytest.raises(EngineMismatchError, match='class count 5'):
        load_engine_backend(engine)


def test_embedding_output_and_saliency_through_an_engine(tmp_path, leaf_batch: np.ndarray
                                                         ) -> None:
    """A model with a second output: the engine returns both; saliency runs through it."""
    from leaf_disease_ros.explain.saliency import explain_tiles
    from leaf_disease_ros.inference.tensorrt_backend import load_engine_backend

    folder = str(tmp_path / 'emb')
    os.makedirs(folder)
    make_tiny_model(folder, name='tiny_emb', embedding_name='embedding')
    onnx_file = os.path.join(folder, 'tiny_emb.onnx')
    card = load_card(card_path_for_model(onnx_file))
    result = build(onnx_file, '--precision', 'fp32')
    assert result.returncode == 0, result.stdout + result.stderr
    info = machine()
    engine = os.path.join(folder, engine_file_name('tiny_emb', 'fp32', info.compute_capability,
                                                   info.tensorrt_version))
    reference = OnnxRuntimeBackend(onnx_file, card, provider='cpu')
    backend = load_engine_backend(engine)
    try:
        for size in (1, 6, 16):
            logits, embeddings = backend.infer_with_embedding(leaf_batch[:size])
            want_logits, want_embeddings = reference.infer_with_embedding(leaf_batch[:size])
            assert embeddings.shape == (size, 8)
            assert np.max(np.abs(logits - want_logits)) <= 1e-3
            assert np.max(np.abs(embeddings - want_embeddings)) <= 1e-3
        tiles = [cv2.imread(os.path.join(LEAVES, 'esca', n))
                 for n in sorted(os.listdir(os.path.join(LEAVES, 'esca')))[:2]]
        on_gpu = explain_tiles(tiles, backend, card, 'occlusion', grid=4)
        on_cpu = explain_tiles(tiles, reference, card, 'occlusion', grid=4)
        assert on_gpu.batches == 3  # 2 tiles x 17 inferences in batches of 16
        for a, b in zip(on_gpu.maps, on_cpu.maps):
            assert a.label == b.label and np.max(np.abs(a.heat - b.heat)) < 0.05
    finally:
        backend.close()
        reference.close()


# --- the shipped model, memory, corruption, DLA (issue 12) ------------------------------

SHIPPED = os.path.join(REPO, 'engines', 'leaf_lite0_field.onnx')
SHARED_LEAVES = os.path.join(REPO, '..', 'shared', 'datasets', 'plantvillage_grape')
AGREEMENT_IMAGES = 400  # spread over the shared dataset when present, else test/data/leaves


def _image_paths(limit: int) -> List[str]:
    folder = SHARED_LEAVES if os.path.isdir(SHARED_LEAVES) else LEAVES
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                   for name in names if name.lower().endswith(('.jpg', '.jpeg', '.png')))
    step = max(1, len(paths) // limit)
    return paths[::step][:limit]


@pytest.fixture(scope='module')
def shipped_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Return a private copy of the shipped model and card that engines are built into."""
    folder = str(tmp_path_factory.mktemp('shipped'))
    for name in ('leaf_lite0_field.onnx', 'leaf_lite0_field.json'):
        shutil.copy(os.path.join(REPO, 'engines', name), os.path.join(folder, name))
    return folder


@pytest.fixture(scope='module')
def shipped_batches(shipped_dir: str) -> List[np.ndarray]:
    """Return real leaf photos preprocessed with the shipped card, in batches of 16."""
    card = load_card(os.path.join(shipped_dir, 'leaf_lite0_field.json'))
    images = [cv2.imread(path) for path in _image_paths(AGREEMENT_IMAGES)]
    images = [image for image in images if image is not None]
    return [preprocess(images[i:i + 16], card) for i in range(0, len(images), 16)]


def _shipped_engine(shipped_dir: str, precision: str, *extra: str) -> str:
    onnx_path = os.path.join(shipped_dir, 'leaf_lite0_field.onnx')
    info = machine()
    engine = os.path.join(shipped_dir, engine_file_name('leaf_lite0_field', precision,
                                                        info.compute_capability,
                                                        info.tensorrt_version))
    if not os.path.isfile(engine):
        result = build(onnx_path, '--precision', precision, *extra)
        assert result.returncode == 0, result.stdout + result.stderr
    return engine


@pytest.mark.parametrize('precision', ['fp16', 'int8'])
def test_shipped_model_top1_agrees_with_onnxruntime(shipped_dir: str, precision: str,
                                                    shipped_batches: List[np.ndarray]) -> None:
    from leaf_disease_ros.inference.tensorrt_backend import load_engine_backend

    extra: List[str] = []
    if precision == 'int8':
        if parse_tensorrt_version(machine().tensorrt_version) >= (11, 0, 0):
            pytest.skip('TensorRT 11 removed implicit INT8 calibration')
        calib = SHARED_LEAVES if os.path.isdir(SHARED_LEAVES) else LEAVES
        extra = ['--calib-images', calib, '--calib-max-images', '256']
    engine = _shipped_engine(shipped_dir, precision, *extra)
    card = load_card(os.path.join(shipped_dir, 'leaf_lite0_field.json'))
    reference = OnnxRuntimeBackend(os.path.join(shipped_dir, 'leaf_lite0_field.onnx'), card,
                                   provider='cpu')
    backend = load_engine_backend(engine)
    try:
        agree = total = 0
        for batch in shipped_batches:
            got = backend.infer(batch).argmax(axis=1)
            want = reference.infer(batch).argmax(axis=1)
            agree += int((got == want).sum())
            total += len(batch)
        assert total >= 24 and agree / total >= 0.99, (precision, agree, total)
    finally:
        backend.close()
        reference.close()


def test_shipped_model_throughput_against_onnxruntime_is_recorded(
        shipped_dir: str, shipped_batches: List[np.ndarray], tmp_path) -> None:
    """Write the Jetson benchmark file ($LEAF_BENCHMARK_DIR, else a temporary folder)."""
    import platform
    import time

    from leaf_disease_ros.inference.tensorrt_backend import load_engine_backend

    engine = _shipped_engine(shipped_dir, 'fp16')
    card = load_card(os.path.join(shipped_dir, 'leaf_lite0_field.json'))
    batch = shipped_batches[0][:6]  # the tiles of one 768x512 frame

    def images_per_s(backend: Any, seconds: float = 3.0) -> float:
        backend.infer(batch)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            backend.infer(batch)
            count += len(batch)
        return count / (time.perf_counter() - start)

    trt_backend = load_engine_backend(engine)
    try:
        trt_rate = images_per_s(trt_backend)
        trt_logits = trt_backend.infer(batch)  # what the timed engine computes
    finally:
        trt_backend.close()
    ort_backend = OnnxRuntimeBackend(os.path.join(shipped_dir, 'leaf_lite0_field.onnx'), card)
    try:
        ort_rate = images_per_s(ort_backend)
        ort_logits = ort_backend.infer(batch)
        ort_provider = ','.join(ort_backend.describe().get('providers', []))
    finally:
        ort_backend.close()
    # a rate is only worth recording for an engine that computes the same scores
    difference = max_probability_difference(trt_logits, ort_logits, card)
    info = machine()
    record = {'machine': info.describe(), 'module': info.module_facts(),
              'platform': platform.platform(), 'model': 'leaf_lite0_field (128 px)',
              'batch': len(batch), 'tensorrt_fp16_images_per_s': round(trt_rate, 1),
              'onnxruntime_images_per_s': round(ort_rate, 1),
              'onnxruntime_providers': ort_provider, 'speedup': round(trt_rate / ort_rate, 2),
              'max_probability_difference': round(difference, 5),
              'probability_tolerance': FP16_PROBABILITY_TOLERANCE}
    folder = os.environ.get('LEAF_BENCHMARK_DIR') or str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    name = f'tensorrt_{info.gpu_name.replace(" ", "_").lower()}_fp16.json'
    with open(os.path.join(folder, name), 'w', encoding='utf-8') as stream:
        json.dump(record, stream, indent=1)
    assert difference <= FP16_PROBABILITY_TOLERANCE, (difference, trt_logits, ort_logits)
    with open(os.path.join(folder, name), encoding='utf-8') as stream:
        assert json.load(stream) == record  # recorded: the file holds both rates
    assert record['tensorrt_fp16_images_per_s'] > 0 and record['onnxruntime_images_per_s'] > 0


def test_memory_is_returned_over_twenty_load_close_cycles(engines: Dict[str, str],
                                                          leaf_batch: np.ndarray) -> None:
    import pycuda.driver as cuda

    from leaf_disease_ros.inference.tensorrt_backend import (load_engine_backend,
                                                             primary_context)

    context = primary_context(cuda)

    def free_bytes() -> int:
        context.push()
        try:
            cuda.Context.synchronize()
            return int(cuda.mem_get_info()[0])
        finally:
            cuda.Context.pop()

    backend = load_engine_backend(engines['fp16'])  # first load: lazy runtime allocations
    backend.close()
    before = free_bytes()
    for _ in range(20):
        backend = load_engine_backend(engines['fp16'])
        backend.infer(leaf_batch[:6])
        backend.close()
    lost = before - free_bytes()
    assert lost < 64 << 20, f'{lost / 2**20:.1f} MiB of GPU memory not returned after 20 cycles'


def _corrupt(data: bytes, how: str) -> bytes:
    """Return a damaged copy of a serialised engine."""
    if how == 'truncated':  # a copy cut short (full disk, interrupted transfer)
        return data[:len(data) // 2]
    if how == 'header':  # the plan's header (magic tag, sizes, versions) zeroed
        return bytes(256) + data[256:]
    if how == 'block':  # a zeroed block in the middle (weights, say)
        middle = len(data) // 2
        return data[:middle] + bytes(4096) + data[middle + 4096:]
    raise ValueError(how)


# sidecar_updated: the sidecar's engine_sha256 is rewritten to the damaged file's, so
# only TensorRT can notice (a truncated or header-less plan it must refuse); otherwise the
# sidecar is the one the build wrote and the sha256 check refuses any damage, also a
# zeroed block TensorRT itself may not notice (a plan has no checksum over its weights).
@pytest.mark.parametrize('how,sidecar_updated,reason', [
    ('truncated', True, 'could not deserialise it'),
    ('header', True, 'could not deserialise it'),
    ('block', False, 'engine file changed after its sidecar was written'),
    ('truncated', False, 'engine file changed after its sidecar was written')])
def test_a_corrupted_engine_is_refused_and_auto_falls_back(
        tmp_path, engines: Dict[str, str], onnx_path: str, how: str, sidecar_updated: bool,
        reason: str) -> None:
    from leaf_disease_ros.inference.tensorrt_backend import load_engine_backend

    for name in ('tiny.onnx', 'tiny.json'):
        shutil.copy(os.path.join(os.path.dirname(onnx_path), name), tmp_path / name)
    engine = str(tmp_path / os.path.basename(engines['fp16']))
    with open(engines['fp16'], 'rb') as stream:
        damaged = _corrupt(stream.read(), how)
    with open(engine, 'wb') as stream:
        stream.write(damaged)
    with open(sidecar_path_for_engine(engines['fp16']), encoding='utf-8') as stream:
        doc = json.load(stream)
    if sidecar_updated:
        doc['engine_sha256'] = sha256_file(engine)
    with open(sidecar_path_for_engine(engine), 'w', encoding='utf-8') as stream:
        json.dump(doc, stream)
    with pytest.raises(EngineMismatchError, match=reason):
        load_engine_backend(engine)
    result = build('--check', engine)  # the operator's check says it too
    assert result.returncode == 1 and reason in result.stdout, result.stdout + result.stderr
    warnings: List[str] = []
    fallback = load_backend(str(tmp_path / 'tiny.onnx'), 'auto', warn=warnings.append)
    try:
        # one warning, with the reason: "matches but did not load (...)" when only
        # TensorRT refused it, "none of the engines there matches: ..." otherwise
        assert fallback.name == 'onnxruntime' and len(warnings) == 1
        assert reason in warnings[0], warnings
    finally:
        fallback.close()


def _dla_cores() -> int:
    import tensorrt as trt

    from leaf_disease_ros.inference.tensorrt_backend import CudaContext, trt_logger

    cuda = importlib.import_module('pycuda.driver')
    context = CudaContext(cuda)
    holder: Dict[str, Any] = {}
    try:
        with context.active():
            holder['builder'] = trt.Builder(trt_logger(trt))
            return int(holder['builder'].num_DLA_cores)
    finally:
        context.release(holder.clear)


def test_dla_engine_runs_on_the_dla_where_there_is_one(tmp_path, onnx_path: str,
                                                       leaf_batch: np.ndarray) -> None:
    if _dla_cores() == 0:
        pytest.skip('this GPU has no DLA core (Jetson Orin NX / AGX Orin have DLA)')
    from leaf_disease_ros.inference.tensorrt_backend import load_engine_backend

    out = str(tmp_path / 'dla')
    result = build(onnx_path, '--dla-core', '0', '--min-batch', '8', '--opt-batch', '8',
                   '--max-batch', '8', '--out-dir', out)
    assert result.returncode == 0, result.stdout + result.stderr
    (engine,) = [os.path.join(out, n) for n in os.listdir(out) if n.endswith('.engine')]
    placement = read_sidecar(sidecar_path_for_engine(engine)).builder_options['dla']
    # the build log said where the layers went ("[DlaLayer] {ForeignNode[...]}" lines at
    # INFO, as in NVIDIA/TensorRT samples/sampleCudla/README.md): at least one subgraph
    subgraphs = placement['dla_subgraphs']
    assert isinstance(subgraphs, int) and subgraphs >= 1, placement
    # and the engine itself holds them: TensorRT names a DLA subgraph layer
    # {ForeignNode[first...last]}; the inspector lists the engine's layers
    layers = engine_layer_names(engine, dla_core=0)
    on_dla = [name for name in layers if name.startswith('{ForeignNode[')]
    assert len(on_dla) >= subgraphs, layers
    card = load_card(card_path_for_model(onnx_path))
    reference = OnnxRuntimeBackend(onnx_path, card, provider='cpu')
    backend = load_engine_backend(engine)
    try:
        logits = backend.infer(leaf_batch[:3])  # padded to the fixed 8
        assert logits.shape == (3, 4)
        difference = float(np.max(np.abs(logits - reference.infer(leaf_batch[:3]))))
        assert difference <= DLA_LOGIT_TOLERANCE, difference
    finally:
        backend.close()
        reference.close()
