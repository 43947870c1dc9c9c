"""
Calibration of a classifier on validation logits: temperature and unknown threshold.

:func:`fit_temperature` finds the softmax temperature that minimises the negative
log-likelihood of the validation labels (temperature scaling, Guo et al. 2017). The
NLL is convex in the inverse temperature, so a golden-section search over it finds
the optimum without scipy.

:func:`choose_unknown_threshold` states and applies the rule for the ``unknown``
threshold: the largest threshold that rejects at most ``max_reject_fraction`` of the
validation tiles (their calibrated top-1 score quantile), bounded to
``[1/C + 0.05, 0.9]`` so that it neither accepts coin flips nor rejects confident
answers. On validation data (leaves the model can know) rejection should be rare;
its job is out-of-distribution tiles in the field.
"""

import math
from typing import Any, Dict, Tuple

import numpy as np
from numpy.typing import ArrayLike

from leaf_disease_ros.perception.metrics import expected_calibration_error
from leaf_disease_ros.perception.postprocess import softmax

THRESHOLD_RULE = ('largest threshold rejecting at most {reject:.1%} of validation tiles '
                  '(quantile of calibrated top-1 scores), bounded to [1/C + 0.05, 0.9]')


def negative_log_likelihood(logits: np.ndarray, true_idx: ArrayLike,
                            temperature: float) -> float:
    """Return the mean NLL of ``true_idx`` under ``softmax(logits / temperature)``."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled).sum(axis=1))
    true_arr = np.asarray(true_idx, dtype=np.int64)
    picked = scaled[np.arange(len(true_arr)), true_arr]
    return float(np.mean(log_norm - picked))


def fit_temperature(logits: np.ndarray, true_idx: ArrayLike,
                    bounds: Tuple[float, float] = (0.05, 20.0),
                    iterations: int = 80) -> float:
    """
    Return the temperature minimising validation NLL (golden section on 1/T).

    :param logits: ``(N, C)`` validation logits.
    :param true_idx: ``(N,)`` true class indices.
    :param bounds: search range of the temperature.
    :param iterations: golden-section steps (80 shrink the range by ~1e-17).
    """
    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]  # inverse temperature range
    ratio = (math.sqrt(5.0) - 1.0) / 2.0

    def loss(beta: float) -> float:
        return negative_log_likelihood(logits, true_idx, 1.0 / beta)

    a, b = lo, hi
    c = b - ratio * (b - a)
    d = a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return 1.0 / ((a + b) / 2.0)


def choose_unknown_threshold(probs: np.ndarray, true_idx: ArrayLike,
                             max_reject_fraction: float = 0.02) -> Dict[str, Any]:
    """
    Choose the unknown threshold by the rule in :data:`THRESHOLD_RULE`.

    :param probs: ``(N, C)`` calibrated validation probabilities.
    :param true_idx: ``(N,)`` true class indices.
    :param max_reject_fraction: largest share of validation tiles to reject.

    :returns: ``threshold`` and what it does on validation: ``rejected_fraction``,
        ``errors_rejected_fraction`` (share of wrong answers turned into unknown),
        ``accepted_accuracy``, and the ``rule`` in words.
    """
    probs = np.asarray(probs, dtype=np.float64)
    true_arr = np.asarray(true_idx, dtype=np.int64)
    num_classes = probs.shape[1]
    top = probs.max(axis=1)
    correct = probs.argmax(axis=1) == true_arr
    quantile = float(np.quantile(top, max_reject_fraction)) if top.size else 0.5
    threshold = float(min(0.9, max(1.0 / num_classes + 0.05, quantile)))
    rejected = top < threshold
    accepted = ~rejected
    errors = ~correct
    return {
        'threshold': threshold,
        'rejected_fraction': float(rejected.mean()) if top.size else 0.0,
        'errors_rejected_fraction': (float((rejected & errors).sum() / errors.sum())
                                     if errors.any() else 0.0),
        'accepted_accuracy': (float(correct[accepted].mean()) if accepted.any() else 0.0),
        'rule': THRESHOLD_RULE.format(reject=max_reject_fraction),
    }


def calibrate(logits: np.ndarray, true_idx: ArrayLike,
              max_reject_fraction: float = 0.02) -> Dict[str, Any]:
    """
    Fit the temperature, measure ECE before/after, choose the unknown threshold.

    Returns a JSON-ready dict for the card's ``calibration`` section.
    """
    temperature = fit_temperature(logits, true_idx)
    before = expected_calibration_error(softmax(logits, 1.0), true_idx)
    calibrated = softmax(logits, temperature)
    after = expected_calibration_error(calibrated, true_idx)
    threshold = choose_unknown_threshold(calibrated, true_idx, max_reject_fraction)
    return {
        'temperature': temperature,
        'unknown_threshold': threshold['threshold'],
        'unknown_threshold_rule': threshold['rule'],
        'validation_rejected_fraction': threshold['rejected_fraction'],
        'validation_errors_rejected_fraction': threshold['errors_rejected_fraction'],
        'validation_accepted_accuracy': threshold['accepted_accuracy'],
        'ece_before': before,
        'ece_after': after,
        'nll_before': negative_log_likelihood(logits, true_idx, 1.0),
        'nll_after': negative_log_likelihood(logits, true_idx, temperature),
    }
