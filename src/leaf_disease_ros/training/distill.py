"""
Knowledge distillation: teacher soft labels on the cached composites, and the KD loss.

Owns the teacher side (:func:`teacher_logits`: the teacher run's logits on every cached
training tile, written once as ``(N, C)`` float32 .npy by ``leaf-disease-train-field
teacher``, so the student pays no teacher forward passes) and :func:`kd_loss` (Hinton
et al. 2015: KL divergence between temperature-softened distributions, times ``T**2``).
The student's total loss is ``(1 - alpha) * CE(hard labels, label smoothing) + alpha *
KD`` (see :mod:`leaf_disease_ros.training.field_train`).
"""

import time
from typing import Any, Dict

import numpy as np
import torch
from torch.nn import functional as F

from leaf_disease_ros.perception.atomic_io import atomic_path
from leaf_disease_ros.perception.model_card import card_from_dict
from leaf_disease_ros.perception.preprocess import preprocess
from leaf_disease_ros.training import backbones


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """Return ``T^2 * KL(softmax(t / T) || softmax(s / T))``, batch mean; shapes ``(N, C)``."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction='batchmean') * temperature ** 2


def teacher_logits(checkpoint: str, cache: str, batch_size: int = 128) -> np.ndarray:
    """Return the teacher's ``(N, C)`` logits on the cache tiles (its own card's preprocessing)."""
    model, meta = backbones.load_model(checkpoint)
    card = card_from_dict(meta['card'], checkpoint)
    x = np.load(cache)['x']
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            out.append(model(torch.from_numpy(preprocess(x[start:start + batch_size], card)))
                       .numpy())
    return np.concatenate(out).astype(np.float32)


def write_teacher_logits(checkpoint: str, cache: str, out: str, threads: int = 2
                         ) -> Dict[str, Any]:
    """
    Write :func:`teacher_logits` to ``out`` (.npy, atomically); return shape, agreement, time.

    ``out`` is written as given (NumPy's rule of adding ``.npy`` is the caller's).
    """
    started = time.monotonic()
    torch.set_num_threads(threads)
    logits = teacher_logits(checkpoint, cache)
    with atomic_path(out) as tmp:  # tmp keeps the .npy suffix, so np.save adds none
        np.save(tmp, logits)
    targets = np.load(cache)['y']
    return {'out': out, 'shape': list(logits.shape),
            'agreement_with_targets': float((logits.argmax(1) == targets).mean()),
            'seconds': round(time.monotonic() - started, 1)}
