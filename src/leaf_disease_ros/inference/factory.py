"""
The only place that chooses and loads a backend.

``load_backend(model_path, backend)``:

- ``model_path`` empty means the shipped ONNX model; an ``.onnx`` path reads the card
  beside it (same name, ``.json``);
- ``backend='onnxruntime'`` loads ONNX Runtime;
- ``backend='tensorrt'`` or a ``.engine`` path needs a TensorRT engine that matches
  the card and this machine, and fails at start with the build command otherwise;
- ``backend='auto'`` uses such an engine when one exists, else ONNX Runtime with
  one warning that says how to build the engine; an engine that matches but then
  fails to load (damaged, out of memory, its DLA core missing) is such a case too:
  one warning with TensorRT's reason and the rebuild command, then ONNX Runtime.

Engines live beside the ONNX model (``engines/<model>.<precision>.<smXY>.
trt<version>.engine``, each with its ``.engine.json`` sidecar); the match rules are
in :mod:`leaf_disease_ros.inference.engine.sidecar`. A ``.engine`` model path finds
its card through the sidecar's ``card_file`` beside it.

Where the tensorrt module is not installed at all (a laptop, CI), ``auto`` falls
back to ONNX Runtime without a warning (debug log only): such a machine can never
use an engine, so warning on every start would be noise. Where it is installed but
unusable (no GPU, pycuda missing) or no engine matches, ``auto`` warns once with the
reason and the build command.

Every backend comes back loaded, checked against its card and warmed up.
"""

import logging
import os
from typing import Callable, Optional

from leaf_disease_ros.inference import tensorrt_backend
from leaf_disease_ros.inference.base import Backend
from leaf_disease_ros.inference.engine.commands import build_command
from leaf_disease_ros.inference.engine.machine import MachineInfo
from leaf_disease_ros.inference.engine.matching import EngineSearch, search_engines
from leaf_disease_ros.inference.engine.naming import (engine_file_name, model_stem,
                                                      parse_engine_file_name)
from leaf_disease_ros.inference.engine.policy import DEFAULT_PRECISION
from leaf_disease_ros.inference.onnxruntime_backend import OnnxRuntimeBackend
from leaf_disease_ros.perception.config import BACKENDS
from leaf_disease_ros.perception.errors import (BackendUnavailableError, ConfigError,
                                                EngineMismatchError, ModelLoadError)
from leaf_disease_ros.perception.model_card import card_path_for_model, load_card, ModelCard
from leaf_disease_ros.perception.resources import resolve_model_path

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
    :raises ModelLoadError: (and its subclasses BackendUnavailableError,
        EngineMismatchError) nothing loadable was found; the message names the file,
        the reason and the fixing command.
    :raises ModelCardError: the card is missing or does not match its model.
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
        if engine is not None and backend == 'tensorrt':
            return _load_tensorrt_engine(engine, max_batch)
        if engine is not None:
            try:
                return _load_tensorrt_engine(engine, max_batch)
            except ModelLoadError as exc:  # EngineMismatchError, BackendUnavailableError
                warn(f'backend auto: the TensorRT engine {engine} matches but did not load '
                     f'({exc}); using ONNX Runtime for {path} (much slower on a Jetson). '
                     f'Rebuild it on this machine with: '
                     f'{build_command(path, _engine_precision(engine), extra=["--force"])}')
        elif backend == 'auto':
            note = _engine_fallback_note(path, card)
            if note:
                warn(note)
    return OnnxRuntimeBackend(path, card, intra_op_threads=intra_op_threads,
                              provider=onnx_provider, max_batch=max_batch)


