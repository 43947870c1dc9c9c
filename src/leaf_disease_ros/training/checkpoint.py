"""
Training checkpoints that load without running code: tensors plus JSON metadata.

``torch.load(..., weights_only=False)`` unpickles arbitrary Python objects, so a
checkpoint someone else made (a fine-tuned model shared between vineyards) could
run whatever it contains. Checkpoints here hold only what
``torch.load(..., weights_only=True)`` accepts:

``{'format': FORMAT, 'state': {name: state dict of tensors and numbers},
'metadata_json': '<JSON text>'}``

The state dicts are the model's (and, in ``checkpoint_last.pt``, the optimizer's,
scheduler's and gradient scaler's); everything else (architecture, card, epoch,
validation report, history, arguments) is JSON text. :func:`load_checkpoint` loads
with ``weights_only=True`` only and refuses anything else (an older pickled
checkpoint, a file of another program, a file built to run code) with a
:class:`CheckpointError` that says why and what to do. :func:`load_weights` reads
``--weights`` (a plain state dict, e.g. torchvision weights, or a checkpoint) the
same safe way.
"""

import json
import pickle
from typing import Any, Dict, Mapping

from leaf_disease_ros.perception.errors import LeafDiseaseError

FORMAT = 'leaf_disease_ros.checkpoint/1'


class CheckpointError(LeafDiseaseError):
    """A checkpoint cannot be loaded safely (or is not one of this package)."""


def _json_default(value: Any) -> Any:
    if hasattr(value, 'tolist'):  # numpy / torch scalars and arrays
        return value.tolist()
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def save_checkpoint(path: str, state: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
    """
    Write a checkpoint: state dicts (tensors) and JSON-serialisable metadata.

    :param path: the file (write to a temporary path and rename for atomicity).
    :param state: name -> ``state_dict()`` (model, optimizer, scheduler, scaler).
    :param metadata: anything JSON can hold (numpy scalars are converted).
    """
    import torch  # the train extra; imported by the callers' guard first

    torch.save({'format': FORMAT, 'state': dict(state),
                'metadata_json': json.dumps(metadata, default=_json_default)}, path)


def _safe_load(path: str, map_location: Any) -> Any:
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f'{path} does not exist') from exc
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
            TypeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f'{path} is not a safe checkpoint: loading it would run Python code or build '
            f'objects other than tensors and numbers ({first[:200]}). It is refused: '
            'checkpoints of leaf-disease-train hold only tensors and JSON and load with '
            'weights_only=True. Use a checkpoint written by this version, or re-save it '
            'on a machine you trust (load its state dict and save_checkpoint it)') from exc


def load_checkpoint(path: str, map_location: Any = 'cpu') -> Dict[str, Any]:
    """
    Load a checkpoint of :func:`save_checkpoint`; return metadata and state dicts merged.

    :raises CheckpointError: the file is missing, not loadable with
        ``weights_only=True``, or not a checkpoint of this package.
    """
    loaded = _safe_load(path, map_location)
    if not isinstance(loaded, dict) or loaded.get('format') != FORMAT:
        raise CheckpointError(f'{path} is not a leaf-disease-train checkpoint (format '
                              f'{FORMAT}); it was written by another program or an older '
                              'version: train again, or give a state dict with --weights')
    try:
        metadata = json.loads(loaded['metadata_json'])
        state = dict(loaded['state'])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f'{path}: the checkpoint is damaged ({exc})') from exc
    if not isinstance(metadata, dict):
        raise CheckpointError(f'{path}: the checkpoint metadata is not a JSON object')
    metadata.update(state)
    return metadata


def load_weights(path: str) -> Dict[str, Any]:
    """
    Return the model state dict of ``--weights``: a checkpoint, or a plain state dict.

    :raises CheckpointError: not loadable with ``weights_only=True``, or no state dict.
    """
    loaded = _safe_load(path, 'cpu')
    if isinstance(loaded, dict) and loaded.get('format') == FORMAT:
        loaded = loaded.get('state', {}).get('model')
    elif isinstance(loaded, dict) and isinstance(loaded.get('model'), dict):
        loaded = loaded['model']
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise CheckpointError(f'--weights {path} holds no state dict (name -> tensor)')
    return loaded
