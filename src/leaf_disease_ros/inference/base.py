"""
The backend interface: ``infer(batch) -> logits``, the same for every runtime.

A backend is loaded once, checked against the model card and warmed up before the
node subscribes to anything. ``infer`` takes a ``(N, 3, H, W)`` float32 batch made
by :func:`leaf_disease_ros.perception.preprocess.preprocess` with ``1 <= N <=
max_batch`` and returns ``(N, C)`` float32 logits in the card's label order. Larger
batches are chunked by the pipeline, never inside a backend. Runtime failures are
raised as :class:`~leaf_disease_ros.perception.errors.InferenceError` so the caller can
drop the frame and go on.
"""

import abc
from typing import Any, Dict

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

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Return ``(N, C)`` float32 logits for a ``(N, 3, H, W)`` float32 batch."""
        height, width = self.card.input_hw_px
        if (not isinstance(batch, np.ndarray) or batch.dtype != np.float32 or batch.ndim != 4
                or batch.shape[1:] != (3, height, width)):
            raise InferenceError(
                f'{self.name}: batch has shape {getattr(batch, "shape", None)} '
                f'{getattr(batch, "dtype", None)}, expected (N, 3, {height}, {width}) float32')
        if not 1 <= batch.shape[0] <= self.max_batch:
            raise InferenceError(f'{self.name}: batch of {batch.shape[0]} is outside '
                                 f'1..{self.max_batch}; the pipeline chunks batches')
        logits = self._run(np.ascontiguousarray(batch))
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape != (batch.shape[0], self.card.num_classes):
            raise InferenceError(f'{self.name}: output shape {logits.shape}, expected '
                                 f'({batch.shape[0]}, {self.card.num_classes})')
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
