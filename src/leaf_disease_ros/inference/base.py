"""
The backend interface: ``infer(batch) -> logits``, the same for every runtime.

A backend is loaded once, checked against the model card and warmed up before the
node subscribes to anything. ``infer`` takes a ``(N, 3, H, W)`` float32 batch made
by :func:`leaf_disease_ros.perception.preprocess.preprocess` with ``1 <= N <=
max_batch`` and returns ``(N, C)`` float32 logits in the card's label order. Larger
batches are chunked by the pipeline, never inside a backend. Runtime failures are
raised as :class:`~leaf_disease_ros.perception.errors.InferenceError` so the caller can
drop the frame and go on.

A model whose card names an embedding output (``output.embedding_name``) also
serves ``infer_with_embedding(batch) -> (logits, embeddings)``, the penultimate
features ``(N, D)`` from the same run; backends that cannot raise InferenceError.
"""

import abc
from typing import Any, Dict, List, Tuple

import numpy as np

from leaf_disease_ros.perception.errors import InferenceError
from leaf_disease_ros.perception.model_card import ModelCard


class Backend(abc.ABC):
    """Base class of inference backends."""

    #: short runtime name reported in diagnostics: 'onnxruntime' or 'tensorrt'
    name: str = ''

    def __init__(self, card: ModelCard, max_batch: int, model_id: str) -> None:
        self.card = card
        self.max_batch = max_batch
        #: identifies the exact model/engine in diagnostics and reports
        self.model_id = model_id

    @abc.abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a checked batch; return raw ``(N, C)`` outputs."""

    def _run_with_embedding(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Run on a checked batch; return raw ``(N, C)`` and ``(N, D)`` outputs."""
        raise InferenceError(f'the {self.name} backend does not return embeddings')

    def infer_with_embedding(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """
        Return ``(logits (N, C), embeddings (N, D))`` float32 of one batch.

        :raises InferenceError: the card names no embedding output, or the run failed.
        """
        if not self.card.embedding_name:
            raise InferenceError(f'model card {self.card.path or self.card.name} names no '
                                 'embedding output (output.embedding_name); re-export the '
                                 'model with leaf-disease-export to get one')
        self._check_batch(batch)
        logits, embeddings = self._run_with_embedding(np.ascontiguousarray(batch))
        logits = self._check_logits(logits, batch.shape[0])
        embeddings = np.asarray(embeddings, dtype=np.float32).reshape(batch.shape[0], -1)
        if self.card.embedding_size and embeddings.shape[1] != self.card.embedding_size:
            raise InferenceError(f'{self.name}: embedding has {embeddings.shape[1]} values, '
                                 f'the card says {self.card.embedding_size}')
        return logits, embeddings

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Return ``(N, C)`` float32 logits for a ``(N, 3, H, W)`` float32 batch."""
        self._check_batch(batch)
        return self._check_logits(self._run(np.ascontiguousarray(batch)), batch.shape[0])

    def _check_batch(self, batch: np.ndarray) -> None:
        height, width = self.card.input_hw_px
        if (not isinstance(batch, np.ndarray) or batch.dtype != np.float32 or batch.ndim != 4
                or batch.shape[1:] != (3, height, width)):
            raise InferenceError(
                f'{self.name}: batch has shape {getattr(batch, "shape", None)} '
                f'{getattr(batch, "dtype", None)}, expected (N, 3, {height}, {width}) float32')
        if not 1 <= batch.shape[0] <= self.max_batch:
            raise InferenceError(f'{self.name}: batch of {batch.shape[0]} is outside '
                                 f'1..{self.max_batch}; the pipeline chunks batches')

    def _check_logits(self, logits: Any, count: int) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape != (count, self.card.num_classes):
            raise InferenceError(f'{self.name}: output shape {logits.shape}, expected '
                                 f'({count}, {self.card.num_classes})')
        return logits

    def warmup(self, batch_size: int = 1) -> None:
        """Run one inference on zeros (allocations, kernel selection) before serving."""
        height, width = self.card.input_hw_px
        size = max(1, min(batch_size, self.max_batch))
        self.infer(np.zeros((size, 3, height, width), dtype=np.float32))

    def describe(self) -> Dict[str, Any]:
        """Return what diagnostics and reports say about this backend."""
        return {'backend': self.name, 'model_id': self.model_id, 'max_batch': self.max_batch,
                'model': self.card.name}

    def close(self) -> None:
        """Release the runtime's resources; safe to call twice."""

    def __enter__(self) -> 'Backend':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class NamedOutputsBackend(Backend):
    """A backend that runs the model for a list of output tensor names (ORT, TensorRT)."""

    @abc.abstractmethod
    def _run_outputs(self, batch: np.ndarray, names: List[str]) -> List[np.ndarray]:
        """Run on a checked batch; return the outputs ``names`` in that order."""

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._run_outputs(batch, [self.card.output_name])[0]

    def _run_with_embedding(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        logits, embeddings = self._run_outputs(
            batch, [self.card.output_name, self.card.embedding_name])
        return logits, embeddings
