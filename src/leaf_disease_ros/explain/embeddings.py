"""
Embeddings of images: the penultimate-layer features, from any model.

:func:`open_embedding_backend` returns a backend with ``infer_with_embedding``:

- a model whose card names an embedding output (``output.embedding_name``, written
  by ``leaf-disease-export``) is loaded as usual (ONNX Runtime or TensorRT);
- an older ONNX model without one is opened with the input of its last layer
  (the Gemm or MatMul that makes the card's output) added as a second output, in
  memory: the file and its sha256 are untouched, so the card still matches. This
  needs the ``onnx`` package (train and test extras) and runs on ONNX Runtime's CPU
  provider.

:func:`embed_images` runs a list of crops through it in batches and returns the
logits and the features.
"""

from dataclasses import replace
import os
from typing import Any, List, Sequence, Tuple

import numpy as np

from leaf_disease_ros.inference.base import Backend
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.errors import (InferenceError, MissingDependencyError,
                                                ModelLoadError)
from leaf_disease_ros.perception.model_card import check_model_file, ModelCard
from leaf_disease_ros.perception.preprocess import preprocess
from leaf_disease_ros.perception.resources import resolve_model_path

DERIVED_NAME = 'embedding'
_LAST_LAYERS = ('Gemm', 'MatMul')


def penultimate_tensor(graph: Any, output_name: str) -> str:
    """
    Return the name of the tensor that feeds the layer making ``output_name``.

    Follows ``Add`` (MatMul + bias) and ``Identity``/``Softmax``-free chains back to a
    Gemm or MatMul and returns its first input.

    :raises ModelLoadError: the output is not made by a Gemm/MatMul (with a bias Add).
    """
    producers = {out: node for node in graph.node for out in node.output}
    name = output_name
    for _ in range(4):
        node = producers.get(name)
        if node is None:
            break
        if node.op_type in _LAST_LAYERS:
            return str(node.input[0])
        if node.op_type in ('Add', 'Identity'):
            inputs = [i for i in node.input if i in producers]
            if len(inputs) == 1 or node.op_type == 'Identity':
                name = inputs[0]
                continue
        break
    raise ModelLoadError(f'cannot find the layer before output {output_name!r} (expected a '
                         'Gemm or MatMul classifier head); re-export the model with '
                         'leaf-disease-export to get an embedding output')


class DerivedEmbeddingBackend(Backend):
    """ONNX Runtime on an older model, with its penultimate tensor exposed as an output."""

    name = 'onnxruntime'

    def __init__(self, model_path: str, card: ModelCard, max_batch: int = 16,
                 intra_op_threads: int = 0) -> None:
        """
        Open ``model_path`` (checked against ``card``) with the extra output.

        :raises MissingDependencyError: the onnx package is missing.
        :raises ModelLoadError: no classifier head to take the features from.
        """
        try:
            import onnx
            from onnx import helper, TensorProto
        except ImportError as exc:
            raise MissingDependencyError(
                f'{card.name} has no embedding output in its card; reading the features '
                'of such a model needs the onnx package: pip install onnx (or re-export '
                'the model with leaf-disease-export)') from exc
        import onnxruntime as ort

        sha = check_model_file(card, model_path)
        model = onnx.load(model_path)
        feature = penultimate_tensor(model.graph, card.output_name)
        model.graph.node.append(helper.make_node('Identity', [feature], [DERIVED_NAME]))
        model.graph.output.append(helper.make_tensor_value_info(
            DERIVED_NAME, TensorProto.FLOAT, None))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_threads)
        options.log_severity_level = 3
        self._session: Any = ort.InferenceSession(model.SerializeToString(), options,
                                                  providers=['CPUExecutionProvider'])
        derived = replace(card, embedding_name=DERIVED_NAME, embedding_size=0)
        super().__init__(derived, max_batch, f'{card.name}@{sha[:12]}+{feature}')
        self.model_path = model_path
        self.feature_tensor = feature

    def _outputs(self, batch: np.ndarray, names: List[str]) -> List[np.ndarray]:
        if self._session is None:
            raise InferenceError('onnxruntime backend is closed')
        return list(self._session.run(names, {self.card.input_name: batch}))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._outputs(batch, [self.card.output_name])[0]

    def _run_with_embedding(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        logits, features = self._outputs(batch, [self.card.output_name, DERIVED_NAME])
        return logits, features

    def close(self) -> None:
        """Drop the session."""
        self._session = None


def open_embedding_backend(model_path: str = '', backend: str = 'auto', max_batch: int = 16,
                           intra_op_threads: int = 0) -> Backend:
    """
    Return a loaded backend whose ``infer_with_embedding`` works (see the module doc).

    :raises ModelLoadError, ModelCardError: the model cannot be loaded.
    :raises MissingDependencyError: an old model and no onnx package.
    """
    loaded = load_backend(model_path, backend, intra_op_threads=intra_op_threads,
                          max_batch=max_batch)
    if loaded.card.embedding_name:
        return loaded
    path = resolve_model_path(model_path)
    card = loaded.card
    loaded.close()
    if not path.endswith('.onnx') or not os.path.isfile(path):
        raise ModelLoadError(f'{path}: the card names no embedding output and only an ONNX '
                             'model can be opened with one added; re-export the model with '
                             'leaf-disease-export')
    return DerivedEmbeddingBackend(path, card, max_batch=max_batch,
                                   intra_op_threads=intra_op_threads)


def embed_images(backend: Backend, images: Sequence[np.ndarray],
                 batch_size: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """
    Return ``(logits (N, C), embeddings (N, D))`` float32 of BGR crops, in batches.

    :param batch_size: images per call (0: the backend's maximum batch).
    """
    step = max(1, min(batch_size or backend.max_batch, backend.max_batch))
    logits: List[np.ndarray] = []
    features: List[np.ndarray] = []
    for start in range(0, len(images), step):
        out = backend.infer_with_embedding(preprocess(list(images[start:start + step]),
                                                      backend.card))
        logits.append(out[0])
        features.append(out[1])
    if not logits:
        size = backend.card.embedding_size
        return (np.zeros((0, backend.card.num_classes), np.float32),
                np.zeros((0, size), np.float32))
    return np.concatenate(logits), np.concatenate(features)
