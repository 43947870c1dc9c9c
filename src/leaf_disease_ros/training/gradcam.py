"""
Grad-CAM from a training checkpoint (PyTorch, ``train`` extra).

Grad-CAM (Selvaraju et al., 2017) weights the last convolutional block's feature
maps (``layer4`` of the torchvision ResNet) by the spatial mean of the gradient of
the target class's logit, keeps the positive part and upsamples it to the tile. It
needs the network's gradients, so it runs on the checkpoint that
``leaf-disease-train`` writes (``RUN/checkpoint_best.pt``), not on the ONNX model or a
TensorRT engine; for those, :mod:`leaf_disease_ros.explain.saliency` (occlusion,
RISE) explains through the backend.

The preprocessing is the runtime's (:func:`~leaf_disease_ros.perception.preprocess.preprocess`)
with the checkpoint's own card.
"""

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.explain.saliency import Saliency
from leaf_disease_ros.perception.errors import LeafDiseaseError, MissingDependencyError
from leaf_disease_ros.perception.model_card import card_from_dict, ModelCard
from leaf_disease_ros.perception.postprocess import softmax
from leaf_disease_ros.perception.preprocess import preprocess
from leaf_disease_ros.training.checkpoint import load_checkpoint
from leaf_disease_ros.training.recipe import TRAIN_EXTRA_HINT

try:
    import torch
    import torchvision
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(f'Grad-CAM needs PyTorch: {TRAIN_EXTRA_HINT}') from exc


def load_checkpoint_model(path: str) -> Tuple[Any, ModelCard]:
    """
    Return ``(network in eval mode on the CPU, its card)`` from a training checkpoint.

    :raises LeafDiseaseError: the file is missing or is not a leaf-disease-train checkpoint.
    """
    if not os.path.isfile(path):
        raise LeafDiseaseError(f'checkpoint {path} does not exist; Grad-CAM needs '
                               'RUN/checkpoint_best.pt of a leaf-disease-train run')
    checkpoint: Dict[str, Any] = load_checkpoint(path)  # weights_only: refuses code
    if not {'model', 'arch', 'card'} <= set(checkpoint):
        raise LeafDiseaseError(f'{path} is not a leaf-disease-train checkpoint (it needs the '
                               'keys model, arch and card)')
    card = card_from_dict(checkpoint['card'], f'{path} (card)')
    factory = getattr(torchvision.models, checkpoint['arch'], None)
    if factory is None or not checkpoint['arch'].startswith('resnet'):
        raise LeafDiseaseError(f"{path}: Grad-CAM supports torchvision ResNets, the run's "
                               f"architecture is {checkpoint['arch']!r}")
    model = factory(weights=None, num_classes=card.num_classes)
    model.load_state_dict(checkpoint['model'])
    return model.eval().float(), card


def gradcam(model: Any, card: ModelCard, tiles_bgr: Sequence[np.ndarray],
            targets: Optional[Sequence[int]] = None) -> List[Saliency]:
    """
    Return the Grad-CAM map of each tile for its predicted (or given) class.

    :param model: a torchvision ResNet in eval mode (:func:`load_checkpoint_model`).
    :param tiles_bgr: ``(h_i, w_i, 3)`` uint8 BGR tiles.
    """
    import time

    start = time.perf_counter()
    captured: Dict[str, Any] = {}

    def keep(_module: Any, _inputs: Any, output: Any) -> None:
        output.retain_grad()
        captured['features'] = output

    handle = model.layer4.register_forward_hook(keep)
    try:
        inputs = torch.from_numpy(preprocess(list(tiles_bgr), card))
        model.zero_grad(set_to_none=True)
        logits = model(inputs)
        chosen = (logits.argmax(dim=1) if targets is None
                  else torch.as_tensor(list(targets), dtype=torch.long))
        logits.gather(1, chosen[:, None]).sum().backward()
        features = captured['features']
        weights = features.grad.mean(dim=(2, 3), keepdim=True)
        cams = torch.relu((weights * features).sum(dim=1)).detach().numpy()
    finally:
        handle.remove()
    probs = softmax(logits.detach().numpy(), card.temperature)
    seconds = (time.perf_counter() - start) / max(1, len(tiles_bgr))
    maps: List[Saliency] = []
    for index, tile in enumerate(tiles_bgr):
        heat = cv2.resize(cams[index].astype(np.float32), (tile.shape[1], tile.shape[0]),
                          interpolation=cv2.INTER_LINEAR)
        peak = float(heat.max())
        heat = heat / peak if peak > 0 else heat
        label_index = int(chosen[index])
        maps.append(Saliency(heat=np.clip(heat, 0.0, 1.0), label=card.labels[label_index],
                             label_index=label_index, score=float(probs[index, label_index]),
                             method='gradcam', inferences=1, seconds=seconds))
    return maps
