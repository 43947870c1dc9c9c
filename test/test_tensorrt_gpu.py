"""
GPU tier: real TensorRT engines of the tiny model, compared with ONNX Runtime.

Skipped where TensorRT, pycuda or a CUDA GPU is missing. Engines are built by
leaf-disease-build-engine (a subprocess, as an operator runs it) into a private copy
of the tiny model, then loaded through the real backend and factory.
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
from leaf_disease_ros.perception.errors import EngineMismatchError, InferenceError
from leaf_disease_ros.perception.model_card import card_path_for_model, load_card, ModelCard
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
