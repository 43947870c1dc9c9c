"""
GPU tier: real TensorRT engines of the tiny and the shipped model, compared with ONNX Runtime.

Skipped where TensorRT, pycuda or a CUDA GPU is missing. Engines are built by
leaf-disease-build-engine (a subprocess, as an operator runs it) into private copies
of the models, then loaded through the real backend and factory. Besides parity of
the tiny model: the shipped 128-px model's top-1 agreement with ONNX Runtime on real
leaf photos (FP16 and INT8, at least 99 %), its throughput against ONNX Runtime
written as a benchmark file (``$LEAF_BENCHMARK_DIR``), GPU memory over 20 load/close
cycles, a corrupted engine, and a DLA build where the GPU has a DLA core.
"""

import importlib
import json
import os
import shutil
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
from leaf_disease_ros.perception.errors import (EngineMismatchError, InferenceError,
                                                ModelLoadError)
from leaf_disease_ros.perception.model_card import (card_path_for_model, load_card, ModelCard,
                                                    sha256_file)
from leaf_disease_ros.perception.preprocess import preprocess
from tiny_model import make_tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the installed command leaf-disease-build-engine, run from this source tree
TOOL = ['-c', 'import sys; from leaf_disease_ros.cli.build_engine import main; '
        'sys.exit(main(sys.argv[1:]))']
LEAVES = os.path.join(REPO, 'test', 'data', 'leaves')


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
    calibration = read_sidecar(sidecar_path_for_engine(engine)).builder_options['calibration']
    assert calibration['images_used'] == 24 and calibration['images_skipped'] == []
    assert os.path.isfile(calibration['cache'])
    from leaf_disease_ros.inference.tensorrt_backend import load_engine_backend

    backend = load_engine_backend(engine)
    try:
        logits = backend.infer(leaf_batch)
        assert logits.shape == (16, card.num_classes) and np.isfinite(logits).all()
    finally:
        backend.close()


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
    finally:
        trt_backend.close()
    ort_backend = OnnxRuntimeBackend(os.path.join(shipped_dir, 'leaf_lite0_field.onnx'), card)
    try:
        ort_rate = images_per_s(ort_backend)
        ort_provider = ','.join(ort_backend.describe().get('providers', []))
    finally:
        ort_backend.close()
    info = machine()
    record = {'machine': info.describe(), 'module': info.module_facts(),
              'platform': platform.platform(), 'model': 'leaf_lite0_field (128 px)',
              'batch': len(batch), 'tensorrt_fp16_images_per_s': round(trt_rate, 1),
              'onnxruntime_images_per_s': round(ort_rate, 1),
              'onnxruntime_providers': ort_provider, 'speedup': round(trt_rate / ort_rate, 2)}
    folder = os.environ.get('LEAF_BENCHMARK_DIR') or str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    name = f'tensorrt_{info.gpu_name.replace(" ", "_").lower()}_fp16.json'
    with open(os.path.join(folder, name), 'w', encoding='utf-8') as stream:
        json.dump(record, stream, indent=1)
    assert trt_rate > 0 and ort_rate > 0


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


def test_a_corrupted_engine_is_refused_and_auto_falls_back(tmp_path, engines: Dict[str, str],
                                                           onnx_path: str) -> None:
    from leaf_disease_ros.inference.tensorrt_backend import load_engine_backend

    for name in ('tiny.onnx', 'tiny.json'):
        shutil.copy(os.path.join(os.path.dirname(onnx_path), name), tmp_path / name)
    engine = str(tmp_path / os.path.basename(engines['fp16']))
    data = bytearray(open(engines['fp16'], 'rb').read())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(len(data[middle:middle + 4096]))  # zero a block
    with open(engine, 'wb') as stream:
        stream.write(bytes(data))
    with open(sidecar_path_for_engine(engines['fp16']), encoding='utf-8') as stream:
        doc = json.load(stream)
    doc['engine_sha256'] = sha256_file(engine)
    with open(sidecar_path_for_engine(engine), 'w', encoding='utf-8') as stream:
        json.dump(doc, stream)
    try:
        backend = load_engine_backend(engine)
    except (EngineMismatchError, InferenceError, ModelLoadError):
        pass  # refused: the expected outcome
    else:  # a corruption TensorRT does not detect must at least not crash the process
        backend.close()
        pytest.skip('TensorRT accepted this corruption; nothing more to check')
    warnings: List[str] = []
    fallback = load_backend(str(tmp_path / 'tiny.onnx'), 'auto', warn=warnings.append)
    try:
        assert fallback.name == 'onnxruntime' and len(warnings) == 1
        assert 'did not load' in warnings[0]
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
    assert placement['dla_subgraphs'] is None or placement['dla_subgraphs'] >= 1
    backend = load_engine_backend(engine)
    try:
        assert backend.infer(leaf_batch[:3]).shape == (3, 4)  # padded to the fixed 8
    finally:
        backend.close()