def _no_engine_message(onnx_path: str, machine: MachineInfo, search: EngineSearch) -> str:
    """Return why no engine serves ``onnx_path`` here, with the command that builds one."""
    default_name = engine_file_name(model_stem(onnx_path), DEFAULT_PRECISION,
                                    machine.compute_capability, machine.tensorrt_version)
    overwrite = any(os.path.basename(path) == default_name for path, _ in search.rejected)
    command = build_command(onnx_path, extra=['--force'] if overwrite else [])
    if search.rejected:
        found = ('none of the engines there matches: '
                 + ' | '.join(search.rejection_lines()))
    else:
        found = f'there is no {model_stem(onnx_path)}.*.engine there'
    return (f'no TensorRT engine in {search.folder} serves {onnx_path} on this machine '
            f'({machine.describe()}): {found}. Build one on this machine (once, a few '
            f'minutes) with: {command}')


def _find_tensorrt_engine(onnx_path: str, card: ModelCard, required: bool) -> Optional[str]:
    """
    Return a TensorRT engine matching ``card`` and this machine, or None.

    Looks for ``<model>.*.engine`` beside the ONNX model (the engines/ folder) whose
    sidecar matches (:func:`~leaf_disease_ros.inference.engine.sidecar.search_engines`).
    With ``required``, raise the error that names the build command instead of None.

    :raises BackendUnavailableError: ``required`` and tensorrt, pycuda or a GPU is missing.
    :raises EngineMismatchError: ``required`` and engines exist but none matches.
    :raises ModelLoadError: ``required`` and there is no engine at all.
    """
    if not tensorrt_backend.tensorrt_installed():
        if required:
            raise BackendUnavailableError(
                'backend tensorrt: the tensorrt Python module is not installed on this '
                'machine (JetPack ships it); use backend auto or onnxruntime here')
        return None
    try:
        machine = tensorrt_backend.probe_machine()
    except BackendUnavailableError as exc:
        if required:
            raise BackendUnavailableError(f'backend tensorrt: {exc}') from exc
        return None
    search = search_engines(os.path.dirname(onnx_path), onnx_path, card, machine)
    if search.chosen is not None:
        return search.chosen
    if required:
        error = EngineMismatchError if search.rejected else ModelLoadError
        raise error('backend tensorrt: ' + _no_engine_message(onnx_path, machine, search))
    return None


def _engine_fallback_note(onnx_path: str, card: ModelCard) -> str:
    """
    Return the one warning for falling back to ONNX Runtime ('' when not worth one).

    No warning where the tensorrt module is not installed at all (a laptop, CI): such
    a machine can never use an engine, so the fallback is the expected path and is
    only logged at debug level. Where tensorrt is installed (a Jetson) the fallback
    costs a lot of speed, so the warning says why (no GPU, pycuda missing, no engine,
    or each engine's mismatch) and gives the build command.
    """
    if not tensorrt_backend.tensorrt_installed():
        _LOG.debug('backend auto: tensorrt is not installed; using ONNX Runtime for %s',
                   onnx_path)
        return ''
    try:
        machine = tensorrt_backend.probe_machine()
    except BackendUnavailableError as exc:
        return (f'backend auto: TensorRT is installed but cannot run here ({exc}); using '
                f'ONNX Runtime for {onnx_path}')
    search = search_engines(os.path.dirname(onnx_path), onnx_path, card, machine)
    return ('backend auto: using ONNX Runtime (much slower on a Jetson) because '
            + _no_engine_message(onnx_path, machine, search))


def _engine_precision(engine_path: str) -> str:
    """Return the precision in an engine's file name (the default when it has none)."""
    parsed = parse_engine_file_name(engine_path)
    return parsed[1] if parsed else DEFAULT_PRECISION


def _load_tensorrt_engine(engine_path: str, max_batch: int) -> Backend:
    """
    Load a TensorRT engine after checking it against its sidecar, card and this machine.

    The card is the sidecar's ``card_file`` beside the engine. A failure raises; with
    ``backend: auto`` the caller falls back to ONNX Runtime with one warning, with
    ``backend: tensorrt`` or an ``.engine`` model path it is the start error.
    """
    return tensorrt_backend.load_engine_backend(engine_path, max_batch=max_batch)
