r"""
FP16 copy of an ONNX classifier for strongly typed TensorRT builds (float32 I/O kept).

From TensorRT 10.12 the weakly typed precision flag ``BuilderFlag.FP16`` is
deprecated, and TensorRT 11 removes it: precision then comes from the tensor types
of the network itself ("strong typing"). :func:`convert_to_fp16` writes that
network: every float32 initializer and ``Constant`` becomes float16, a ``Cast`` to
float16 follows each float32 graph input and a ``Cast`` back to float32 precedes
each float32 graph output, so the engine still takes and returns float32 like the
card says.

This is deliberately small and honest: it only converts graphs made of the
operators in :data:`SUPPORTED_OPS` (what a torchvision ResNet and the shipped
EfficientNet-Lite0 export to: its ReLU6 is ``Clip`` with ``min``/``max`` from
``Constant`` nodes, converted with them), whose float inputs may all be float16.
Anything else is refused with
:class:`~leaf_disease_ros.perception.errors.ModelLoadError` naming the operators, and the
NVIDIA Model Optimizer AutoCast tool is the documented way out (it knows which
operators must stay float32)::

    pip3 install "nvidia-modelopt[onnx]"
    python3 -m modelopt.onnx.autocast --onnx_path model.onnx \
        --output_path model.fp16.onnx --low_precision_type fp16 --keep_io_types
    leaf-disease-build-engine model.onnx --fp16-onnx model.fp16.onnx

Initializer values outside the float16 range are clipped to it and counted in the
returned summary. Needs the ``onnx`` package (imported lazily).
"""

from typing import Any, Dict, List, Set

import numpy as np

from leaf_disease_ros.perception.errors import BackendUnavailableError, ModelLoadError

#: operators whose every float input may be float16 (ONNX type constraints; Clip-13's
#: input, min and max share T, which includes tensor(float16))
SUPPORTED_OPS = frozenset((
    'Add', 'AveragePool', 'BatchNormalization', 'Clip', 'Concat', 'Constant', 'Conv', 'Div',
    'Flatten', 'Gemm', 'GlobalAveragePool', 'Identity', 'MatMul', 'MaxPool', 'Mul', 'Relu',
    'Reshape', 'Shape', 'Sigmoid', 'Softmax', 'Squeeze', 'Sub', 'Transpose', 'Unsqueeze',
))
FP16_MAX = float(np.finfo(np.float16).max)


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailableError(
            'converting the ONNX model to FP16 needs the onnx package: pip3 install onnx '
            '(or pass --fp16-onnx with a converted model)') from exc
    return onnx


def unsupported_ops(model: Any) -> List[str]:
    """Return the sorted operator types of ``model``'s main graph outside SUPPORTED_OPS."""
    found: Set[str] = set()
    for node in model.graph.node:
        if node.domain not in ('', 'ai.onnx') or node.op_type not in SUPPORTED_OPS:
            found.add(node.op_type if node.domain in ('', 'ai.onnx')
                      else f'{node.domain}.{node.op_type}')
    return sorted(found)


def _to_fp16(array: np.ndarray, counts: Dict[str, int]) -> np.ndarray:
    clipped = np.count_nonzero(np.abs(array) > FP16_MAX)
    counts['clipped_values'] += int(clipped)
    return np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16)


def convert_to_fp16(src_path: str, dst_path: str) -> Dict[str, Any]:
    """
    Write an FP16 copy of the ONNX model at ``src_path`` to ``dst_path``.

    :returns: a summary: ``initializers`` converted, ``constants`` converted,
        ``clipped_values`` (beyond +-65504), ``inputs``/``outputs`` kept float32.

    :raises ModelLoadError: the model cannot be read, has operators outside
        :data:`SUPPORTED_OPS` or local functions/subgraphs, or fails the ONNX checker
        after conversion.
    :raises BackendUnavailableError: the onnx package is missing.
    """
    onnx = _import_onnx()
    from onnx import helper, numpy_helper, TensorProto

    try:
        model = onnx.load(src_path)
    except Exception as exc:  # OSError, protobuf DecodeError, ValueError: all mean unreadable
        raise ModelLoadError(f'{src_path} is not a readable ONNX model: {exc}') from exc
    bad = unsupported_ops(model)
    if bad or len(model.functions):
        what = ', '.join(bad) if bad else 'local functions'
        raise ModelLoadError(
            f'{src_path}: the built-in FP16 conversion does not handle {what}; convert with '
            'NVIDIA Model Optimizer (python3 -m modelopt.onnx.autocast --onnx_path '
            f'{src_path} --output_path <model>.fp16.onnx --low_precision_type fp16 '
            '--keep_io_types) and pass '
            '--fp16-onnx <model>.fp16.onnx')
    graph = model.graph
    counts = {'initializers': 0, 'constants': 0, 'clipped_values': 0}

    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            array = numpy_helper.to_array(tensor)
            graph.initializer[index].CopyFrom(
                numpy_helper.from_array(_to_fp16(array, counts), tensor.name))
            counts['initializers'] += 1
    for node in graph.node:
        if node.op_type != 'Constant':
            continue
        for attribute in node.attribute:
            if attribute.name == 'value' and attribute.t.data_type == TensorProto.FLOAT:
                array = numpy_helper.to_array(attribute.t)
                attribute.t.CopyFrom(numpy_helper.from_array(_to_fp16(array, counts),
                                                             attribute.t.name))
                counts['constants'] += 1
            elif attribute.name in ('value_float', 'value_floats'):
                raise ModelLoadError(f'{src_path}: Constant node {node.name!r} uses '
                                     f'{attribute.name}; convert with Model Optimizer')

    kept_inputs: List[str] = []
    casts_in = []
    for value in graph.input:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        if any(init.name == value.name for init in graph.initializer):
            continue  # an initializer listed as input (old exporters): already converted
        inner = value.name + '__fp16'
        for node in graph.node:
            for position, name in enumerate(node.input):
                if name == value.name:
                    node.input[position] = inner
        casts_in.append(helper.make_node('Cast', [value.name], [inner], to=TensorProto.FLOAT16,
                                         name=value.name + '__to_fp16'))
        kept_inputs.append(value.name)

    kept_outputs: List[str] = []
    casts_out = []
    for value in graph.output:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = value.name + '__fp16'
        for node in graph.node:
            for position, name in enumerate(node.output):
                if name == value.name:
                    node.output[position] = inner
            for position, name in enumerate(node.input):
                if name == value.name:
                    node.input[position] = inner
        casts_out.append(helper.make_node('Cast', [inner], [value.name], to=TensorProto.FLOAT,
                                          name=value.name + '__to_fp32'))
        kept_outputs.append(value.name)

    nodes = casts_in + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale float32 annotations; shape inference redoes them
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        onnx.checker.check_model(inferred)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelLoadError(f'{src_path}: the FP16 copy is not a valid ONNX model ({exc}); '
                             'convert with NVIDIA Model Optimizer instead') from exc
    onnx.save(model, dst_path)
    summary: Dict[str, Any] = dict(counts)
    summary['inputs'] = kept_inputs
    summary['outputs'] = kept_outputs
    return summary
