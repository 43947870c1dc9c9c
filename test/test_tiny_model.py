"""The committed tiny model is the one tiny_model.py builds, and tests survive without onnx."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_DIR
from leaf_disease_ros.perception.model_card import sha256_file
from tiny_model import build_tiny_onnx, COMMITTED_MODEL


def test_the_committed_model_equals_a_fresh_build(tmp_path):
    pytest.importorskip('onnx', reason='building the model needs the onnx package')
    import onnx
    import onnxruntime as ort

    fresh = build_tiny_onnx(str(tmp_path / 'fresh.onnx'))
    committed, built = onnx.load(COMMITTED_MODEL), onnx.load(fresh)
    assert committed.graph == built.graph and committed.opset_import == built.opset_import
    batch = np.random.default_rng(3).normal(size=(5, 3, 32, 32)).astype(np.float32)
    outputs = [ort.InferenceSession(path, providers=['CPUExecutionProvider']).run(
        None, {'input': batch})[0] for path in (COMMITTED_MODEL, fresh)]
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_without_onnx_the_default_model_is_copied_and_variants_skip(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnx', None)  # import onnx raises ImportError
    path = build_tiny_onnx(str(tmp_path / 'tiny.onnx'))
    assert sha256_file(path) == sha256_file(COMMITTED_MODEL)
    with pytest.raises(pytest.skip.Exception, match='pip install onnx'):
        build_tiny_onnx(str(tmp_path / 'other.onnx'), num_classes=3)


def test_collection_survives_missing_optional_packages(tmp_path):
    # A plugin that makes onnx, rosbags, mcap and torch unimportable, as on a robot
    # where only the rosdep keys were installed; collecting every test must not fail.
    (tmp_path / 'hide_optional.py').write_text(
        'import sys\n'
        'for name in ("onnx", "rosbags", "rosbags.image", "mcap", "torch", "torchvision"):\n'
        '    sys.modules[name] = None\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), os.path.join(REPO_DIR, 'src'), os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '--collect-only', '-q', '-p', 'hide_optional',
         '-p', 'no:cacheprovider', os.path.join(REPO_DIR, 'test')],
        capture_output=True, text=True, env=env, cwd=REPO_DIR, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'error' not in result.stdout.lower().split('\n')[-2], result.stdout[-2000:]
