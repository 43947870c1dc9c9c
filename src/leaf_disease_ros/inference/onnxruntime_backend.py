"""
ONNX Runtime backend: the default everywhere (CPU; CUDA where onnxruntime-gpu is).

At load it checks the model file against its card (sha256), and the session's
input and output against the card (names, channel count, input size, class
count), so a card that does not belong to its model fails at start with the file
and field named. Intra-op threads come from the configuration; inter-op
parallelism is off (one model, one graph: it only adds thread contention).
"""

import os
from typing import Any, Dict, List, Tuple, Type

import numpy as np

from leaf_disease_ros.inference.base import NamedOutputsBackend
from leaf_disease_ros.perception.errors import (BackendUnavailableError, InferenceError,
                                                ModelCardError, ModelLoadError)
from leaf_disease_ros.perception.model_card import check_model_file, ModelCard

_CUDA = 'CUDAExecutionProvider'
_CPU = 'CPUExecutionProvider'


def _ort_errors() -> Tuple[Type[BaseException], ...]:
    """Return onnxruntime's exception classes (their names differ across versions)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ('Fail', 'InvalidArgument', 'NoSuchFile', 'NoModel', 'EngineError',
             'RuntimeException', 'InvalidProtobuf', 'ModelLoaded', 'NotImplemented',
             'InvalidGraph', 'EPFail', 'DeviceReset')
    found = tuple(getattr(state, n) for n in names if isinstance(getattr(state, n, None), type))
    return found + (RuntimeError, ValueError)


def choose_providers(requested: str, available: List[str]) -> List[str]:
    """
    Return the execution providers for ``requested`` (auto, cpu, cuda).

    :raises BackendUnavailableError: ``cuda`` was requested and this onnxruntime has no
        CUDA provider.
    """
    if requested == 'cpu':
        return [_CPU]
    if requested == 'cuda':
        if _CUDA not in available:
            raise BackendUnavailableError(
                'onnx_provider is cuda but this onnxruntime has no CUDAExecutionProvider '
                f'(available: {", ".join(available)}); install onnxruntime-gpu or use auto')
        return [_CUDA, _CPU]
    if requested != 'auto':
        raise BackendUnavailableError(f'unknown onnx_provider {requested!r} (auto, cpu, cuda)')
    return [_CUDA, _CPU] if _CUDA in available else [_CPU]


class OnnxRuntimeBackend(NamedOutputsBackend):
    """Runs an ONNX model with onnxruntime."""

    name = 'onnxruntime'
    #: ``InferenceSession.run`` may be called from several threads at once
    concurrent_inference = True

    def __init__(self, model_path: str, card: ModelCard, intra_op_threads: int = 0,
                 provider: str = 'auto', max_batch: int = 16) -> None:
        """
        Load ``model_path``, check it against ``card`` and warm it up.

        :raises ModelLoadError: the file is missing or not a loadable ONNX model.
        :raises ModelCardError: the card does not match the model (hash, names, shapes).
        :raises BackendUnavailableError: onnxruntime (or its CUDA provider) is missing.
        """
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(
                'onnxruntime is not installed: pip install onnxruntime') from exc
        if not os.path.isfile(model_path):
            raise ModelLoadError(f'model file {model_path} does not exist; set model_path to '
                                 'an ONNX model (or leave it empty for the shipped one)')
        sha = check_model_file(card, model_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings are not for operators
        self._errors = _ort_errors()
        self.providers = choose_providers(provider, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(model_path, sess_options=options,
                                                 providers=self.providers)
        except self._errors as exc:
            raise ModelLoadError(f'{model_path} is not a loadable ONNX model: {exc}') from exc
        self.model_path = model_path
        fixed_batch = self._check_io(card)
        if fixed_batch is not None:
            max_batch = min(max_batch, fixed_batch)
        self._fixed_batch = fixed_batch
        super().__init__(card, max_batch, f'{card.name}@{sha[:12]}')
        self.providers = list(self._session.get_providers())
        self.warmup()

    def _check_io(self, card: ModelCard) -> Any:
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        where = card.path or '<card>'
        if len(inputs) != 1:
            raise ModelCardError(where, 'input.name', f'{self.model_path} has {len(inputs)} '
                                 'inputs; the package runs single-input classifiers')
        inp = inputs[0]
        if inp.name != card.input_name:
            raise ModelCardError(where, 'input.name', f'card says {card.input_name!r}, '
                                 f'{self.model_path} has {inp.name!r}')
        shape = list(inp.shape)
        expected = [None, 3, card.input_height_px, card.input_width_px]
        if len(shape) != 4:
            raise ModelCardError(where, 'input', f'{self.model_path} input has shape {shape}, '
                                 'expected (N, 3, H, W)')
        for axis, (got, want) in enumerate(zip(shape[1:], expected[1:]), start=1):
            if isinstance(got, int) and got != want:
                field = {1: 'input.layout', 2: 'input.height_px', 3: 'input.width_px'}[axis]
                raise ModelCardError(where, field, f'card implies {want} on axis {axis}, '
                                     f'{self.model_path} has {got} (input shape {shape})')
        names = [o.name for o in outputs]
        if card.output_name not in names:
            raise ModelCardError(where, 'output.name', f'card says {card.output_name!r}, '
                                 f'{self.model_path} outputs {names}')
        out_shape = list(outputs[names.index(card.output_name)].shape)
        if not out_shape or (isinstance(out_shape[-1], int)
                             and out_shape[-1] != card.num_classes):
            raise ModelCardError(where, 'labels', f'card lists {card.num_classes} labels, '
                                 f'{self.model_path} outputs shape {out_shape}')
        if card.embedding_name and card.embedding_name not in names:
            raise ModelCardError(where, 'output.embedding_name',
                                 f'card says {card.embedding_name!r}, {self.model_path} '
                                 f'outputs {names}')
        batch_dim = shape[0]
        return batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None

    def _run_outputs(self, batch: np.ndarray, names: List[str]) -> List[np.ndarray]:
        if self._session is None:
            raise InferenceError('onnxruntime backend is closed')
        count = batch.shape[0]
        if self._fixed_batch is not None and count < self._fixed_batch:
            padded = np.zeros((self._fixed_batch,) + batch.shape[1:], dtype=np.float32)
            padded[:count] = batch
            batch = padded
        try:
            outputs = self._session.run(names, {self.card.input_name: batch})
        except self._errors as exc:
            raise InferenceError(f'onnxruntime failed on a batch of {count}: {exc}') from exc
        return [output[:count] for output in outputs]

    def describe(self) -> Dict[str, Any]:
        """Return backend facts, including the execution providers in use."""
        facts = super().describe()
        facts['providers'] = list(self.providers)
        facts['model_path'] = self.model_path
        return facts

    def close(self) -> None:
        """Drop the session (onnxruntime frees it when unreferenced); safe twice."""
        self._session = None
