"""FP16 copy of the ONNX model for strongly typed TensorRT builds (float32 I/O kept)."""

import os

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from leaf_disease_ros.inference.engine.onnx_fp16 import convert_to_fp16, unsupported_ops
from leaf_disease_ros.perception.errors import ModelLoadError
from leaf_disease_ros.perception.model_card import ModelCard
from leaf_disease_ros.perception.preprocess import preprocess

# onnx has no rosdep key: where it is missing (colcon test on a robot) skip, not fail
onnx = pytest.importorskip('onnx', reason='needs the onnx package (pip install onnx)')
helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto


def _run(path: str, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return session.run(['logits'], {'input': batch})[0]


def test_fp16_copy_keeps_float32_io_and_close_logits(tmp_path, tiny_model_path: str,
                                                     tiny_card: ModelCard, leaf_images) -> None:
    target = str(tmp_path / 'tiny.fp16.onnx')
    summary = convert_to_fp16(tiny_model_path, target)
    assert summary['initializers'] == 4 and summary['clipped_values'] == 0
    assert summary['inputs'] == ['input'] and summary['outputs'] == ['logits']
    model = onnx.load(target)
    assert all(init.data_type == TensorProto.FLOAT16 for init in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.node[0].op_type == 'Cast' and model.graph.node[-1].op_type == 'Cast'
    paths = [p for values in leaf_images.values() for p in values]
    batch = preprocess([cv2.imread(p) for p in paths], tiny_card)
    reference = _run(tiny_model_path, batch)
    converted = _run(target, batch)
    assert converted.dtype == np.float32 and converted.shape == reference.shape
    assert np.max(np.abs(converted - reference)) <= 1e-2
    assert not np.array_equal(converted, reference)  # it really is another precision
    assert os.path.getsize(target) < os.path.getsize(tiny_model_path)


SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'engines',
                       'leaf_lite0_field.onnx')


def test_the_shipped_default_model_converts_with_its_relu6_clips(tmp_path, leaf_images) -> None:
    # EfficientNet-Lite0's ReLU6 exports as 33 Clip nodes (min 0, max 6 from Constants);
    # ONNX Clip-13 takes float16 for input, min and max alike (type constraint T)
    from leaf_disease_ros.perception.model_card import load_card

    source = onnx.load(SHIPPED)
    assert sum(node.op_type == 'Clip' for node in source.graph.node) == 33
    assert unsupported_ops(source) == []
    target = str(tmp_path / 'leaf_lite0_field.fp16.onnx')
    summary = convert_to_fp16(SHIPPED, target)
    assert summary['inputs'] == ['input'] and summary['outputs'] == ['logits', 'embedding']
    assert summary['constants'] == 66 and summary['clipped_values'] == 0
    model = onnx.load(target)
    constants = {node.output[0]: node for node in model.graph.node if node.op_type == 'Constant'}
    clips = [node for node in model.graph.node if node.op_type == 'Clip']
    assert len(clips) == 33
    for clip in clips:
        for bound in clip.input[1:]:
            assert constants[bound].attribute[0].t.data_type == TensorProto.FLOAT16
    card = load_card(SHIPPED[:-len('.onnx')] + '.json')
    paths = [p for values in leaf_images.values() for p in values]
    batch = preprocess([cv2.imread(p) for p in paths], card)
    outputs = [ort.InferenceSession(path, providers=['CPUExecutionProvider']).run(
        ['logits'], {'input': batch})[0] for path in (SHIPPED, target)]
    # FP16 weights and activations: logits within 0.05 (measured 0.0035), same top class
    assert np.max(np.abs(outputs[0] - outputs[1])) <= 0.05
    assert np.array_equal(outputs[0].argmax(axis=1), outputs[1].argmax(axis=1))


def test_unsupported_operators_are_refused_with_the_way_out(tmp_path,
                                                            tiny_model_path: str) -> None:
    model = onnx.load(tiny_model_path)
    for node in model.graph.node:
        if node.op_type == 'Relu':
            node.op_type = 'LeakyRelu'
    source = str(tmp_path / 'leaky.onnx')
    onnx.save(model, source)
    assert unsupported_ops(model) == ['LeakyRelu']
    with pytest.raises(ModelLoadError, match='LeakyRelu.*modelopt.onnx.autocast'):
        convert_to_fp16(source, str(tmp_path / 'out.onnx'))
    assert not os.path.exists(tmp_path / 'out.onnx')


def test_values_beyond_fp16_are_clipped_and_counted(tmp_path, tiny_model_path: str) -> None:
    model = onnx.load(tiny_model_path)
    for index, init in enumerate(model.graph.initializer):
        if init.name == 'fc_b':
            big = np.array([1e6, -1e6, 0.5, 2.0], dtype=np.float32)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(big, 'fc_b'))
    source = str(tmp_path / 'big.onnx')
    onnx.save(model, source)
    summary = convert_to_fp16(source, str(tmp_path / 'big.fp16.onnx'))
    assert summary['clipped_values'] == 2
    converted = onnx.load(str(tmp_path / 'big.fp16.onnx'))
    fc_b = [numpy_helper.to_array(i) for i in converted.graph.initializer if i.name == 'fc_b'][0]
    assert fc_b.dtype == np.float16 and np.isfinite(fc_b).all() and fc_b[0] == 65504


def test_float_constants_are_converted(tmp_path) -> None:
    scale = helper.make_node('Constant', [], ['scale'],
                             value=numpy_helper.from_array(np.array([2.0], np.float32)))
    mul = helper.make_node('Mul', ['input', 'scale'], ['logits'])
    graph = helper.make_graph(
        [scale, mul], 'g', [helper.make_tensor_value_info('input', TensorProto.FLOAT, ['n', 4])],
        [helper.make_tensor_value_info('logits', TensorProto.FLOAT, ['n', 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8
    source = str(tmp_path / 'mul.onnx')
    onnx.save(model, source)
    summary = convert_to_fp16(source, str(tmp_path / 'mul.fp16.onnx'))
    assert summary['constants'] == 1
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert np.array_equal(_run(str(tmp_path / 'mul.fp16.onnx'), x), x * 2)


def test_unreadable_model(tmp_path) -> None:
    bad = tmp_path / 'bad.onnx'
    bad.write_bytes(b'garbage')
    with pytest.raises(ModelLoadError, match='not a readable ONNX model'):
        convert_to_fp16(str(bad), str(tmp_path / 'out.onnx'))
