"""
A tiny real ONNX classifier and its model card, built in tests (no download).

The graph is Conv(3->8, 3x3, stride 2) -> Relu -> GlobalAveragePool -> Flatten ->
Gemm(8->C): small enough to build in milliseconds, real enough that onnxruntime
runs it and different images give different logits (the weights are seeded). With
``embedding_name`` the 8 pooled features are a second output (``(N, 8)``), as
``leaf-disease-export`` writes the penultimate features of a real model.

The ``onnx`` package builds it. It is a test dependency without a rosdep key, so a
ROS machine running ``colcon test`` may lack it: the default model (the session
fixture of ``conftest.py``) is then copied from ``test/data/tiny_model/tiny.onnx``,
which a test keeps identical to a fresh build, and tests that need another variant
are skipped with the reason.
"""

import os
import shutil
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import pytest

from leaf_disease_ros.perception.model_card import (card_from_dict, ModelCard, sha256_file,
                                                    write_card)

LABELS = ('black_rot', 'esca', 'healthy', 'leaf_blight')
TINY_EMBEDDING_SIZE = 8
COMMITTED_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data',
                               'tiny_model', 'tiny.onnx')
DEFAULTS: Dict[str, Any] = {'num_classes': 4, 'input_size': 32, 'seed': 0, 'batch': 'batch',
                            'input_name': 'input', 'output_name': 'logits', 'opset': 17,
                            'embedding_name': '', 'logit_bias': None}


def onnx_available() -> bool:
    """Return whether the onnx package can be imported here."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def build_tiny_onnx(path: str, num_classes: int = 4, input_size: int = 32, seed: int = 0,
                    batch: Union[str, int] = 'batch', input_name: str = 'input',
                    output_name: str = 'logits', opset: int = 17,
                    embedding_name: str = '', logit_bias: Optional[float] = None) -> str:
    """
    Write the tiny model to ``path`` and return ``path``.

    ``logit_bias`` replaces the last layer's bias of every class (NaN or 1e38 make a
    broken model whose logits are not usable numbers).

    Without the onnx package the default variant is copied from
    :data:`COMMITTED_MODEL`; any other variant skips the calling test.
    """
    requested = {'num_classes': num_classes, 'input_size': input_size, 'seed': seed,
                 'batch': batch, 'input_name': input_name, 'output_name': output_name,
                 'opset': opset, 'embedding_name': embedding_name, 'logit_bias': logit_bias}
    if not onnx_available():
        if requested != DEFAULTS:
            pytest.skip(f'needs the onnx package to build a test model {requested} '
                        '(pip install onnx; it has no rosdep key)')
        shutil.copyfile(COMMITTED_MODEL, path)
        return path
    import onnx
    from onnx import helper, numpy_helper, TensorProto

    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.5, size=(8, 3, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, size=(8,)).astype(np.float32)
    fc_w = rng.normal(0, 1.0, size=(num_classes, 8)).astype(np.float32)
    fc_b = rng.normal(0, 0.1, size=(num_classes,)).astype(np.float32)
    if logit_bias is not None:
        fc_b[:] = logit_bias
    nodes = [
        helper.make_node('Conv', [input_name, 'conv_w', 'conv_b'], ['conv'],
                         kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node('Relu', ['conv'], ['relu']),
        helper.make_node('GlobalAveragePool', ['relu'], ['pool']),
        helper.make_node('Flatten', ['pool'], ['flat'], axis=1),
        helper.make_node('Gemm', ['flat', 'fc_w', 'fc_b'], [output_name], transB=1),
    ]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT,
                                             [batch, num_classes])]
    if embedding_name:
        nodes.append(helper.make_node('Identity', ['flat'], [embedding_name]))
        outputs.append(helper.make_tensor_value_info(embedding_name, TensorProto.FLOAT,
                                                     [batch, TINY_EMBEDDING_SIZE]))
    graph = helper.make_graph(
        nodes, 'tiny_leaf_classifier',
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                       [batch, 3, input_size, input_size])],
        outputs,
        initializer=[numpy_helper.from_array(conv_w, 'conv_w'),
                     numpy_helper.from_array(conv_b, 'conv_b'),
                     numpy_helper.from_array(fc_w, 'fc_w'),
                     numpy_helper.from_array(fc_b, 'fc_b')])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)],
                              producer_name='leaf_disease_ros tests')
    model.ir_version = 8  # readable by the onnxruntime versions on the robots too
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def tiny_card_dict(model_path: str, labels: Sequence[str] = LABELS, input_size: int = 32,
                   unknown_threshold: float = 0.3, temperature: float = 1.0,
                   embedding_name: str = '') -> dict:
    """Return the card document of a tiny model (with the file's real sha256)."""
    output = {'name': 'logits'}
    if embedding_name:
        output.update(embedding_name=embedding_name, embedding_size=TINY_EMBEDDING_SIZE)
    return {
        'schema_version': 1,
        'name': 'tiny',
        'model_file': os.path.basename(model_path),
        'onnx_sha256': sha256_file(model_path),
        'labels': list(labels),
        'healthy_labels': ['healthy'] if 'healthy' in labels else [],
        'input': {'name': 'input', 'height_px': input_size, 'width_px': input_size,
                  'layout': 'NCHW', 'color_order': 'RGB', 'dtype': 'float32'},
        'preprocessing': {'resize': 'stretch', 'interpolation': 'area',
                          'scale': 1.0 / 255.0, 'mean': [0.485, 0.456, 0.406],
                          'std': [0.229, 0.224, 0.225]},
        'output': output,
        'calibration': {'temperature': temperature, 'unknown_threshold': unknown_threshold},
        'training': {'note': 'random weights, for tests'},
        'metrics': {},
    }


def make_tiny_model(folder: str, name: str = 'tiny', **kwargs) -> ModelCard:
    """Write ``<folder>/<name>.onnx`` and its card; return the loaded card."""
    model_path = os.path.join(folder, f'{name}.onnx')
    card_kwargs = {k: kwargs.pop(k) for k in ('unknown_threshold', 'temperature')
                   if k in kwargs}
    if kwargs.get('embedding_name'):
        card_kwargs['embedding_name'] = kwargs['embedding_name']
    build_tiny_onnx(model_path, **kwargs)
    labels = LABELS[:kwargs.get('num_classes', 4)] if kwargs.get('num_classes', 4) <= 4 \
        else tuple(f'class_{i}' for i in range(kwargs['num_classes']))
    doc = tiny_card_dict(model_path, labels=labels,
                         input_size=kwargs.get('input_size', 32), **card_kwargs)
    card = card_from_dict(doc, os.path.join(folder, f'{name}.json'))
    write_card(card, os.path.join(folder, f'{name}.json'))
    return card
