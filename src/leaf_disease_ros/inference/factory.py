"""
The only place that chooses and loads a backend.

``load_backend(model_path, backend)``:

- ``model_path`` empty means the shipped ONNX model; an ``.onnx`` path reads the card
  beside it (same name, ``.json``);
- ``backend='onnxruntime'`` loads ONNX Runtime;
- ``backend='tensorrt'`` or a ``.engine`` path needs a TensorRT engine that matches
  the card and this machine, and fails at start with the build command otherwise;
- ``backend='auto'`` uses such an engine when one exists, else ONNX Runtime with
  one warning that says how to build the engine.

Every backend comes back loaded, checked against its card and warmed up.
"""

import logging
import os
from typing import Callable, Optional

from leaf_disease_ros.core.config import BACKENDS
from leaf_disease_ros.core.errors import ConfigError, ModelLoadError
from leaf_disease_ros.core.model_card import card_path_for_model, load_card, ModelCard
from leaf_disease_ros.core.resources import resolve_model_path
from leaf_disease_ros.inference.base import Backend
from leaf_disease_ros.inference.onnxruntime_backend import OnnxRuntimeBackend

_LOG = logging.getLogger(__name__)

Warn = Callable[[str], None]


def load_card_for_model(model_path: str) -> ModelCard:
    """Return the card of an ONNX model (``<model>.json`` beside it)."""
    return load_card(card_path_for_model(model_path))


def load_backend(model_path: str = '', backend: str = 'auto', *,
                 onnx_provider: str = 'auto', intra_op_threads: int = 0,
                 max_batch: int = 16, warn: Optional[Warn] = None) -> Backend:
    """
    Load, check and warm up the backend for ``model_path``.

    :param model_path: ONNX model or TensorRT engine; empty = the shipped model.
    :param backend: ``auto``, ``onnxruntime`` or ``tensorrt``.
    :param onnx_provider: ONNX Runtime provider (auto, cpu, cuda).
    :param intra_op_threads: ONNX Runtime intra-op threads (0 = default).
    :param max_batch: largest batch the caller will send (an engine's profile caps it).
    :param warn: where the one fallback warning goes (default: this module's logger).

    :raises ConfigError: unknown backend name.
        ModelLoadError (and subclasses), ModelCardError: nothing loadable was found;
        the message names the file, the reason and the fixing command.
    """
    warn = warn or _LOG.warning
    if backend not in BACKENDS:
        raise ConfigError('backend', f'{backend!r} is not one of {", ".join(BACKENDS)}')
    path = resolve_model_path(model_path)
    if path.endswith('.engine'):
        if backend == 'onnxruntime':
            raise ConfigError('backend', f'onnxruntime cannot run the TensorRT engine {path}; '
                              'give the .onnx model or use backend tensorrt')
        return _load_tensorrt_engine(path, max_batch)
    if not path.endswith('.onnx'):
        raise ModelLoadError(f'model_path {path} is neither an .onnx model nor a .engine')
    if not os.path.isfile(path):
        raise ModelLoadError(f'model file {path} does not exist; set model_path to an ONNX '
                             'model with its card beside it (or leave it empty for the '
                             'shipped model)')
    card = load_card_for_model(path)
    if backend in ('auto', 'tensorrt'):
        engine = _find_tensorrt_engine(path, card, required=backend == 'tensorrt')
        if engine is not None:
            return _load_tensorrt_engine(engine, max_batch)
        if backend == 'auto':
            note = _engine_fallback_note(path, card)
            if note:
                warn(note)
    return OnnxRuntimeBackend(path, card, intra_op_threads=intra_op_threads,
                              provider=onnx_provider, max_batch=max_batch)


def _find_tensorrt_engine(onnx_path: str, card: ModelCard, required: bool) -> Optional[str]:
    """
    Return a TensorRT engine matching ``card`` and this machine, or None.

    With ``required``, raise the error that names the build command instead of None.
    """
    if required:
        raise ModelLoadError(
            f'backend tensorrt: no TensorRT engine for {onnx_path} on this machine; build '
            f'one with: python3 tools/build_engine.py {onnx_path}')
    return None


def _engine_fallback_note(onnx_path: str, card: ModelCard) -> str:
    """Return the warning for falling back to ONNX Runtime ('' when not worth one)."""
    return ''


def _load_tensorrt_engine(engine_path: str, max_batch: int) -> Backend:
    raise ModelLoadError(f'{engine_path}: the TensorRT backend is not available in this '
                         'build; use the .onnx model with backend onnxruntime')
